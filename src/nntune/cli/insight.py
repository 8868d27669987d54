"""Commands that help understand the tuning: ``importance`` (which parameters mattered)
and ``lr-find`` (the learning-rate range test, before a grid)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from nntune.cli.app import app
from nntune.cli.options import ParamsOption, load_checked, wide_console
from nntune.cli.results import load_comparison

# nntune.tuning.importance.Evaluator, spelled here so that `nntune --help` imports no
# tuning code; mypy checks that the two agree where the choice is passed on.
EvaluatorOption = Annotated[
    Literal["fanova", "ped-anova"],
    typer.Option(
        "--evaluator",
        "-e",
        help="fanova: share of the objective's variance; ped-anova: what sets the best 10 % apart",
        show_default=True,
    ),
]
ImportanceFormat = Annotated[
    Literal["table", "json"], typer.Option("--format", "-f", show_default=True)
]


@app.command()
def importance(
    evaluator: EvaluatorOption = "fanova",
    fmt: ImportanceFormat = "table",
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Rank the varied parameters by how much they mattered to the objective, over the
    finished experiments of HEAD (grid, random or search): Optuna's fANOVA or PED-ANOVA
    on a study built from them."""
    from nntune.tuning.importance import EVALUATOR_NAMES, param_importances

    comparison = load_comparison(params, None, False)
    objective = comparison.objective
    shares = param_importances(comparison.ranked, objective, evaluator)
    if fmt == "json":
        payload = {
            "objective": {"metric": objective.metric, "direction": objective.direction},
            "evaluator": evaluator,
            "experiments": len(comparison.ranked),
            "importances": shares,
        }
        typer.echo(json.dumps(payload, indent=2))
        return
    from rich.table import Table

    title = (
        f"importance for {objective.metric} ({objective.direction}): "
        f"{EVALUATOR_NAMES[evaluator]} over {len(comparison.ranked)} experiments"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("parameter")
    table.add_column("importance", justify="right")
    table.add_column("")
    for key, share in shares.items():
        table.add_row(key, f"{share:.1%}", "█" * round(share * 40))
    wide_console().print(table)


@app.command("lr-find")
def lr_find_command(
    start: Annotated[float, typer.Option(help="first learning rate of the sweep")] = 1e-7,
    end: Annotated[float, typer.Option(help="last learning rate of the sweep")] = 10.0,
    steps: Annotated[int, typer.Option(min=20, help="training steps, one batch each")] = 200,
    out: Annotated[Path, typer.Option(help="output folder")] = Path("reports/lr_find"),
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Learning-rate range test (Smith 2017; fastai's lr_find): train the model on batches of
    data/prepared's train split at rates growing from --start to --end; suggest a rate."""
    from nntune.stage.quiet import import_keras_quietly
    from nntune.tuning import lr_find

    loaded = load_checked(params)
    import_keras_quietly()
    for line in lr_find.run(loaded, start, end, steps, out):
        typer.echo(line)
