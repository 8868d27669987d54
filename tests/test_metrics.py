from __future__ import annotations

import math

import pytest

from nntune.config.metrics import (
    TASKS,
    Objective,
    holdout_metric_names,
    infer_direction,
    validation_metric_names,
)


@pytest.mark.parametrize(
    ("name", "direction"),
    [
        ("val_loss", "min"),
        ("val_accuracy", "max"),
        ("val_auc", "max"),
        ("val_rmse", "min"),
        ("test_r2", "max"),
        ("test_log_loss", "min"),
    ],
)
def test_direction_is_inferred_from_the_name(name: str, direction: str) -> None:
    assert infer_direction(name) == direction


def test_every_task_has_val_loss_and_distinct_test_names() -> None:
    for task in TASKS:
        assert validation_metric_names(task)[0] == "val_loss"
        names = holdout_metric_names(task)
        assert len(set(names)) == len(names)
        assert all(n.startswith("test_") for n in names)


def test_objective_better_than() -> None:
    low = Objective("val_loss", "min")
    high = Objective("val_accuracy", "max")
    assert low.better_than(0.1, 0.2) and not low.better_than(0.2, 0.1)
    assert high.better_than(0.9, 0.8) and not high.better_than(0.8, 0.9)
    assert not low.better_than(0.1, 0.1)
    # A diverged trial (NaN or missing) never wins, and anything beats it.
    assert not low.better_than(math.nan, 0.5)
    assert not high.better_than(None, 0.5)
    assert low.better_than(0.5, math.inf)
    assert high.better_than(0.1, None)
