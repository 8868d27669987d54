"""Between nested params and dotted overrides: ``flatten``, ``apply`` a point to a params
mapping, the ``-S`` form DVC takes, and values typed as YAML reads them."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import yaml

Point = dict[str, Any]  # dotted params.yaml keys -> values


def apply(base: Mapping[str, Any], point: Point) -> dict[str, Any]:
    """A deep copy of ``base`` with each dotted key of ``point`` set. Unknown keys are set
    too, so that the loader rejects them with its usual message."""
    raw = copy.deepcopy(dict(base))
    for dotted, value in point.items():
        *parents, leaf = dotted.split(".")
        node = raw
        for key in parents:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        node[leaf] = value
    return raw


def flatten(raw: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"batch_size": 32}}`` -> ``{"train.batch_size": 32}``"""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def override_args(point: Mapping[str, Any]) -> list[str]:
    """The point as ``dvc exp run -S`` arguments (one value each: no sweep)."""
    return [f"{key}={_dvc_value(value)}" for key, value in point.items()]


def _dvc_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ",".join(_dvc_value(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def typed_value(text: str) -> Any:
    """A ``-p`` / ``-S`` value as YAML reads it, with 1e-3 as a number."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)  # 1e-3: YAML 1.1 reads it as a string
        except ValueError:
            return value
    return value
