"""Typed parameters and the one loader that turns ``params.yaml`` into them.

The loader checks every key before anything heavy (TensorFlow) is imported, so a typo or
a bad value stops a run in milliseconds with a message naming the dotted key, the value
and what is allowed. All problems in the file are reported at once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import yaml

from nntune.errors import NntuneError
from nntune.metrics import (
    TASKS,
    Direction,
    Objective,
    Task,
    infer_direction,
    validation_metric_names,
)

Optimizer = Literal["adam", "sgd", "rmsprop"]
LrScalingRule = Literal["none", "linear"]
Strategy = Literal["none", "mirrored"]
MissingPolicy = Literal["error", "drop", "impute"]
MISSING_POLICIES: tuple[MissingPolicy, ...] = ("error", "drop", "impute")
ReconstructionLoss = Literal["reconstruction_crossentropy", "mse"]
RECONSTRUCTION_LOSSES: tuple[ReconstructionLoss, ...] = ("reconstruction_crossentropy", "mse")

OPTIMIZERS: tuple[Optimizer, ...] = ("adam", "sgd", "rmsprop")
ACTIVATIONS = ("relu", "elu", "selu", "gelu", "tanh", "sigmoid", "swish", "leaky_relu")
LR_SCALING_RULES: tuple[LrScalingRule, ...] = ("none", "linear")
STRATEGIES: tuple[Strategy, ...] = ("none", "mirrored")
DATA_SUFFIXES = (".csv", ".parquet", ".pq")


class ParamsError(NntuneError):
    """Raised with every problem found in a params file, one per line."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} invalid parameter(s):\n{lines}")


@dataclass(frozen=True)
class DataParams:
    source: str
    schema: str
    target: str
    task: Task
    test_fraction: float
    val_fraction: float
    split_seed: int
    features: tuple[str, ...] | None = None  # None: every column but the target and exclude
    exclude: tuple[str, ...] = ()  # never features: IDs, leaky columns
    missing: MissingPolicy = "error"
    delimiter: str = "auto"  # CSV only: "auto" sniffs it
    label_fraction: float = 1.0  # share of training rows that keep their label


@dataclass(frozen=True)
class PretrainParams:
    """Autoencoder pretraining of the hidden layers (the seed's reconstruction entropy)."""

    enabled: bool
    epochs: int
    learning_rate: float
    batch_size: int
    patience: int
    loss: ReconstructionLoss
    freeze_epochs: int  # fine-tuning epochs with the pretrained layers frozen
    noise: float  # std of Gaussian noise on the encoder's input (denoising); 0 = none


@dataclass(frozen=True)
class ModelParams:
    hidden_layers: int
    units: tuple[int, ...]  # one entry per hidden layer (an int in the file is repeated)
    activation: str
    dropout: float
    l2: float


@dataclass(frozen=True)
class EarlyStoppingParams:
    enabled: bool
    monitor: str
    patience: int
    min_delta: float
    restore_best_weights: bool


@dataclass(frozen=True)
class LrScalingParams:
    rule: LrScalingRule
    reference_batch_size: int


@dataclass(frozen=True)
class WarmStartParams:
    """Continue the model a parent experiment saved instead of starting from random
    weights (successive halving's promotions). The md5 is what makes the lineage exact: the
    warmstart stage takes exactly that file from DVC's cache."""

    experiment: str  # "" = train from scratch
    model_md5: str
    epochs: int  # epochs the parent trained: this run continues at that epoch

    @property
    def enabled(self) -> bool:
        return bool(self.experiment)


@dataclass(frozen=True)
class TrainParams:
    optimizer: Optimizer
    learning_rate: float
    momentum: float
    batch_size: int
    max_epochs: int
    early_stopping: EarlyStoppingParams
    lr_scaling: LrScalingParams
    warm_start: WarmStartParams

    @property
    def effective_learning_rate(self) -> float:
        """The rate the optimiser really uses: with ``lr_scaling.rule: linear`` it grows in
        proportion to the batch size (Goyal et al. 2017, "Accurate, Large Minibatch SGD")."""
        if self.lr_scaling.rule == "linear":
            return self.learning_rate * self.batch_size / self.lr_scaling.reference_batch_size
        return self.learning_rate


@dataclass(frozen=True)
class RuntimeParams:
    seed: int
    deterministic: bool
    device: str  # auto, cpu or gpu:N
    allow_cpu_fallback: bool
    mixed_precision: bool
    strategy: Strategy


@dataclass(frozen=True)
class EvaluateParams:
    objective: Objective


@dataclass(frozen=True)
class Params:
    data: DataParams
    model: ModelParams
    train: TrainParams
    runtime: RuntimeParams
    evaluate: EvaluateParams
    pretrain: PretrainParams


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
    root = _Section(raw, "", problems)
    with root.section("data") as s:
        data = _parse_data(s)
    with root.section("model") as s:
        model = _parse_model(s)
    with root.section("train") as s:
        train = _parse_train(s, data.task if data else None)
    with root.section("runtime") as s:
        runtime = _parse_runtime(s)
    with root.section("evaluate") as s:
        evaluate = _parse_evaluate(s, data.task if data else None)
    with root.section("pretrain") as s:
        pretrain = _parse_pretrain(s, model, train)
    root.reject_unknown(allowed_extra=_UNCHECKED_TOP_LEVEL)
    if problems:
        raise ParamsError(source, problems)
    # no problems means every section parsed
    assert data and model and train and evaluate and pretrain
    return Params(
        data=data, model=model, train=train, runtime=runtime, evaluate=evaluate, pretrain=pretrain
    )


# Top-level sections that other tools own (none yet); listed here so they are not rejected.
_UNCHECKED_TOP_LEVEL: frozenset[str] = frozenset()


def _parse_data(s: _Section) -> DataParams | None:
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
    )
    return None if s.failed() else params


def _column_list(s: _Section, key: str, allow_all: bool) -> tuple[str, ...] | None:
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


def _parse_model(s: _Section) -> ModelParams | None:
    hidden_layers = s.integer("hidden_layers", minimum=0)
    units = _parse_units(s, hidden_layers)
    params = ModelParams(
        hidden_layers=hidden_layers,
        units=units,
        activation=s.choice("activation", ACTIVATIONS),
        dropout=s.number("dropout", low=0.0, high=1.0, open_high=True),
        l2=s.number("l2", low=0.0),
    )
    return None if s.failed() else params


def _parse_units(s: _Section, hidden_layers: int) -> tuple[int, ...]:
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


def _parse_train(s: _Section, task: Task | None) -> TrainParams | None:
    optimizer = s.choice("optimizer", OPTIMIZERS)
    learning_rate = s.number("learning_rate", low=0.0, open_interval=True)
    momentum = s.number("momentum", low=0.0, high=1.0, open_high=True)
    if momentum and optimizer == "adam":
        s.problem("momentum", momentum, "is not used by adam; set it to 0 or pick sgd / rmsprop")
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
    params = TrainParams(
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


def _parse_warm_start(s: _Section, max_epochs: int, max_epochs_bad: bool) -> WarmStartParams:
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


def _parse_runtime(s: _Section) -> RuntimeParams:
    device = s.string("device")
    if device and not re.fullmatch(r"auto|cpu|gpu:\d+", device):
        s.problem("device", device, "must be auto, cpu or gpu:N (N = 0, 1, ... among visible GPUs)")
    return RuntimeParams(
        seed=s.integer("seed", minimum=0),
        deterministic=s.boolean("deterministic"),
        device=device,
        allow_cpu_fallback=s.boolean("allow_cpu_fallback"),
        mixed_precision=s.boolean("mixed_precision"),
        strategy=s.choice("strategy", STRATEGIES),
    )


def _parse_evaluate(s: _Section, task: Task | None) -> EvaluateParams | None:
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
    s: _Section, model: ModelParams | None, train: TrainParams | None
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


_T = TypeVar("_T")


class _Section:
    """One mapping in the params file: typed getters that record problems under a dotted
    key instead of raising, so the user sees every mistake in one go."""

    def __init__(self, raw: Any, prefix: str, problems: list[str], quiet: bool = False) -> None:
        self.prefix = prefix
        self.problems = problems
        self.quiet = quiet  # the section itself is missing or malformed: reported once above
        self.seen: set[str] = set()
        self.bad: set[str] = set()
        self.raw: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        self.valid_mapping = isinstance(raw, Mapping)

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def problem(self, name: str, value: Any, message: str) -> None:
        self.bad.add(name)
        if not self.quiet:
            self.problems.append(f"{self.key(name)} {message}, got {value!r}")

    def failed(self, names: set[str] | None = None) -> bool:
        return bool(self.bad if names is None else self.bad & names)

    def take(self, name: str) -> Any:
        self.seen.add(name)
        if name not in self.raw:
            self.bad.add(name)
            if not self.quiet:
                self.problems.append(f"{self.key(name)} is missing")
            return None
        return self.raw[name]

    @contextmanager
    def section(self, name: str) -> Iterator[_Section]:
        value = self.take(name)
        broken = not isinstance(value, Mapping)
        child = _Section(value, f"{self.key(name)}.", self.problems, quiet=self.quiet or broken)
        if value is not None and broken:
            self.problem(name, value, "must be a mapping of keys to values")
        yield child
        if child.valid_mapping:
            child.reject_unknown()
        if child.bad or not child.valid_mapping:
            self.bad.add(name)

    def reject_unknown(self, allowed_extra: frozenset[str] = frozenset()) -> None:
        for name in sorted(set(self.raw) - self.seen - allowed_extra, key=str):
            known = ", ".join(sorted(self.seen))
            self.bad.add(str(name))
            self.problems.append(f"{self.key(str(name))} is not a known key (known here: {known})")

    def string(self, name: str) -> str:
        value = self.take(name)
        if value is None and name in self.bad:
            return ""
        if not isinstance(value, str) or not value.strip():
            self.problem(name, value, "must be a non-empty string")
            return ""
        return value

    def choice(self, name: str, allowed: tuple[_T, ...]) -> _T:
        value = self.take(name)
        if value is None and name in self.bad:
            return allowed[0] if allowed else cast(_T, "")
        if value not in allowed:
            self.problem(name, value, f"must be one of {', '.join(map(str, allowed))}")
            return allowed[0] if allowed else cast(_T, "")
        return cast(_T, value)

    def boolean(self, name: str) -> bool:
        value = self.take(name)
        if value is None and name in self.bad:
            return False
        if not isinstance(value, bool):
            self.problem(name, value, "must be true or false")
            return False
        return value

    def integer(self, name: str, minimum: int | None = None) -> int:
        value = self.take(name)
        if value is None and name in self.bad:
            return minimum or 0
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(name, value, "must be an integer")
            return minimum or 0
        if minimum is not None and value < minimum:
            self.problem(name, value, f"must be >= {minimum}")
        return value

    def number(
        self,
        name: str,
        low: float | None = None,
        high: float | None = None,
        open_interval: bool = False,
        open_high: bool = False,
    ) -> float:
        """A float. ``open_interval`` excludes both bounds, ``open_high`` only the upper."""
        value = self.take(name)
        if value is None and name in self.bad:
            return low or 0.0
        number = _as_float(value)
        if number is None or not math.isfinite(number):
            self.problem(name, value, "must be a finite number")
            return low or 0.0
        if low is not None and (number <= low if open_interval else number < low):
            self.problem(name, value, f"must be {'>' if open_interval else '>='} {low:g}")
        open_top = open_interval or open_high
        if high is not None and (number >= high if open_top else number > high):
            self.problem(name, value, f"must be {'<' if open_top else '<='} {high:g}")
        return number


def _as_float(value: Any) -> float | None:
    # PyYAML reads "1e-3" (no dot) as a string, while `dvc exp run -S` writes it that way;
    # accept numeric strings so the two agree.
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None
