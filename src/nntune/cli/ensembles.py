"""``nntune ensemble``: average the best K experiments as one more DVC experiment; with
cross-validated experiments, first score that average against the best one on the folds'
held-out rows (``nntune.tuning.oof``), and with ``--if-better`` run it only when it wins.
``nntune search`` ends with the same choice when ``data.cv_folds`` is on."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from nntune.cli.app import app
from nntune.cli.options import ParamsOption
from nntune.errors import NntuneError

if TYPE_CHECKING:
    from nntune.config.metrics import Task
    from nntune.experiments import Experiment
    from nntune.tuning.oof import Choice


@app.command()
def ensemble(
    top: Annotated[
        int, typer.Option("--top", "-k", min=2, help="average the best K experiments")
    ] = 3,
    name: Annotated[
        str | None, typer.Option("--name", "-n", help="the experiment's name (default: derived)")
    ] = None,
    metric: Annotated[
        str | None, typer.Option("--metric", "-m", help="rank by this validation metric")
    ] = None,
    experiment: Annotated[
        list[str] | None,
        typer.Option(
            "--experiment", "-e", help="average these experiments instead of the best K; repeat"
        ),
    ] = None,
    if_better: Annotated[
        bool,
        typer.Option(
            "--if-better",
            help="run it only if the average beats the best experiment on the folds' held-out "
            "rows (cross-validated experiments: data.cv_folds)",
        ),
    ] = False,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Average the predictions (probabilities or values) of the best K experiments and
    score the average on the test split, as its own DVC experiment: its params list the
    members and the md5s of their models (`dvc exp show`), its metrics are ensemble_test_*,
    and `nntune export --experiment NAME` exports it as one model. Cross-validated
    members are first compared on their out-of-fold predictions."""
    from nntune.cli.results import load_comparison

    comparison = load_comparison(params, metric, False)
    chosen = comparison.ranked[:top]
    if experiment:  # the user's choice: seeds of one configuration, say
        named = {e.name: e for e in comparison.ranked}
        unknown = [n for n in experiment if n not in named]
        if unknown or len(set(experiment)) < 2:
            raise NntuneError(
                f"--experiment: {', '.join(unknown)} not among the successful experiments of "
                "HEAD (`nntune compare` lists them)"
                if unknown
                else "--experiment: name at least 2 different experiments"
            )
        chosen = [e for e in comparison.ranked if e.name in experiment]  # best first
        top = len(chosen)
    elif len(chosen) < top:
        raise NntuneError(
            f"--top {top}: only {len(chosen)} successful experiment(s) to average; run more "
            "trials (`nntune grid` or `nntune search`, then `nntune run`) or lower --top"
        )
    choice = out_of_fold_choice(chosen, project_task(params), required=if_better)
    if choice is not None:
        typer.echo(choice.describe())
        if if_better and not choice.ensemble_wins:
            typer.echo(f"no ensemble run: keep the best experiment, {choice.best}")
            return
    run_top(chosen, name, comparison.objective.metric, by_hand=bool(experiment))


def out_of_fold_choice(chosen: list[Experiment], task: Task, required: bool) -> Choice | None:
    """The out-of-fold comparison of ``chosen`` (best first), or None where a member was
    not cross-validated (an error when ``required``)."""
    from nntune.experiments import out_of_fold_files
    from nntune.tuning.oof import choose

    counts = {e.name: e.metrics.get("cv_folds") for e in chosen}
    folds = {n: k for n, k in counts.items() if isinstance(k, int) and k >= 2}
    plain = [n for n in counts if n not in folds]
    if plain:
        if required:
            raise NntuneError(
                f"--if-better compares on out-of-fold predictions, and {', '.join(plain)} "
                "were not cross-validated: set data.cv_folds (e.g. [0, 1, 2, 3, 4]) before "
                "the search, or leave --if-better out"
            )
        return None
    import io

    import pandas as pd

    frames = {
        name: [pd.read_parquet(io.BytesIO(b)) for b in out_of_fold_files(".", name, k)]
        for name, k in folds.items()
    }
    return choose(frames, task)


def run_top(chosen: list[Experiment], name: str | None, objective: str, by_hand: bool) -> str:
    """Run the ensemble of ``chosen`` as a DVC experiment and print its test scores; its
    name (by default ``ensemble-topK-`` and a digest of the members)."""
    import hashlib
    import json

    from nntune.experiments import ensemble_members, experiment_metrics, open_repo, run_ensemble
    from nntune.tuning.ranking import format_value

    members = ensemble_members(".", [e.name for e in chosen])
    digest = hashlib.sha1(json.dumps(members, sort_keys=True).encode()).hexdigest()[:7]
    name = name or f"ensemble-top{len(chosen)}-{digest}"
    how = "chosen" if by_hand else f"the best {len(chosen)} by {objective}"
    typer.echo(f"ensemble {name}: {how}:")
    for exp in chosen:
        scores = {k: v for k, v in exp.metrics.items() if k.startswith("test_")}
        shown = ", ".join(f"{k} {format_value(v)}" for k, v in sorted(scores.items()))
        typer.echo(f"  {exp.name}: {objective} {format_value(exp.metrics[objective])}, {shown}")
    run_ensemble(".", name, members)
    with open_repo(".") as repo:
        metrics = experiment_metrics(repo, name)
    scores = {k.removeprefix("ensemble_"): v for k, v in metrics.items() if "_test_" in k}
    shown = ", ".join(f"{k} {format_value(v)}" for k, v in sorted(scores.items()))
    typer.echo(f"ensemble {name} (test split): {shown}")
    return name


def project_task(params: Path) -> Task:
    """The task of the project's params (what the out-of-fold scores depend on)."""
    from nntune.cli.options import load_with_mapping

    return load_with_mapping(params)[0].data.task
