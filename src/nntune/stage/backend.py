"""Which Keras backend a stage runs on: ``runtime.backend`` of params.yaml, made
``KERAS_BACKEND`` before anything imports Keras (Keras reads it once, at import).

A stage script calls :func:`select_for_stage` before anything imports Keras: right after
the warm runner's handoff, whose server reads the same params file with this module (and
sends the stage to its backend's server), or first thing in a cold stage. For JAX it also
sets what XLA reads when its runtime starts (in the stage's own process, never in a warm
runner's server):

- ``XLA_PYTHON_CLIENT_PREALLOCATE=false``: allocate GPU memory as needed, like
  TensorFlow's memory growth, so that several trials can share one card;
- with ``runtime.deterministic``, ``--xla_gpu_deterministic_ops=true`` in ``XLA_FLAGS``:
  deterministic GPU kernels (on the CPU, XLA's kernels are deterministic already).

Only the standard library and PyYAML are imported: this runs before the handoff.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

BACKEND_ENV = "KERAS_BACKEND"
BACKENDS = ("tensorflow", "jax")  # nntune.config.sections.BACKENDS; the first is the default
DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops=true"


def declared(params_path: str | Path) -> tuple[str, bool]:
    """``runtime.backend`` and ``runtime.deterministic`` of the params file. A file that
    cannot be read, or a bad value, gives the defaults: the stage's params loader then
    reports the problem with its usual message."""
    import yaml

    try:
        raw: Any = yaml.safe_load(Path(params_path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return BACKENDS[0], True
    runtime = raw.get("runtime") if isinstance(raw, dict) else None
    if not isinstance(runtime, dict):
        return BACKENDS[0], True
    backend = runtime.get("backend", BACKENDS[0])
    deterministic = runtime.get("deterministic", True)
    return (
        backend if backend in BACKENDS else BACKENDS[0],
        deterministic if isinstance(deterministic, bool) else True,
    )


def select(params_path: str | Path) -> str:
    """Make the declared backend Keras' (through the environment) and return its name."""
    backend, deterministic = declared(params_path)
    apply(backend, deterministic, os.environ)
    return backend


def apply(backend: str, deterministic: bool, env: Any) -> None:
    """Set ``env`` (``os.environ`` or a copy for a subprocess) for ``backend``."""
    env[BACKEND_ENV] = backend
    if backend != "jax":
        return
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    flags = env.get("XLA_FLAGS", "").split()
    if deterministic and DETERMINISTIC_FLAG not in flags:
        env["XLA_FLAGS"] = " ".join([*flags, DETERMINISTIC_FLAG])


def select_for_stage() -> str:
    """:func:`select` for a stage script, whose first argument is the params file; also
    quiets TensorFlow's C++ INFO lines (unless the environment says otherwise)."""
    import sys

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return select(params_argument(sys.argv[1:]))


def params_argument(args: list[str]) -> str:
    """The params file of a stage script run with ``args``: its first argument (the warm
    runner's server reads it too, for a stage it is handed)."""
    first = args[0] if args else ""
    return first if first and not first.startswith("-") else "params.yaml"
