"""Autoencoder pretraining: the encoder's weights really reach the classifier, frozen layers
stay frozen, the reconstruction loss falls on digits, and the refusals."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import make_table, repo_params_dict, shrink

from nntune.config.params import parse_params
from nntune.config.sections import Params, ParamsError
from nntune.stage import pretrain
from nntune.stage.data import SPLITS, UNLABELED, DataError, Prepared, digits_frame
from nntune.stage.model import build_model
from nntune.stage.preprocess import prepare
from nntune.stage.training import fit, seed_everything


def _params(**pretrain_overrides: Any) -> Params:
    raw = shrink(repo_params_dict())
    raw["pretrain"].update({"enabled": True, "epochs": 3, "patience": 1, **pretrain_overrides})
    return parse_params(raw, source="test")


def _pretrained(params: Params, data: Prepared, tmp_path: Path) -> pretrain.Pretrained:
    seed_everything(params.runtime)
    result = pretrain.pretrain_encoder(data, params.model, params.pretrain, tmp_path / "live")
    pretrain.save(tmp_path / "out", result.info, result.encoder)
    return pretrain.load(tmp_path / "out", params.model)


def _weights(net: keras.Model, layer: str) -> list[np.ndarray]:
    return [np.array(w.numpy(), copy=True) for w in net.get_layer(layer).weights]


@pytest.mark.parametrize("loss", ["reconstruction_crossentropy", "mse"])
def test_encoder_weights_land_in_the_classifier(tmp_path: Path, loss: str) -> None:
    params = _params(loss=loss)
    params = dataclasses.replace(
        params, model=dataclasses.replace(params.model, hidden_layers=2, units=(8, 4))
    )
    data = prepare(make_table(), params.data)
    encoder = _pretrained(params, data, tmp_path)
    assert encoder.encoder is not None
    net, frozen = pretrain.initialised_model(params, data, encoder)  # what the stage runs
    assert frozen == ["hidden_1", "hidden_2"]
    for name in ("hidden_1", "hidden_2"):
        for got, want in zip(_weights(net, name), _weights(encoder.encoder, name), strict=True):
            np.testing.assert_array_equal(got, want)
    # The same model built without the encoder starts elsewhere: the weights were moved.
    fresh = build_model(
        params.model, params.train, len(data.features), data.task, len(data.classes)
    )
    assert not np.array_equal(_weights(fresh, "hidden_1")[0], _weights(net, "hidden_1")[0])
    # The classifier sees its input as the encoder did: min-max scaled only for
    # reconstruction cross-entropy.
    layer_names = [layer.name for layer in net.layers]
    assert (pretrain.SCALING_LAYER in layer_names) == (loss == "reconstruction_crossentropy")


def test_input_scaling_maps_training_rows_to_unit_range() -> None:
    x = np.array([[0.0, 5.0, 2.0], [10.0, 5.0, 4.0], [5.0, 5.0, 3.0]])
    scaling = pretrain.InputScaling.fit(x)
    np.testing.assert_allclose(scaling.apply(x), [[0, 0, 0], [1, 0, 1], [0.5, 0, 0.5]])
    # Outside the training range (validation rows): clipped for the reconstruction target...
    np.testing.assert_allclose(scaling.apply(np.array([[20.0, 6.0, 1.0]])), [[1, 1, 0]])
    # ...and the saved layer computes the same map on the training rows.
    layer_out = keras.ops.convert_to_numpy(scaling.layer()(x.astype("float32")))
    np.testing.assert_allclose(layer_out, scaling.apply(x), atol=1e-6)
    with pytest.raises(pretrain.PretrainError, match="not finite"):
        pretrain.InputScaling.fit(np.array([[np.inf, 1.0]]))


class _Snapshots(keras.callbacks.Callback):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.hidden: list[np.ndarray] = []
        self.output: list[np.ndarray] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.hidden.append(_weights(self.model, "hidden_1")[0])
        self.output.append(_weights(self.model, "output")[0])


def test_pretrained_layers_stay_frozen_for_freeze_epochs(tmp_path: Path) -> None:
    params = _params(freeze_epochs=2)
    es = dataclasses.replace(params.train.early_stopping, patience=10)
    params = dataclasses.replace(
        params, train=dataclasses.replace(params.train, max_epochs=4, early_stopping=es)
    )
    data = prepare(make_table(), params.data)
    encoder = _pretrained(params, data, tmp_path)
    net, frozen = pretrain.initialised_model(params, data, encoder)  # what the stage runs
    assert frozen == ["hidden_1"]
    start = _weights(net, "hidden_1")[0]
    np.testing.assert_array_equal(start, _weights(encoder.encoder, "hidden_1")[0])
    start_head = _weights(net, "output")[0]
    snapshots = _Snapshots()
    result = fit(
        net,
        data,
        params.train,
        tmp_path / "live_train",
        seed=params.runtime.seed,
        frozen=frozen,
        freeze_epochs=2,
        callbacks=[snapshots],
    )
    assert result.metrics["epochs_trained"] == 4
    assert len(snapshots.hidden) == 4
    for epoch in (0, 1):  # the two frozen epochs: encoder weights untouched, head learning
        np.testing.assert_array_equal(snapshots.hidden[epoch], start)
        assert not np.array_equal(snapshots.output[epoch], start_head)
    assert not np.array_equal(snapshots.hidden[2], start)  # then everything is fine-tuned
    assert all(layer.trainable for layer in net.layers)
    curve = pd.read_csv(tmp_path / "live_train/plots/metrics/train/loss.tsv", sep="\t")
    assert curve["step"].tolist() == [0, 1, 2, 3]  # one curve over both phases


def test_reconstruction_loss_falls_on_digits(tmp_path: Path) -> None:
    params = _params(epochs=8, patience=8, learning_rate=0.003)
    params = dataclasses.replace(
        params, model=dataclasses.replace(params.model, hidden_layers=1, units=(32,))
    )
    digits = dataclasses.replace(
        params.data, source="data/digits.csv", target="target", label_fraction=0.1
    )
    data = prepare(digits_frame(), digits)
    seed_everything(params.runtime)
    result = pretrain.pretrain_encoder(data, params.model, params.pretrain, tmp_path / "live")
    curve = pd.read_csv(tmp_path / "live/plots/metrics/train/loss.tsv", sep="\t")["loss"]
    val = pd.read_csv(tmp_path / "live/plots/metrics/eval/loss.tsv", sep="\t")["loss"]
    assert len(curve) == 8
    assert curve.iloc[-1] < 0.8 * curve.iloc[0]
    assert val.min() < 0.8 * val.iloc[0]
    m = result.metrics
    # 90% of the training rows lost their labels and still feed the autoencoder.
    assert m["pretrain_unlabeled_rows"] == len(data.splits[UNLABELED]) > 0
    assert m["pretrain_rows"] == len(data.splits["train"]) + len(data.splits[UNLABELED])
    assert m["pretrain_loss"] < m["pretrain_loss_first_epoch"]


def test_label_fraction_hides_labels_of_training_rows_only(tiny_params: Params) -> None:
    table = make_table(n_rows=300, n_classes=3)
    full = prepare(table, tiny_params.data)
    part = prepare(table, dataclasses.replace(tiny_params.data, label_fraction=0.2))
    n_train = len(full.splits["train"])
    assert len(part.splits["train"]) == round(0.2 * n_train)
    assert len(part.splits["train"]) + len(part.splits[UNLABELED]) == n_train
    assert sorted(part.splits["train"]["target"].unique()) == [0, 1, 2]  # stratified
    assert part.splits[UNLABELED]["target"].isna().all()
    for split in ("val", "test"):  # the same held-out rows either way
        pd.testing.assert_frame_equal(part.splits[split], full.splits[split])
    assert set(SPLITS) | {UNLABELED} == set(part.splits)


def test_label_fraction_too_small_for_the_classes_is_refused(tiny_params: Params) -> None:
    data = dataclasses.replace(tiny_params.data, label_fraction=0.01)
    with pytest.raises(DataError, match=r"label_fraction 0\.01 .* raise data\.label_fraction"):
        prepare(make_table(n_rows=120, n_classes=3), data)


def test_refusals_in_params() -> None:
    raw = shrink(repo_params_dict())
    raw["pretrain"].update(enabled=True, freeze_epochs=4)
    raw["model"].update(hidden_layers=0, units=[])
    raw["data"].update(label_fraction=0)
    with pytest.raises(ParamsError) as caught:
        parse_params(raw, source="p.yaml")
    problems = "\n".join(caught.value.problems)
    assert "pretrain.enabled needs model.hidden_layers >= 1" in problems
    assert "pretrain.freeze_epochs must be < train.max_epochs (4)" in problems
    assert "data.label_fraction must be > 0" in problems
    raw["pretrain"].update(enabled=False)  # off: the other pretrain keys are not a problem
    raw["data"].update(label_fraction=1.0)
    assert parse_params(raw).pretrain.enabled is False
    raw["pretrain"].update(loss="cosine")
    with pytest.raises(ParamsError, match=r"pretrain\.loss must be one of"):
        parse_params(raw)


def test_autoencoder_without_hidden_layers_is_refused() -> None:
    params = _params()
    flat = dataclasses.replace(params.model, hidden_layers=0, units=())
    with pytest.raises(pretrain.PretrainError, match="nothing to pretrain"):
        pretrain.build_autoencoder(flat, params.pretrain, 4, None)


def test_encoder_that_does_not_fit_the_model_is_refused(tmp_path: Path) -> None:
    params = _params()
    data = prepare(make_table(), params.data)
    _pretrained(params, data, tmp_path)
    wider = dataclasses.replace(params.model, units=(32,))
    with pytest.raises(pretrain.PretrainError, match=r"re-run the pretrain stage"):
        pretrain.load(tmp_path / "out", wider)
    with pytest.raises(pretrain.PretrainError, match="run the pretrain stage"):
        pretrain.load(tmp_path / "missing", params.model)


def test_disabled_record_loads_as_no_encoder(tmp_path: Path) -> None:
    (tmp_path / "info.json").write_text('{"enabled": false}')
    loaded = pretrain.load(tmp_path, _params().model)
    assert loaded.encoder is None and loaded.scaling_layer() is None
    net = build_model(_params().model, _params().train, 4, "multiclass", 3)
    assert pretrain.transfer(loaded, net) == []


def test_pretrain_folders_are_replaced_whole_and_kept_when_it_crashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The curves and the encoder folder are each swapped in whole: a stray file of an
    older run is gone after a finished one, and a run that crashes at epoch 2 leaves the
    previous curves byte for byte and no temporary folder."""
    from nntune.stage.training import LiveEpochs

    params = _params()
    data = prepare(make_table(), params.data)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "stray.keras").write_text("an older run's file")
    _pretrained(params, data, tmp_path)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["encoder.keras", "info.json"]
    live = tmp_path / "live"
    before = {str(p.relative_to(live)): p.read_bytes() for p in live.rglob("*") if p.is_file()}
    assert {"metrics.json", "plots/metrics/train/loss.tsv"} <= set(before)

    logged = LiveEpochs.on_epoch_end

    def crash_after_epoch_2(self: Any, epoch: int, logs: Any = None) -> None:
        logged(self, epoch, logs)
        if epoch == 1:
            raise RuntimeError("killed after epoch 2")

    monkeypatch.setattr(LiveEpochs, "on_epoch_end", crash_after_epoch_2)
    with pytest.raises(RuntimeError, match="killed after epoch 2"):
        pretrain.pretrain_encoder(data, params.model, params.pretrain, live)
    after = {str(p.relative_to(live)): p.read_bytes() for p in live.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live", "out"]
