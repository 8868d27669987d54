"""``nntune export``: the tuned model with the fitted preprocessing built in, as a Keras
file or a TensorFlow SavedModel that takes the raw columns, plus its model card.

The exported model has one named input per raw column: float32 for a numeric column (NaN
where a value is missing), a string for a categorical one ("" where it is missing). Its
first layers do what the prepare stage fitted with scikit-learn, with Keras' own layers and
operations only, so that the file loads with Keras (or the SavedModel with TensorFlow)
where nntune is not installed:

- numbers: NaN -> the training median (``data.missing: impute``), then (``data.scaling:
  quantile``) the map through the fitted quantiles to a standard normal, then ``(x - mean)
  / scale``, with ``keras.ops`` in float64 as scikit-learn computes it, so the scaled
  features equal the prepared ones to float32 rounding;
- categories: ``keras.layers.StringLookup`` one-hot, then a fixed 0/1 matrix (a frozen
  ``Dense`` without bias) that sends the out-of-vocabulary slot to the group of infrequent
  categories where there is one (else an unseen category is all zeros) and "" to the most
  frequent category (``data.missing: impute``);
- then the trained model, and for a binary task the sigmoid ``p`` becomes ``[1 - p, p]``.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import keras
import numpy as np

from nntune.config.sections import MISSING_POLICIES, MissingPolicy
from nntune.serving.card import ExportSource, card_markdown, model_card
from nntune.serving.ensemble import averaged_model, member_specs
from nntune.serving.predict import META_PATH
from nntune.serving.preprocessing import (
    QUANTILE_BOUND,
    CategoricalColumn,
    NumericColumn,
    PreprocessingSpec,
)
from nntune.serving.sources import (
    ExportError,
)
from nntune.stage import artifacts

ExportFormat = Literal["keras", "savedmodel"]
KERAS_FILE = "model.keras"
CARD_JSON = "model_card.json"
CARD_MARKDOWN = "MODEL_CARD.md"
MISSING_CATEGORY = ""  # how a missing categorical value is spelled in the model's input


@dataclass(frozen=True)
class Exported:
    out: Path
    format: ExportFormat
    files: list[str]  # relative to ``out``
    size_bytes: int  # the whole folder's


def export_model(source: ExportSource, out: str | Path, fmt: ExportFormat) -> Exported:
    """Build the raw-column model from ``source`` and write it, with its model card, to the
    folder ``out`` as a whole (atomically). ``out`` may be a new folder or an earlier
    export; any other folder with files in it is refused rather than replaced."""
    if keras.backend.backend() != "tensorflow":
        raise ExportError(
            f"the export is a TensorFlow model (string lookups, SavedModel), but Keras runs "
            f"on {keras.backend.backend()} in this process: run nntune export (its CLI "
            "always uses TensorFlow), or unset KERAS_BACKEND"
        )
    out = Path(out)
    _check_out(out)
    if source.members:  # an ensemble experiment: its members averaged
        specs = member_specs(source.members, source.label)
        spec, names = specs[0], input_names(specs[0])
        raw = averaged_model(source.members, specs, names, raw_input_model)
    else:
        spec = PreprocessingSpec.from_meta(
            source.meta, f"{source.label}: {META_PATH}", _missing_policy(source.params)
        )
        with tempfile.TemporaryDirectory(prefix="nntune-export-") as scratch:
            model_path = Path(scratch) / KERAS_FILE
            model_path.write_bytes(source.model)
            net = keras.saving.load_model(model_path, compile=False)
        names = input_names(spec)
        raw = raw_input_model(net, spec, names)
    card = model_card(source, spec, names, fmt, output_name(spec))
    with artifacts.atomic_dir(out) as tmp:
        if fmt == "keras":
            raw.save(tmp / KERAS_FILE)
        else:
            write_saved_model(raw, spec, names, tmp)
        artifacts.write_json(tmp / CARD_JSON, card)
        artifacts.write_text(tmp / CARD_MARKDOWN, card_markdown(card))
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return Exported(out, fmt, files, size)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out}: is a file; give a folder for the export")
    if out.is_dir() and any(out.iterdir()) and not (out / CARD_JSON).is_file():
        raise ExportError(
            f"--out {out}: the folder has files and is not an earlier export (no {CARD_JSON}); "
            "an export replaces its folder as a whole, so give a new or empty folder"
        )


def _missing_policy(params: Mapping[str, Any]) -> MissingPolicy | None:
    """The run's ``data.missing``: what a meta.json of an older nntune does not record."""
    value = (params.get("data") or {}).get("missing", "error")
    return next((policy for policy in MISSING_POLICIES if policy == value), None)


def input_names(spec: PreprocessingSpec) -> dict[str, str]:
    """Each raw column's input name in the model and the SavedModel's signature: the column
    name where TensorFlow accepts it (letters, digits, ``_ . -``), else a cleaned one."""
    names: dict[str, str] = {}
    for column in spec.columns:
        name = re.sub(r"[^A-Za-z0-9_.\-]", "_", column)
        if not re.match(r"[A-Za-z0-9.]", name):
            name = f"x{name}"
        base, n = name, 2
        while name in names.values():
            name, n = f"{base}_{n}", n + 1
        names[column] = name
    return names


def output_name(spec: PreprocessingSpec) -> str:
    return "value" if spec.task == "regression" else "probabilities"


def raw_input_model(
    net: keras.Model, spec: PreprocessingSpec, names: dict[str, str], name: str = "nntune_export"
) -> keras.Model:
    """``net`` behind the fitted preprocessing: a model whose inputs are the raw columns (a
    dict keyed by their ``input_names``; each input a batch of scalars) and whose output is
    the class probabilities (``(n, classes)``) or the predicted value (``(n,)``)."""
    inputs: dict[str, keras.KerasTensor] = {}
    for numeric in spec.numeric:
        inputs[numeric.column] = keras.Input((), dtype="float32", name=names[numeric.column])
    for categorical in spec.categorical:
        column = categorical.column
        inputs[column] = keras.Input((), dtype="string", name=names[column])
    blocks = []
    if spec.numeric:
        blocks.append(numeric_block([inputs[c.column] for c in spec.numeric], spec.numeric))
    for i, categorical in enumerate(spec.categorical, start=1):
        blocks.append(one_hot_block(inputs[categorical.column], categorical, i))
    if not blocks:
        raise ExportError("the preprocessing record has no input columns; run `dvc repro`")
    features = blocks[0] if len(blocks) == 1 else keras.layers.Concatenate(name="features")(blocks)
    named = {names[column]: tensor for column, tensor in inputs.items()}
    return keras.Model(named, task_output(net(features), spec), name=name)


def numeric_block(
    inputs: list[keras.KerasTensor], columns: tuple[NumericColumn, ...]
) -> keras.KerasTensor:
    """``(n, len(columns))`` float32: the median fill and ``(x - mean) / scale``, computed
    in float64 like scikit-learn's imputer and StandardScaler, with float64 NumPy constants
    (Keras saves those with their dtype). Not ``keras.layers.Normalization``: its ``mean``
    and ``variance`` pass through a Python list in its config and come back float32, which
    moves a column like a year (mean 2002, scale 1.1) by about 3e-5 after scaling."""
    x = keras.ops.cast(keras.ops.stack(inputs, axis=1), "float64")
    medians = [c.median for c in columns]
    if all(m is not None for m in medians):  # data.missing: impute
        x = keras.ops.where(keras.ops.isnan(x), np.array(medians, dtype="float64"), x)
    if all(c.quantiles for c in columns):  # data.scaling: quantile
        x = keras.ops.stack(
            [quantile_normal_op(x[:, i], np.array(c.quantiles)) for i, c in enumerate(columns)],
            axis=1,
        )
    mean = np.array([c.mean for c in columns], dtype="float64")
    scale = np.array([c.scale for c in columns], dtype="float64")  # never 0: 1 if constant
    return keras.ops.cast(keras.ops.divide(keras.ops.subtract(x, mean), scale), "float32")


def quantile_normal_op(x: keras.KerasTensor, quantiles: np.ndarray) -> keras.KerasTensor:
    """``nntune.serving.preprocessing.quantile_normal`` (scikit-learn's quantile scaling to
    a normal) with ``keras.ops`` on a float64 column: NaN stays NaN."""
    references = np.linspace(0.0, 1.0, len(quantiles))
    level = 0.5 * (
        _interp(x, quantiles, references)
        - _interp(-x, -quantiles[::-1].copy(), -references[::-1].copy())
    )
    level = keras.ops.where(x + QUANTILE_BOUND > quantiles[-1], 1.0, level)
    level = keras.ops.where(x - QUANTILE_BOUND < quantiles[0], 0.0, level)
    # the normal's inverse CDF (a NumPy scalar on the left would try to convert the tensor)
    normal = keras.ops.multiply(keras.ops.erfinv(2.0 * level - 1.0), float(np.sqrt(2.0)))
    bound = float(np.sqrt(2.0) * _erfinv_np(2.0 * (QUANTILE_BOUND - np.spacing(1)) - 1.0))
    clipped = keras.ops.clip(normal, bound, -bound)
    return keras.ops.where(keras.ops.isnan(x), np.nan, clipped)


def _erfinv_np(value: float) -> float:
    from scipy.special import erfinv

    return float(erfinv(value))


def _interp(x: keras.KerasTensor, xp: np.ndarray, fp: np.ndarray) -> keras.KerasTensor:
    """``np.interp(x, xp, fp)`` (``xp`` increasing, ties allowed) in ``keras.ops``."""
    last = len(xp) - 1
    if last == 0:
        return keras.ops.full_like(x, fp[0])
    xp_const = keras.ops.convert_to_tensor(xp, dtype="float64")
    found = keras.ops.searchsorted(xp_const, keras.ops.where(keras.ops.isnan(x), 0.0, x), "right")
    index = keras.ops.clip(found, 1, last)
    x0, x1 = keras.ops.take(xp, index - 1), keras.ops.take(xp, index)
    y0, y1 = keras.ops.take(fp, index - 1), keras.ops.take(fp, index)
    span = keras.ops.subtract(x1, x0)
    step = keras.ops.where(span > 0, (x - x0) / keras.ops.where(span > 0, span, 1.0), 0.0)
    y = y0 + step * (y1 - y0)
    y = keras.ops.where(x <= xp[0], fp[0], y)
    return keras.ops.where(x >= xp[-1], fp[-1], y)


def one_hot_block(
    values: keras.KerasTensor, column: CategoricalColumn, number: int
) -> keras.KerasTensor:
    """``(n, column.width)`` zeros and ones in the recorded category order. StringLookup
    puts its out-of-vocabulary slot first; the frozen 0/1 matrix after it sends that slot to
    the infrequent group's column (the last) or drops it where there is no group, and adds
    the "" slot (missing) onto the most frequent category's column. The grouped rare
    categories are not in the vocabulary: they are out of it, as an unseen one."""
    vocabulary = [str(c) for c in column.categories]
    if MISSING_CATEGORY in vocabulary:
        raise ExportError(
            f"column {column.column}: the empty string is one of its categories, and the "
            "exported model spells a missing value that way; give that category a name"
        )
    imputed = column.most_frequent is not None
    lookup_vocabulary = [*vocabulary, MISSING_CATEGORY] if imputed else vocabulary
    oov = "[UNK]"
    while oov in lookup_vocabulary:
        oov += "_"
    lookup = keras.layers.StringLookup(
        vocabulary=lookup_vocabulary,
        num_oov_indices=1,
        oov_token=oov,
        output_mode="one_hot",
        name=f"lookup_{number}",
    )
    select = np.zeros((1 + len(lookup_vocabulary), column.width), dtype="float32")
    select[1 + np.arange(len(vocabulary)), np.arange(len(vocabulary))] = 1.0
    if column.infrequent:
        select[0, -1] = 1.0  # out of vocabulary: the group of infrequent categories
    if imputed:
        if str(column.most_frequent) not in vocabulary:
            raise ExportError(
                f"column {column.column}: the imputed value {column.most_frequent!r} is not "
                "among its categories; run `dvc repro prepare`"
            )
        select[-1, vocabulary.index(str(column.most_frequent))] = 1.0
    one_hot = keras.layers.Dense(
        column.width, use_bias=False, trainable=False, name=f"one_hot_{number}"
    )
    block = one_hot(lookup(values))
    one_hot.set_weights([select])
    return block


def task_output(output: keras.KerasTensor, spec: PreprocessingSpec) -> keras.KerasTensor:
    """Multiclass: the softmax as it is. Binary: ``[1 - p, p]`` from the sigmoid ``p``,
    the evaluate stage's reading (``p`` is the probability of ``classes[1]``). Regression:
    the value, one per row."""
    if spec.task == "regression":
        return keras.ops.squeeze(output, axis=1)
    if spec.task == "binary":
        return keras.ops.concatenate([keras.ops.subtract(1.0, output), output], axis=1)
    return output


def write_saved_model(
    model: keras.Model, spec: PreprocessingSpec, names: dict[str, str], folder: Path
) -> None:
    """A SavedModel in ``folder`` whose ``serving_default`` signature takes one named
    tensor per raw column (shape ``(None,)``) and returns ``{output_name: ...}``."""
    import tensorflow as tf

    dtypes = {c.column: tf.float32 for c in spec.numeric}
    dtypes.update({c.column: tf.string for c in spec.categorical})
    signature = {
        names[column]: tf.TensorSpec(shape=(None,), dtype=dtypes[column], name=names[column])
        for column in spec.columns
    }
    key = output_name(spec)

    def serve(inputs: dict[str, Any]) -> dict[str, Any]:
        return {key: model(inputs, training=False)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serve", fn=serve, input_signature=[signature])
    archive.write_out(str(folder), verbose=False)
