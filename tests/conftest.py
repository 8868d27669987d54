"""Shared fixtures: the real params.yaml, shrunk, and tiny in-memory tables."""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from nntune.config.params import parse_params
from nntune.config.sections import Params

REPO = Path(__file__).resolve().parents[1]
# `make test` runs the Keras-side tests a second time with KERAS_BACKEND=jax (see Makefile).
BACKEND = os.environ.get("KERAS_BACKEND") or "tensorflow"
tensorflow_only = pytest.mark.skipif(
    BACKEND != "tensorflow", reason="TensorFlow only (MirroredStrategy, SavedModel export)"
)
jax_only = pytest.mark.skipif(BACKEND != "jax", reason="the JAX pass of `make test`")


def repo_params_dict() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / "params.yaml").read_text())
    return loaded


def shrink(raw: dict[str, Any]) -> dict[str, Any]:
    """The real defaults with a budget small enough for tests (as lightning-hydra-template
    does): tiny layers, a few epochs."""
    raw = copy.deepcopy(raw)
    raw["model"].update(units=16, hidden_layers=1)
    raw["train"].update(max_epochs=4)
    raw["train"]["early_stopping"].update(patience=2)
    raw["pretrain"].update(epochs=3, patience=1)
    return raw


@pytest.fixture
def raw_params() -> dict[str, Any]:
    """A fresh, mutable copy of the repository's params.yaml."""
    return repo_params_dict()


@pytest.fixture
def tiny_params() -> Params:
    return parse_params(shrink(repo_params_dict()), source="tiny")


def make_table(
    n_rows: int = 120, n_classes: int = 3, seed: int = 0, labels: list[Any] | None = None
) -> pd.DataFrame:
    """A small separable classification table with a unique ``uid`` feature per row."""
    rng = np.random.default_rng(seed)
    codes = np.arange(n_rows) % n_classes
    features = rng.normal(size=(n_rows, 3)) + codes[:, None] * 3.0
    frame = pd.DataFrame(features, columns=["a", "b", "c"])
    frame["uid"] = np.arange(n_rows, dtype="float64") * 10.0
    names = labels if labels is not None else list(range(n_classes))
    frame["target"] = [names[c] for c in codes]
    return frame


def processes_under(folder: Path) -> list[Any]:
    """Live processes whose working directory is inside ``folder`` (a test's project:
    DVC's queue workers, trials, warm-runner servers, search drivers)."""
    import psutil

    root = str(folder.resolve())
    found = []
    for proc in psutil.process_iter(["cwd", "status"]):
        cwd = proc.info.get("cwd") or ""
        if proc.info.get("status") == psutil.STATUS_ZOMBIE or proc.pid == os.getpid():
            continue
        if cwd == root or cwd.startswith(root + os.sep):
            found.append(proc)
    return found


@pytest.fixture(autouse=True)
def _end_every_process_the_test_started(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test's processes end with it, passed or failed: whatever still runs in its
    tmp_path a few seconds after it (say, DVC's idle queue workers, which wait a minute
    for more work) is killed, so no test leaves load or locks for the next."""
    if "tmp_path" not in request.fixturenames:
        yield
        return
    folder = Path(request.getfixturevalue("tmp_path"))  # set up first, so torn down after
    yield
    deadline = time.monotonic() + 5.0
    while (left := processes_under(folder)) and time.monotonic() < deadline:
        time.sleep(0.25)
    for proc in left:
        with contextlib.suppress(Exception):
            proc.kill()
