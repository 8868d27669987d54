"""Adaptive search, the pure part: the search space with continuous ranges, sampling a point
from an Optuna trial, and the successive-halving schedule (which rung each trial is at, who
gets promoted). No DVC and no Keras here; ``nntune.tuning.driver`` runs it against DVC's queue.

Successive halving follows ASHA (Li et al. 2018, "A System for Massively Parallel
Hyperparameter Tuning"): a trial that finished rung k is promoted to rung k+1 (``eta``
times the epochs, continuing its own model) only while it is among the best
``floor(n_k / eta)`` of the ``n_k`` trials that finished rung k; otherwise it waits there,
and may be promoted later if fewer good trials arrive. Hyperband runs several such brackets
that start at different epoch budgets.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from nntune.config.mapping import apply
from nntune.config.metrics import Objective
from nntune.config.params import parse_params
from nntune.config.sections import DataParams, ParamsError
from nntune.errors import NntuneError
from nntune.tuning.grid import GridError, check_space, read_space_file

if TYPE_CHECKING:
    import optuna

Method = Literal["tpe", "asha", "hyperband"]
METHODS: tuple[Method, ...] = ("tpe", "asha", "hyperband")


class SearchError(NntuneError):
    pass


@dataclass(frozen=True)
class Choice:
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    log: bool = False
    integer: bool = False
    step: float | None = None


Dimension = Choice | Range

# The seed article's advice as a space: 0 / 1-2 / a few hidden layers, 50-200 neurons, batch
# 32 or 64 (larger with a proportionally larger rate), a rate grid-searched around 0.01.
DEFAULT_SPACE: dict[str, Dimension] = {
    "model.hidden_layers": Range(0, 3, integer=True),
    "model.units": Range(50, 200, integer=True),
    "train.batch_size": Choice((32, 64, 128)),
    "train.lr_scaling.rule": Choice(("linear",)),
    "train.learning_rate": Range(1e-4, 1e-1, log=True),
    "model.dropout": Range(0.0, 0.5),
}


# Published practice for MLPs on tables, shrunk to what a trial on 2 cores affords:
# Gorishniy et al. 2021 ("Revisiting Deep Learning Models for Tabular Data", the MLP's TPE
# space: 1-8 layers of 1-512 units, dropout 0-0.5, AdamW at 1e-5..1e-2 with weight decay
# 1e-6..1e-3, quantile-normalised inputs) and Holzmüller et al. 2024 (RealMLP: robust
# scaling, a cosine-type schedule, label smoothing 0.1, weight decay; tuned defaults of 3 x
# 256). Here 1-4 layers of 64-512 units (log scale), the three scalings, constant or cosine
# with a 5-epoch warm-up under the cosine's horizon, batches sized to the table (below) with
# square-root rate scaling (Malladi et al. 2022), and label smoothing 0 or 0.1 for
# classification.
TABULAR_SPACE: dict[str, Dimension] = {
    "data.scaling": Choice(("quantile", "robust", "standard")),
    "model.hidden_layers": Range(1, 4, integer=True),
    "model.units": Range(64, 512, log=True, integer=True),
    "model.dropout": Range(0.0, 0.5),
    "model.batch_norm": Choice((False, True)),
    "train.optimizer": Choice(("adamw",)),
    "train.learning_rate": Range(1e-4, 1e-2, log=True),
    "train.weight_decay": Range(1e-6, 1e-2, log=True),
    "train.schedule": Choice(("constant", "cosine")),
    "train.batch_size": Choice((64, 128, 256)),  # replaced by tabular_batches' choice
    "train.lr_scaling.rule": Choice(("sqrt",)),
}
TABULAR_CLASSIFICATION: dict[str, Dimension] = {"train.label_smoothing": Choice((0.0, 0.1))}
PRESETS = ("seed", "tabular")  # --space NAME: the seed article's space, the tabular one
# The tabular space's batch sizes follow the table: the largest three of these that leave at
# least MIN_STEPS updates per epoch on the rows a trial trains on. Early stopping's patience
# and the epoch budget count epochs, so on wine's ~95 training rows per fold a batch of 256
# is one update per epoch, and a study measured there never beat the defaults' batch of 32
# (benchmarks/README.md, issue 17). The published spaces assume tables of 10,000+ rows.
TABULAR_BATCHES = (16, 32, 64, 128, 256)
MIN_STEPS = 8


def tabular_batches(train_rows: int | None) -> tuple[int, ...]:
    """The tabular space's batch sizes for a table of ``train_rows`` training rows (per
    fold with cross-validation); ``None`` (not known): the sizes of a large table."""
    if train_rows is None:
        return TABULAR_BATCHES[-3:]
    fits = [b for b in TABULAR_BATCHES if train_rows / b >= MIN_STEPS]
    return tuple(fits[-3:]) or TABULAR_BATCHES[:1]


def preset_space(name: str, task: str, train_rows: int | None = None) -> dict[str, Dimension]:
    """A named space: ``seed`` (the seed article's, the default) or ``tabular`` (its batch
    sizes from :func:`tabular_batches`)."""
    if name == "seed":
        return dict(DEFAULT_SPACE)
    if name == "tabular":
        extra = TABULAR_CLASSIFICATION if task != "regression" else {}
        sized = {"train.batch_size": Choice(tabular_batches(train_rows))}
        return {**TABULAR_SPACE, **sized, **extra}
    raise SearchError(f"no search space preset {name!r}; the presets are {', '.join(PRESETS)}")


def chosen_space(space: str | Path | None, data: DataParams) -> dict[str, Dimension]:
    """``--space``: a YAML file, or a preset's name where no such file exists (the tabular
    preset reads the table's size from ``data.source``)."""
    if space is None:
        return preset_space("seed", data.task)
    if str(space) in PRESETS and not Path(space).exists():
        rows = training_rows(data) if str(space) == "tabular" else None
        return preset_space(str(space), data.task, rows)
    return load_search_space(space)


def training_rows(data: DataParams) -> int:
    """How many rows a trial trains on, as the prepare stage splits ``data.source``: the
    labelled rows (complete ones with ``data.missing: drop``), less the test split, less the
    validation split or, with ``data.cv_folds``, one fold; times ``data.label_fraction``."""
    from nntune.stage.data import read_table
    from nntune.stage.preprocess import feature_columns

    frame = read_table(data.source, data.delimiter)
    target = data.target
    if target not in frame.columns:
        raise SearchError(f"{data.source}: no column {target!r} (data.target in params.yaml)")
    frame = frame[frame[target].notna()]
    if data.missing == "drop":  # gaps in the features only, as prepare drops rows
        frame = frame.dropna(subset=feature_columns(frame, data))
    rest = len(frame) * (1.0 - data.test_fraction)
    k = len(data.cv_folds)
    kept = rest * (k - 1) / k if k else rest - len(frame) * data.val_fraction
    return max(1, int(kept * data.label_fraction))


def load_search_space(path: str | Path) -> dict[str, Dimension]:
    """A YAML mapping of dotted params keys to a list of values (as for ``nntune grid``) or
    to a range ``{low: 1e-4, high: 0.1, log: true}`` (``step`` optional; integers when both
    bounds are integers)."""
    raw = read_space_file(path)
    return parse_space(raw, str(path))


def parse_space(raw: Mapping[str, Any], source: str) -> dict[str, Dimension]:
    lists = {k: v for k, v in raw.items() if not isinstance(v, Mapping)}
    space: dict[str, Dimension] = {}
    if lists:
        try:
            checked = check_space(lists, source)
        except GridError as exc:
            raise SearchError(str(exc)) from None
        space.update({key: Choice(tuple(values)) for key, values in checked.items()})
    for key, spec in raw.items():
        if isinstance(spec, Mapping):
            space[str(key)] = _range(str(key), spec, source)
    if not space:
        raise SearchError(f"{source}: the search space is empty; vary at least one key")
    for key, dim in space.items():
        if isinstance(dim, Choice) and not all(
            v is None or isinstance(v, bool | int | float | str) for v in dim.values
        ):
            raise SearchError(f"{source}: {key}: search values must be numbers, text or bools")
    return {key: space[key] for key in raw}  # the file's order


def _range(key: str, spec: Mapping[str, Any], source: str) -> Range:
    unknown = set(spec) - {"low", "high", "log", "step"}
    where = f"{source}: {key}"
    if unknown:
        raise SearchError(
            f"{where}: unknown range keys {sorted(unknown)}; use low, high, log, step"
        )
    low, high = spec.get("low"), spec.get("high")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)):
        raise SearchError(f"{where}: a range needs numbers low and high, got {dict(spec)}")
    assert isinstance(low, int | float) and isinstance(high, int | float)
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        raise SearchError(f"{where}: log must be true or false, got {log!r}")
    if not low < high:
        raise SearchError(f"{where}: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise SearchError(f"{where}: a log range needs low > 0, got {low}")
    if step is not None and (not isinstance(step, int | float) or step <= 0 or log):
        raise SearchError(f"{where}: step must be a positive number, and not with log")
    integer = isinstance(low, int) and isinstance(high, int) and not isinstance(step, float)
    return Range(float(low), float(high), log=log, integer=integer, step=step)


def check_against(space: Mapping[str, Dimension], base: Mapping[str, Any]) -> None:
    """Every key is a params key and every end of its range (every choice) is a valid
    value, checked by the params loader before anything is queued."""
    problems: list[str] = []
    for key, dim in space.items():
        ends: tuple[Any, ...] = dim.values if isinstance(dim, Choice) else (dim.low, dim.high)
        for value in ends:
            if isinstance(dim, Range) and dim.integer:
                value = int(value)
            try:
                parse_params(apply(base, {key: value}), source="space")
            except ParamsError as exc:
                problems.extend(f"{key}={value}: {p}" for p in exc.problems)
    if problems:
        raise SearchError("invalid search space:\n" + "\n".join(f"  - {p}" for p in problems))


def describe_space(space: Mapping[str, Dimension]) -> dict[str, Any]:
    """The space as plain data (stored with the study: resuming must not change it)."""
    described: dict[str, Any] = {}
    for key, dim in space.items():
        if isinstance(dim, Choice):
            described[key] = list(dim.values)
        else:
            described[key] = {"low": dim.low, "high": dim.high, "log": dim.log}
            if dim.integer:
                described[key]["integer"] = True
            if dim.step is not None:
                described[key]["step"] = dim.step
    return described


def grid_size(space: Mapping[str, Dimension]) -> int | None:
    """How many points the full grid has; None when a dimension is continuous."""
    size = 1
    for dim in space.values():
        if isinstance(dim, Choice):
            size *= len(dim.values)
        elif dim.integer:
            step = int(dim.step or 1)
            size *= int((dim.high - dim.low) // step) + 1
        else:
            return None
    return size


def grid_points(space: Mapping[str, Dimension]) -> dict[str, list[Any]] | None:
    """Every value of every dimension, when the space is finite (for sampling the grid
    without repeats); None when a dimension is continuous."""
    if grid_size(space) is None:
        return None
    values: dict[str, list[Any]] = {}
    for key, dim in space.items():
        if isinstance(dim, Choice):
            values[key] = list(dim.values)
        else:
            step = int(dim.step or 1)
            values[key] = list(range(int(dim.low), int(dim.high) + 1, step))
    return values


def suggest(trial: optuna.Trial, space: Mapping[str, Dimension]) -> dict[str, Any]:
    """Sample one point: Optuna records the distributions with the trial."""
    point: dict[str, Any] = {}
    for key, dim in space.items():
        if isinstance(dim, Choice):
            point[key] = trial.suggest_categorical(key, list(dim.values))
        elif dim.integer:
            step = int(dim.step or 1)
            point[key] = trial.suggest_int(key, int(dim.low), int(dim.high), step=step, log=dim.log)
        else:
            point[key] = trial.suggest_float(key, dim.low, dim.high, step=dim.step, log=dim.log)
    return point


# --- successive halving --------------------------------------------------------------


def rungs(min_epochs: int, max_epochs: int, eta: int) -> list[int]:
    """Epoch budgets r, r*eta, r*eta^2, ... below max_epochs, then max_epochs itself."""
    if min_epochs < 1 or max_epochs < min_epochs:
        raise SearchError(
            f"--min-epochs ({min_epochs}) must be >= 1 and <= --max-epochs ({max_epochs})"
        )
    if eta < 2:
        raise SearchError(f"--eta must be >= 2, got {eta}")
    budgets = []
    epochs = min_epochs
    while epochs < max_epochs:
        budgets.append(epochs)
        epochs *= eta
    return [*budgets, max_epochs]


def brackets(method: Method, min_epochs: int, max_epochs: int, eta: int) -> list[list[int]]:
    """The rung budgets of each bracket: one for asha, one per starting budget for
    hyperband (the most aggressive first), one rung of max_epochs for tpe."""
    if method == "tpe":
        return [[max_epochs]]
    full = rungs(min_epochs, max_epochs, eta)
    if method == "asha":
        return [full]
    return [full[start:] for start in range(len(full))]


def bracket_of(trial_number: int, n_brackets: int) -> int:
    """Trials go round-robin over the brackets (as Optuna's HyperbandPruner does)."""
    return trial_number % n_brackets


@dataclass
class TrialState:
    """What the driver knows of one Optuna trial: its results per rung, and which rung
    budgets already have an experiment (queued, running or done)."""

    number: int
    results: dict[int, float] = field(default_factory=dict)  # epochs -> objective value
    started: set[int] = field(default_factory=set)  # epochs budgets with an experiment
    finished: bool = False  # told to Optuna (complete, pruned or failed)


@dataclass(frozen=True)
class Promotion:
    trial: int
    from_epochs: int
    to_epochs: int


def promotions(
    trials: Mapping[int, TrialState],
    budgets: list[list[int]],
    objective: Objective,
    eta: int,
) -> list[Promotion]:
    """Every promotion ASHA allows now: per bracket and rung (the higher rungs first), the
    trials among the best ``floor(n / eta)`` of the ``n`` that finished the rung which have
    not started the next rung yet."""
    found: list[Promotion] = []
    for index, budget in enumerate(budgets):
        members = [t for t in trials.values() if bracket_of(t.number, len(budgets)) == index]
        for rung in reversed(range(len(budget) - 1)):
            epochs, following = budget[rung], budget[rung + 1]
            done = [t for t in members if epochs in t.results]
            ranked = sorted(done, key=lambda t: _sort_key(t.results[epochs], objective))
            for state in ranked[: len(done) // eta]:
                if not math.isfinite(state.results[epochs]):
                    continue
                if following not in state.started and not state.finished:
                    found.append(Promotion(state.number, epochs, following))
    return found


def _sort_key(value: float, objective: Objective) -> tuple[bool, float]:
    # Diverged (non-finite) results last, whatever the direction.
    if not math.isfinite(value):
        return (True, 0.0)
    return (False, value if objective.direction == "min" else -value)


def experiment_name(study: str, trial_number: int, epochs: int | None) -> str:
    """``{study}-t{N}-e{epochs}``; a tpe trial (one full run) is ``{study}-t{N}``."""
    return f"{study}-t{trial_number}" + (f"-e{epochs}" if epochs is not None else "")
