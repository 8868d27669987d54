"""One worker of nntune's executor: ``python -m nntune.executor.worker ROOT NUMBER``.

It imports DVC once, owns worktree ``NUMBER`` (its lock says so), and takes DVC's queued
entries one at a time, oldest first: it locks the entry's claim, runs it in its worktree
(:mod:`nntune.executor.runner`) with the trial's output going to the trial's log, writes
the entry's record, and only then takes the entry off DVC's queue. So whenever it dies:

- before the ref was created, the entry is still queued and its claim lock is gone with
  the worker: the next worker runs it from the start;
- after, the ref (or the failure's record) is there: the next worker that meets the entry
  sees it has ended and takes it off the queue without running it again.

It exits after ``--idle`` seconds without work, after ``--max-trials`` trials (the pool
starts a fresh one: memory stays bounded), after SIGUSR1 once its trial is done (``nntune
run`` stopping), or when the process that started it has gone. SIGTERM kills it and its
stages at once, which is as safe as a kill -9.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from nntune.executor.records import (
    FAILED_REF,
    EntryRecord,
    claim_path,
    log_path,
    read_record,
    state_dir,
)
from nntune.executor.runner import Outcome, create_ref, exp_ref_name, run_entry
from nntune.executor.worktrees import ensure_worktree, git, worktree_dir
from nntune.experiments import dvc_internals
from nntune.experiments.repo import DvcQueueEntry, DvcRepo, ExperimentError, open_repo
from nntune.locks import LockHeldError, record_lock

POLL_SECONDS = 0.25
EXIT_BUSY = 3  # another live worker owns this number's worktree


class Worker:
    def __init__(self, root: Path, number: int, parent: int, max_trials: int) -> None:
        self.root = root
        self.number = number
        self.parent = parent
        self.max_trials = max_trials
        self.stopping = False
        self.trials = 0
        self.cache = ""

    def run(self, repo: DvcRepo, idle: float) -> None:
        self.cache = repo.cache.local_cache_dir  # the root DVC is configured with (not files/md5)
        worktree = ensure_worktree(self.root, self.number, self.cache)
        prefix = git(self.root, "rev-parse", "--show-prefix").strip()
        idle_since = time.monotonic()
        while not self.stopping and self.trials < self.max_trials and self._parent_alive():
            with ExitStack() as claim:
                entry = self._claim_next(repo, claim)
                if entry is None:
                    if time.monotonic() - idle_since >= idle:
                        return
                    time.sleep(POLL_SECONDS)
                    continue
                if self.stopped():
                    return  # stopped while it claimed: the entry stays queued
                try:
                    if not self._settle_ended(repo, entry):
                        self._run(repo, worktree, prefix, entry)
                        self.trials += 1
                except Exception as exc:  # not the trial's fault: the entry must not loop
                    self._fail_entry(repo, entry, exc)
                claim_path(self.root, entry.stash_rev).unlink(missing_ok=True)
            idle_since = time.monotonic()

    def _claim_next(self, repo: DvcRepo, claim: ExitStack) -> DvcQueueEntry | None:
        """The oldest queued entry no live worker holds, with its claim lock held."""
        for entry in repo.experiments.celery_queue.iter_queued():
            try:
                claim.enter_context(record_lock(claim_path(self.root, entry.stash_rev), wait=False))
            except LockHeldError:
                continue
            return entry
        return None

    def _settle_ended(self, repo: DvcRepo, entry: DvcQueueEntry) -> bool:
        """An entry whose run ended (its ref or its failure's record exists) while it was
        left in the queue (its worker died in between) is taken off now, not run again."""
        record = read_record(self.root, entry.stash_rev)
        if record is None and entry.name:
            ref = exp_ref_name(entry.baseline_rev, entry.name)
            rev = repo.scm.get_ref(ref)
            if rev is None:
                return False
            record = EntryRecord(
                entry.name, entry.stash_rev, entry.baseline_rev, True, exp_rev=str(rev),
                log=str(log_path(self.root, entry.name)), worker=self.number,
            )  # fmt: skip
            if not _same_params(self.root, str(rev), entry.stash_rev):
                record.ok, record.exp_rev = False, ""
                record.error = f"an experiment named {entry.name} with other params exists"
            record.write(self.root)
        elif record is None:
            return False
        dvc_internals.take_off_queue(repo.experiments.celery_queue, entry)
        return True

    def _run(self, repo: DvcRepo, worktree: Path, prefix: str, entry: DvcQueueEntry) -> None:
        label = entry.name or entry.stash_rev[:7]
        log = log_path(self.root, label)
        record = EntryRecord(
            label, entry.stash_rev, entry.baseline_rev, False, log=str(log), worker=self.number
        )
        started = time.perf_counter()
        with _output_to(log):
            print(f"# {label} ({entry.stash_rev[:7]}) in worker {self.number}, pid {os.getpid()}")
            try:
                outcome = self._run_repaired(worktree, prefix, entry)
            except Exception as exc:  # a failed stage: the trial failed, the worker goes on
                traceback.print_exc()
                record.error = _one_line(exc)
                kept = f"{FAILED_REF}/{entry.stash_rev}"  # its snapshot, for --retry-failed
                create_ref(self.root, kept, entry.stash_rev, force=True)
            else:
                record.ok = True
                record.exp_rev = outcome.exp_rev
                record.name = outcome.ref.rsplit("/", 1)[-1]
                record.seconds = outcome.seconds
        record.seconds["total"] = time.perf_counter() - started
        record.worker_trial = self.trials + 1
        record.worker_peak_rss_mb = _peak_rss_mb()
        record.write(self.root)
        dvc_internals.take_off_queue(repo.experiments.celery_queue, entry)
        # Its record now says it ended: a worker that opens the claim anew settles it.

    def _fail_entry(self, repo: DvcRepo, entry: DvcQueueEntry, exc: Exception) -> None:
        """What went wrong around an entry (not inside its trial) is its failure, recorded
        like a trial's, so that no worker takes it up again and dies the same way."""
        traceback.print_exc()
        label = entry.name or entry.stash_rev[:7]
        record = EntryRecord(
            label, entry.stash_rev, entry.baseline_rev, False, error=_one_line(exc),
            log=str(log_path(self.root, label)), worker=self.number,
        )  # fmt: skip
        record.write(self.root)
        dvc_internals.take_off_queue(repo.experiments.celery_queue, entry)

    def _run_repaired(self, worktree: Path, prefix: str, entry: DvcQueueEntry) -> Outcome:
        """``run_entry``; a worktree git cannot use (a killed git, a folder deleted by hand)
        is rebuilt once and the entry run again from the start."""
        try:
            return run_entry(worktree, prefix, entry)
        except ExperimentError as exc:
            if not str(exc).startswith("git "):
                raise
            print(f"rebuilding worktree {worktree} after: {exc}", file=sys.stderr)
            ensure_worktree(self.root, self.number, self.cache, fresh=True)
            return run_entry(worktree, prefix, entry)

    def _parent_alive(self) -> bool:
        return os.getppid() == self.parent

    def stop_after_trial(self, *_: object) -> None:
        self.stopping = True

    def stopped(self) -> bool:
        return self.stopping  # (a method: SIGUSR1 sets it between any two lines)


def _same_params(root: Path, rev: str, stash_rev: str) -> bool:
    """Whether commits ``rev`` and ``stash_rev`` hold the same params.yaml (git blob ids)."""
    prefix = git(root, "rev-parse", "--show-prefix").strip()
    blobs = git(root, "rev-parse", f"{rev}:{prefix}params.yaml", f"{stash_rev}:{prefix}params.yaml")
    first, second = blobs.split()
    return first == second


@contextmanager
def _output_to(log: Path) -> Iterator[None]:
    """This process's stdout and stderr (and so every stage's) go to ``log`` for the
    block; appended, so a trial run again after a crash keeps the first attempt's lines."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with log.open("a", encoding="utf-8") as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"


def _die_with_stages(*_: object) -> None:
    os.killpg(os.getpgid(0), signal.SIGKILL)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nntune.executor.worker")
    parser.add_argument("root")
    parser.add_argument("number", type=int)
    parser.add_argument("--parent", type=int, default=os.getppid())
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--max-trials", type=int, default=40)
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    worker = Worker(root, args.number, args.parent, args.max_trials)
    signal.signal(signal.SIGUSR1, worker.stop_after_trial)
    signal.signal(signal.SIGTERM, _die_with_stages)
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)  # stages join this group: SIGTERM and the pool end them with it
    try:
        owned = state_dir(root) / "workers" / f"w{args.number}.lock"
        with record_lock(owned, wait=False), open_repo(root) as repo:
            worker.run(repo, args.idle)
    except LockHeldError:
        print(f"{worktree_dir(root, args.number)} is in use by another worker", file=sys.stderr)
        return EXIT_BUSY
    return 0


if __name__ == "__main__":
    sys.exit(main())
