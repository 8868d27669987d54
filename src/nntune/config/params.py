"""Typed parameters and the one loader that turns ``params.yaml`` into them.

The loader checks every key before anything heavy (TensorFlow) is imported, so a typo or
a bad value stops a run in milliseconds with a message naming the dotted key, the value
and what is allowed. All problems in the file are reported at once.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, cast

import yaml

from nntune.config.ensemble_section import EnsembleParams, parse_ensemble
from nntune.config.metrics import (
    TASKS,
    Direction,
    Objective,
    Task,
    infer_direction,
    validation_metric_names,
)
from nntune.config.reader import SectionReader
from nntune.config.sections import (
    ACTIVATIONS,
    BACKENDS,
    DATA_SUFFIXES,
    MIRRORED_ON_JAX,
    MISSING_POLICIES,
    RECONSTRUCTION_LOSSES,
    SCALINGS,
    STRATEGIES,
    DataParams,
    EvaluateParams,
    ModelParams,
    Params,
    ParamsError,
    PretrainParams,
    RuntimeParams,
    TrainParams,
)
from nntune.config.train_section import parse_train


def load_params(path: str | Path) -> Params:
    """Read and check a params file; raise ``ParamsError`` listing every problem."""
    return parse_params(read_params_mapping(path), source=str(path))


def read_params_mapping(path: str | Path) -> dict[str, Any]:
    """The params file as plain YAML data, unchecked (what grid points are applied to)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(str(path), ["file not found; run from the project root"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ParamsError(str(path), [f"not valid YAML: {exc}"]) from None
    return raw if isinstance(raw, dict) else {}


def parse_params(raw: Any, source: str = "params") -> Params:
    """Check an already-parsed mapping (what ``yaml.safe_load`` returns)."""
    problems: list[str] = []
    root = SectionReader(raw, "", problems)
    with root.section("data") as s:
        data = _parse_data(s)
    with root.section("model") as s:
        model = _parse_model(s)
    with root.section("train") as s:
        train = parse_train(s, data.task if data else None)
    with root.section("runtime") as s:
        runtime = _parse_runtime(s)
    with root.section("evaluate") as s:
        evaluate = _parse_evaluate(s, data.task if data else None)
    with root.section("pretrain") as s:
        pretrain = _parse_pretrain(s, model, train)
    ensemble = EnsembleParams()
    if root.has("ensemble"):  # added after projects were scaffolded without it
        with root.section("ensemble") as s:
            ensemble = parse_ensemble(s)
    root.reject_unknown(allowed_extra=_UNCHECKED_TOP_LEVEL)
    if data and train and pretrain:
        problems.extend(_cross_validation_problems(data, train, pretrain))
    if problems:
        raise ParamsError(source, problems)
    # no problems means every section parsed
    assert data and model and train and evaluate and pretrain
    return Params(
        data=data,
        model=model,
        train=train,
        runtime=runtime,
        evaluate=evaluate,
        pretrain=pretrain,
        ensemble=ensemble,
    )


def _cross_validation_problems(
    data: DataParams, train: TrainParams, pretrain: PretrainParams
) -> list[str]:
    """What cross-validation cannot do: continue a parent's model (each fold trains from
    scratch) or pretrain (the folds would train without the encoder, so their mean would
    not measure what the final model does)."""
    if not data.cv_folds:
        return []
    problems = []
    if train.warm_start.enabled:
        problems.append(
            "data.cv_folds is set while train.warm_start continues a parent model (ASHA / "
            "Hyperband promotions): every fold trains from scratch; use `nntune search "
            "--method tpe`, or set data.cv_folds: []"
        )
    if pretrain.enabled:
        problems.append(
            "data.cv_folds is set while pretrain.enabled is true: the folds train without "
            "the pretrained encoder, so their mean would not measure this model; set one of "
            "them off"
        )
    return problems


# Top-level sections that other tools own (none yet); listed here so they are not rejected.
_UNCHECKED_TOP_LEVEL: frozenset[str] = frozenset()


def _parse_data(s: SectionReader) -> DataParams | None:
    source = s.string("source")
    if source and not source.lower().endswith(DATA_SUFFIXES):
        s.problem("source", source, f"must be a CSV or Parquet file ({', '.join(DATA_SUFFIXES)})")
    elif source and (Path(source).is_absolute() or ".." in Path(source).parts):
        # DVC tracks and copies only what is inside the project: a queued experiment in
        # .dvc/tmp/exps/ would otherwise read a file nobody versioned.
        s.problem(
            "source",
            source,
            "must be a path inside the project (relative, no '..'); copy the file into "
            "data/ and `dvc add` it, or `dvc import` it",
        )
    schema = s.string("schema")
    if schema and not schema.lower().endswith((".yaml", ".yml")):
        s.problem("schema", schema, "must be a pandera schema file ending in .yaml")
    test_fraction = s.number("test_fraction", low=0.0, high=1.0, open_interval=True)
    val_fraction = s.number("val_fraction", low=0.0, high=1.0, open_interval=True)
    if test_fraction + val_fraction >= 0.9 and not s.failed({"test_fraction", "val_fraction"}):
        s.problem(
            "val_fraction",
            val_fraction,
            f"with test_fraction {test_fraction} leaves under 10% of rows for training; "
            "test_fraction + val_fraction must be < 0.9",
        )
    target = s.string("target")
    features = _column_list(s, "features", allow_all=True)
    exclude = _column_list(s, "exclude", allow_all=False) or ()
    for name in (*(features or ()), *exclude):
        if name == target:
            s.problem(
                "features" if name in (features or ()) else "exclude",
                name,
                "must not name the target column",
            )
            break
    label_fraction = s.number("label_fraction", low=0.0, high=1.0)
    if label_fraction == 0.0 and not s.failed({"label_fraction"}):
        s.problem("label_fraction", label_fraction, "must be > 0 (some rows must keep labels)")
    delimiter = s.string("delimiter")
    if delimiter and delimiter != "auto" and len(delimiter) != 1:
        s.problem("delimiter", delimiter, "must be auto or a single character such as , ; or |")
    params = DataParams(
        source=source,
        schema=schema,
        target=target,
        task=s.choice("task", TASKS),
        test_fraction=test_fraction,
        val_fraction=val_fraction,
        split_seed=s.integer("split_seed", minimum=0),
        features=features,
        exclude=exclude,
        missing=s.choice("missing", MISSING_POLICIES),
        delimiter=delimiter,
        label_fraction=label_fraction,
        # Optional keys (newer than some projects): their defaults are the old behaviour.
        scaling=s.optional("scaling", "standard", lambda k: s.choice(k, SCALINGS)),
        max_categories=s.optional("max_categories", 0, lambda k: _max_categories(s, k)),
        min_frequency=s.optional("min_frequency", 1, lambda k: s.integer(k, minimum=1)),
        cv_folds=s.optional("cv_folds", (), lambda k: _cv_folds(s, k)),
    )
    return None if s.failed() else params


MAX_FOLDS = 20


def _cv_folds(s: SectionReader, key: str) -> tuple[int, ...]:
    value = s.take(key)
    folds = value if isinstance(value, list) and all(type(v) is int for v in value) else None
    sized = folds is not None and (not folds or 2 <= len(folds) <= MAX_FOLDS)
    if folds is not None and sized and folds == list(range(len(folds))):
        return tuple(folds)
    s.problem(
        key,
        value,
        f"must be [] (no cross-validation) or the folds 0..k-1 for k in 2..{MAX_FOLDS}, such "
        "as [0, 1, 2, 3, 4] for 5 folds: a list, because dvc.yaml makes one stage per entry",
    )
    return ()


def _max_categories(s: SectionReader, key: str) -> int:
    value = s.integer(key, minimum=0)
    if value == 1 and not s.failed({key}):
        s.problem(
            key,
            value,
            "must be 0 (no cap) or >= 2: one category plus the group of infrequent ones; "
            "to drop a column, list it in data.exclude",
        )
    return value


def _column_list(s: SectionReader, key: str, allow_all: bool) -> tuple[str, ...] | None:
    value = s.take(key)
    if value is None and key in s.bad:
        return None
    if allow_all and value == "all":
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        allowed = "all or a list of column names" if allow_all else "a list of column names"
        s.problem(key, value, f"must be {allowed}")
        return None
    if allow_all and not value:
        s.problem(key, value, "lists no column; use all, or name at least one")
    if len(set(value)) != len(value):
        s.problem(key, value, "names a column twice")
    return tuple(value)


def _parse_model(s: SectionReader) -> ModelParams | None:
    hidden_layers = s.integer("hidden_layers", minimum=0)
    units = _parse_units(s, hidden_layers)
    params = ModelParams(
        hidden_layers=hidden_layers,
        units=units,
        activation=s.choice("activation", ACTIVATIONS),
        dropout=s.number("dropout", low=0.0, high=1.0, open_high=True),
        l2=s.number("l2", low=0.0),
        batch_norm=s.optional("batch_norm", False, s.boolean),
    )
    return None if s.failed() else params


def _parse_units(s: SectionReader, hidden_layers: int) -> tuple[int, ...]:
    value = s.take("units")
    if isinstance(value, bool) or not isinstance(value, int | list):
        s.problem("units", value, "must be a positive integer or a list of them, one per layer")
        return ()
    if isinstance(value, int):
        values = [value] * hidden_layers
    else:
        values = value
        if not s.failed({"hidden_layers"}) and len(values) != hidden_layers:
            s.problem(
                "units",
                value,
                f"lists {len(values)} layer size(s) but model.hidden_layers is {hidden_layers}; "
                "give one per hidden layer or a single integer for all",
            )
    for v in [value] if isinstance(value, int) else values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            s.problem("units", value, "every layer size must be an integer >= 1")
            break
    return tuple(int(v) for v in values if isinstance(v, int))


def _parse_runtime(s: SectionReader) -> RuntimeParams:
    device = s.string("device")
    if device and not re.fullmatch(r"auto|cpu|gpu:\d+", device):
        s.problem("device", device, "must be auto, cpu or gpu:N (N = 0, 1, ... among visible GPUs)")
    backend = s.choice("backend", BACKENDS) if s.has("backend") else BACKENDS[0]
    strategy = s.choice("strategy", STRATEGIES)
    if backend == "jax" and strategy == "mirrored":
        s.problem("strategy", strategy, MIRRORED_ON_JAX)
    return RuntimeParams(
        seed=s.integer("seed", minimum=0),
        deterministic=s.boolean("deterministic"),
        device=device,
        allow_cpu_fallback=s.boolean("allow_cpu_fallback"),
        mixed_precision=s.boolean("mixed_precision"),
        strategy=strategy,
        # Optional: a project scaffolded before the key existed trains on TensorFlow.
        backend=backend,
    )


def _parse_evaluate(s: SectionReader, task: Task | None) -> EvaluateParams | None:
    with s.section("objective") as o:
        metric = o.choice("metric", validation_metric_names(task)) if task else o.string("metric")
        direction = cast(Direction, o.choice("direction", ("min", "max")))
        if not o.failed() and direction != infer_direction(metric):
            o.problem(
                "direction",
                direction,
                f"contradicts the metric: lower {metric} is "
                f"{'worse' if infer_direction(metric) == 'max' else 'better'}, "
                f"so use '{infer_direction(metric)}'",
            )
    return None if s.failed() else EvaluateParams(objective=Objective(metric, direction))


def _parse_pretrain(
    s: SectionReader, model: ModelParams | None, train: TrainParams | None
) -> PretrainParams | None:
    enabled = s.boolean("enabled")
    freeze_epochs = s.integer("freeze_epochs", minimum=0)
    params = PretrainParams(
        enabled=enabled,
        epochs=s.integer("epochs", minimum=1),
        learning_rate=s.number("learning_rate", low=0.0, open_interval=True),
        batch_size=s.integer("batch_size", minimum=1),
        patience=s.integer("patience", minimum=0),
        loss=s.choice("loss", RECONSTRUCTION_LOSSES),
        freeze_epochs=freeze_epochs,
        noise=s.number("noise", low=0.0),
    )
    if enabled and model is not None and model.hidden_layers == 0:
        s.problem(
            "enabled",
            enabled,
            "needs model.hidden_layers >= 1: the autoencoder pretrains the hidden layers, and "
            "a model with none has nothing to pretrain; set pretrain.enabled: false or add a "
            "hidden layer",
        )
    if enabled and freeze_epochs and train is not None and train.warm_start.enabled:
        s.problem(
            "freeze_epochs",
            freeze_epochs,
            "must be 0 when train.warm_start continues a parent model: the parent already "
            "ran the frozen epochs",
        )
    if (
        enabled
        and train is not None
        and freeze_epochs >= train.max_epochs
        and not s.failed({"freeze_epochs"})
    ):
        s.problem(
            "freeze_epochs",
            freeze_epochs,
            f"must be < train.max_epochs ({train.max_epochs}): fine-tuning needs at least one "
            "epoch with every layer trainable",
        )
    return None if s.failed() else params
