"""Choosing Keras' backend (nntune.stage.backend) and the batches per compiled call
(nntune.stage.training.steps_per_execution): pure functions, no backend started."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, jax_only

from nntune.config.sections import BACKENDS
from nntune.stage import backend
from nntune.stage.training import steps_per_execution


def test_the_stage_side_list_of_backends_is_the_params_loaders() -> None:
    assert backend.BACKENDS == BACKENDS


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("runtime:\n  backend: jax\n  deterministic: false\n", ("jax", False)),
        ("runtime:\n  backend: tensorflow\n", ("tensorflow", True)),
        ("runtime:\n  seed: 1\n", ("tensorflow", True)),  # left out: the default
        # A bad value or file gives the default: the params loader then reports it.
        ("runtime:\n  backend: torch\n", ("tensorflow", True)),
        ("runtime: [1, 2]\n", ("tensorflow", True)),
        ("{not yaml", ("tensorflow", True)),
    ],
)
def test_declared_backend_is_read_from_the_params_file(
    tmp_path: Path, text: str, expected: tuple[str, bool]
) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    assert backend.declared(path) == expected
    assert backend.declared(tmp_path / "missing.yaml") == ("tensorflow", True)


def test_jax_gets_memory_on_demand_and_deterministic_gpu_kernels() -> None:
    env = {"XLA_FLAGS": "--xla_cpu_foo=1"}
    backend.apply("jax", True, env)
    assert env == {
        "KERAS_BACKEND": "jax",
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
        "XLA_FLAGS": "--xla_cpu_foo=1 --xla_gpu_deterministic_ops=true",
    }
    backend.apply("jax", True, env)  # idempotent
    assert env["XLA_FLAGS"] == "--xla_cpu_foo=1 --xla_gpu_deterministic_ops=true"
    loose: dict[str, str] = {"XLA_PYTHON_CLIENT_PREALLOCATE": "true"}  # the user's choice stays
    backend.apply("jax", False, loose)
    assert loose == {"KERAS_BACKEND": "jax", "XLA_PYTHON_CLIENT_PREALLOCATE": "true"}
    tf: dict[str, str] = {}
    backend.apply("tensorflow", True, tf)
    assert tf == {"KERAS_BACKEND": "tensorflow"}


@pytest.mark.parametrize(
    ("setting", "steps", "expected"),
    [
        ("auto", 34, 34),  # digits at batch 32: one call per epoch
        ("auto", 17, 17),
        ("auto", 1, 1),
        ("auto", 31250, 125),  # 1M rows at batch 32: the largest divisor <= 128
        ("auto", 262, 2),  # 2 x 131: no divisor between 2 and 128
        ("auto", 131, 1),  # a prime above the cap
        (1, 34, 1),
        (10, 34, 2),  # 34's divisors <= 10: 1, 2
        (500, 34, 34),  # never more than an epoch
    ],
)
def test_steps_per_execution_divides_the_epoch(
    setting: int | str, steps: int, expected: int
) -> None:
    chosen = steps_per_execution(setting, steps)  # type: ignore[arg-type]
    assert chosen == expected
    assert steps % chosen == 0


def test_a_stage_sets_the_backend_before_keras_loads(tmp_path: Path) -> None:
    """What a stage script does first: with runtime.backend: jax in its params file, its
    `import keras` loads JAX, even when the environment said TensorFlow."""
    params = tmp_path / "params.yaml"
    params.write_text("runtime:\n  backend: jax\n  deterministic: true\n")
    script = (
        "import sys; from nntune.stage.backend import select_for_stage; select_for_stage(); "
        "import keras, os; print(keras.backend.backend(), os.environ['XLA_FLAGS'], "
        "'tensorflow' in sys.modules)"
    )
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "PYTHONPATH": str(REPO / "src")}
    env.pop("XLA_FLAGS", None)
    out = subprocess.run(
        [sys.executable, "-c", script, str(params)],
        env=env, capture_output=True, text=True, check=True, cwd=tmp_path,
    )  # fmt: skip
    assert out.stdout.split() == ["jax", "--xla_gpu_deterministic_ops=true", "False"]


@jax_only
def test_export_refuses_a_keras_that_runs_on_jax(tmp_path: Path) -> None:
    from nntune.serving.export import ExportError, export_model

    with pytest.raises(ExportError, match=r"the export is a TensorFlow model .* runs on jax"):
        export_model(None, tmp_path / "out", "keras")  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()


def test_a_jax_warm_runner_imports_keras_without_starting_xla(tmp_path: Path) -> None:
    """The server of a JAX runner imports what the stages import (Keras on JAX, the
    evaluate flavour's scikit-learn), yet XLA's runtime starts only in the forked stages,
    and TensorFlow is not imported at all."""
    script = (
        "import sys; from nntune.warm.client import FLAVOURS; from nntune.warm.server import "
        "Server; server = Server(sys.argv[1]); failed = server.preload(FLAVOURS['sklearn']); "
        "from jax._src import xla_bridge; import keras; print(failed, server.backend, "
        "keras.backend.backend(), xla_bridge.backends_are_initialized(), "
        "'tensorflow' in sys.modules)"
    )
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "socket")],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.split() == ["[]", "jax", "jax", "False", "False"], out.stderr
