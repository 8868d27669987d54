from __future__ import annotations

import dataclasses
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import make_table

from nntune.config.sections import Params
from nntune.stage.evaluate import evaluate_predictions
from nntune.stage.model import build_model
from nntune.stage.preprocess import prepare
from nntune.stage.training import fit, seed_everything


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


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_the_kept_models_metrics_are_what_keras_evaluate_says(
    tmp_path: Path, tiny_params: Params, task: str
) -> None:
    """The final train and val figures (measured without ``evaluate`` on TensorFlow) are
    Keras' ``evaluate`` of the kept model, with an L2 penalty in the loss, batch
    normalisation in inference mode and (classification) label smoothing."""
    table = make_table(150)
    if task == "regression":
        table["target"] = table["a"] * 2.0 + table["b"]
    model = dataclasses.replace(tiny_params.model, l2=1e-3, batch_norm=True)
    train = dataclasses.replace(
        tiny_params.train, max_epochs=3, label_smoothing=0.1 if task != "regression" else 0.0
    )
    data_params = dataclasses.replace(tiny_params.data, task=task)
    params = dataclasses.replace(tiny_params, model=model, train=train, data=data_params)
    net, data, result = _train(params, tmp_path / "live", table)
    for split in ("train", "val"):
        x, y = data.xy(split)
        expected = net.evaluate(x, y, batch_size=train.batch_size, verbose=0, return_dict=True)
        for name, value in expected.items():
            assert result.metrics[f"{split}_{name}"] == pytest.approx(float(value), rel=1e-5)


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
    # A diverged run is a result, not a crash: its curves replace the old ones.
    assert (tmp_path / "live" / "metrics.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live"]
    x, y = data.xy("test")
    metrics, frame = evaluate_predictions(data, y, net.predict(x, verbose=0))
    assert all(value is None for value in metrics.values())
    assert frame.empty


class _CrashAtEpoch(keras.callbacks.Callback):  # type: ignore[misc]  # Keras is untyped
    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if epoch + 1 == self.epoch:
            raise RuntimeError(f"killed after epoch {self.epoch}")


def test_the_curves_folder_is_replaced_whole_and_kept_when_training_crashes(
    tmp_path: Path, tiny_params: Params
) -> None:
    """dvclive writes into a sibling of live_dir that replaces it when the run ends: the
    files dvc.yaml's plots name, nothing else; a run that crashes at epoch 2 leaves the
    previous run's curves byte for byte and no temporary folder."""
    live = tmp_path / "live"
    _train(tiny_params, live)
    before = {str(p.relative_to(live)): p.read_bytes() for p in live.rglob("*") if p.is_file()}
    curves = {f"plots/metrics/{s}/{m}.tsv" for s in ("train", "eval") for m in ("loss", "accuracy")}
    assert set(before) == {"metrics.json", *curves}

    seed_everything(tiny_params.runtime)
    data = prepare(make_table(seed=3), tiny_params.data)
    net = build_model(
        tiny_params.model, tiny_params.train, len(data.features), data.task, len(data.classes)
    )
    with pytest.raises(RuntimeError, match="killed after epoch 2"):
        fit(net, data, tiny_params.train, live, seed=1, callbacks=[_CrashAtEpoch(2)])
    after = {str(p.relative_to(live)): p.read_bytes() for p in live.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live"]


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
    from nntune.stage.training import EpochSeeds

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
    epochs = _EpochWeights()
    result = fit(
        net, data, train, tmp_path / "live", seed=params.runtime.seed, callbacks=[epochs],
        save_last=lambda model: last.append(model.get_weights()),
    )  # fmt: skip
    curve = pd.read_csv(tmp_path / "live/plots/metrics/eval/loss.tsv", sep="\t")
    best = result.metrics["best_epoch"]
    assert result.metrics["epochs_trained"] == 8 == len(curve) == len(epochs.weights)
    assert best == int(curve["loss"].idxmin()) + 1
    assert result.metrics["val_loss"] == pytest.approx(curve["loss"].min(), rel=1e-4)
    # The seeded rate of 0.5 makes the last epoch not the best, so the two states differ.
    assert best < 8
    assert len(last) == 1
    _assert_same_weights(last[0], epochs.weights[-1])  # save_last: the last epoch's state
    _assert_same_weights(net.get_weights(), epochs.weights[best - 1])  # kept: the best's


class _EpochWeights(keras.callbacks.Callback):  # type: ignore[misc]  # Keras is untyped
    """The model's weights at the end of every epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.weights: list[list[np.ndarray]] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.weights.append(self.model.get_weights())


def _assert_same_weights(mine: list[np.ndarray], theirs: list[np.ndarray]) -> None:
    assert len(mine) == len(theirs)
    for a, b in zip(mine, theirs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_steps_per_execution_changes_speed_not_results(tmp_path: Path, tiny_params: Params) -> None:
    """Batches per compiled call: with 1, with auto (a whole epoch here) and with 4 (not a
    divisor of the 6 steps per epoch, so 3 is used), the same metrics, curves and weights."""
    es = dataclasses.replace(tiny_params.train.early_stopping, enabled=False)
    runs = {}
    for setting in (1, "auto", 4):
        train = dataclasses.replace(
            tiny_params.train, max_epochs=4, batch_size=12, steps_per_execution=setting,
            early_stopping=es,
        )  # fmt: skip
        params = dataclasses.replace(tiny_params, train=train)
        live = tmp_path / str(setting)
        net, data, result = _train(params, live)
        curve = (live / "plots" / "metrics" / "eval" / "loss.tsv").read_text()
        runs[setting] = (result, curve, net.get_weights())
    steps = -(-len(data.xy("train")[0]) // 12)
    assert steps % 4 != 0, "the test needs an epoch that 4 does not divide"
    assert [r.steps_per_execution for r, _, _ in runs.values()] == [1, steps, 3]
    (base, base_curve, base_weights), *others = runs.values()
    for result, curve, weights in others:
        assert result.metrics == base.metrics
        assert curve == base_curve
        for mine, theirs in zip(weights, base_weights, strict=True):
            np.testing.assert_array_equal(mine, theirs)
