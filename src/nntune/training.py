"""Fit a compiled model: early stopping on the validation objective, a guard that stops a
diverging run instead of crashing, per-epoch curves logged with dvclive."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from dvclive.keras import DVCLiveCallback

from nntune.data import Prepared
from nntune.device import enable_determinism
from nntune.metrics import Task, fit_metric_names, infer_direction
from nntune.model import compile_model
from nntune.params import RuntimeParams, TrainParams


def seed_everything(runtime: RuntimeParams) -> None:
    """Seed Python, NumPy and TensorFlow; with ``deterministic`` also make TensorFlow pick
    deterministic kernels, so the same params give byte-identical metrics on CPU."""
    keras.utils.set_random_seed(runtime.seed)
    if runtime.deterministic:
        enable_determinism()


class DivergenceGuard(keras.callbacks.Callback):  # type: ignore[misc]  # Keras is untyped
    """Stops training at the first NaN or infinite loss and remembers that it happened.
    Keras' TerminateOnNaN stops too, but leaves no record a caller can read."""

    def __init__(self) -> None:
        super().__init__()
        self.diverged = False
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._check((logs or {}).get("loss"))

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        for name in ("loss", "val_loss"):
            self._check((logs or {}).get(name))

    def _check(self, value: Any) -> None:
        if value is not None and not math.isfinite(float(value)):
            self.diverged = True
            self.model.stop_training = True


@dataclass(frozen=True)
class FitResult:
    metrics: dict[str, Any]  # deterministic: goes to the metrics file
    train_seconds: float  # wall time of fit alone; varies run to run, kept apart
    samples_per_second: float


class _LiveEpochs(DVCLiveCallback):  # type: ignore[misc]  # dvclive is untyped
    """dvclive's Keras callback without the ``live.end()`` at the end of each ``fit``: a
    fine-tuning run is two fits (frozen, then all layers) logged as one curve."""

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        pass


def fit(
    net: keras.Model,
    data: Prepared,
    train: TrainParams,
    live_dir: str | Path,
    frozen: Sequence[str] = (),
    freeze_epochs: int = 0,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> FitResult:
    """Train ``net`` on the train split, stop early on the validation split, and measure
    the model that is kept (the best epoch's weights when ``restore_best_weights``).

    With ``freeze_epochs``, the layers named in ``frozen`` (pretrained ones) stay fixed for
    that many epochs first, then everything is fine-tuned with early stopping; the epochs
    count as one run (``max_epochs`` includes the frozen ones)."""
    from dvclive import Live

    x_train, y_train = data.xy("train")
    x_val, y_val = data.xy("val")
    es = train.early_stopping
    stopper = keras.callbacks.EarlyStopping(
        monitor=es.monitor,
        mode=infer_direction(es.monitor),
        patience=es.patience,
        min_delta=es.min_delta,
        restore_best_weights=es.restore_best_weights,
    )
    guard = DivergenceGuard()
    # dvcyaml=False: dvc.yaml is ours and declares the plots; dvclive must not rewrite it.
    live = Live(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None)
    logger = _LiveEpochs(live=live)
    common = {
        "x": x_train,
        "y": y_train,
        "validation_data": (x_val, y_val),
        "batch_size": train.batch_size,
        "shuffle": True,
        "verbose": 2,
    }
    started = time.perf_counter()
    frozen_epochs = 0
    tuned: list[float] = []  # the monitored metric over the fine-tuning epochs
    if freeze_epochs and frozen:
        _set_trainable(net, frozen, False, train, data.task)
        first = net.fit(epochs=freeze_epochs, callbacks=[guard, logger, *callbacks], **common)
        frozen_epochs = len(first.history.get("loss", []))
        _set_trainable(net, frozen, True, train, data.task)
    epochs = frozen_epochs
    if not guard.diverged:
        history = net.fit(
            initial_epoch=frozen_epochs,
            epochs=train.max_epochs,
            callbacks=[guard, stopper, logger, *callbacks],
            **common,
        )
        epochs += len(history.history.get("loss", []))
        tuned = history.history.get(es.monitor, [])
    live.end()
    seconds = time.perf_counter() - started
    any_finite = any(math.isfinite(v) for v in tuned)
    metrics: dict[str, Any] = {
        "epochs_trained": epochs,
        # EarlyStopping counts epochs from the start of the whole run (initial_epoch).
        "best_epoch": int(stopper.best_epoch) + 1 if any_finite else None,
        "diverged": guard.diverged,
        "diverged_at_epoch": guard.epoch if guard.diverged else None,
        "learning_rate_effective": train.effective_learning_rate,
    }
    metrics.update(_measure(net, "train", x_train, y_train, train.batch_size, data.task))
    metrics.update(_measure(net, "val", x_val, y_val, train.batch_size, data.task))
    return FitResult(
        metrics=metrics,
        train_seconds=seconds,
        samples_per_second=len(x_train) * epochs / seconds if seconds > 0 else 0.0,
    )


def _set_trainable(
    net: keras.Model, names: Sequence[str], trainable: bool, train: TrainParams, task: Task
) -> None:
    for name in names:
        net.get_layer(name).trainable = trainable
    compile_model(net, train, task)  # Keras applies a change of `trainable` at compile


def _measure(
    net: keras.Model, prefix: str, x: np.ndarray, y: np.ndarray, batch_size: int, task: Task
) -> dict[str, float]:
    """Loss and metrics of the kept model, with dropout off, as ``{prefix}_{name}``."""
    values = net.evaluate(x, y, batch_size=batch_size, verbose=0, return_dict=True)
    return {f"{prefix}_{name}": float(values[name]) for name in fit_metric_names(task)}
