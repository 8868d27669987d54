from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import make_table

from nntune.config.sections import Params
from nntune.stage.evaluate import evaluate_predictions
from nntune.stage.preprocess import prepare


def test_multiclass_metrics_and_original_labels(tiny_params: Params) -> None:
    data = prepare(make_table(labels=["cat", "dog", "emu"]), tiny_params.data)
    y = np.array([0, 1, 2, 2])
    perfect = np.eye(3)[y].astype("float32")
    metrics, frame = evaluate_predictions(data, y, perfect)
    assert metrics["test_accuracy"] == 1.0
    assert metrics["test_f1_macro"] == 1.0
    assert metrics["test_log_loss"] == pytest.approx(0.0, abs=1e-6)
    assert list(frame["actual"]) == ["cat", "dog", "emu", "emu"]
    wrong = np.eye(3)[[1, 1, 2, 0]].astype("float32") * 0.8 + 0.2 / 3
    metrics, frame = evaluate_predictions(data, y, wrong)
    assert metrics["test_accuracy"] == 0.5
    assert list(frame["predicted"]) == ["dog", "dog", "emu", "cat"]


def test_binary_metrics(tiny_params: Params) -> None:
    binary = dataclasses.replace(tiny_params.data, task="binary")
    data = prepare(make_table(n_classes=2), binary)
    y = np.array([0, 1, 1, 0])
    metrics, _ = evaluate_predictions(data, y, np.array([[0.1], [0.8], [0.4], [0.3]]))
    assert list(metrics) == ["test_accuracy", "test_f1_macro", "test_log_loss", "test_roc_auc"]
    assert metrics["test_accuracy"] == 0.75
    assert metrics["test_roc_auc"] == 1.0


def test_regression_metrics(tiny_params: Params) -> None:
    table = make_table()
    table["target"] = table["a"]
    data = prepare(table, dataclasses.replace(tiny_params.data, task="regression"))
    y = np.array([1.0, 2.0, 3.0, 4.0])
    metrics, frame = evaluate_predictions(data, y, np.array([[1.0], [2.0], [3.0], [6.0]]))
    assert metrics["test_rmse"] == pytest.approx(1.0)
    assert metrics["test_mae"] == pytest.approx(0.5)
    assert metrics["test_r2"] == pytest.approx(1 - 4 / 5)
    assert list(frame.columns) == ["actual", "predicted"]


def test_raw_output_is_predicts_output_in_inference_mode_over_several_batches(
    tiny_params: Params,
) -> None:
    """The evaluate stage's, `nntune predict`'s and the ensemble's model output: the same
    bits as Keras' ``predict``, dropout off and batch normalisation's moving statistics on,
    over more rows than one call takes, and nothing for no rows."""
    from nntune.stage.model import build_model
    from nntune.stage.outputs import raw_output

    model = dataclasses.replace(tiny_params.model, dropout=0.5, batch_norm=True)
    net = build_model(model, tiny_params.train, 4, "multiclass", 3)
    x = np.random.default_rng(0).normal(size=(70, 4)).astype("float32")
    expected = np.asarray(net.predict(x, batch_size=32, verbose=0))
    output = raw_output(net, x, batch_size=32)  # three calls: 32 + 32 + 6 rows
    assert np.array_equal(output, expected)
    assert np.array_equal(raw_output(net, x, batch_size=32), output)  # no dropout draws
    assert raw_output(net, x[:0]).shape == (0, 3)
