"""Spares: a child the warm runner's server forks *before* the next stage arrives.

A stage forked from the server still pays, in its first epoch, the costs a process pays
once: TensorFlow's runtime start, AutoGraph's conversion of Keras' and nntune's training
functions, the first build of a ``tf.data`` pipeline, the first model save. A spare pays
them ahead: right after the fork it trains a throwaway model on a few synthetic rows with
nntune's own ``fit`` (the project's params, one epoch), saves it to a temp folder, clears
Keras' session, and then waits for a stage like any forked child. Measured on digits (3
epochs, alternated): 5.48 s per trial forked as before, 4.18 s from a warmed spare, with
the same model bytes and metrics (benchmarks/README.md, "Spares").

What stays as in a fresh child: the stage's own argv, working copy, environment and
streams, its own nntune code (the snapshot rule of :mod:`nntune.warm.snapshot`: modules
kept only where the trial's copy has the same bytes), its seeds (every stage seeds first),
Keras' names (``clear_session``). What a spare cannot change after its runtime started is
the device set: a spare only serves a stage whose device-related environment (``CUDA_*``
and the like) is the server's, and it does not warm up at all where TensorFlow sees a GPU
(``device.configure`` must still be free to pick one). ``NNTUNE_WARM_SPARE=0`` turns spares
off.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

SPARE_ENV = "NNTUNE_WARM_SPARE"
# Read when a framework's runtime starts (devices, drivers): a spare's runtime has started.
RUNTIME_PREFIXES = ("CUDA_", "NVIDIA_", "HIP_", "ROCR_", "XLA_", "TPU_", "LD_")
PARAMS_FILE = "params.yaml"  # the project's, in the server's working folder
ROWS, FEATURES = 64, 8


def enabled(env: Mapping[str, str]) -> bool:
    return env.get(SPARE_ENV, "1") != "0"


def runtime_env(env: Mapping[str, str]) -> dict[str, str]:
    return {key: value for key, value in env.items() if key.startswith(RUNTIME_PREFIXES)}


def warm_up(project: str) -> bool:
    """In a spare, before its stage: one epoch of nntune's ``fit`` on synthetic rows with
    ``project``'s params, where the server loaded Keras on TensorFlow and sees no GPU.
    Whatever goes wrong only leaves the spare cold. Whether it warmed up."""
    if "keras" not in sys.modules or "tensorflow" not in sys.modules:
        return False  # a server that did not load TensorFlow (a test's, JAX's)
    loaded = set(sys.modules)
    try:
        with _silenced(), tempfile.TemporaryDirectory(prefix="nntune-spare-") as tmp:
            import tensorflow as tf

            if tf.config.list_physical_devices("GPU"):
                return False
            _fit_once(Path(project) / PARAMS_FILE, Path(tmp))
        return True
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            import keras

            keras.backend.clear_session()  # the stage's layer names start from scratch
        # nntune modules the server did not load have no fingerprint: a stage that found one
        # would drop all of them (nntune.warm.snapshot), so they go.
        for name in [n for n in sys.modules if n not in loaded]:
            if name == "nntune" or name.startswith("nntune."):
                del sys.modules[name]


def _fit_once(params_file: Path, tmp: Path) -> None:
    import numpy as np
    import pandas as pd

    from nntune.config.params import load_params
    from nntune.stage import artifacts
    from nntune.stage.data import Prepared
    from nntune.stage.model import TargetScale, build_model
    from nntune.stage.outputs import raw_output
    from nntune.stage.training import fit

    params = load_params(params_file)
    task = params.data.task
    rng = np.random.default_rng(0)
    classes = [] if task == "regression" else list(range(2 if task == "binary" else 3))
    columns = [f"f{i}" for i in range(FEATURES)]

    def split(rows: int) -> pd.DataFrame:
        frame = pd.DataFrame(rng.normal(size=(rows, FEATURES)).astype("float32"), columns=columns)
        y = rng.normal(size=rows) if task == "regression" else rng.integers(0, len(classes), rows)
        return frame.assign(target=y)

    rows = max(ROWS, 2 * params.train.batch_size)
    data = Prepared(
        splits={"train": split(rows), "val": split(ROWS // 2), "test": split(ROWS // 2)},
        features=columns,
        target="target",
        task=task,
        classes=classes,
        scaler_mean=[],
        scaler_scale=[],
    )
    net = build_model(
        params.model,
        params.train,
        FEATURES,
        task,
        len(classes),
        target=TargetScale.of(task, data.xy("train")[1]),
    )
    train = dataclasses.replace(params.train, max_epochs=1)
    previous = Path.cwd()
    os.chdir(tmp)  # dvclive looks for a repository from here: none
    try:
        fit(net, data, train, tmp / "live", seed=params.runtime.seed)
        raw_output(net, data.x("test"))
        artifacts.save_model(net, tmp / "model.keras")
    finally:
        os.chdir(previous)


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    """Standard output and error (the descriptors: TensorFlow writes to fd 2) to /dev/null."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)
