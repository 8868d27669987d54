"""Single trials: ``logs`` (a trial's whole log) and the retry of failed trials that
``nntune run --retry-failed`` starts with."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from nntune.cli.app import app

if TYPE_CHECKING:
    from rich.console import Console


@app.command()
def logs(
    name: Annotated[str, typer.Argument(help="the trial's experiment name")],
    tail: Annotated[
        int | None, typer.Option("--tail", "-n", min=1, help="only the last N lines")
    ] = None,
) -> None:
    """A trial's whole log (its stages' output and DVC's), running, finished or failed:
    what nntune's executor kept, or ``dvc queue logs`` for a trial DVC's workers ran."""
    from nntune.executor.retry import log_text

    text = log_text(".", name)
    lines = text.splitlines()
    typer.echo("\n".join(lines[-tail:] if tail else lines))


def requeue_failed(console: Console) -> None:
    """``nntune run --retry-failed``: queue the failed trials again and say which."""
    from nntune.executor import retry
    from nntune.experiments import open_repo

    with open_repo(".") as repo:
        again = retry.requeue_failed(repo)
    for trial in again:
        moved = " (first queued on another commit: now on HEAD)" if trial.moved else ""
        console.print(f"queued again: {trial.name} {' '.join(trial.overrides)}{moved}")
    if not again:
        console.print("no failed trial to retry")
