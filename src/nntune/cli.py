"""The ``nntune`` command line. Commands are small typed functions; rich and DVC are
imported inside them so that ``nntune --help`` stays fast."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from nntune.errors import NntuneError
from nntune.params import Params, load_params

app = typer.Typer(
    help="Declarative, reproducible neural-network tuning as a DVC pipeline.",
    no_args_is_help=True,
    add_completion=False,
)

ParamsOption = Annotated[
    Path, typer.Option("--params", "-P", help="params file of the project", show_default=True)
]


def _load(path: Path) -> Params:
    try:
        return load_params(path)
    except NntuneError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def check(
    params: Annotated[Path, typer.Argument(help="params file")] = Path("params.yaml"),
) -> None:
    """Validate a params file without training anything; print the resolved settings."""
    p = _load(params)
    from rich.console import Console

    layers = " x ".join(map(str, p.model.units)) or "none (linear model)"
    Console().print(
        f"[green]ok[/green]: {params}\n"
        f"  data      {p.data.source} -> {p.data.target} ({p.data.task})\n"
        f"  model     hidden layers: {layers}, {p.model.activation}, dropout {p.model.dropout}\n"
        f"  train     {p.train.optimizer}, learning rate {p.train.effective_learning_rate:g}"
        f" (lr_scaling {p.train.lr_scaling.rule}), batch {p.train.batch_size},"
        f" up to {p.train.max_epochs} epochs, early stopping on {p.train.early_stopping.monitor}\n"
        f"  objective {p.evaluate.objective.direction} {p.evaluate.objective.metric}"
    )


@app.command()
def summary(params: ParamsOption = Path("params.yaml")) -> None:
    """Show the workspace's results: the objective, the test metrics and how training went."""
    p = _load(params)
    from rich.console import Console
    from rich.table import Table

    from nntune.experiments import workspace_metrics
    from nntune.metrics import holdout_metric_names, validation_metric_names

    metrics = workspace_metrics()
    if not metrics:
        typer.echo("no results yet: run `dvc repro` (or `make run`) first", err=True)
        raise typer.Exit(1)
    objective = p.evaluate.objective
    table = Table(title="nntune: workspace results", title_justify="left")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row(
        f"objective: {objective.metric} ({objective.direction})",
        _fmt(metrics.get(objective.metric)),
        style="bold",
    )
    others = [m for m in validation_metric_names(p.data.task) if m != objective.metric]
    for name in [*others, *holdout_metric_names(p.data.task)]:
        table.add_row(name, _fmt(metrics.get(name)))
    for name in ("epochs_trained", "best_epoch", "diverged", "train_seconds"):
        table.add_row(name, _fmt(metrics.get(name)))
    Console().print(table)
    if metrics.get("diverged"):
        typer.echo("warning: training diverged (NaN/inf loss); lower train.learning_rate", err=True)


@app.command("export-digits")
def export_digits(
    path: Annotated[Path, typer.Argument(help="CSV file to write")] = Path("data/digits.csv"),
) -> None:
    """Write scikit-learn's bundled handwritten-digits set as CSV (the default data)."""
    from nntune.data import export_digits as export

    export(path)
    typer.echo(f"wrote {path}")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
