from __future__ import annotations

import dataclasses

import keras
import pytest

from nntune.config.metrics import Task
from nntune.config.sections import Params
from nntune.stage.model import build_model


def _dense(net: keras.Model) -> list[keras.layers.Dense]:
    return [layer for layer in net.layers if isinstance(layer, keras.layers.Dense)]


@pytest.mark.parametrize(("hidden", "units"), [(0, ()), (1, (16,)), (3, (64, 32, 8))])
def test_hidden_layer_count_and_sizes(
    tiny_params: Params, hidden: int, units: tuple[int, ...]
) -> None:
    model = dataclasses.replace(tiny_params.model, hidden_layers=hidden, units=units)
    net = build_model(model, tiny_params.train, n_features=5, task="multiclass", n_classes=4)
    dense = _dense(net)
    assert [layer.units for layer in dense] == [*units, 4]
    assert len(dense) == hidden + 1
    dropouts = [layer for layer in net.layers if isinstance(layer, keras.layers.Dropout)]
    assert len(dropouts) == hidden  # tiny_params has dropout > 0
    assert net.input_shape == (None, 5)


def test_zero_hidden_layers_is_logistic_regression(tiny_params: Params) -> None:
    model = dataclasses.replace(tiny_params.model, hidden_layers=0, units=())
    net = build_model(model, tiny_params.train, n_features=3, task="binary")
    assert net.count_params() == 3 + 1  # one weight per feature and a bias


@pytest.mark.parametrize(
    ("task", "n_classes", "outputs", "activation", "loss"),
    [
        ("multiclass", 10, 10, "softmax", "sparse_categorical_crossentropy"),
        ("binary", 2, 1, "sigmoid", "binary_crossentropy"),
        ("regression", 0, 1, "linear", "mean_squared_error"),
    ],
)
def test_head_and_loss_follow_the_task(
    tiny_params: Params, task: Task, n_classes: int, outputs: int, activation: str, loss: str
) -> None:
    net = build_model(tiny_params.model, tiny_params.train, 4, task, n_classes=n_classes)
    head = _dense(net)[-1]
    assert head.units == outputs
    assert head.activation.__name__ == activation
    assert net.loss == loss


def test_optimizer_and_effective_learning_rate(tiny_params: Params) -> None:
    train = dataclasses.replace(
        tiny_params.train,
        optimizer="sgd",
        momentum=0.9,
        batch_size=128,
        lr_scaling=dataclasses.replace(tiny_params.train.lr_scaling, rule="linear"),
    )
    net = build_model(tiny_params.model, train, 4, "multiclass", n_classes=3)
    assert isinstance(net.optimizer, keras.optimizers.SGD)
    assert float(net.optimizer.learning_rate) == pytest.approx(0.04)  # 0.01 * 128 / 32
    assert net.optimizer.momentum == pytest.approx(0.9)


def test_l2_and_activation(tiny_params: Params) -> None:
    model = dataclasses.replace(tiny_params.model, l2=0.01, activation="tanh")
    net = build_model(model, tiny_params.train, 4, "multiclass", n_classes=3)
    hidden = _dense(net)[0]
    assert hidden.activation.__name__ == "tanh"
    assert hidden.kernel_regularizer.l2 == pytest.approx(0.01)
    no_l2 = build_model(
        dataclasses.replace(model, l2=0.0), tiny_params.train, 4, "multiclass", n_classes=3
    )
    assert _dense(no_l2)[0].kernel_regularizer is None


def test_multiclass_needs_classes(tiny_params: Params) -> None:
    with pytest.raises(ValueError, match="at least 2 classes"):
        build_model(tiny_params.model, tiny_params.train, 4, "multiclass", n_classes=1)
