"""The end of ``nntune search``: its summary (the best trial, the baseline's place, the
epochs spent) and, with ``data.cv_folds``, the average of the best K as its own experiment
when it beats the best trial on the folds' held-out rows (``nntune ensemble --if-better``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from nntune.errors import NntuneError

if TYPE_CHECKING:
    from rich.console import Console

    from nntune.config.metrics import Objective
    from nntune.tuning.driver import Snapshot
    from nntune.tuning.search_space import Dimension
    from nntune.tuning.study import Settings


def print_search_summary(
    console: Console,
    result: Snapshot,
    settings: Settings,
    space: Mapping[str, Dimension],
    objective: Objective,
) -> list[str]:
    """Print the summary; the names of the study's failed experiments."""
    from nntune.tuning import search_space
    from nntune.tuning.driver import baseline_note

    failed = [job.name for job in result.jobs if job.state == "failed" and job.trial >= 0]
    if result.best:
        console.print(
            f"best: [bold]{result.best[0]}[/bold] {objective.metric} = {result.best[1]:.4f}"
        )
    else:
        console.print("[red]no trial finished its last rung[/red]")
    if note := baseline_note(result):
        console.print(note)
    full = settings.trials * settings.max_epochs
    line = (
        f"epochs spent: {result.epochs_spent}, against {full} to train all {settings.trials} "
        f"sampled configurations for {settings.max_epochs} epochs"
    )
    size = search_space.grid_size(space)
    if size is not None:
        line += f" and {size * settings.max_epochs} for the full grid of {size} points"
    console.print(line)
    return failed


def ensemble_if_better(console: Console, params: Path, top: int) -> str | None:
    """Compare the average of HEAD's best ``top`` experiments (fewer if fewer succeeded, at
    least 2) with the best one on their out-of-fold predictions, and run it as its own
    experiment where it wins: its name, or None."""
    from nntune.cli.ensembles import out_of_fold_choice, project_task, run_top
    from nntune.cli.results import load_comparison

    comparison = load_comparison(params, None, False)
    chosen = comparison.ranked[:top]
    if len(chosen) < 2:
        return None
    try:
        choice = out_of_fold_choice(chosen, project_task(params), required=True)
    except NntuneError as exc:  # an older trial among the best: say so, keep the search's
        console.print(f"no ensemble: {exc}", markup=False, highlight=False)
        return None
    assert choice is not None
    console.print(choice.describe(), markup=False, highlight=False)
    if not choice.ensemble_wins:
        console.print(f"the search's result is its best trial, {choice.best}")
        return None
    name = run_top(chosen, None, comparison.objective.metric, by_hand=False)
    console.print(
        f"the search's result is the ensemble [bold]{name}[/bold]: `nntune export "
        f"--experiment {name}` or `nntune predict ROWS --experiment {name}` use it"
    )
    return name
