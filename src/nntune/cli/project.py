"""Commands about the project itself: ``init``, ``check``, ``summary``, ``validate``,
``schema infer`` and ``export-digits``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from nntune.cli.app import app, schema_app
from nntune.cli.options import ParamsOption, format_cell, load_checked
from nntune.errors import NntuneError


@app.command()
def check(
    params: Annotated[Path, typer.Argument(help="params file")] = Path("params.yaml"),
) -> None:
    """Validate a params file without training anything; print the resolved settings."""
    p = load_checked(params)
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
    p = load_checked(params)
    from rich.console import Console
    from rich.table import Table

    from nntune.config.metrics import holdout_metric_names, validation_metric_names
    from nntune.experiments import workspace_metrics

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
        format_cell(metrics.get(objective.metric)),
        style="bold",
    )
    others = [m for m in validation_metric_names(p.data.task) if m != objective.metric]
    for name in [*others, *holdout_metric_names(p.data.task)]:
        table.add_row(name, format_cell(metrics.get(name)))
    for name in ("epochs_trained", "best_epoch", "diverged", "train_seconds"):
        table.add_row(name, format_cell(metrics.get(name)))
    Console().print(table)
    if metrics.get("diverged"):
        typer.echo("warning: training diverged (NaN/inf loss); lower train.learning_rate", err=True)


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="project folder (created if missing)")],
    data: Annotated[Path, typer.Option("--data", "-d", help="CSV or Parquet table")],
    target: Annotated[str, typer.Option("--target", "-t", help="column to predict")],
    task: Annotated[
        Literal["multiclass", "binary", "regression"] | None,
        typer.Option(help="the task (default: inferred from the target column)"),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(help="replace an existing project's pipeline; keeps params and schema"),
    ] = False,
    reset_params: Annotated[
        bool,
        typer.Option("--reset-params", help="with --force: replace params.yaml and the schema too"),
    ] = False,
) -> None:
    """Scaffold a ready project around your table: pipeline, params, inferred schema, git +
    DVC with the data `dvc add`-ed (in a subfolder of a git repository: `dvc init
    --subdir`). Then `cd DIR && dvc repro`."""
    from nntune.scaffold.project import init_project

    if reset_params and not force:
        raise NntuneError("--reset-params replaces an existing project's params: add --force")
    done = init_project(directory, data, target, task, force, reset_params)
    how = "inferred from the target column" if done.inferred_task else "as given"
    typer.echo(f"task: {done.task} ({how}; change data.task in params.yaml if wrong)")
    typer.echo(f"created {directory}: data {done.data} (dvc add), schema, params, pipeline")
    if done.subdir:
        typer.echo("a subfolder of a git repository: its own DVC repository (dvc init --subdir)")
    if done.replaced:
        typer.echo(f"replaced {len(done.replaced)} file(s): {', '.join(done.replaced)}")
    if done.removed:
        typer.echo(
            f"removed {len(done.removed)} library file(s) of an older nntune layout: "
            + ", ".join(done.removed)
        )
    if done.kept:
        typer.echo(f"kept {', '.join(done.kept)} (--reset-params replaces them)")
    for note in done.notes:
        typer.echo(f"warning: {note}", err=True)
    if not done.committed:
        typer.echo("existing git repository: the files init wrote are staged; review and commit")
    typer.echo(f"next: cd {directory} && dvc repro")


@app.command()
def validate(
    path: Annotated[
        Path | None, typer.Argument(help="table to check (default: data.source)")
    ] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Validate a table as the pipeline's validate stage does, without DVC: every failure
    of the schema and of the params' column rules; exit code 1 if any."""
    import dataclasses

    from nntune.stage.schema import check_data, render_report

    data = load_checked(params).data
    if path is not None:
        data = dataclasses.replace(data, source=str(path))
    report = check_data(data)
    render_report(report)
    if not report.valid:
        raise typer.Exit(1)


@schema_app.command("infer")
def schema_infer(
    path: Annotated[
        Path | None, typer.Argument(help="table to infer from (default: data.source)")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="YAML to write (default: data.schema)")
    ] = None,
    force: Annotated[bool, typer.Option(help="overwrite an existing schema file")] = False,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Write a pandera schema (YAML) inferred from the data: dtypes, nullability, ranges,
    allowed categories, the label set. Read it, tighten it, commit it."""
    import dataclasses

    from nntune.stage import artifacts
    from nntune.stage.data import read_table
    from nntune.stage.schema import infer_schema

    data = load_checked(params).data
    if path is not None:
        data = dataclasses.replace(data, source=str(path))
    target = out or Path(data.schema)
    if target.exists() and not force:
        raise NntuneError(f"{target} exists; pass --force to overwrite it")
    schema = infer_schema(read_table(data.source, data.delimiter), data)
    artifacts.write_text(target, schema.to_yaml())
    typer.echo(f"wrote {target}: {len(schema.columns)} columns from {data.source}")


@app.command("export-digits")
def export_digits(
    path: Annotated[Path, typer.Argument(help="CSV file to write")] = Path("data/digits.csv"),
) -> None:
    """Write scikit-learn's bundled handwritten-digits set as CSV (the default data)."""
    from nntune.stage.data import export_digits as export

    export(path)
    typer.echo(f"wrote {path}")
