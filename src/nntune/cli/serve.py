"""Commands that use the tuned model: ``predict`` (raw rows in, predictions out) and
``export`` (a self-contained model of the raw columns, with its model card)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from nntune.cli.app import app


@app.command()
def predict(
    data: Annotated[
        Path,
        typer.Argument(
            help="CSV or Parquet table of raw rows; the target and other columns the model "
            "does not read are ignored (one the schema does not know, with a warning)"
        ),
    ],
    experiment: Annotated[
        str | None,
        typer.Option(
            "--experiment",
            "-e",
            help="use this finished experiment's model, read from git and DVC's cache "
            "(default: the workspace's, from `dvc repro`)",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="write a .csv or .parquet file (default: CSV on stdout)"),
    ] = None,
    proba: Annotated[
        bool, typer.Option("--proba", help="one probability column per class, proba_<label>")
    ] = False,
    keep: Annotated[
        list[str] | None,
        typer.Option(
            "--keep", "-k", help="copy this column (an id) into the output, first; repeat"
        ),
    ] = None,
    params: Annotated[
        Path | None,
        typer.Option(
            "--params",
            "-P",
            help="params file for data.schema and data.missing (default: params.yaml; with "
            "--experiment, the experiment's own)",
        ),
    ] = None,
) -> None:
    """Predict for raw rows with the tuned model: the columns it reads are checked against
    the schema (as `nntune validate` checks them), preprocessed exactly as the training split
    was, and labelled with the original class names (or the target's units). Bad input
    (a missing column, text in a numeric one, an empty file) exits 2, one line per problem,
    and writes no file."""
    from nntune.serving.predict import check_output_path, predict_table, write_predictions

    check_output_path(out)
    kept = list(dict.fromkeys(keep or []))
    done = predict_table(data, Path(), experiment, params, proba, kept)
    for warning in done.warnings:
        typer.echo(f"warning: {warning}", err=True)
    write_predictions(done.frame, out)
    if out is not None:
        typer.echo(f"wrote {out}: {len(done.frame)} prediction(s) by {done.label}'s model")


# nntune.serving.export.ExportFormat, spelled here so that `nntune --help` imports no
# Keras; mypy checks that the two agree where the choice is passed on.
FormatOption = Annotated[
    Literal["keras", "savedmodel"],
    typer.Option(
        "--format",
        "-f",
        help="keras: one .keras file (keras.saving.load_model); savedmodel: a TensorFlow "
        "SavedModel with a serving_default signature (tf.saved_model.load, TF Serving)",
        show_default=True,
    ),
]


@app.command()
def export(
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="folder to write (replaced whole if it is an earlier export)"
        ),
    ],
    experiment: Annotated[
        str | None,
        typer.Option(
            "--experiment",
            "-e",
            help="export this finished experiment's model, read from git and DVC's cache "
            "(default: the workspace's, from `dvc repro`)",
        ),
    ] = None,
    fmt: FormatOption = "keras",
    params: Annotated[
        Path | None,
        typer.Option(
            "--params",
            "-P",
            help="params file the card records (default: params.yaml; with --experiment, the "
            "experiment's own)",
        ),
    ] = None,
) -> None:
    """Export the tuned model with its fitted preprocessing built in: it takes the raw
    columns by name (numbers as float32, NaN if missing; categories as strings, "" if
    missing) and returns class probabilities or the predicted value. A model card
    (model_card.json, MODEL_CARD.md) goes beside it. Nothing in the project is written."""
    import os

    from nntune.stage.quiet import filter_tf_noise, import_keras_quietly

    # The export is a TensorFlow model (string lookups, SavedModel) whatever backend trained
    # it: a .keras file is the same on both.
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import_keras_quietly()  # before nntune.serving.export imports Keras
    from nntune.serving.export import export_model
    from nntune.serving.sources import experiment_source, workspace_source

    with filter_tf_noise():  # TensorFlow's first ops and its SavedModel writer log on fd 2
        if experiment is None:
            source = workspace_source(Path(), params)
        else:
            source = experiment_source(Path(), experiment, params)
        done = export_model(source, out, fmt)
    size = done.size_bytes / 1e6
    typer.echo(f"wrote {done.out} ({done.format}, {size:.1f} MB) from {source.label}:")
    for name in done.files:
        typer.echo(f"  {name}")
