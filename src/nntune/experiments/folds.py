"""The folds of a cross-validated experiment (``data.cv_folds``), as nntune ranks it: each
fold stage records ``fold_N_val_X`` (``nntune.stage.crossval``); here they become the mean
and standard deviation that ``compare``, ``best`` and ``search`` read under the objective's
own name. No Keras here: the CLI reads experiments with it."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping
from typing import Any

FOLD_KEY = re.compile(r"^fold_(\d+)_(val_\w+)$")
FOLD_OF = re.compile(r"^fold_(\d+)_of$")


def with_folds(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """An experiment's metrics as nntune ranks them: where folds were recorded, each
    validation metric ``val_X`` becomes the folds' mean, with ``val_X_sd`` their standard
    deviation (n - 1), ``split_val_X`` the single split's value (the final model's) and
    ``cv_folds`` the count. A fold without a finite value (diverged) makes the mean None.
    Without folds, the metrics are returned unchanged."""
    # A fold is the experiment's own where it recorded ``fold_N_of``: DVC's experiment table
    # gives every experiment every column, so one without folds (or with fewer) shows empty
    # fold columns next to a cross-validated one, which must not read as diverged folds.
    own = {
        int(match.group(1))
        for key, value in metrics.items()
        if (match := FOLD_OF.match(str(key))) and _finite(value)
    }
    folds: dict[str, dict[int, Any]] = {}
    for key, value in metrics.items():
        match = FOLD_KEY.match(str(key))
        if match and int(match.group(1)) in own:
            folds.setdefault(match.group(2), {})[int(match.group(1))] = value
    if not folds:
        return dict(metrics)
    out = dict(metrics)
    for name, by_fold in folds.items():
        values = [by_fold[k] for k in sorted(by_fold)]
        numbers = [float(v) for v in values if _finite(v)]
        out[f"split_{name}"] = metrics.get(name)
        out[name] = statistics.fmean(numbers) if len(numbers) == len(values) else None
        out[f"{name}_sd"] = statistics.stdev(numbers) if len(numbers) == len(values) > 1 else None
    out["cv_folds"] = max(len(v) for v in folds.values())
    return out


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
