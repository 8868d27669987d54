"""The live view of a run or a study: done / running / queued / failed counts, a progress
bar with ETA, the recent trials and the best so far. Shared by every backend."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from nntune.config.metrics import Objective
from nntune.experiments import (
    DvcRepo,
    QueueState,
    experiment_metrics,
)

if TYPE_CHECKING:
    from nntune.tuning.driver import Snapshot

RECENT = 8  # finished trials listed in the live view


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


def finished_trial(repo: DvcRepo, name: str, objective: Objective) -> Finished:
    """A succeeded trial with the objective its experiment commit recorded."""
    metrics = experiment_metrics(repo, name)
    value = metrics.get(objective.metric)
    value = float(value) if isinstance(value, int | float) else None
    diverged = bool(metrics.get("diverged")) or value is None or not math.isfinite(value)
    return Finished(name=name, ok=True, objective=value, diverged=diverged)


def finished_from_key(repo: DvcRepo, key: tuple[str, str, bool], objective: Objective) -> Finished:
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


def search_view(snapshot: Snapshot, total: int, objective: Objective, method: str) -> Group:
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


def median_phases(timings: dict[str, dict[str, float]]) -> str:
    """``clone 0.1, pull 2.2, run 22.2, push 1.3`` over the trials that ran (not skipped)."""
    from statistics import median

    ran = [t for t in timings.values() if t]
    phases = ("clone", "pull", "run", "push")
    return ", ".join(f"{p} {median(t[p] for t in ran):.1f}" for p in phases if ran) or "-"
