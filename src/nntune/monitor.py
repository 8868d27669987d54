"""``nntune run``: start DVC's queue workers and watch the queue drain in a rich live view.

DVC does the work (its celery workers run each trial as an experiment); this module only
polls the queue, reads each finished trial's objective from its experiment commit, and
shows done / running / queued / failed counts, a progress bar with ETA and the best so far.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from nntune.experiments import (
    QueueState,
    experiment_metrics,
    open_repo,
    queue_state,
    revive_queue,
    start_workers,
    stop_workers,
)
from nntune.interrupts import deferred_ctrl_c
from nntune.metrics import Objective
from nntune.warm import warm_runner

RECENT = 8  # finished trials listed in the live view
# How often the live view checks that the queue's workers are alive; a worker needs a
# moment to appear after it is started, so never sooner than this after a start.
WORKER_CHECK_SECONDS = 15.0


@dataclass
class Finished:
    name: str
    ok: bool
    objective: float | None = None
    diverged: bool = False


@dataclass
class RunOutcome:
    total: int
    finished: list[Finished] = field(default_factory=list)
    interrupted: bool = False
    still_queued: int = 0
    errors: dict[str, str] = field(default_factory=dict)  # name -> why (remote executors)
    timings: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> phase -> s

    @property
    def failed(self) -> list[str]:
        return [f.name for f in self.finished if not f.ok]

    def best(self, objective: Objective) -> Finished | None:
        best: Finished | None = None
        for f in self.finished:
            if not f.ok or f.diverged:
                continue
            if best is None or objective.better_than(f.objective, best.objective):
                best = f
        return best


def run_queue(
    root: str | Path,
    jobs: int,
    objective: Objective,
    console: Console,
    gpus: list[str] | None = None,
    poll_seconds: float = 2.0,
    warm: bool = True,
) -> RunOutcome:
    """Start ``jobs`` workers (or one per GPU in ``gpus``) and block until the queue is
    empty (or Ctrl-C); with ``warm``, the workers' stages use a warm runner."""
    with open_repo(root) as repo:
        before = queue_state(repo)
        outcome = RunOutcome(total=before.pending)
        if outcome.total == 0:
            return outcome
        with announced_warm_runner(warm, console):
            return _run_started_queue(
                repo, jobs, objective, console, gpus, poll_seconds, outcome, before
            )


@contextmanager
def announced_warm_runner(enabled: bool, console: Console) -> Iterator[None]:
    """The warm runner of ``nntune run`` and ``nntune search``; says so when it did not
    start (the stages then start cold)."""
    with warm_runner(enabled) as socket:
        if enabled and socket is None:
            console.print("[yellow]the warm runner did not start[/yellow]: stages start cold")
        yield


def _run_started_queue(
    repo: Any,
    jobs: int,
    objective: Objective,
    console: Console,
    gpus: list[str] | None,
    poll_seconds: float,
    outcome: RunOutcome,
    before: QueueState,
) -> RunOutcome:
    seen = _done_keys(before)
    start_workers(repo, jobs, gpus)
    checked = time.monotonic()
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
                state = queue_state(repo)
                for key in sorted(_done_keys(state) - seen):
                    seen.add(key)
                    outcome.finished.append(_finished(repo, key, objective))
                progress.update(task, completed=len(outcome.finished))
                live.update(trials_view(progress, state, outcome, objective))
                if state.pending == 0:
                    break
                if time.monotonic() - checked >= WORKER_CHECK_SECONDS:
                    checked = time.monotonic()
                    settled = revive_queue(repo, state, jobs, gpus)
                    if settled:
                        live.console.print(_orphans_line(settled))
                ctrl_c.wait(poll_seconds)
        stop_workers(repo)  # drained: the workers exit now, not after DVC's idle minute
    except KeyboardInterrupt:
        stop_workers(repo)
        outcome.interrupted = True
        outcome.still_queued = len(queue_state(repo).queued)
    console.print()  # the live view leaves the cursor at the end of its last line
    return outcome


def _orphans_line(settled: dict[str, bool]) -> str:
    saved = [name for name, ok in settled.items() if ok]
    lost = [name for name, ok in settled.items() if not ok]
    parts = [f"{', '.join(saved)} had finished and was saved"] if saved else []
    parts += [f"{', '.join(lost)} marked failed"] if lost else []
    return f"[red]the queue's workers died[/red]: {'; '.join(parts)}; new workers run the rest"


def trials_progress(console: Console) -> Progress:
    """The progress bar of ``nntune run`` (every backend): trials done of total, and ETA."""
    return Progress(
        TextColumn("[bold]trials"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
    )


def finished_trial(repo: Any, name: str, objective: Objective) -> Finished:
    """A succeeded trial with the objective its experiment commit recorded."""
    metrics = experiment_metrics(repo, name)
    value = metrics.get(objective.metric)
    value = float(value) if isinstance(value, int | float) else None
    diverged = bool(metrics.get("diverged")) or value is None or not math.isfinite(value)
    return Finished(name=name, ok=True, objective=value, diverged=diverged)


def _done_keys(state: QueueState) -> set[tuple[str, str, bool]]:
    return {(n, rev, True) for n, rev in state.succeeded.items()} | {
        (n, rev, False) for n, rev in state.failed.items()
    }


def _finished(repo: Any, key: tuple[str, str, bool], objective: Objective) -> Finished:
    name, _, ok = key
    return finished_trial(repo, name, objective) if ok else Finished(name=name, ok=False)


def trials_view(
    progress: Progress, state: QueueState, outcome: RunOutcome, objective: Objective
) -> Group:
    failed = len(outcome.failed)
    counts = (
        f"done [green]{len(outcome.finished) - failed}[/green]  "
        f"running [cyan]{len(state.running)}[/cyan]  "
        f"queued {len(state.queued)}  failed [red]{failed}[/red]"
    )
    table = Table(show_header=True, header_style="bold", box=None)
    table.add_column("finished trial")
    table.add_column(f"{objective.metric} ({objective.direction})", justify="right")
    for f in outcome.finished[-RECENT:]:
        if not f.ok:
            table.add_row(f.name, "[red]failed[/red]")
        elif f.diverged:
            table.add_row(f.name, "[yellow]diverged[/yellow]")
        else:
            table.add_row(f.name, f"{f.objective:.4f}")
    best = outcome.best(objective)
    best_line = (
        f"best so far: [bold green]{best.name}[/bold green] "
        f"{objective.metric} = {best.objective:.4f}"
        if best and best.objective is not None
        else "best so far: -"
    )
    return Group(progress, counts, table, best_line)


def search_view(snapshot: Any, total: int, objective: Objective, method: str) -> Group:
    """``nntune search``'s live view: the queue counts of ``nntune run`` plus the rung
    (epoch budget) and bracket of each experiment, and the best finished trial."""
    jobs = snapshot.jobs
    counts = (
        f"trials [bold]{snapshot.asked}[/bold]/{total} asked, {snapshot.finished} finished   "
        f"running [cyan]{sum(j.state == 'running' for j in jobs)}[/cyan]  "
        f"queued {sum(j.state == 'queued' for j in jobs)}  "
        f"failed [red]{sum(j.state == 'failed' for j in jobs)}[/red]   "
        f"epochs spent {snapshot.epochs_spent}"
    )
    table = Table(show_header=True, header_style="bold", box=None)
    table.add_column("experiment")
    if method != "tpe":
        table.add_column("bracket", justify="right")
        table.add_column("rung (epochs)", justify="right")
    table.add_column("state")
    table.add_column(f"{objective.metric} ({objective.direction})", justify="right")
    shown = sorted(jobs, key=lambda j: (j.state not in ("running", "queued"), -j.trial, -j.epochs))
    for job in shown[: RECENT + 4]:
        value = f"{job.value:.4f}" if job.value is not None else ""
        style = {"failed": "red", "running": "cyan", "success": "green"}.get(job.state, "")
        state = f"[{style}]{job.state}[/{style}]" if style else job.state
        rung = [str(job.bracket), str(job.epochs)] if method != "tpe" else []
        table.add_row(job.name, *rung, state, value)
    best = snapshot.best
    best_line = (
        f"best so far: [bold green]{best[0]}[/bold green] {objective.metric} = {best[1]:.4f}"
        if best
        else "best so far: - (no trial has finished its last rung yet)"
    )
    return Group(counts, table, best_line)
