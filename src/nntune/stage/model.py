"""Build a compiled Keras MLP from ``ModelParams``: the task picks the head and the loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from nntune.config.metrics import FIT_METRICS, Task
from nntune.config.sections import ModelParams, Params, TrainParams

if TYPE_CHECKING:
    from nntune.stage.data import Prepared

# Output activation and loss per task: multiclass cross-entropy for classification, as the
# seed article advises; a sigmoid with binary cross-entropy for two classes; MSE for regression.
HEADS: dict[Task, tuple[str, str]] = {
    "multiclass": ("softmax", "sparse_categorical_crossentropy"),
    "binary": ("sigmoid", "binary_crossentropy"),
    "regression": ("linear", "mean_squared_error"),
}


@dataclass(frozen=True)
class TargetScale:
    """A regression target's training mean and standard deviation. The network learns the
    standardised target: its last Dense layer is followed by a fixed ``x * std + mean``
    (so the model outputs the target's units, and rmse / mae are in them) and the MSE loss
    is divided by ``std ** 2`` (so ``loss`` is the standardised target's MSE, and the L2
    penalty and the learning rate mean the same whatever the target's units)."""

    mean: float
    std: float

    @classmethod
    def of(cls, task: Task, y_train: np.ndarray) -> TargetScale | None:
        """The scale of the training split's target for regression, None otherwise."""
        if task != "regression":
            return None
        y = np.asarray(y_train, dtype="float64")
        std = float(y.std()) if len(y) else 1.0
        return cls(float(y.mean()) if len(y) else 0.0, std if std > 0 else 1.0)


def model_for(
    params: Params, data: Prepared, input_scaling: keras.layers.Layer | None = None
) -> keras.Model:
    """:func:`build_model` for ``params`` and the prepared ``data``: its features, task and
    classes, and (regression) the training split's target scale."""
    return build_model(
        params.model,
        params.train,
        len(data.features),
        data.task,
        len(data.classes),
        input_scaling=input_scaling,
        target=TargetScale.of(data.task, data.xy("train")[1]),
    )


def build_model(
    model: ModelParams,
    train: TrainParams,
    n_features: int,
    task: Task,
    n_classes: int = 0,
    input_scaling: keras.layers.Layer | None = None,
    target: TargetScale | None = None,
) -> keras.Model:
    """An MLP with ``model.hidden_layers`` Dense layers (0 gives a linear / logistic model),
    compiled with the optimiser, effective learning rate and loss for ``task``.
    ``input_scaling`` is a fixed first layer (the min-max scaling a pretrained encoder saw);
    ``target`` (regression) puts the de-standardisation after the output layer."""
    if task == "multiclass" and n_classes < 2:
        raise ValueError(f"a multiclass model needs at least 2 classes, got {n_classes}")
    inputs = keras.Input(shape=(n_features,), name="features")
    x = input_scaling(inputs) if input_scaling is not None else inputs
    for i, dense in enumerate(hidden_stack(model), start=1):
        x = dense(x)
        if model.batch_norm:
            x = keras.layers.BatchNormalization(name=f"batch_norm_{i}")(x)
        if model.dropout > 0:
            x = keras.layers.Dropout(model.dropout, name=f"dropout_{i}")(x)
    activation, _ = HEADS[task]
    outputs = keras.layers.Dense(
        n_classes if task == "multiclass" else 1,
        activation=activation,
        kernel_regularizer=_regularizer(model),
        name="output",
        dtype="float32",  # under mixed precision the head (softmax, loss) stays float32
    )(x)
    if task == "regression" and target is not None:
        outputs = keras.layers.Rescaling(
            target.std, offset=target.mean, name="target_scale", dtype="float32"
        )(outputs)
    net = keras.Model(inputs, outputs, name="nntune_mlp")
    compile_model(net, train, task)
    return net


def hidden_stack(model: ModelParams) -> list[keras.layers.Dense]:
    """The hidden Dense layers, named ``hidden_1``...: the classifier's and, when
    pretraining, the autoencoder's encoder (same names, so weights move between them)."""
    return [
        keras.layers.Dense(
            units,
            activation=model.activation,
            kernel_regularizer=_regularizer(model),
            name=f"hidden_{i}",
        )
        for i, units in enumerate(model.units, start=1)
    ]


def compile_model(net: keras.Model, train: TrainParams, task: Task) -> None:
    """(Re)compile with a fresh optimiser: also what makes a change of ``trainable`` count.
    A regression model with a ``target_scale`` layer gets its loss divided by the target's
    variance (the standardised target's MSE)."""
    net.compile(
        optimizer=build_optimizer(train),
        loss=build_loss(task, train.label_smoothing),
        loss_weights=_loss_weight(net),
        metrics=[_keras_metric(name) for name in FIT_METRICS[task]],
    )


def build_loss(task: Task, label_smoothing: float = 0.0) -> str | keras.losses.Loss:
    """The task's loss; with ``label_smoothing`` the class targets become ``(1 - e)`` one-hot
    plus ``e / classes`` (binary: Keras' own smoothing of the 0 / 1 target)."""
    _, loss = HEADS[task]
    if not label_smoothing or task == "regression":
        return loss
    if task == "binary":
        return keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)
    return SmoothedSparseCrossentropy(label_smoothing=label_smoothing)


@keras.saving.register_keras_serializable(package="nntune")
class SmoothedSparseCrossentropy(keras.losses.Loss):  # type: ignore[misc]  # Keras is untyped
    """Categorical cross-entropy of integer labels with label smoothing (Szegedy et al.
    2016): Keras' sparse cross-entropy has no smoothing, and one-hot labels would change
    every split's format. Loading a model compiled with it needs this module imported."""

    def __init__(
        self, label_smoothing: float = 0.0, name: str = "smoothed_crossentropy", **kwargs: Any
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        classes = keras.ops.shape(y_pred)[-1]
        labels = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
        one_hot = keras.ops.one_hot(labels, classes, dtype=y_pred.dtype)
        smoothed = one_hot * (1.0 - self.label_smoothing) + self.label_smoothing / classes
        return keras.losses.categorical_crossentropy(smoothed, y_pred)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def _loss_weight(net: keras.Model) -> float | None:
    try:
        scale = net.get_layer("target_scale")
    except ValueError:
        return None
    return 1.0 / float(scale.scale) ** 2


def _regularizer(model: ModelParams) -> keras.regularizers.Regularizer | None:
    return keras.regularizers.L2(model.l2) if model.l2 > 0 else None


def build_optimizer(train: TrainParams) -> keras.optimizers.Optimizer:
    """The optimiser at the effective rate; ``train.weight_decay`` is Keras' decoupled decay
    (Loshchilov & Hutter 2019), AdamW's for ``adamw`` and applied the same way by the others.
    The schedules (``nntune.stage.training``) change the rate per epoch."""
    rate = train.effective_learning_rate
    decay = train.weight_decay or None
    if train.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=rate, weight_decay=decay)
    if train.optimizer == "adamw":
        # Keras' AdamW defaults to 0.004 when given None; 0 here means none.
        return keras.optimizers.AdamW(learning_rate=rate, weight_decay=train.weight_decay)
    if train.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=rate, momentum=train.momentum, weight_decay=decay)
    return keras.optimizers.RMSprop(learning_rate=rate, momentum=train.momentum, weight_decay=decay)


def _keras_metric(name: str) -> str | keras.metrics.Metric:
    # Named objects so Keras logs exactly the names metrics.py promises (val_auc, val_rmse...).
    if name == "auc":
        return keras.metrics.AUC(name="auc")
    if name == "rmse":
        return keras.metrics.RootMeanSquaredError(name="rmse")
    if name == "mae":
        return keras.metrics.MeanAbsoluteError(name="mae")
    return name
