"""The one place that knows metric names, per task, and which direction is better.

Keras names a validation metric ``val_<name>``; the evaluate stage names a test metric
``test_<name>``. Everything else (the params loader, early stopping, the objective,
ranking) asks this module instead of spelling names itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Task = Literal["multiclass", "binary", "regression"]
Direction = Literal["min", "max"]

TASKS: tuple[Task, ...] = ("multiclass", "binary", "regression")

# Metrics Keras computes during fit (besides "loss"), by task. model.py compiles exactly these.
FIT_METRICS: dict[Task, tuple[str, ...]] = {
    "multiclass": ("accuracy",),
    "binary": ("accuracy", "auc"),
    "regression": ("rmse", "mae"),
}

# Metrics the evaluate stage computes on the held-out test split, by task.
TEST_METRICS: dict[Task, tuple[str, ...]] = {
    "multiclass": ("accuracy", "f1_macro", "log_loss"),
    "binary": ("accuracy", "f1_macro", "log_loss", "roc_auc"),
    "regression": ("rmse", "mae", "r2"),
}

# Names for which a larger value is better; every other known name is an error or a loss.
_HIGHER_IS_BETTER = frozenset({"accuracy", "auc", "roc_auc", "f1_macro", "r2"})


def fit_metric_names(task: Task) -> tuple[str, ...]:
    """Names Keras reports per epoch on the training split: ``loss`` plus the task's metrics."""
    return ("loss", *FIT_METRICS[task])


def validation_metric_names(task: Task) -> tuple[str, ...]:
    """Names usable as early-stopping monitor or objective: ``val_loss``, ``val_accuracy``..."""
    return tuple(f"val_{name}" for name in fit_metric_names(task))


def holdout_metric_names(task: Task) -> tuple[str, ...]:
    return tuple(f"test_{name}" for name in TEST_METRICS[task])


def infer_direction(metric: str) -> Direction:
    """``val_loss`` -> min, ``val_accuracy`` -> max (as Keras Tuner infers it)."""
    base = metric.removeprefix("val_").removeprefix("test_").removeprefix("train_")
    return "max" if base in _HIGHER_IS_BETTER else "min"


@dataclass(frozen=True)
class Objective:
    """What a tuning run optimises: a validation metric and whether lower or higher wins."""

    metric: str
    direction: Direction

    def better_than(self, a: float | None, b: float | None) -> bool:
        """True when ``a`` is strictly better than ``b``; a missing or non-finite value
        (a diverged trial) is never better than anything."""
        if a is None or not math.isfinite(a):
            return False
        if b is None or not math.isfinite(b):
            return True
        return a < b if self.direction == "min" else a > b
