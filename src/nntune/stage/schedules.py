"""Learning-rate schedules over epochs (``train.schedule``, ``train.warmup_epochs``).

The rate changes at the start of each epoch, never within one: a batch-level hook would
make Keras on JAX wait for the device after every call (see ``nntune.stage.training``).
The rate of an epoch is a function of the epoch's number alone for ``constant`` and
``cosine``, so a continued run (``train.warm_start``) takes up the same curve where its
parent stopped. ``plateau`` is Keras' ``ReduceLROnPlateau``: it halves the rate when the
early-stopping metric stalls; its count of stalled epochs is not saved with the model, so a
continued run starts counting again.

- warm-up: the rate grows linearly over the first ``warmup_epochs`` epochs,
  ``rate * (epoch + 1) / (warmup_epochs + 1)`` (Goyal et al. 2017);
- cosine: after the warm-up, ``rate * (1 + cos(pi * t)) / 2`` with ``t`` going from 0 at
  the first epoch after the warm-up to 1 at ``train.max_epochs`` (Loshchilov & Hutter 2017,
  SGDR without restarts; RealMLP's schedule is of this family). Its horizon is
  ``max_epochs``: early stopping may end training before the rate has decayed.
"""

from __future__ import annotations

import math
from typing import Any

import keras

from nntune.config.metrics import infer_direction
from nntune.config.sections import TrainParams

PLATEAU_FACTOR = 0.5  # the rate is multiplied by this when the monitored metric stalls
MIN_RATE_FRACTION = 1e-3  # plateau never goes below this fraction of the rate


def epoch_rate(train: TrainParams, epoch: int) -> float:
    """The rate of epoch ``epoch`` (0-based) under ``constant`` or ``cosine`` with warm-up;
    for ``plateau`` the rate before any reduction."""
    rate = train.effective_learning_rate
    warmup = train.warmup_epochs
    if epoch < warmup:
        return rate * (epoch + 1) / (warmup + 1)
    if train.schedule == "cosine":
        span = max(train.max_epochs - warmup, 1)
        progress = min((epoch - warmup) / span, 1.0)
        return rate * 0.5 * (1.0 + math.cos(math.pi * progress))
    return rate


class EpochRate(keras.callbacks.Callback):  # type: ignore[misc]  # Keras is untyped
    """Sets the optimiser's rate at each epoch's start from ``epoch_rate`` and logs it as
    ``learning_rate`` at the epoch's end. Under ``plateau`` it only runs the warm-up and
    leaves the rate to ``ReduceLROnPlateau`` afterwards."""

    def __init__(self, train: TrainParams) -> None:
        super().__init__()
        self.train = train

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.train.schedule == "plateau" and epoch > self.train.warmup_epochs:
            return
        self.model.optimizer.learning_rate = epoch_rate(self.train, epoch)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None:
            rate = self.model.optimizer.learning_rate
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(rate))


def schedule_callbacks(train: TrainParams) -> list[keras.callbacks.Callback]:
    """The callbacks that carry out ``train.schedule`` and the warm-up (none for a constant
    rate without warm-up: such a run logs and trains exactly as before the schedules)."""
    if not train.scheduled:
        return []
    # EpochRate first: it logs the rate the epoch used, before a plateau reduces it.
    callbacks: list[keras.callbacks.Callback] = [EpochRate(train)]
    if train.schedule == "plateau":
        es = train.early_stopping
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=es.monitor,
                mode=infer_direction(es.monitor),
                factor=PLATEAU_FACTOR,
                # A third of early stopping's patience: the rate gets to drop (about twice)
                # before early stopping gives up on the run.
                patience=max(1, es.patience // 3),
                min_delta=es.min_delta,
                min_lr=train.effective_learning_rate * MIN_RATE_FRACTION,
                verbose=0,
            ),
        )
    return callbacks
