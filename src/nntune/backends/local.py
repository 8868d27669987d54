"""The local backend: the workers that run DVC's queue on this machine, watched by ``nntune
run`` in a live view, and the executor the study driver uses to run its trials here. By
default they are nntune's own (:mod:`nntune.executor`); ``--executor dvc`` uses DVC's
celery workers (``dvc queue start``)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.live import Live

from nntune import experiments
from nntune.backends.options import Executor
from nntune.backends.view import RunOutcome, finished_from_key, trials_progress, trials_view
from nntune.config.metrics import Objective
from nntune.executor.pool import WorkerPool
from nntune.experiments import DvcRepo, QueueState, open_repo
from nntune.interrupts import deferred_ctrl_c
from nntune.stage.backend import declared
from nntune.warm.launcher import warm_runner


@dataclass
class LocalQueue:
    """DVC's own queue workers on this machine (``nntune run --executor dvc``)."""

    jobs: int
    gpus: list[str] | None = None
    started: float = -math.inf  # time.monotonic() of the last start or check
    check_seconds: float = 15.0  # a worker needs a moment to appear after it is started
    settled: dict[str, bool] = field(default_factory=dict)  # orphans of the last check
    active: bool = False  # between start() and stop(): revive dead workers

    def refresh(self, repo: DvcRepo) -> None:
        return None  # DVC's workers commit finished experiments here themselves

    def state(self, repo: DvcRepo) -> experiments.QueueState:
        state = experiments.queue_state(repo)
        self.settled = {}
        if self.active and state.pending and time.monotonic() - self.started >= self.check_seconds:
            # Workers that died leave their trials 'running' forever: fail those (the
            # driver tells Optuna), and start new workers for the rest.
            self.started = time.monotonic()
            self.settled = experiments.revive_queue(repo, state, self.jobs, self.gpus)
            if self.settled:  # orphans settled
                state = experiments.queue_state(repo)
        return state

    def start(self, repo: DvcRepo) -> None:
        experiments.start_workers(repo, self.jobs, self.gpus)
        self.started = time.monotonic()
        self.active = True

    def wait_for_news(self, stop: threading.Event, seconds: float) -> bool:
        return stop.wait(seconds)  # DVC's workers say nothing: the next look tells

    def stop(self, repo: DvcRepo) -> None:
        self.active = False
        experiments.stop_workers(repo)


def local_executor(
    root: str | Path, executor: Executor, jobs: int, gpus: list[str] | None = None
) -> LocalQueue | WorkerPool:
    """nntune's own workers (the default), or DVC's celery workers."""
    if executor == "dvc":
        return LocalQueue(jobs, gpus)
    return WorkerPool(Path(root).resolve(), jobs, gpus)


def run_queue(
    root: str | Path,
    jobs: int,
    objective: Objective,
    console: Console,
    gpus: list[str] | None = None,
    poll_seconds: float = 2.0,
    warm: bool = True,
    executor: Executor = "nntune",
) -> RunOutcome:
    """Start ``jobs`` workers (or one per GPU in ``gpus``) and block until the queue is
    empty (or Ctrl-C); with ``warm``, the workers' stages use a warm runner."""
    with open_repo(root) as repo:
        workers = local_executor(root, executor, jobs, gpus)
        before = workers.state(repo)
        outcome = RunOutcome(total=before.pending)
        if outcome.total == 0:
            return outcome
        with announced_warm_runner(warm, console, root):
            return _run_started_queue(
                repo, workers, objective, console, poll_seconds, outcome, before
            )


@contextmanager
def announced_warm_runner(
    enabled: bool, console: Console, root: str | Path = "."
) -> Iterator[None]:
    """The warm runner of ``nntune run`` and ``nntune search``, on the Keras backend that the
    project's params.yaml (under ``root``) declares; says so when it did not start (the
    stages then start cold)."""
    backend, _ = declared(Path(root) / "params.yaml")
    with warm_runner(enabled, backends=(backend,)) as socket:
        if enabled and socket is None:
            console.print("[yellow]the warm runner did not start[/yellow]: stages start cold")
        yield


def _run_started_queue(
    repo: DvcRepo,
    workers: LocalQueue | WorkerPool,
    objective: Objective,
    console: Console,
    poll_seconds: float,
    outcome: RunOutcome,
    before: QueueState,
) -> RunOutcome:
    seen = _done_keys(before)
    workers.start(repo)
    progress = trials_progress(console)
    task = progress.add_task("trials", total=outcome.total)
    state = before
    try:
        with (
            deferred_ctrl_c() as ctrl_c,
            Live(trials_view(progress, state, outcome, objective), console=console) as live,
        ):
            while True:
                if ctrl_c.is_set():
                    raise KeyboardInterrupt
                state = workers.state(repo)
                for key in sorted(_done_keys(state) - seen):
                    seen.add(key)
                    outcome.finished.append(finished_from_key(repo, key, objective))
                progress.update(task, completed=len(outcome.finished))
                live.update(trials_view(progress, state, outcome, objective))
                if state.pending == 0:
                    break
                if isinstance(workers, LocalQueue) and workers.settled:
                    live.console.print(_orphans_line(workers.settled))
                workers.wait_for_news(ctrl_c, poll_seconds)  # or less, once a trial ends
        workers.stop(repo)  # drained: the workers exit now, not after an idle wait
    except KeyboardInterrupt:
        workers.stop(repo)
        outcome.interrupted = True
        outcome.still_queued = len(workers.state(repo).queued)  # stopped: starts nothing
    console.print()  # the live view leaves the cursor at the end of its last line
    return outcome


def _orphans_line(settled: dict[str, bool]) -> str:
    saved = [name for name, ok in settled.items() if ok]
    lost = [name for name, ok in settled.items() if not ok]
    parts = [f"{', '.join(saved)} had finished and was saved"] if saved else []
    parts += [f"{', '.join(lost)} marked failed"] if lost else []
    return f"[red]the queue's workers died[/red]: {'; '.join(parts)}; new workers run the rest"


def _done_keys(state: QueueState) -> set[tuple[str, str, bool]]:
    return {(n, rev, True) for n, rev in state.succeeded.items()} | {
        (n, rev, False) for n, rev in state.failed.items()
    }
