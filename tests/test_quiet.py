"""TensorFlow's start-up noise on fd 2 is dropped; every other line still reaches stderr, in
order, also when the block raises, and whether stderr is a pipe or a file."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO

from nntune.stage.quiet import SHOW_ENV, is_noise, keep

# What TensorFlow 2.21 printed here, on a machine without a GPU, with TF_CPP_MIN_LOG_LEVEL=0.
NOISE_LINES = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796194329.046328    5387 port.cc:153] oneDNN custom operations are on. You "
    "may see slightly different numerical results due to floating-point round-off errors from "
    "different computation orders. To turn them off, set the environment variable "
    "`TF_ENABLE_ONEDNN_OPTS=0`.",
    "I0000 00:00:1796194329.046860    5387 cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.",
    "E0000 00:00:1796194340.666374    5387 cuda_platform.cc:52] failed call to cuInit: "
    "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
    "E0000 00:00:1796194340.666374    5387 cuda_platform.cc:52] failed call to cuInit: "
    "INTERNAL: CUDA error: Failed call to cuInit: CUDA_ERROR_NO_DEVICE: no CUDA-capable "
    "device is detected",
    "I0000 00:00:1796194446.411405    6218 cpu_feature_guard.cc:227] This TensorFlow binary "
    "is optimized to use available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 FMA, in "
    "other operations, rebuild TensorFlow with the appropriate compiler flags.",
]
# Lines that look alike but matter: a broken GPU set-up, real errors, Python's own output.
KEPT_LINES = [
    "E0000 00:00:1796194340.666374    5387 cuda_platform.cc:52] failed call to cuInit: "
    "INTERNAL: CUDA error: Failed call to cuInit: CUDA_ERROR_SYSTEM_DRIVER_MISMATCH (803)",
    "F0000 00:00:1796194340.666374    5387 port.cc:153] Check failed: something",
    "E0000 00:00:1796194340.666374    5387 some_kernel.cc:10] Out of memory",
    "Traceback (most recent call last):",
    "UserWarning: oneDNN custom operations are on",
    "",
]


@pytest.mark.parametrize("line", NOISE_LINES)
def test_known_noise_is_recognised(line: str) -> None:
    assert is_noise(line)


@pytest.mark.parametrize("line", KEPT_LINES)
def test_other_lines_are_not_noise(line: str) -> None:
    assert not is_noise(line)


def test_keep_drops_only_noise_and_keeps_bytes_and_order() -> None:
    mixed = [NOISE_LINES[0], "first", NOISE_LINES[3], "second \xe9", NOISE_LINES[1], "tail"]
    captured = ("\r\n".join(mixed[:2]) + "\r\n" + "\n".join(mixed[2:])).encode()
    assert keep(captured) == "first\r\nsecond \xe9\ntail".encode()
    assert keep(b"no newline at the end") == b"no newline at the end"
    assert keep(b"\xff\xfe not utf-8\n") == b"\xff\xfe not utf-8\n"


def _env(**extra: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if k != SHOW_ENV}
    return {**environ, "PYTHONPATH": str(REPO / "src"), **extra}


def _run(code: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    """``code`` in a fresh interpreter, its stderr a pipe."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=_env(**env),
        capture_output=True,
        timeout=300,
        check=False,
    )


def _written(err: bytes) -> list[str]:
    """The lines of ``err``, a warning's ``<string>:LINE:`` prefix without its number."""
    return [re.sub(r"^<string>:\d+: ", "<string>: ", line) for line in err.decode().splitlines()]


WRITER = f"""
import os, sys, warnings
from nntune.stage.quiet import filter_tf_noise
NOISE = {NOISE_LINES!r}
def w(line):
    os.write(2, (line + "\\n").encode())
w("before")
with filter_tf_noise():
    w(NOISE[0])
    w("inside 1")
    for line in NOISE[1:]:
        w(line)
    print("inside 2 (sys.stderr)", file=sys.stderr)
    w(NOISE[3])
    warnings.warn("inside 3 (a Python warning)")
    os.write(2, b"inside 4, no newline")
w("")
w("after")
"""
WRITTEN = [
    "before",
    "inside 1",
    "inside 2 (sys.stderr)",
    "<string>: UserWarning: inside 3 (a Python warning)",  # no source line under -c
    "inside 4, no newline",
    "after",
]


def test_filter_keeps_other_lines_in_order_on_a_pipe() -> None:
    child = _run(WRITER)
    assert child.returncode == 0, child.stderr.decode()
    assert _written(child.stderr) == WRITTEN


def test_filter_keeps_other_lines_in_order_on_a_file(tmp_path: Path) -> None:
    log = tmp_path / "stderr.log"
    log.write_bytes(b"already there\n")
    with log.open("ab") as stderr:
        subprocess.run(
            [sys.executable, "-c", textwrap.dedent(WRITER)],
            env=_env(),
            stderr=stderr,
            timeout=300,
            check=True,
        )
    assert _written(log.read_bytes()) == ["already there", *WRITTEN]


def test_everything_shows_when_asked() -> None:
    child = _run(WRITER, **{SHOW_ENV: "1"})
    lines = _written(child.stderr)
    assert [line for line in lines if not is_noise(line)] == WRITTEN
    assert [line for line in lines if is_noise(line)] == [*NOISE_LINES, NOISE_LINES[3]]


def test_an_exception_inside_restores_fd_2_and_replays_first() -> None:
    code = f"""
    import os
    from nntune.stage.quiet import filter_tf_noise
    NOISE = {NOISE_LINES!r}
    before = os.fstat(2)
    try:
        with filter_tf_noise():
            os.write(2, (NOISE[2] + "\\nkept before the error\\n").encode())
            raise RuntimeError("boom")
    except RuntimeError as exc:
        after = os.fstat(2)
        assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
        os.write(2, f"caught {{exc}}\\n".encode())
    with filter_tf_noise():
        os.write(2, (NOISE[1] + "\\nkept again\\n").encode())
        raise ValueError("uncaught")
    """
    child = _run(code)
    lines = _written(child.stderr)
    assert child.returncode == 1, lines
    assert lines[:3] == ["kept before the error", "caught boom", "kept again"]
    assert lines[3] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: uncaught"
    assert not any(is_noise(line) for line in lines)


def test_nested_blocks_and_a_closed_stderr() -> None:
    code = f"""
    import os
    from nntune.stage.quiet import filter_tf_noise
    NOISE = {NOISE_LINES!r}
    with filter_tf_noise():
        os.write(2, b"outer\\n")
        with filter_tf_noise():
            os.write(2, (NOISE[0] + "\\ninner\\n").encode())
        os.write(2, (NOISE[4] + "\\nouter again\\n").encode())
    os.close(2)
    with filter_tf_noise():
        print("no stderr, no problem")
    """
    child = _run(code)
    assert child.returncode == 0, child.stderr.decode()
    assert _written(child.stderr) == ["outer", "inner", "outer again"]
    assert child.stdout == b"no stderr, no problem\n"


def test_real_tensorflow_start_prints_no_noise() -> None:
    """``import tensorflow`` through the filter, then the first device query as the stages
    make it (nntune.stage.device.list_gpus); TF_CPP_MIN_LOG_LEVEL=0: TensorFlow prints all it can.
    (Without the filter it prints every one of these needles here.)"""
    code = """
    import os
    from nntune.stage.quiet import filter_tf_noise
    with filter_tf_noise():
        import keras
        import tensorflow as tf
    os.write(2, b"imported\\n")
    from nntune.stage import device
    print(device.list_gpus(), tf.config.list_physical_devices("CPU")[0].device_type)
    """
    child = _run(code, TF_CPP_MIN_LOG_LEVEL="0", KERAS_BACKEND="tensorflow")
    err = child.stderr.decode()
    assert child.returncode == 0, err
    assert child.stdout.decode().split()[-1] == "CPU"
    assert "imported" in err.splitlines()
    for needle in ("absl::InitializeLog", "oneDNN", "cudart_stub", "cuInit", "cpu_feature"):
        assert needle not in err, err
