"""Test-set metrics and the rows behind the plots. The evaluate stage is the only code
that ever looks at the test split."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from nntune.config.metrics import holdout_metric_names
from nntune.stage.data import Prepared
from nntune.stage.outputs import class_probabilities


def evaluate_predictions(
    prepared: Prepared, y_true: np.ndarray, output: np.ndarray
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Metrics named ``test_<name>`` and a frame of ``actual`` vs ``predicted`` (original
    labels for classification) from the model's raw ``output`` on the test split.

    A diverged model outputs NaN: its metrics are ``None`` and its frame is empty, so the
    experiment is recorded as failed-to-train rather than crashing the pipeline."""
    names = holdout_metric_names(prepared.task)
    if not np.all(np.isfinite(output)):
        return dict.fromkeys(names), pd.DataFrame({"actual": [], "predicted": []})
    if prepared.task == "regression":
        predicted = output.reshape(-1)
        values = {
            "test_rmse": float(np.sqrt(skm.mean_squared_error(y_true, predicted))),
            "test_mae": float(skm.mean_absolute_error(y_true, predicted)),
            "test_r2": float(skm.r2_score(y_true, predicted)),
        }
        return values, pd.DataFrame({"actual": y_true, "predicted": predicted})

    proba = class_probabilities(output)
    codes = proba.argmax(axis=1)
    labels = list(range(proba.shape[1]))
    values = {
        "test_accuracy": float(skm.accuracy_score(y_true, codes)),
        "test_f1_macro": float(skm.f1_score(y_true, codes, average="macro", labels=labels)),
        "test_log_loss": float(skm.log_loss(y_true, proba, labels=labels)),
    }
    if prepared.task == "binary":
        values["test_roc_auc"] = float(skm.roc_auc_score(y_true, proba[:, 1]))
    classes = np.asarray(prepared.classes, dtype=object)
    frame = pd.DataFrame({"actual": classes[y_true], "predicted": classes[codes]})
    return {name: values[name] for name in names}, frame
