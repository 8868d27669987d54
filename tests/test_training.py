from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_table

from nntune.evaluate import evaluate_predictions
from nntune.model import build_model
from nntune.params import Params
from nntune.preprocess import prepare
from nntune.training import fit, seed_everything


def _train(params: Params, live: Path, table: pd.DataFrame | None = None):  # type: ignore[no-untyped-def]
    seed_everything(params.runtime)
    data = prepare(table if table is not None else make_table(), params.data)
    net = build_model(params.model, params.train, len(data.features), data.task, len(data.classes))
    return net, data, fit(net, data, params.train, live, seed=params.runtime.seed)


def test_fit_records_epochs_and_the_kept_models_metrics(
    tmp_path: Path, tiny_params: Params
) -> None:
    train = dataclasses.replace(tiny_params.train, max_epochs=6)
    params = dataclasses.replace(tiny_params, train=train)
    _, _, result = _train(params, tmp_path / "live")
    m = result.metrics
    assert set(m) == {
        "epochs_trained",
        "epochs_run",
        "best_epoch",
        "diverged",
        "diverged_at_epoch",
        "learning_rate_effective",
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
    }
    assert 1 <= m["best_epoch"] <= m["epochs_trained"] <= 6
    assert m["diverged"] is False
    # restore_best_weights: the reported val_loss is the best epoch's, not the last one's.
    curve = pd.read_csv(tmp_path / "live" / "plots" / "metrics" / "eval" / "loss.tsv", sep="\t")
    assert len(curve) == m["epochs_trained"]
    assert m["val_loss"] == pytest.approx(curve["loss"].min(), rel=1e-4)
    assert m["best_epoch"] == int(curve["loss"].idxmin()) + 1
    assert result.train_seconds > 0 and result.samples_per_second > 0


def test_early_stopping_stops_before_max_epochs(tmp_path: Path, tiny_params: Params) -> None:
    es = dataclasses.replace(tiny_params.train.early_stopping, patience=0, min_delta=10.0)
    train = dataclasses.replace(tiny_params.train, max_epochs=50, early_stopping=es)
    _, _, result = _train(dataclasses.replace(tiny_params, train=train), tmp_path / "live")
    # No epoch improves by 10, so training stops after the second epoch (Keras never stops
    # at epoch 0).
    assert result.metrics["epochs_trained"] == 2


def test_divergence_is_recorded_not_raised(tmp_path: Path, tiny_params: Params) -> None:
    train = dataclasses.replace(tiny_params.train, optimizer="sgd", learning_rate=1e12)
    table = make_table()
    table[["a", "b", "c"]] *= 1e6
    net, data, result = _train(
        dataclasses.replace(tiny_params, train=train), tmp_path / "live", table
    )
    assert result.metrics["diverged"] is True
    assert result.metrics["diverged_at_epoch"] == 1
    assert result.metrics["epochs_trained"] == 1
    x, y = data.xy("test")
    metrics, frame = evaluate_predictions(data, y, net.predict(x, verbose=0))
    assert all(value is None for value in metrics.values())
    assert frame.empty


def test_same_seed_same_weights(tmp_path: Path, tiny_params: Params) -> None:
    a, _, ra = _train(tiny_params, tmp_path / "a")
    b, _, rb = _train(tiny_params, tmp_path / "b")
    assert ra.metrics == rb.metrics
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)


def test_continuing_a_saved_model_equals_training_straight_through(
    tmp_path: Path, tiny_params: Params
) -> None:
    """Warm start is exact: 3 epochs, save, load, 6 more epochs gives the metrics (and the
    weights) of 9 epochs in one go, dropout included, because batch order and dropout are
    keyed by (seed, epoch) and the .keras file carries the optimiser state."""
    import keras

    es = dataclasses.replace(
        tiny_params.train.early_stopping, enabled=False, restore_best_weights=False
    )
    model = dataclasses.replace(tiny_params.model, dropout=0.3)
    train = dataclasses.replace(tiny_params.train, max_epochs=9, early_stopping=es)
    params = dataclasses.replace(tiny_params, model=model, train=train)
    straight, data, whole = _train(params, tmp_path / "whole")

    first_part = dataclasses.replace(params, train=dataclasses.replace(train, max_epochs=3))
    partial, _, first = _train(first_part, tmp_path / "first")
    assert first.metrics["epochs_trained"] == 3
    partial.save(tmp_path / "parent.keras")
    keras.utils.set_random_seed(12345)  # a different global state must not matter
    loaded = keras.saving.load_model(tmp_path / "parent.keras")
    rest = fit(loaded, data, train, tmp_path / "rest", seed=params.runtime.seed, initial_epoch=3)

    assert rest.metrics["epochs_trained"] == 9 and rest.metrics["epochs_run"] == 6
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert rest.metrics[key] == whole.metrics[key], key
    for mine, theirs in zip(loaded.get_weights(), straight.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    curve = tmp_path / "{}" / "plots" / "metrics" / "eval" / "loss.tsv"
    whole_curve = pd.read_csv(str(curve).format("whole"), sep="\t")
    joined = pd.concat(
        [pd.read_csv(str(curve).format(part), sep="\t") for part in ("first", "rest")]
    )
    assert joined["step"].tolist() == list(range(9))  # the continued curve goes on at step 3
    assert joined["loss"].tolist() == whole_curve["loss"].tolist()


def test_dropout_differs_between_epochs(tmp_path: Path, tiny_params: Params) -> None:
    """The per-epoch reseeding must not give every epoch the same dropout masks: with the
    same batches twice, two epochs would then repeat each other's updates exactly."""
    from nntune.training import EpochSeeds

    model = dataclasses.replace(tiny_params.model, dropout=0.5)
    params = dataclasses.replace(tiny_params, model=model)
    seed_everything(params.runtime)
    data = prepare(make_table(), params.data)
    net = build_model(params.model, params.train, len(data.features), data.task, len(data.classes))
    reseed = EpochSeeds(params.runtime.seed)
    reseed.set_model(net)
    dropout = net.get_layer("dropout_1")
    ones = np.ones((4, 16), dtype="float32")
    masks = []
    for epoch in (0, 1, 0):
        reseed.on_epoch_begin(epoch)
        masks.append(np.asarray(dropout(ones, training=True)))
    assert not np.array_equal(masks[0], masks[1])
    np.testing.assert_array_equal(masks[0], masks[2])  # keyed by the epoch alone


def test_without_early_stopping_the_best_epoch_is_kept_and_the_last_saved(
    tmp_path: Path, tiny_params: Params
) -> None:
    """restore_best_weights without early stopping: all max_epochs run, the kept model is the
    best epoch's, and save_last sees the last epoch's state (what a warm start continues)."""
    es = dataclasses.replace(tiny_params.train.early_stopping, enabled=False, min_delta=0.0)
    train = dataclasses.replace(
        tiny_params.train, max_epochs=8, learning_rate=0.5, early_stopping=es
    )
    params = dataclasses.replace(tiny_params, train=train)
    seed_everything(params.runtime)
    data = prepare(make_table(), params.data)
    net = build_model(params.model, params.train, len(data.features), data.task, len(data.classes))
    last: list[list[np.ndarray]] = []
    result = fit(
        net, data, train, tmp_path / "live", seed=params.runtime.seed,
        save_last=lambda model: last.append(model.get_weights()),
    )  # fmt: skip
    curve = pd.read_csv(tmp_path / "live/plots/metrics/eval/loss.tsv", sep="\t")
    assert result.metrics["epochs_trained"] == 8 == len(curve)
    assert result.metrics["best_epoch"] == int(curve["loss"].idxmin()) + 1
    assert result.metrics["val_loss"] == pytest.approx(curve["loss"].min(), rel=1e-4)
    assert len(last) == 1
    if result.metrics["best_epoch"] < 8:  # the rate of 0.5 makes the last epoch not the best
        assert any(
            not np.array_equal(a, b) for a, b in zip(last[0], net.get_weights(), strict=True)
        )
