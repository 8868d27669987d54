"""Autoencoder pretraining of the hidden layers: the seed's "reconstruction entropy for
pretraining".

The encoder is exactly the model's hidden layers (``model.hidden_stack``, same names); the
decoder mirrors them. With ``loss: reconstruction_crossentropy`` the encoder first min-max
scales its input to [0, 1] (fitted on the rows it trains on: the training split, labelled or
not, never validation or test) and the decoder ends in a sigmoid, scored by binary
cross-entropy per feature; the classifier keeps that scaling as its first layer, so it sees
its input exactly as the encoder did. ``loss: mse`` reconstructs the standardised features
with a linear output and needs no scaling.

The pretrain stage writes a folder: ``info.json`` always, ``encoder.keras`` when enabled.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from nntune.config.sections import ModelParams, Params, PretrainParams
from nntune.errors import NntuneError
from nntune.stage import artifacts
from nntune.stage.data import UNLABELED, Prepared
from nntune.stage.dvclive_internals import StepLive
from nntune.stage.model import hidden_stack, model_for
from nntune.stage.training import EpochLog, LiveEpochs

INFO_FILE = "info.json"
ENCODER_FILE = "encoder.keras"
SCALING_LAYER = "input_minmax"


class PretrainError(NntuneError):
    pass


@dataclass(frozen=True)
class InputScaling:
    """x -> (x - offset) / scale per feature: the training rows' minimum and range."""

    offset: list[float]
    scale: list[float]

    @classmethod
    def fit(cls, x: np.ndarray) -> InputScaling:
        if not np.isfinite(x).all():
            raise PretrainError(
                "pretrain.loss reconstruction_crossentropy scales every feature to [0, 1] "
                "with the training rows' min and max, and some prepared feature values are "
                "not finite; fix the data (see the validate stage) or use pretrain.loss: mse"
            )
        low, high = x.min(axis=0), x.max(axis=0)
        span = high - low
        # A constant feature (e.g. a pixel that is always blank) maps to 0 rather than 0/0.
        scale = np.where(span > 0, span, 1.0)
        return cls(offset=low.astype(float).tolist(), scale=scale.astype(float).tolist())

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The reconstruction target: scaled, and clipped to [0, 1] where a row outside the
        training range (validation, say) would leave it."""
        scaled = (x - np.asarray(self.offset)) / np.asarray(self.scale)
        clipped: np.ndarray = np.clip(scaled, 0.0, 1.0).astype("float32")
        return clipped

    def layer(self) -> keras.layers.Layer:
        """The same map as a fixed, saved Keras layer (Normalization with given statistics
        computes (x - mean) / sqrt(variance))."""
        return keras.layers.Normalization(
            mean=self.offset,
            variance=[s * s for s in self.scale],
            name=SCALING_LAYER,
        )


@dataclass(frozen=True)
class PretrainInfo:
    """What the pretrain stage hands to train (``info.json``)."""

    enabled: bool
    layers: list[str]  # encoder layers whose weights initialise the classifier's
    units: list[int]
    activation: str
    loss: str | None
    input_scaling: InputScaling | None

    @classmethod
    def disabled(cls) -> PretrainInfo:
        return cls(False, [], [], "", None, None)


@dataclass(frozen=True)
class Pretrained:
    info: PretrainInfo
    encoder: keras.Model | None  # None when pretraining is off

    def scaling_layer(self) -> keras.layers.Layer | None:
        scaling = self.info.input_scaling
        return scaling.layer() if scaling is not None else None


@dataclass(frozen=True)
class PretrainResult:
    info: PretrainInfo
    encoder: keras.Model
    metrics: dict[str, Any]


def check_can_pretrain(model: ModelParams) -> None:
    if model.hidden_layers == 0:
        raise PretrainError(
            "pretrain.enabled needs model.hidden_layers >= 1: the autoencoder pretrains the "
            "hidden layers, and a model without any has nothing to pretrain"
        )


def build_autoencoder(
    model: ModelParams,
    pretrain: PretrainParams,
    n_features: int,
    scaling: InputScaling | None,
) -> tuple[keras.Model, keras.Model]:
    """(autoencoder, encoder): input [-> min-max] [-> Gaussian noise] -> hidden layers ->
    mirrored decoder -> n_features outputs (sigmoid for reconstruction cross-entropy)."""
    check_can_pretrain(model)
    inputs = keras.Input(shape=(n_features,), name="features")
    x = scaling.layer()(inputs) if scaling is not None else inputs
    if pretrain.noise > 0:  # denoising: corrupt the input, reconstruct the clean one
        x = keras.layers.GaussianNoise(pretrain.noise, name="input_noise")(x)
    for dense in hidden_stack(model):
        x = dense(x)
    encoder = keras.Model(inputs, x, name="encoder")
    y = x
    for i, units in enumerate(reversed(model.units[:-1]), start=1):
        y = keras.layers.Dense(units, activation=model.activation, name=f"decoder_{i}")(y)
    reconstruction_ce = pretrain.loss == "reconstruction_crossentropy"
    outputs = keras.layers.Dense(
        n_features,
        activation="sigmoid" if reconstruction_ce else "linear",
        name="reconstruction",
        dtype="float32",
    )(y)
    autoencoder = keras.Model(inputs, outputs, name="autoencoder")
    autoencoder.compile(
        optimizer=keras.optimizers.Adam(learning_rate=pretrain.learning_rate),
        # Keras' binary cross-entropy averages over the features: per-feature BCE.
        loss="binary_crossentropy" if reconstruction_ce else "mean_squared_error",
    )
    return autoencoder, encoder


def pretrain_encoder(
    data: Prepared, model: ModelParams, pretrain: PretrainParams, live_dir: str | Path
) -> PretrainResult:
    """Fit the autoencoder on the training rows (labelled or not), stop early on the
    validation rows' reconstruction loss, keep the best epoch's weights."""
    unlabeled = data.x(UNLABELED)  # prepare always writes it, empty when all rows have labels
    x_fit = np.concatenate([data.x("train"), unlabeled])
    x_val = data.x("val")
    scaling = InputScaling.fit(x_fit) if pretrain.loss == "reconstruction_crossentropy" else None
    y_fit = scaling.apply(x_fit) if scaling is not None else x_fit
    y_val = scaling.apply(x_val) if scaling is not None else x_val
    autoencoder, encoder = build_autoencoder(model, pretrain, len(data.features), scaling)
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=pretrain.patience, restore_best_weights=True
    )
    # The curves are built in a sibling folder that replaces live_dir once the run ended
    # (the callback's live.end() wrote the summary), a non-finite loss included, so its
    # curves show how it diverged: a crash or a kill leaves the old curves intact.
    with artifacts.atomic_dir(live_dir) as live_tmp:
        live = StepLive(dir=str(live_tmp), dvcyaml=False, save_dvc_exp=False, report=None)
        try:
            history = autoencoder.fit(
                x_fit,
                y_fit,
                validation_data=(x_val, y_val),
                epochs=pretrain.epochs,
                batch_size=pretrain.batch_size,
                shuffle=True,
                callbacks=[stopper, LiveEpochs(live, end_on_train_end=True), EpochLog()],
                verbose=0,  # EpochLog prints the epochs
            )
        finally:
            live.close()  # the DVC repository it opened, also when the fit failed
    curve = history.history.get("loss", [])
    if not curve or not all(math.isfinite(v) for v in curve):
        raise PretrainError(
            "the autoencoder's reconstruction loss is not finite: lower pretrain.learning_rate"
        )
    metrics: dict[str, Any] = {
        "pretrain_epochs": len(curve),
        "pretrain_best_epoch": int(stopper.best_epoch) + 1,
        "pretrain_rows": len(x_fit),
        "pretrain_unlabeled_rows": len(unlabeled),
        "pretrain_loss": _loss(autoencoder, x_fit, y_fit, pretrain.batch_size),
        "pretrain_val_loss": _loss(autoencoder, x_val, y_val, pretrain.batch_size),
        "pretrain_loss_first_epoch": float(curve[0]),
    }
    info = PretrainInfo(
        enabled=True,
        layers=[f"hidden_{i}" for i in range(1, model.hidden_layers + 1)],
        units=list(model.units),
        activation=model.activation,
        loss=pretrain.loss,
        input_scaling=scaling,
    )
    return PretrainResult(info, encoder, metrics)


def _loss(net: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int) -> float:
    return float(net.evaluate(x, y, batch_size=batch_size, verbose=0))


def save(out_dir: str | Path, info: PretrainInfo, encoder: keras.Model) -> None:
    """The stage's output folder (``encoder.keras`` and ``info.json``), replaced as a whole.
    With pretraining off the stage writes only ``{"enabled": false}``, without Keras."""
    with artifacts.atomic_dir(out_dir) as tmp:
        artifacts.save_model(encoder, tmp / ENCODER_FILE)
        artifacts.write_json(tmp / INFO_FILE, asdict(info))


def load(out_dir: str | Path, model: ModelParams) -> Pretrained:
    """Read what the pretrain stage wrote and check it fits ``model``."""
    out_dir = Path(out_dir)
    path = out_dir / INFO_FILE
    if not path.is_file():
        raise PretrainError(f"{path}: not found; run the pretrain stage (dvc repro pretrain)")
    raw = json.loads(path.read_text(encoding="utf-8"))
    if not raw.get("enabled"):
        return Pretrained(PretrainInfo.disabled(), None)
    scaling = raw.get("input_scaling")
    info = PretrainInfo(
        enabled=bool(raw["enabled"]),
        layers=list(raw["layers"]),
        units=list(raw["units"]),
        activation=str(raw["activation"]),
        loss=raw.get("loss"),
        input_scaling=InputScaling(**scaling) if scaling else None,
    )
    if info.units != list(model.units) or info.activation != model.activation:
        raise PretrainError(
            f"{out_dir}: the encoder has layers {info.units} ({info.activation}) but "
            f"params.yaml asks for {list(model.units)} ({model.activation}); re-run the "
            "pretrain stage (dvc repro) so the two agree"
        )
    return Pretrained(info, keras.saving.load_model(out_dir / ENCODER_FILE))


def transfer(pretrained: Pretrained, net: keras.Model) -> list[str]:
    """Copy the encoder's hidden-layer weights into ``net``; returns the layer names."""
    if pretrained.encoder is None:
        return []
    for name in pretrained.info.layers:
        source = pretrained.encoder.get_layer(name).weights
        target = net.get_layer(name).weights
        if [w.shape for w in source] != [w.shape for w in target]:
            raise PretrainError(f"layer {name}: the encoder's weights do not fit the model")
        for into, value in zip(target, source, strict=True):
            into.assign(value.value)
    return list(pretrained.info.layers)


def initialised_model(
    params: Params, data: Prepared, pretrained: Pretrained
) -> tuple[keras.Model, list[str]]:
    """The model ``params`` describe for ``data``: random weights, or, when pretrained, the
    encoder's input scaling and hidden-layer weights; returns it with the names of the
    pretrained layers (to keep frozen for ``pretrain.freeze_epochs``)."""
    net = model_for(params, data, input_scaling=pretrained.scaling_layer())
    return net, transfer(pretrained, net)
