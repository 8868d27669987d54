"""Build a compiled Keras MLP from ``ModelParams``: the task picks the head and the loss."""

from __future__ import annotations

import keras

from nntune.config.metrics import FIT_METRICS, Task
from nntune.config.sections import ModelParams, TrainParams

# Output activation and loss per task: multiclass cross-entropy for classification, as the
# seed article advises; a sigmoid with binary cross-entropy for two classes; MSE for regression.
HEADS: dict[Task, tuple[str, str]] = {
    "multiclass": ("softmax", "sparse_categorical_crossentropy"),
    "binary": ("sigmoid", "binary_crossentropy"),
    "regression": ("linear", "mean_squared_error"),
}


def build_model(
    model: ModelParams,
    train: TrainParams,
    n_features: int,
    task: Task,
    n_classes: int = 0,
    input_scaling: keras.layers.Layer | None = None,
) -> keras.Model:
    """An MLP with ``model.hidden_layers`` Dense layers (0 gives a linear / logistic model),
    compiled with the optimiser, effective learning rate and loss for ``task``.
    ``input_scaling`` is a fixed first layer (the min-max scaling a pretrained encoder saw)."""
    if task == "multiclass" and n_classes < 2:
        raise ValueError(f"a multiclass model needs at least 2 classes, got {n_classes}")
    inputs = keras.Input(shape=(n_features,), name="features")
    x = input_scaling(inputs) if input_scaling is not None else inputs
    for i, dense in enumerate(hidden_stack(model), start=1):
        x = dense(x)
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
    """(Re)compile with a fresh optimiser: also what makes a change of ``trainable`` count."""
    _, loss = HEADS[task]
    net.compile(
        optimizer=build_optimizer(train),
        loss=loss,
        metrics=[_keras_metric(name) for name in FIT_METRICS[task]],
    )


def _regularizer(model: ModelParams) -> keras.regularizers.Regularizer | None:
    return keras.regularizers.L2(model.l2) if model.l2 > 0 else None


def build_optimizer(train: TrainParams) -> keras.optimizers.Optimizer:
    rate = train.effective_learning_rate
    if train.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=rate)
    if train.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=rate, momentum=train.momentum)
    return keras.optimizers.RMSprop(learning_rate=rate, momentum=train.momentum)


def _keras_metric(name: str) -> str | keras.metrics.Metric:
    # Named objects so Keras logs exactly the names metrics.py promises (val_auc, val_rmse...).
    if name == "auc":
        return keras.metrics.AUC(name="auc")
    if name == "rmse":
        return keras.metrics.RootMeanSquaredError(name="rmse")
    if name == "mae":
        return keras.metrics.MeanAbsoluteError(name="mae")
    return name
