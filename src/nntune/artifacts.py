"""Atomic writers for every file a stage produces.

A stage killed half-way must never leave a truncated file that a later stage (or DVC's
cache) mistakes for a result: each writer fills a temporary file in the target folder and
renames it into place, which is atomic on POSIX file systems.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the frame writers only call methods: no pandas import at run time, so
    import pandas as pd  # a stage that writes JSON alone (pretrain when off) starts faster


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder (so the rename is atomic) and same suffix (Keras insists on ".keras").
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.chmod(0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def save_model(net: Any, path: str | Path) -> None:
    """A Keras model (weights and optimiser state) as a ``.keras`` file, atomically."""
    with atomic_path(path) as tmp:
        net.save(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    """Sorted keys and a trailing newline, so the same data gives the same bytes.
    NaN and infinity (a diverged run) become ``null``: JSON has no such numbers."""
    write_text(path, json.dumps(_finite_or_null(data), indent=2, sort_keys=True) + "\n")


def write_parquet(path: str | Path, frame: pd.DataFrame) -> None:
    _write_with(path, lambda tmp: frame.to_parquet(tmp, index=False))


def write_csv(path: str | Path, frame: pd.DataFrame) -> None:
    _write_with(path, lambda tmp: frame.to_csv(tmp, index=False, lineterminator="\n"))


def _write_with(path: str | Path, writer: Callable[[Path], object]) -> None:
    with atomic_path(path) as tmp:
        writer(tmp)


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_null(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
