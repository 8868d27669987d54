"""Out-of-fold predictions (``data.cv_folds``): what a fold records for its held-out rows,
and the choice between the best trial and the average of the best K made on them
(``nntune.tuning.oof``), for ``nntune ensemble --if-better`` and the end of a CV search."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import make_table, repo_params_dict, shrink
from sklearn.metrics import log_loss

from nntune.config.params import parse_params
from nntune.tuning.oof import OofError, averaged, choose, oof_score, pooled


def _frame(rows: list[int], target: list[Any], output: np.ndarray) -> pd.DataFrame:
    output = np.asarray(output, dtype="float32").reshape(len(rows), -1)
    columns = {f"out_{j}": output[:, j] for j in range(output.shape[1])}
    return pd.DataFrame({"row": rows, "target": target, **columns})


def test_each_fold_predicts_its_own_held_out_rows_and_together_they_cover_train_and_val() -> None:
    from nntune.stage.crossval import run_fold
    from nntune.stage.preprocess import prepare

    raw = shrink(repo_params_dict())
    raw["data"]["cv_folds"] = [0, 1, 2]
    raw["train"]["max_epochs"] = 2
    params = parse_params(raw, source="test")
    table = make_table(n_rows=150)
    folds = [run_fold(params, table, f) for f in (0, 1, 2)]
    test_rows = set(prepare(table, params.data).test_rows)
    rows = [set(f.predictions["row"]) for f in folds]
    assert all(len(f.predictions) == f.record[f"fold_{i}_val_rows"] for i, f in enumerate(folds))
    assert not (rows[0] & rows[1]) and not (rows[0] & rows[2]) and not (rows[1] & rows[2])
    assert set().union(*rows) == set(range(len(table))) - test_rows  # never a test row
    # The target is the row's own label, and the output a probability per class.
    classes = sorted(table["target"].unique())
    first = folds[0].predictions
    assert list(first["target"]) == [classes.index(table["target"][r]) for r in first["row"]]
    out = first[[f"out_{j}" for j in range(len(classes))]].to_numpy()
    assert np.allclose(out.sum(axis=1), 1.0, atol=1e-5)
    expected = log_loss(first["target"], out, labels=[0, 1, 2])
    assert oof_score(first, "multiclass") == pytest.approx(expected, rel=1e-5)


def test_scores_are_pooled_log_loss_and_rmse_in_the_targets_units() -> None:
    proba = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.5, 0.25, 0.25]])
    frame = _frame([4, 1, 9, 2], [0, 1, 2, 1], proba)
    assert oof_score(frame, "multiclass") == pytest.approx(
        log_loss([0, 1, 2, 1], proba, labels=[0, 1, 2]), rel=1e-6
    )
    sigmoid = _frame([0, 1, 2], [1, 0, 1], np.array([0.9, 0.2, 0.6]))  # p of class 1
    expected = log_loss([1, 0, 1], [0.9, 0.2, 0.6])
    assert oof_score(sigmoid, "binary") == pytest.approx(expected, rel=1e-6)
    values = _frame([0, 1, 2], [100.0, 200.0, 300.0], np.array([110.0, 190.0, 330.0]))
    assert oof_score(values, "regression") == pytest.approx(np.sqrt((100 + 100 + 900) / 3))


def test_folds_are_pooled_in_row_order_and_an_overlap_is_refused() -> None:
    a = _frame([5, 1], [0, 1], np.array([[0.9, 0.1], [0.2, 0.8]]))
    b = _frame([3, 0], [1, 0], np.array([[0.4, 0.6], [0.7, 0.3]]))
    assert list(pooled([a, b])["row"]) == [0, 1, 3, 5]
    with pytest.raises(OofError, match="hold a row twice"):
        pooled([a, a])


def test_the_average_is_row_by_row_and_needs_the_same_rows() -> None:
    a = _frame([0, 1], [0, 1], np.array([[0.9, 0.1], [0.6, 0.4]]))
    b = _frame([0, 1], [0, 1], np.array([[0.5, 0.5], [0.2, 0.8]]))
    mean = averaged([a, b], "multiclass")
    assert np.allclose(mean[["out_0", "out_1"]].to_numpy(), [[0.7, 0.3], [0.4, 0.6]])
    other_rows = _frame([0, 2], [0, 1], np.array([[0.9, 0.1], [0.6, 0.4]]))
    with pytest.raises(OofError, match="hold other rows"):
        averaged([a, other_rows], "multiclass")
    values = averaged(
        [_frame([0], [1.0], np.array([2.0])), _frame([0], [1.0], np.array([4.0]))], "regression"
    )
    assert values["out_0"].tolist() == [3.0]


def test_the_average_wins_where_the_errors_differ_and_loses_to_a_much_better_best() -> None:
    rng = np.random.default_rng(0)
    truth = rng.normal(size=400)
    rows = list(range(400))

    def model(noise: float, seed: int) -> list[pd.DataFrame]:  # two folds of 200 rows
        predicted = truth + np.random.default_rng(seed).normal(scale=noise, size=400)
        return [
            _frame(rows[:200], list(truth[:200]), predicted[:200]),
            _frame(rows[200:], list(truth[200:]), predicted[200:]),
        ]

    # Three models as good as each other, with independent errors: averaging cuts the RMSE
    # by about sqrt(3).
    choice = choose({"a": model(1.0, 1), "b": model(1.0, 2), "c": model(1.0, 3)}, "regression")
    assert choice.ensemble_wins and choice.members == ["a", "b", "c"] and choice.best == "a"
    assert choice.ensemble_score < 0.7 * choice.best_score
    assert "better" in choice.describe() and "RMSE" in choice.describe()
    # A best model ten times better than the others: their average only adds their errors.
    choice = choose({"a": model(0.1, 1), "b": model(1.0, 2), "c": model(1.0, 3)}, "regression")
    assert not choice.ensemble_wins
    assert "not better" in choice.describe()
    with pytest.raises(OofError, match="at least 2"):
        choose({"a": model(1.0, 1)}, "regression")
