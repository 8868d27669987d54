"""The workers of one ``nntune run`` or ``nntune search``: started, watched, restarted.

``WorkerPool`` is an executor for the study driver and the live view alike (``start``,
``state``, ``stop``): it keeps ``jobs`` worker processes alive while DVC's queue holds
entries no worker has claimed, each pinned to its GPU when ``gpus`` is given. A worker that
died (killed, out of memory) is reaped with every process of its group, so no stage it
started lives on in its worktree; its entry's claim went with it, and another worker runs
the entry. Workers exit by themselves when the queue stays empty, after their trial when
stopped, and when the process that started them is gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from nntune.executor.records import claim_path, read_records, state_dir
from nntune.experiments.queue import QueueState, queue_state
from nntune.experiments.repo import DvcRepo, ExperimentError, use_this_python

MAX_DEATHS = 5  # beyond this (plus two per job) a worker that keeps dying is an error
TRIALS_ENV = "NNTUNE_WORKER_TRIALS"  # a worker's trials before a fresh one takes over
DEFAULT_TRIALS = 40
NEWS_POLL = 0.1  # seconds between looks at the records' folder while a watcher waits


def worker_trials() -> int:
    """A worker's trials before a fresh one takes over (its memory stays bounded):
    ``NNTUNE_WORKER_TRIALS``, or 40."""
    raw = os.environ.get(TRIALS_ENV, "").strip()
    if not raw:
        return DEFAULT_TRIALS
    if not raw.isdigit() or int(raw) < 1:
        raise ExperimentError(
            f"{TRIALS_ENV}={raw!r} is not a whole number >= 1: set it to how many trials a "
            f"worker runs before a fresh one takes over (default {DEFAULT_TRIALS}), or unset it"
        )
    return int(raw)


@dataclass
class WorkerPool:
    root: Path
    jobs: int
    gpus: list[str] | None = None
    idle_seconds: float = 10.0
    max_trials: int = field(default_factory=worker_trials)  # then a fresh worker (memory)
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    died: int = 0  # workers that ended other than by themselves
    active: bool = False  # between start() and stop(): keep jobs workers alive
    news_seen: tuple[frozenset[str], ...] = ()  # wait_for_news's last look

    def refresh(self, repo: DvcRepo) -> None:
        return None  # workers commit their experiments into this repository's refs

    def start(self, repo: DvcRepo) -> None:
        self.active = True
        self._reap()
        for number in range(1, self.jobs + 1):
            if number not in self.procs:
                self.procs[number] = self._spawn(number)

    def state(self, repo: DvcRepo) -> QueueState:
        state = executor_state(repo)
        if state.queued and self.active and len(self._reap()) < self.jobs:
            if self.died > MAX_DEATHS + 2 * self.jobs:
                self.stop(repo)
                raise ExperimentError(
                    f"nntune's workers died {self.died} times; see their output in "
                    f"{state_dir(self.root) / 'workers'}/w*.out, or run with --executor dvc"
                )
            self.start(repo)
        return state

    def wait_for_news(self, stop: threading.Event, seconds: float) -> bool:
        """Wait up to ``seconds``, less once a worker records a trial's end or claims or
        lets go of an entry (the names in the records' or the claims' folder change: a
        look every :data:`NEWS_POLL` seconds lists them), so that a watcher (``nntune
        run``'s view, the study driver queueing the next trial) sees it at once. Whether
        ``stop`` was set. A record being written (its hidden temporary file, renamed into
        place when whole) is no news yet: the wait ends once the record is there."""
        folders = [state_dir(self.root) / name for name in ("done", "claims")]

        def mark() -> tuple[frozenset[str], ...]:
            return tuple(_visible_names(folder) for folder in folders)

        deadline = time.monotonic() + seconds
        while True:
            # Against the last look's mark, not this wait's start: news that came between
            # two waits (a record renamed into place after the watcher read the state)
            # ends the next wait at once.
            if (now := mark()) != self.news_seen:
                self.news_seen = now
                return stop.is_set()
            left = deadline - time.monotonic()
            if left <= 0 or stop.wait(min(NEWS_POLL, left)):
                return stop.is_set()

    def stop(self, repo: DvcRepo) -> None:
        """Each worker ends after its running trial; queued entries stay queued."""
        self.active = False
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGUSR1)

    def wait(self, timeout: float | None = None) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)

    def _reap(self) -> dict[int, subprocess.Popen[bytes]]:
        """Forget workers that ended; end the process group of each that died (its stages
        must not run on in its worktree). Returns the live ones."""
        for number, proc in list(self.procs.items()):
            code = proc.poll()
            if code is None:
                continue
            del self.procs[number]
            if code != 0:
                self.died += 1
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        return self.procs

    def _spawn(self, number: int) -> subprocess.Popen[bytes]:
        use_this_python()
        env = dict(os.environ)
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[(number - 1) % len(self.gpus)]
        log = state_dir(self.root) / "workers" / f"w{number}.out"
        log.parent.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "nntune.executor.worker", str(self.root), str(number),
            "--parent", str(os.getpid()), "--idle", str(self.idle_seconds),
            "--max-trials", str(self.max_trials),
        ]  # fmt: skip
        with log.open("ab") as out:
            return subprocess.Popen(
                command,
                cwd=self.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal reaches nntune run only
            )


def executor_state(repo: DvcRepo) -> QueueState:
    """DVC's queue as nntune's executor sees it: an entry whose claim a worker holds is
    running (DVC still lists it as queued until it ends), and the entries the executor
    finished or failed (which it took off DVC's queue) are succeeded or failed."""
    root = Path(repo.root_dir)
    state = queue_state(repo)
    records = read_records(root)
    ended = {record.stash_rev for record in records}
    claimed, recorded = set(), set()
    for entry in repo.experiments.celery_queue.iter_queued():
        label = entry.name or entry.stash_rev[:7]
        if entry.stash_rev in ended:  # its worker takes it off DVC's queue in a moment
            recorded.add(label)
        elif is_claimed(root, entry.stash_rev):
            claimed.add(label)
    state.running += [label for label in state.queued if label in claimed]
    state.queued = [label for label in state.queued if label not in claimed | recorded]
    for record in records:
        if record.ok:
            state.succeeded[record.name] = record.exp_rev
            state.failed.pop(record.name, None)
        else:
            state.failed[record.name] = record.stash_rev
    return state


def _visible_names(folder: Path) -> frozenset[str]:
    """The folder's entries but the hidden ones (``atomic_path``'s temporary files); none
    while it does not exist (its creation, for a first record, is no news yet)."""
    try:
        return frozenset(p.name for p in folder.iterdir() if not p.name.startswith("."))
    except OSError:
        return frozenset()


def is_claimed(root: Path, stash_rev: str) -> bool:
    """Whether a live worker holds entry ``stash_rev``'s claim."""
    import errno
    import fcntl

    try:  # never created here: a worker removes the file of an entry that ended
        fd = os.open(claim_path(root, stash_rev), os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)  # releases the lock, if this process took it
    return False
