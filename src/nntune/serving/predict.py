"""``nntune predict``: the tuned model's predictions for raw rows.

The rows are checked as the validate stage checks the training table (the columns the model
reads, and those --keep copies; a target column and the training table's other columns are
ignored, a column the schema does not know is ignored with a warning), encoded with the
training split's recorded preprocessing (``preprocessing.encode_rows``), and turned into
what the evaluate stage would call the prediction: the label of the most probable class
(``nntune.stage.evaluate``'s argmax, a sigmoid head as ``[1 - p, p]``), the probabilities,
or a regression value in the target's own units (prepare never scales the target). The model
and its preprocessing come from the workspace or, read through the DVC gateway, from one
experiment: nothing in the project is written.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml

from nntune.config.params import load_params, parse_params
from nntune.config.sections import DataParams
from nntune.errors import NntuneError
from nntune.serving.ensemble import (
    PredictingMember,
    ensemble_paths,
    member_count,
    member_sources,
    workspace_members,
    written_members,
)
from nntune.serving.preprocessing import (
    PreprocessingSpec,
    check_columns,
    encode_rows,
    names_text,
    problems_message,
    rows_text,
    text_in_numbers,
)
from nntune.stage import artifacts
from nntune.stage.outputs import class_probabilities, raw_output

MODEL_PATH = "models/model.keras"
META_PATH = "data/prepared/meta.json"
PARAMS_PATH = "params.yaml"
OUTPUT_SUFFIXES = (".csv", ".parquet")

if TYPE_CHECKING:
    from nntune.stage.schema import Failure


class PredictError(NntuneError):
    pass


@dataclass(frozen=True)
class TrainedModel:
    """A model file and what reading raw rows for it takes: its preprocessing, the params'
    data section (schema, delimiter, feature rules) and the schema file to check rows with."""

    label: str  # "the workspace" or "experiment NAME", for messages
    model_path: Path
    spec: PreprocessingSpec
    data: DataParams
    schema_path: Path
    schema_label: str  # the schema as the report names it
    # An ensemble experiment's members (``model_path`` and ``spec`` are the first's): each
    # encodes the rows with its own preprocessing and their outputs are averaged.
    members: tuple[PredictingMember, ...] = ()


def check_output_path(out: Path | None) -> None:
    """Refuse an output file type before any work is done."""
    if out is not None and out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise PredictError(f"{out}: write predictions to a .csv or .parquet file")


def workspace_model(root: Path, params_path: Path) -> TrainedModel:
    """The workspace's model (``dvc repro``'s) with the given params file."""
    data = load_params(params_path).data
    count = member_count(params_path.read_bytes())
    if count:  # an ensemble applied to the workspace (`dvc exp apply`)
        members = workspace_members(root, count, "the workspace")
        first = members[0]
        return TrainedModel(
            "the workspace",
            first.model_path,
            first.spec,
            _with_target(data, first.spec),
            root / data.schema,
            data.schema,
            members,
        )
    model_path, meta_path = root / MODEL_PATH, root / META_PATH
    for path in (meta_path, model_path):
        if not path.is_file():
            raise PredictError(
                f"{path}: not found; run `dvc repro` first (or pass --experiment NAME to use "
                "a finished experiment's model)"
            )
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    spec = PreprocessingSpec.from_meta(meta, str(meta_path), missing=data.missing)
    schema = root / data.schema
    return TrainedModel(
        "the workspace", model_path, spec, _with_target(data, spec), schema, data.schema
    )


@contextmanager
def experiment_model(root: Path, name: str, params_path: Path | None) -> Iterator[TrainedModel]:
    """Experiment ``name``'s model, preprocessing, params (``params_path`` overrides them)
    and schema, read from git and DVC's cache into a temporary folder outside the project,
    which is removed afterwards."""
    from nntune.experiments import read_outputs

    own = read_outputs(root, name, [PARAMS_PATH])[PARAMS_PATH]
    count = member_count(own)
    files = read_outputs(root, name, ensemble_paths(count) if count else [MODEL_PATH, META_PATH])
    if params_path is not None:
        data = load_params(params_path).data
    else:
        raw = yaml.safe_load(own.decode("utf-8"))
        data = parse_params(raw, source=f"{name}:{PARAMS_PATH}").data
    files.update(read_outputs(root, name, [data.schema]))
    with tempfile.TemporaryDirectory(prefix="nntune-predict-") as scratch:
        members: tuple[PredictingMember, ...] = ()
        if count:
            label = f"experiment {name}"
            members = written_members(member_sources(files, f"{name}:"), Path(scratch), label)
            model_path, spec = members[0].model_path, members[0].spec
        else:
            meta = json.loads(files[META_PATH].decode("utf-8"))
            spec = PreprocessingSpec.from_meta(meta, f"{name}:{META_PATH}", missing=data.missing)
            model_path = Path(scratch, "model.keras")  # Keras reads a .keras file by its name
            model_path.write_bytes(files[MODEL_PATH])
        schema_path = Path(scratch, Path(data.schema).name)
        schema_path.write_bytes(files[data.schema])
        yield TrainedModel(
            f"experiment {name}",
            model_path,
            spec,
            _with_target(data, spec),
            schema_path,
            f"{name}:{data.schema}",
            members,
        )


@contextmanager
def open_model(
    root: Path, experiment: str | None, params_path: Path | None
) -> Iterator[TrainedModel]:
    """The experiment's model when one is named, else the workspace's."""
    if experiment is None:
        yield workspace_model(root, params_path or Path(PARAMS_PATH))
        return
    with experiment_model(root, experiment, params_path) as model:
        yield model


def _with_target(data: DataParams, spec: PreprocessingSpec) -> DataParams:
    """The model's target is the one its meta.json names, whatever the params say now."""
    return dataclasses.replace(data, target=spec.target)


def read_rows(path: Path, model: TrainedModel, keep: Sequence[str]) -> pd.DataFrame:
    """The table to predict for, checked before anything is predicted: not empty, every
    column the model reads present, then its values (``validate_rows``); a problem raises,
    with one line per problem."""
    from nntune.stage.data import read_table

    if not path.is_file():
        raise PredictError(f"{path}: not found; give the CSV or Parquet table to predict for")
    if path.stat().st_size == 0:
        raise PredictError(
            f"{path}: the file is empty (0 bytes), nothing to predict; give a CSV or Parquet "
            "table with a header row and one row per prediction"
        )
    frame = read_table(path, model.data.delimiter)  # a header without rows: DataError
    absent = [c for c in keep if c not in frame.columns]
    if absent:
        raise PredictError(f"{path}: no column {', '.join(absent)} to keep (--keep)")
    validate_rows(frame, path, model, keep)
    return frame


def validate_rows(
    frame: pd.DataFrame, path: Path, model: TrainedModel, keep: Sequence[str]
) -> None:
    """Every column the model reads present (else one line naming the absent ones); then
    text in a numeric feature and ``validate_table`` (the validate stage's checks) on the
    columns the model reads and the ``--keep`` columns the schema knows, with the schema cut
    to the same columns (the target, the training table's unused columns such as an id, and
    unknown ones are not checked): all problems at once, one line each."""
    check_columns([str(c) for c in frame.columns], model.spec, str(path))
    text = text_in_numbers(frame, model.spec)
    # pandera's dtype and range checks on a column with text only repeat its problem
    failures = [f for f in schema_failures(frame, path, model, keep) if f.column not in text]
    problems = [*text.values(), *(_failure_line(f) for f in failures)]
    if problems:
        raise PredictError(
            problems_message(
                str(path),
                problems,
                f"fix those rows (checked against {model.schema_label}), nothing was predicted",
            )
        )


def schema_failures(
    frame: pd.DataFrame, path: Path, model: TrainedModel, keep: Sequence[str]
) -> list[Failure]:
    """The validate stage's failures for the columns the model reads and the ``--keep``
    columns the schema knows; the target's own checks ask for it and are left out."""
    from nntune.stage.schema import load_schema, validate_table

    schema = load_schema(model.schema_path)
    wanted = [*model.spec.columns, *(c for c in keep if c in schema.columns)]
    checked = [c for c in dict.fromkeys(wanted) if c != model.data.target]
    schema = schema.remove_columns([c for c in schema.columns if c not in checked])
    data = dataclasses.replace(
        model.data, source=str(path), features=tuple(model.spec.columns), exclude=()
    )
    report = validate_table(frame[checked], schema, data, model.schema_label, warnings=False)
    # Warnings (a batch's constant columns) say nothing about the model: not computed.
    # A category the schema does not allow is one training never saw: the encoder turns it
    # into zeros and counts it in a warning, as the evaluate stage's rows would be.
    categorical = {c.column for c in model.spec.categorical}
    return [
        f
        for f in report.failures
        if f.column != model.data.target
        and not (f.column in categorical and str(f.check).startswith("isin"))
    ]


def _failure_line(failure: Failure) -> str:
    """``column a fails in_range(0, 9) in 2 case(s): row 3: 12.0, row 9: -1.0``"""
    where = f"column {failure.column}" if failure.column else "the table"
    line = f"{where} fails {failure.check} in {failure.failure_count} case(s)"
    examples = []
    for example in failure.examples:
        row, value = example["row"], example["value"]
        if row is None:
            examples.append(repr(value))
        else:
            examples.append(f"row {row}" if value is None else f"row {row}: {value!r}")
    return f"{line}: {', '.join(examples)}" if examples else line


def unknown_columns_warning(path: Path, unknown: Sequence[str]) -> str:
    """The warning for the columns ``unknown_columns`` found."""
    if len(unknown) == 1:
        return (
            f"{path}: column {unknown[0]} is unknown to the model and its schema: ignored "
            f"(--keep {unknown[0]} copies it into the output)"
        )
    return (
        f"{path}: columns {names_text(unknown)} are unknown to the model and its schema: "
        "ignored (--keep NAME copies one into the output)"
    )


def unknown_columns(columns: Sequence[str], model: TrainedModel, keep: Sequence[str]) -> list[str]:
    """The table's columns that neither the model, ``--keep``, nor the schema (the training
    table's own columns, the target among them) know: ignored, with a warning."""
    from nntune.stage.schema import load_schema

    known = set(load_schema(model.schema_path).columns) | set(model.spec.columns) | set(keep)
    return [c for c in columns if c not in known and c != model.data.target]


def load_keras_model(path: Path) -> Any:
    """The ``.keras`` file, uncompiled (predicting needs no optimiser or loss), with
    TensorFlow's start-up noise kept off stderr as in the stages."""
    from nntune.stage.quiet import filter_tf_noise, import_keras_quietly

    import_keras_quietly()
    import keras

    with filter_tf_noise():  # its first op starts TensorFlow's runtime
        return keras.saving.load_model(path, compile=False)


def model_output(net: Any, features: np.ndarray, label: str) -> np.ndarray:
    """The model's raw output for the encoded rows, as the evaluate stage gets it."""
    output = raw_output(net, features)
    if not np.all(np.isfinite(output)):
        raise PredictError(
            f"{label}: the model outputs NaN or infinity (its training diverged); use "
            "another experiment (`nntune compare` marks the diverged ones)"
        )
    return output


def predictions(output: np.ndarray, spec: PreprocessingSpec, proba: bool) -> pd.DataFrame:
    """``prediction``: the original class label or the regression value; with ``proba``
    one ``proba_<label>`` column per class instead."""
    if spec.task == "regression":
        return pd.DataFrame({"prediction": output.reshape(-1)})
    probabilities = class_probabilities(output)
    classes = np.asarray(spec.classes, dtype=object)
    if proba:
        columns = [f"proba_{label}" for label in spec.classes]
        return pd.DataFrame(probabilities, columns=columns)
    return pd.DataFrame({"prediction": classes[probabilities.argmax(axis=1)]})


def with_kept(predicted: pd.DataFrame, rows: pd.DataFrame, keep: Sequence[str]) -> pd.DataFrame:
    """The ``--keep`` columns of the predicted rows first, then the predictions."""
    clash = [c for c in keep if c in predicted.columns]
    if clash:
        raise PredictError(
            f"--keep {', '.join(clash)}: the output has a column of that name; rename it"
        )
    kept = rows[list(keep)].reset_index(drop=True)
    return pd.concat([kept, predicted.reset_index(drop=True)], axis=1)


def write_predictions(frame: pd.DataFrame, out: Path | None) -> None:
    """CSV on stdout, or ``out`` (CSV or Parquet by its suffix) written atomically."""
    if out is None:
        sys.stdout.write(frame.to_csv(index=False, lineterminator="\n"))
    elif out.suffix.lower() == ".parquet":
        artifacts.write_parquet(out, frame)
    else:
        artifacts.write_csv(out, frame)


@dataclass(frozen=True)
class Prediction:
    frame: pd.DataFrame  # the --keep columns, then the predictions; one row per row kept
    warnings: list[str]  # unseen categories, rows dropped for missing values
    label: str  # whose model predicted


def _averaged(
    model: TrainedModel, rows: pd.DataFrame, kept: np.ndarray, first: np.ndarray, path: Path
) -> np.ndarray:
    """An ensemble's output: the members' probabilities (or values) averaged, each member
    fed the rows through its own preprocessing (``first`` is the first member's output)."""
    regression = model.spec.task == "regression"
    outputs = [first.reshape(-1) if regression else class_probabilities(first)]
    for member in model.members[1:]:
        encoded = encode_rows(rows, member.spec, str(path))
        if not np.array_equal(encoded.kept, kept):
            raise PredictError(
                f"{path}: the ensemble's members drop different rows with missing values "
                "(their data.missing differ); fill the gaps first"
            )
        output = model_output(load_keras_model(member.model_path), encoded.features, model.label)
        outputs.append(output.reshape(-1) if regression else class_probabilities(output))
    averaged: np.ndarray = np.mean(outputs, axis=0)
    return averaged


def predict_table(
    path: Path,
    root: Path,
    experiment: str | None,
    params_path: Path | None,
    proba: bool,
    keep: Sequence[str],
) -> Prediction:
    """Everything ``nntune predict`` does but writing: read and check the rows, encode
    them, run the model (Keras is loaded only once the rows passed), label the output."""
    with open_model(root, experiment, params_path) as model:
        if proba and model.spec.task == "regression":
            raise PredictError(f"--proba: {model.label}'s model is a regression; it has no classes")
        rows = read_rows(path, model, keep)
        encoded = encode_rows(rows, model.spec, str(path))
        warnings = [unseen.warning() for unseen in encoded.unseen]
        unknown = unknown_columns([str(c) for c in rows.columns], model, keep)
        if unknown:
            warnings.insert(0, unknown_columns_warning(path, unknown))
        if encoded.dropped:
            warnings.append(
                f"{path}: {len(encoded.dropped)} row(s) with missing values dropped, not "
                f"predicted (data.missing: drop): data row(s) {rows_text(encoded.dropped)}"
            )
        output = model_output(load_keras_model(model.model_path), encoded.features, model.label)
        if model.members:
            output = _averaged(model, rows, encoded.kept, output, path)
        predicted = predictions(output, model.spec, proba)
    frame = with_kept(predicted, rows.loc[encoded.kept], keep)
    return Prediction(frame, warnings, model.label)
