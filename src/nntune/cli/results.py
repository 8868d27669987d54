"""Commands that read results: ``compare``, ``best`` (and promote), ``plots`` and ``gc``
(``ensemble``, which averages the best, is ``nntune.cli.ensembles``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from nntune.cli.app import app
from nntune.cli.options import Format, ParamsOption, load_with_mapping, wide_console
from nntune.errors import NntuneError

if TYPE_CHECKING:
    from nntune.config.metrics import Task
    from nntune.tuning.ranking import Comparison


@app.command()
def gc(
    keep: Annotated[int, typer.Option("--keep", "-k", min=1, help="best experiments to keep")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="list what would go, remove nothing")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    project: Annotated[
        list[Path] | None,
        typer.Option(
            "--project",
            help="another project that shares this DVC cache: its objects are kept "
            "(dvc gc --projects); repeat for each",
        ),
    ] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Remove the losing experiments of HEAD (dvc exp remove) and the cache entries only
    they used (dvc gc). Never the best K, one on a branch or applied to the workspace, the
    warm-start parent of a kept one, or one an unfinished study still needs."""
    from rich.table import Table

    from nntune import experiments
    from nntune.config.mapping import flatten
    from nntune.tuning import ranking
    from nntune.tuning.study import needed_by_unfinished_studies

    loaded, base = load_with_mapping(params)
    rows = experiments.list_experiments(".", flatten(base))
    comparison = ranking.compare(rows, loaded.evaluate.objective, loaded.data.task)
    if comparison.pending:
        names = ", ".join(e.name for e in comparison.pending)
        raise NntuneError(f"experiments are queued or running ({names}); gc after they end")
    with experiments.open_repo(".") as repo:
        protected = experiments.protected_experiments(repo, rows, flatten(base))
        cache = experiments.shared_cache(repo)
    protected.update(needed_by_unfinished_studies(Path(), [e.name for e in rows]))
    cleanup = ranking.select_garbage(comparison, keep, protected)
    console = wide_console()
    table = Table(title="experiments kept", title_justify="left")
    table.add_column("experiment")
    table.add_column("why")
    for name, why in cleanup.keep.items():
        table.add_row(name, why)
    console.print(table)
    if not cleanup.remove:
        console.print("nothing to remove")
        return
    verb = "would remove" if dry_run else "removing"
    console.print(f"{verb} {len(cleanup.remove)}: {', '.join(cleanup.remove)}")
    if dry_run:
        return
    if cache and not project:
        # --yes does not answer this one: a wrong answer deletes other projects' data.
        console.print(
            f"[yellow]the DVC cache {cache} lies outside this project[/yellow]: other projects "
            "may use it, and dvc gc would delete the objects only they use. Name each with "
            "--project PATH to keep theirs."
        )
        if not typer.confirm("run dvc gc on this shared cache anyway?", default=False):
            console.print("nothing removed")
            raise typer.Exit(1)
    elif not yes and not typer.confirm(f"remove {len(cleanup.remove)} experiment(s)?"):
        raise typer.Exit(1)
    experiments.remove_experiments(".", cleanup.remove)
    with experiments.open_repo(".") as repo:
        experiments.collect_garbage(repo, [str(p) for p in project or []])
    console.print(
        f"removed {len(cleanup.remove)} experiment(s) and the cache entries only they used"
    )


@app.command()
def compare(
    metric: Annotated[
        str | None, typer.Option("--metric", "-m", help="rank by this validation metric")
    ] = None,
    top: Annotated[int | None, typer.Option("--top", "-k", min=1, help="show the best K")] = None,
    all_commits: Annotated[
        bool, typer.Option("--all", help="experiments of every commit, not only HEAD's")
    ] = False,
    fmt: Format = "table",
    remote: Annotated[
        str | None,
        typer.Option(help="pull HEAD's experiments from this git remote first (e.g. origin)"),
    ] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Rank experiments by the objective; failed and diverged ones are listed apart. Each
    gets a diagnosis from its learning curves (overfitting, underfitting, lr too high, not
    converged, healthy) with the next move to try, and the best ones sitting on the edge of
    a searched range are pointed out."""
    from nntune.tuning import ranking

    if remote:
        _pull_remote(remote, quiet=fmt != "table")
    comparison = load_comparison(params, metric, all_commits)
    rows = ranking.records(comparison, top)
    if fmt == "csv":
        typer.echo(ranking.to_csv(rows), nl=False)
    elif fmt == "json":
        typer.echo(ranking.to_json(comparison, rows))
    elif fmt == "md":
        typer.echo(ranking.to_markdown(rows), nl=False)
    else:
        _print_comparison(comparison, rows)


@app.command()
def best(
    apply: Annotated[bool, typer.Option("--apply", help="dvc exp apply the winner")] = False,
    branch: Annotated[
        str | None, typer.Option("--branch", help="dvc exp branch the winner to BRANCH")
    ] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Print the best experiment and optionally promote it (apply it or make a branch)."""
    from nntune.experiments import promote
    from nntune.tuning.ranking import edge_advice, format_value, plain

    if apply and branch:
        raise NntuneError("use --apply or --branch, not both")
    comparison = load_comparison(params, None, False)
    winner = comparison.best
    if winner is None:
        typer.echo(
            "no successful experiment to pick from: run `nntune grid` and `nntune run`", err=True
        )
        raise typer.Exit(1)
    metric = comparison.objective.metric
    spread = winner.metrics.get(f"{metric}_sd")
    folds = f" ± {spread:.4f} over {int(winner.metrics['cv_folds'])} folds" if spread else ""
    typer.echo(f"best: {winner.name} {metric} = {winner.metrics[metric]:.4f}{folds}")
    for key in comparison.varying:
        typer.echo(f"  {key} = {format_value(plain(winner.params.get(key)))}")
    diagnosis = comparison.diagnosis(winner)
    typer.echo(f"  diagnosis: {diagnosis.label} ({diagnosis.evidence})")
    if diagnosis.advice:
        typer.echo(f"  next: {diagnosis.advice}")
    for line in edge_advice(comparison):
        typer.echo(f"advice: {line}")
    if apply or branch:
        promote(".", winner.name, branch)
        typer.echo(f"created branch {branch}" if branch else "applied to the workspace")


@app.command()
def plots(
    top: Annotated[int, typer.Option("--top", "-k", min=1, help="experiments to plot")] = 5,
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write")] = Path(
        "plots/experiments.html"
    ),
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Write one offline HTML page: the top K table, their learning curves (from
    `dvc plots diff`), parameter importance, parallel coordinates and the objective
    against each varied parameter."""
    from nntune.tuning import report
    from nntune.tuning.ranking import edge_advice, next_moves, records

    comparison = load_comparison(params, None, False)
    shown = comparison.ranked[:top]
    if not shown:
        typer.echo("no successful experiment to plot: run `nntune grid` and `nntune run`", err=True)
        raise typer.Exit(1)
    rows = [r for r in records(comparison, top) if r["status"] == "ok"]
    curves = report.learning_curves(".", [e.name for e in shown])
    if curves.missing and not curves.specs:
        raise NntuneError(
            "no learning curve could be drawn: " + "; ".join(curves.missing) + report.CURVES_HINT
        )
    for problem in curves.missing:
        typer.echo(f"warning: left out of the page: {problem}", err=True)
    sections = report.chart_sections(comparison, curves.specs)
    advice = next_moves(rows) + [f"search space: {line}" for line in edge_advice(comparison)]
    report.write_page(out, comparison, rows, sections, advice)
    charts = sum(len(section.specs) for section in sections)
    typer.echo(f"wrote {out} ({charts} charts, {len(shown)} experiments)")


def _pull_remote(remote: str, quiet: bool) -> None:
    from nntune.experiments import sync_remote

    try:
        pulled, dequeued = sync_remote(".", remote)
    except NntuneError:
        raise
    except Exception as exc:  # DVC's own errors: an unreachable remote, a bad URL
        raise NntuneError(
            f"could not pull experiments from {remote}: {' '.join(str(exc).split())}; check "
            f"`git remote get-url {remote}` and that it is reachable"
        ) from exc
    message = f"pulled {len(pulled)} new experiment(s) from {remote}"
    if dequeued:
        message += f"; {len(dequeued)} of them were queued here and left the queue"
    typer.echo(message, err=quiet)


def load_comparison(params: Path, metric: str | None, all_commits: bool) -> Comparison:
    """HEAD's (or every commit's) experiments, ranked by the objective and diagnosed: what
    compare, best, plots and importance all read."""
    from nntune.config.mapping import flatten
    from nntune.config.metrics import Objective, infer_direction, validation_metric_names
    from nntune.experiments import list_experiments
    from nntune.tuning.ranking import compare as rank

    p, base = load_with_mapping(params)
    objective = p.evaluate.objective
    if metric:
        allowed = validation_metric_names(p.data.task)
        if metric not in allowed:
            raise NntuneError(f"--metric must be one of {', '.join(allowed)}, got {metric!r}")
        objective = Objective(metric, infer_direction(metric))
    exps = list_experiments(".", flatten(base), all_commits)
    return _diagnosed(rank(exps, objective, p.data.task), p.data.task)


def _diagnosed(comparison: Comparison, task: Task) -> Comparison:
    """The comparison with each ranked or diverged experiment's diagnosis, from the curves
    in its commit (one git process for all of them)."""
    import dataclasses
    from functools import partial

    from nntune.experiments import read_files
    from nntune.tuning.diagnosis import diagnose_experiments

    shown = comparison.ranked + comparison.diverged
    found = diagnose_experiments(shown, task, partial(read_files, "."))
    return dataclasses.replace(comparison, diagnoses=found)


def _print_comparison(comparison: Comparison, rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    from nntune.tuning.ranking import edge_advice, ensemble_records, format_value, next_moves

    console = wide_console()
    if not rows:
        console.print("no experiments yet: queue some with `nntune grid`, run `nntune run`")
        return
    o = comparison.objective
    table = Table(title=f"ranked by {o.metric} ({o.direction})", title_justify="left")
    for column in rows[0]:
        header = column.rsplit(".", 1)[-1]  # model.units -> units
        left = column in ("experiment", "status", "diagnosis")
        table.add_column(header, justify="left" if left else "right")
    for row in rows:
        style = "bold green" if row["rank"] == 1 else ("red" if row["status"] == "failed" else None)
        if row["status"] == "diverged":
            style = "yellow"
        table.add_row(*(format_value(v) for v in row.values()), style=style)
    console.print(table)
    for record in ensemble_records(comparison):
        scores = ", ".join(
            f"{k} {format_value(v)}" for k, v in record.items() if k.startswith("test_")
        )
        console.print(
            f"ensemble {record['experiment']} ({format_value(record['members'])} members, "
            f"test split): {scores or 'no metrics'}"
        )
    for line in next_moves(rows):
        console.print(line)
    for line in edge_advice(comparison):
        console.print(f"search space: {line}")
    if comparison.pending:
        console.print(f"{len(comparison.pending)} experiment(s) still queued or running")
