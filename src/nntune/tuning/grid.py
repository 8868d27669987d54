"""The search space: which params to vary and over which values, expanded into points.

A point is a set of dotted-key overrides of ``params.yaml``. Every point is checked by the
same loader as a run (``parse_params``) before anything is queued, and points that give
identical parameters (``model.units`` does nothing with ``model.hidden_layers: 0``) are
queued once.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nntune.config.mapping import Point, apply, typed_value
from nntune.config.params import parse_params
from nntune.config.sections import Params, ParamsError
from nntune.errors import NntuneError

# Short names for experiment names: h2-u100-b32-lr0.01. Other keys use their last segment.
ABBREVIATIONS = {
    "model.hidden_layers": "h",
    "model.units": "u",
    "model.activation": "act",
    "model.dropout": "do",
    "model.l2": "l2",
    "train.batch_size": "b",
    "train.learning_rate": "lr",
    "train.optimizer": "opt",
    "train.momentum": "mom",
    "train.max_epochs": "ep",
    "pretrain.enabled": "pre",
    "pretrain.freeze_epochs": "frz",
    "pretrain.noise": "noise",
    "data.label_fraction": "lab",
}


class GridError(NntuneError):
    pass


@dataclass(frozen=True)
class Trial:
    """One point of the grid, checked and named."""

    name: str
    overrides: Point  # only the grid's keys
    params: Params  # the full, validated parameters the experiment will run with
    raw: dict[str, Any]  # params.yaml with the overrides applied


def load_space(path: str | Path) -> dict[str, list[Any]]:
    """Read a search-space file: a mapping of dotted params keys to lists of values."""
    return check_space(read_space_file(path), str(path))


def read_space_file(path: str | Path) -> Mapping[Any, Any]:
    """A search-space file as a YAML mapping, unchecked (``nntune search`` also allows
    ranges in it)."""
    path = Path(path)
    if not path.is_file():
        raise GridError(f"{path}: search-space file not found; create it or pass --space")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise GridError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, Mapping):
        raise GridError(f"{path}: must map dotted params keys to lists of values (or ranges)")
    return raw


def parse_assignments(assignments: Iterable[str]) -> dict[str, list[Any]]:
    """``["model.units=64,128", "train.optimizer=adam"]`` -> a space, values typed by YAML
    (``64`` is an int, ``1e-3`` a float, ``adam`` a string)."""
    space: dict[str, list[Any]] = {}
    for text in assignments:
        key, sep, values = text.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise GridError(f"-p {text!r}: expected KEY=V1,V2,... e.g. model.units=64,128")
        space[key.strip()] = [typed_value(v) for v in _split_values(values)]
    return check_space(space, "-p")


def check_space(space: Mapping[Any, Any], source: str) -> dict[str, list[Any]]:
    checked: dict[str, list[Any]] = {}
    for key, values in space.items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][\w.]*", key):
            raise GridError(f"{source}: {key!r} is not a dotted params key like model.units")
        values = values if isinstance(values, list) else [values]
        if not values:
            raise GridError(f"{source}: {key} has no values; give at least one")
        if len({_token(v) for v in values}) != len(values):
            raise GridError(f"{source}: {key} lists a value twice: {values}")
        checked[key] = values
    if not checked:
        raise GridError(f"{source}: the search space is empty; vary at least one key")
    return checked


LEARNING_RATE = "train.learning_rate"


def rates_around(rate: float) -> list[float]:
    """``--lr-around X``: X/3, X and 3X to 2 significant digits. A factor of 3 is half a
    decade (3 is about the square root of 10): the spacing of a log grid with two values per
    decade, close enough to X that all three sit in the range test's good stretch."""
    if not (math.isfinite(rate) and rate > 0):
        raise GridError(f"--lr-around must be a positive learning rate, got {rate:g}")
    return [significant(rate / 3), significant(rate), significant(rate * 3)]


def rates_around_dimension(
    rate: float | None, assigned: Mapping[str, list[Any]]
) -> dict[str, list[Any]]:
    """``grid --lr-around X``'s dimension: ``train.learning_rate`` over ``rates_around(X)``
    (nothing without it). ``assigned`` (the ``-p`` dimensions) must not set the rate too."""
    if rate is None:
        return {}
    if LEARNING_RATE in assigned:
        raise GridError(f"-p {LEARNING_RATE}=... and --lr-around both set it; pass one")
    return {LEARNING_RATE: list(rates_around(rate))}


def significant(value: float, digits: int = 2) -> float:
    """``value`` rounded to ``digits`` significant digits: 0.0025118 -> 0.0025."""
    return float(f"{value:.{digits}g}")


def format_rate(rate: float) -> str:
    """A rate as YAML reads back as a number: 0.0025, 1.0e-05 (YAML 1.1 takes ``1e-05``,
    without a point, for a string)."""
    text = f"{rate:.2g}"
    mantissa, sep, exponent = text.partition("e")
    return f"{mantissa}.0e{exponent}" if sep and "." not in mantissa else text


def expand(
    space: Mapping[str, list[Any]],
    base: Mapping[str, Any],
    random_points: int | None = None,
    seed: int = 0,
) -> tuple[list[Trial], list[tuple[Point, str]]]:
    """Check and name every point of ``space`` applied to the ``base`` params mapping.

    Returns the trials to run and the points dropped as duplicates of another, with the
    name of the trial that covers them. ``random_points`` samples that many distinct
    trials (seeded) instead of the whole product."""
    keys = list(space)
    points = [dict(zip(keys, values, strict=True)) for values in itertools.product(*space.values())]
    trials: list[Trial] = []
    dropped: list[tuple[Point, str]] = []
    seen: dict[Params, str] = {}
    problems: list[str] = []
    for point in points:
        raw = apply(base, point)
        try:
            params = parse_params(raw, source=_describe(point))
        except ParamsError as exc:
            problems.extend(f"{exc.source}: {p}" for p in exc.problems)
            continue
        name = _name(point, space, base)
        if params in seen:
            dropped.append((point, seen[params]))
            continue
        seen[params] = name
        trials.append(Trial(name=name, overrides=point, params=params, raw=raw))
    if problems:
        raise GridError("invalid grid points:\n" + "\n".join(f"  - {p}" for p in problems[:20]))
    if random_points is not None:
        if random_points < 1:
            raise GridError(f"--random must be >= 1, got {random_points}")
        trials = random.Random(seed).sample(trials, min(random_points, len(trials)))
    return trials, dropped


def _name(point: Point, space: Mapping[str, list[Any]], base: Mapping[str, Any]) -> str:
    """Name from the varied keys that matter for this point: ``h0-b32-lr0.01`` leaves out
    units, which a model without hidden layers ignores."""
    parts = []
    for key, value in point.items():
        if len(space[key]) > 1 and _matters(key, point, space, base):
            parts.append(f"{ABBREVIATIONS.get(key, key.rsplit('.', 1)[-1])}{_token(value)}")
    name = "-".join(parts) or "base"
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:100]


def _matters(
    key: str, point: Point, space: Mapping[str, list[Any]], base: Mapping[str, Any]
) -> bool:
    try:
        mine = parse_params(apply(base, point))
        return any(
            parse_params(apply(base, {**point, key: other})) != mine
            for other in space[key]
            if other != point[key]
        )
    except ParamsError:
        return True


def _describe(point: Point) -> str:
    return " ".join(f"{k}={_token(v)}" for k, v in point.items())


def _token(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "x".join(_token(v) for v in value)
    return str(value)


def _split_values(text: str) -> list[str]:
    """Split on commas outside brackets: ``[64,32],128`` -> ``["[64,32]", "128"]``."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char == "["
        depth -= char == "]"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]
