"""DVC's queue: queueing trials, starting and stopping its workers, reading queued, running,
finished and failed entries in one consistent pass, and noticing workers that died."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from nntune.config.mapping import override_args
from nntune.experiments import dvc_internals
from nntune.experiments.refs import changed_paths, param_changes
from nntune.experiments.repo import (
    DvcQueue,
    DvcQueueEntry,
    DvcRepo,
    ExperimentError,
    baseline_rev,
    open_repo,
    use_this_python,
)


class NamedPoint(Protocol):
    """What ``queue_trials`` queues (a grid's ``Trial`` is one): a name and its overrides."""

    @property
    def name(self) -> str: ...

    @property
    def overrides(self) -> Mapping[str, Any]: ...


@dataclass
class QueueState:
    """What DVC's queue holds now, by experiment name (or short rev when unnamed)."""

    queued: list[str] = field(default_factory=list)
    running: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # name -> stash rev
    succeeded: dict[str, str] = field(default_factory=dict)  # name -> experiment commit

    @property
    def pending(self) -> int:
        return len(self.queued) + len(self.running)


QUEUE_BATCH = 8  # entries queued per hold of the repository lock (about 1.2 s here)


def queue_trials(root: str | Path, trials: Iterable[NamedPoint]) -> list[str]:
    """``dvc exp run --queue -n NAME -S key=value ...`` for each trial, in one DVC session.

    As DVC queues a sweep (``-S 'a=1,2'``: one locked call), the repository lock is held
    over several entries, so that DVC builds its index of the stages once for them instead
    of once per entry, and each YAML text is parsed once (``parsed_once``). The lock is let
    go between batches of :data:`QUEUE_BATCH` entries, as it was between entries before; as
    then, another DVC command in the project while a long grid is queued may give up
    waiting for it (DVC tries for 3 s) and say so."""
    queued = []
    pending = list(trials)
    with open_repo(root) as repo, dvc_internals.parsed_once():
        for start in range(0, len(pending), QUEUE_BATCH):
            with dvc_internals.one_index(repo):
                for trial in pending[start : start + QUEUE_BATCH]:
                    args = override_args(trial.overrides)
                    repo.experiments.run(params=args, queue=True, name=trial.name)
                    queued.append(trial.name)
    return queued


def queue_state(repo: DvcRepo) -> QueueState:
    """Queued, running and finished entries of DVC's queue, in one linear pass over its
    processed messages. (DVC's own ``iter_done`` looks each finished entry up by scanning
    every processed message again: quadratic, minutes per call after a few hundred
    experiments, which stalled a search driver that polls it every two seconds.)"""
    queue = repo.experiments.celery_queue
    state = QueueState()
    state.queued = [_label(e) for e in queue.iter_queued()]
    state.running = [_label(entry) for entry in dvc_internals.active_entries(queue)]
    for entry in dvc_internals.done_entries(queue):
        try:
            result = dvc_internals.executor_info(queue, entry.stash_rev).result
        except FileNotFoundError:  # the run never wrote its info file: it failed early
            result = None
        # Its ref is written before the task is done, unless its worker died before
        # collecting it: then the experiment was not saved, and it failed.
        saved = result is not None and result.exp_hash and result.ref_info
        if saved and repo.scm.get_ref(str(result.ref_info)):
            state.succeeded[result.ref_info.name] = str(result.exp_hash)
        else:
            state.failed[_label(entry)] = entry.stash_rev
    return state


def _label(entry: DvcQueueEntry) -> str:
    return str(entry.name or entry.stash_rev[:7])


def start_workers(repo: DvcRepo, jobs: int, gpus: list[str] | None = None) -> int:
    """``dvc queue start -j jobs``; with ``gpus``, one worker per GPU instead, each started
    with its own ``CUDA_VISIBLE_DEVICES`` (workers and their trials inherit the environment
    they start with), so concurrent trials never share a card."""
    use_this_python()
    queue = repo.experiments.celery_queue
    if not gpus:
        return int(queue.start_workers(jobs))
    active = queue.worker_status()
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    started = 0
    try:
        for number, gpu in enumerate(gpus, start=1):
            if any(name.endswith(f"-{number}@localhost") for name in active):
                continue  # a worker with this number already runs, pinned when it started
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
            dvc_internals.spawn_worker(
                queue, number
            )  # start_workers() would give every worker one env
            started += 1
    finally:
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved
    return started


def stop_workers(repo: DvcRepo) -> None:
    """Let running trials finish, keep queued ones queued: ``dvc queue stop``."""
    repo.experiments.celery_queue.shutdown(kill=False)


def live_workers(repo: DvcRepo) -> list[int]:
    """Pids of this project's DVC queue workers, read from the process table (celery's
    ping can time out on a busy machine and would report live workers dead)."""
    import hashlib

    import psutil

    wdir = repo.experiments.celery_queue.wdir
    node = f"dvc-exp-{hashlib.sha256(wdir.encode('utf-8')).hexdigest()[:6]}-"
    pids = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info.get("cmdline") or []
        if proc.info.get("status") == psutil.STATUS_ZOMBIE or "queue-worker" not in cmdline:
            continue
        if any(arg.startswith(node) for arg in cmdline):
            pids.append(proc.pid)
    return pids


def revive_queue(
    repo: DvcRepo, state: QueueState, jobs: int, gpus: list[str] | None = None
) -> dict[str, bool]:
    """When every worker of this project has died (killed, out of memory) while the queue
    still holds work: settle the trials they were running (``settle_orphans``) and start
    new workers for what is queued. Returns the settled trials: name -> whether its
    experiment was saved."""
    if not state.pending or live_workers(repo):
        return {}
    settled = settle_orphans(repo, state.running) if state.running else {}
    if state.queued:
        start_workers(repo, jobs, gpus)
    return settled


def settle_orphans(repo: DvcRepo, names: list[str]) -> dict[str, bool]:
    """Running entries whose worker died. A trial whose own process still runs is left to
    finish. Once it has ended, what the dead worker would have done is done here: a trial
    that completed is collected into its experiment ref (DVC's own ``collect_exp`` task),
    and the entry is marked done (``dvc queue kill`` on an ended process does that), so it
    shows as succeeded or failed instead of 'running' forever. Returns name -> saved."""
    from dvc.repo.experiments.exceptions import UnresolvedRunningExpNamesError
    from dvc.repo.experiments.executor.local import TempDirExecutor
    from dvc.repo.experiments.queue.exceptions import CannotKillTasksError
    from dvc.repo.experiments.queue.tasks import collect_exp

    queue = repo.experiments.celery_queue
    active = {_label(entry): entry for entry in dvc_internals.active_entries(queue)}
    settled: dict[str, bool] = {}
    for name in names:
        entry = active.get(name)
        if entry is None or _trial_process_alive(queue, entry.stash_rev):
            continue
        try:
            info = dvc_internals.executor_info(queue, entry.stash_rev)
        except FileNotFoundError:
            info = None
        result = info.result if info is not None else None
        if result is not None and result.exp_hash and result.ref_info:
            collect_exp({}, entry.asdict())
        try:
            queue.kill([name], force=True)
        except (UnresolvedRunningExpNamesError, CannotKillTasksError):
            continue  # ended meanwhile, or a live worker has it after all
        if info is not None:  # the temp copy the trial ran in, as the worker removes it
            with contextlib.suppress(OSError):
                TempDirExecutor.from_info(info).cleanup(queue.get_infofile_path(entry.stash_rev))
        ref = result.ref_info if result is not None else None
        settled[name] = ref is not None and bool(repo.scm.get_ref(str(ref)))
    return settled


def _trial_process_alive(queue: DvcQueue, stash_rev: str) -> bool:
    """Whether an entry's ``dvc exp exec-run`` process still runs (it may outlive its
    worker, as the child of a killed process)."""
    import psutil

    info = queue.proc.get(stash_rev)
    if info is None or info.returncode is not None or not info.pid:
        return False
    try:
        proc = psutil.Process(info.pid)
        return proc.status() != psutil.STATUS_ZOMBIE and "exec-run" in proc.cmdline()
    except psutil.Error:
        return False


def queue_experiment(repo: DvcRepo, name: str, overrides: dict[str, Any]) -> bool:
    """``dvc exp run --queue -n NAME -S key=value ...`` for one experiment. False, and
    nothing queued, when DVC already has an experiment of that name (it has finished: DVC
    checks the refs only)."""
    from dvc.repo.experiments.exceptions import ExperimentExistsError

    try:
        repo.experiments.run(params=override_args(overrides), queue=True, name=name)
    except ExperimentExistsError:
        return False
    return True


def queued_trials(repo: DvcRepo, skip: Iterable[str] = ()) -> list[tuple[str, list[str]]]:
    """The entries of DVC's local queue as (name, ``-S`` overrides), for executors that run
    them elsewhere (Ray, Slurm), leaving out ``skip``. A remote trial clones the baseline
    commit and sets params only, so an entry must be named, queued on HEAD and change
    nothing but params.yaml."""
    head = baseline_rev(repo)
    skipped = set(skip)
    trials = []
    for entry in repo.experiments.celery_queue.iter_queued():
        label = _label(entry)
        if label in skipped:
            continue
        if not entry.name:
            raise ExperimentError(
                f"queued experiment {label} has no name; remove it (dvc queue remove {label}) "
                "and queue it with -n NAME (nntune grid names every point)"
            )
        if entry.baseline_rev != head:
            raise ExperimentError(
                f"queued experiment {label} is based on commit {entry.baseline_rev[:7]}, not "
                f"HEAD ({head[:7]}); check that commit out or remove it: dvc queue remove {label}"
            )
        extra = [p for p in changed_paths(repo, head, entry.stash_rev) if p != "params.yaml"]
        if extra:
            raise ExperimentError(
                f"queued experiment {label} carries uncommitted changes to {', '.join(extra)}; "
                "a remote trial runs the commit with its params only: commit the changes, "
                f"then queue it again (dvc queue remove {label})"
            )
        trials.append((label, param_changes(repo, head, entry.stash_rev, label)))
    return trials


def remove_queued(repo: DvcRepo, names: list[str]) -> None:
    """``dvc queue remove NAME ...``: entries that ran elsewhere and were pulled back."""
    if names:
        repo.experiments.celery_queue.remove(names)
