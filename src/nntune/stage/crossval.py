"""Cross-validation (``data.cv_folds``): one fold's training, as the ``fold`` stage runs it
(the folds' summary, as ``nntune compare`` and ``nntune search`` read it, is
``nntune.experiments.folds``).

Each fold is its own DVC stage (``fold@0``, ``fold@1``...: dvc.yaml's ``foreach`` over the
list), so a finished fold stays cached when a run is killed, and a trial is still one DVC
experiment. A fold trains the params' model on the other folds of the train + validation
rows, with early stopping on its own fold, and records that fold's validation metrics in
``metrics/folds/N.json`` under names of its own (``fold_N_val_loss``: DVC's experiment
table keys metrics by name, so equal names in several files would collide). The test split
is never read. The fold also writes its out-of-fold predictions (``reports/folds/N.parquet``:
each validation row's index in the table, its target and the model's raw output), from
which ``nntune ensemble`` scores an average of experiments on rows no member trained on.

The final model stays the train stage's: trained on the train split, early-stopped on the
validation split, as without cross-validation. The folds only estimate how good the params
are, more steadily than one validation split. Keeping the k fold models as an ensemble
instead would make every prediction k models' work and every export k models, for a gain
that `nntune ensemble` (over the top experiments) is meant to give where a user wants it.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from nntune.config.metrics import validation_metric_names
from nntune.config.sections import Params
from nntune.stage.data import Prepared
from nntune.stage.model import model_for
from nntune.stage.outputs import raw_output
from nntune.stage.preprocess import prepare
from nntune.stage.training import fit, seed_everything


@dataclass(frozen=True)
class FoldResult:
    record: dict[str, Any]  # metrics/folds/N.json
    predictions: pd.DataFrame  # reports/folds/N.parquet (out_of_fold)


def run_fold(params: Params, frame: pd.DataFrame, fold: int) -> FoldResult:
    """Train fold ``fold``: its record (the validation metrics of the kept model as
    ``fold_{fold}_{name}``, with its epochs) and its out-of-fold predictions."""
    data = prepare(frame, params.data, fold=fold)
    seed_everything(params.runtime)
    net = model_for(params, data)
    with tempfile.TemporaryDirectory(prefix="nntune-fold-") as live:  # curves not kept
        result = fit(net, data, params.train, live, seed=params.runtime.seed)
    # Every key names its fold: DVC's experiment table merges all metrics files by key.
    record: dict[str, Any] = {f"fold_{fold}_of": len(params.data.cv_folds)}
    for name in validation_metric_names(data.task):
        value = result.metrics.get(name)
        finite = isinstance(value, float) and math.isfinite(value)
        record[f"fold_{fold}_{name}"] = value if finite and not result.metrics["diverged"] else None
    record[f"fold_{fold}_best_epoch"] = result.metrics["best_epoch"]
    record[f"fold_{fold}_train_rows"] = len(data.splits["train"])
    record[f"fold_{fold}_val_rows"] = len(data.splits["val"])
    return FoldResult(record, out_of_fold(data, raw_output(net, data.x("val"))))


def out_of_fold(data: Prepared, output: np.ndarray) -> pd.DataFrame:
    """The fold's validation rows as ``row`` (the row's index in the table), ``target``
    (the class code, or the value in the target's units) and ``out_0``, ``out_1``... (the
    model's raw output: class probabilities, a sigmoid's p, or the de-standardised value)."""
    _, y = data.xy("val")
    output = np.asarray(output, dtype="float32").reshape(len(y), -1)
    columns = {f"{OUT_PREFIX}{j}": output[:, j] for j in range(output.shape[1])}
    return pd.DataFrame({"row": np.asarray(data.val_rows, dtype="int64"), "target": y, **columns})


OUT_PREFIX = "out_"
