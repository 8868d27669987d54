"""The ``train`` section of ``params.yaml``: optimiser, rate and its schedule, batches,
early stopping, rate scaling and warm start. Apart from ``nntune.config.params`` (which
calls it) only to keep each module small."""

from __future__ import annotations

import re
from typing import Literal

from nntune.config.metrics import Task, validation_metric_names
from nntune.config.reader import SectionReader
from nntune.config.sections import (
    LR_SCALING_RULES,
    OPTIMIZERS,
    SCHEDULES,
    EarlyStoppingParams,
    LrScalingParams,
    TrainParams,
    WarmStartParams,
)


def parse_train(s: SectionReader, task: Task | None) -> TrainParams | None:
    optimizer = s.choice("optimizer", OPTIMIZERS)
    learning_rate = s.number("learning_rate", low=0.0, open_interval=True)
    momentum = s.number("momentum", low=0.0, high=1.0, open_high=True)
    if momentum and optimizer in ("adam", "adamw"):
        s.problem(
            "momentum", momentum, f"is not used by {optimizer}; set it to 0 or pick sgd / rmsprop"
        )
    batch_size = s.integer("batch_size", minimum=1)
    max_epochs = s.integer("max_epochs", minimum=1)
    with s.section("early_stopping") as es:
        allowed = validation_metric_names(task) if task else ()
        early_stopping = EarlyStoppingParams(
            enabled=es.boolean("enabled"),
            monitor=es.choice("monitor", allowed) if task else es.string("monitor"),
            patience=es.integer("patience", minimum=0),
            min_delta=es.number("min_delta", low=0.0),
            restore_best_weights=es.boolean("restore_best_weights"),
        )
    with s.section("lr_scaling") as lr:
        lr_scaling = LrScalingParams(
            rule=lr.choice("rule", LR_SCALING_RULES),
            reference_batch_size=lr.integer("reference_batch_size", minimum=1),
        )
    with s.section("warm_start") as ws:
        warm_start = _parse_warm_start(ws, max_epochs, s.failed({"max_epochs"}))
    weight_decay = s.optional("weight_decay", 0.0, lambda k: s.number(k, low=0.0, high=1.0))
    warmup_epochs = s.optional("warmup_epochs", 0, lambda k: s.integer(k, minimum=0))
    if warmup_epochs >= max_epochs and not s.failed({"warmup_epochs", "max_epochs"}):
        s.problem(
            "warmup_epochs",
            warmup_epochs,
            f"must be < train.max_epochs ({max_epochs}): the warm-up only ramps the rate up",
        )
    params = TrainParams(
        steps_per_execution=_steps_per_execution(s),
        weight_decay=weight_decay,
        schedule=s.optional("schedule", "constant", lambda k: s.choice(k, SCHEDULES)),
        warmup_epochs=warmup_epochs,
        label_smoothing=s.optional("label_smoothing", 0.0, lambda k: _label_smoothing(s, k, task)),
        optimizer=optimizer,
        learning_rate=learning_rate,
        momentum=momentum,
        batch_size=batch_size,
        max_epochs=max_epochs,
        early_stopping=early_stopping,
        lr_scaling=lr_scaling,
        warm_start=warm_start,
    )
    return None if s.failed() else params


def _label_smoothing(s: SectionReader, key: str, task: Task | None) -> float:
    value = s.number(key, low=0.0, high=1.0, open_high=True)
    if value and task == "regression":
        s.problem(key, value, "smooths class labels; a regression task has none: set it to 0")
    return value


def _parse_warm_start(s: SectionReader, max_epochs: int, max_epochs_bad: bool) -> WarmStartParams:
    experiment = s.take("experiment")
    md5 = s.take("model_md5")
    epochs = s.integer("epochs", minimum=0)
    experiment = "" if experiment is None else experiment
    md5 = "" if md5 is None else md5
    if not isinstance(experiment, str):
        s.problem("experiment", experiment, 'must be an experiment name or "" (from scratch)')
        experiment = ""
    if not isinstance(md5, str):
        s.problem("model_md5", md5, 'must be an md5 (32 hex digits) or ""')
        md5 = ""
    params = WarmStartParams(experiment=experiment.strip(), model_md5=md5.strip(), epochs=epochs)
    if params.enabled:
        if not re.fullmatch(r"[0-9a-f]{32}", params.model_md5) and not s.failed({"model_md5"}):
            s.problem(
                "model_md5",
                md5,
                f"must be the md5 of {params.experiment}'s models/last.keras (its dvc.lock "
                "lists it) when warm_start.experiment is set",
            )
        if epochs < 1 and not s.failed({"epochs"}):
            s.problem("epochs", epochs, "must be >= 1: the epochs the parent model trained")
        elif epochs >= max_epochs and not max_epochs_bad and not s.failed({"epochs"}):
            s.problem(
                "epochs",
                epochs,
                f"must be < train.max_epochs ({max_epochs}): a continued run trains from "
                "epoch warm_start.epochs up to max_epochs",
            )
    elif params.model_md5 or epochs:
        s.problem(
            "experiment",
            "",
            "is empty while warm_start.model_md5 or warm_start.epochs is set; set all three "
            '(or leave model_md5 "" and epochs 0 to train from scratch)',
        )
    return params


def _steps_per_execution(s: SectionReader) -> int | Literal["auto"]:
    """``train.steps_per_execution``: "auto" (also when left out) or a whole number >= 1."""
    if not s.has("steps_per_execution"):
        return "auto"
    value = s.take("steps_per_execution")
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        s.problem(
            "steps_per_execution",
            value,
            "must be auto (chosen from the steps per epoch) or a whole number of batches >= 1",
        )
        return "auto"
    return value
