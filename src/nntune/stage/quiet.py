"""TensorFlow's start-up noise, kept out of the stages' output.

``import tensorflow`` (also through ``import keras``) and the first device query print
INFO lines and a harmless cuInit error from C++, straight to file descriptor 2, whatever
``TF_CPP_MIN_LOG_LEVEL`` says (TF 2.21). :func:`filter_tf_noise` points fd 2 at a temporary
file around that code and then copies every captured line that is not known noise to the
real stderr, in order: real errors, Python warnings and tracebacks still get through, only
later. ``NNTUNE_TF_LOGS=1`` turns the filter off.

Only the standard library is imported at the top: the stages use this before TensorFlow
exists.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import IO

SHOW_ENV = "NNTUNE_TF_LOGS"

# absl's prefix: severity, MMDD, time, thread id, then "file.cc:line] ".
_ABSL = r"[IWE]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ "
# Every line TensorFlow prints at start-up on a machine without a (visible) GPU. A cuInit
# failure counts only for "no driver" (303) and "no device" (CUDA_VISIBLE_DEVICES empty);
# any other code means a broken GPU set-up, which the user needs to see.
NOISE: tuple[re.Pattern[str], ...] = tuple(
    re.compile(pattern)
    for pattern in (
        r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to "
        r"STDERR$",
        _ABSL + r"port\.cc:\d+\] oneDNN custom operations are on\. ",
        _ABSL + r"cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine, GPU "
        r"will not be used\.$",
        _ABSL + r"cuda_(?:platform|executor|diagnostics)\.cc:\d+\] failed call to cuInit: .*"
        r"(?:UNKNOWN ERROR \(303\)|CUDA_ERROR_NO_DEVICE)",
        _ABSL + r"cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized to use "
        r"available CPU instructions in performance-critical operations\.$",
        # ... the second line of that message, without a prefix of its own.
        r"To enable the following instructions: [A-Z0-9_ ]+, in other operations, rebuild "
        r"TensorFlow with the appropriate compiler flags\.$",
    )
)


def is_noise(line: str) -> bool:
    """Whether ``line`` (without its newline) is one of TensorFlow's known start-up lines."""
    return any(pattern.match(line) for pattern in NOISE)


def keep(captured: bytes) -> bytes:
    """``captured`` without its noise lines; everything else byte for byte, in order."""
    lines = captured.splitlines(keepends=True)
    return b"".join(
        line for line in lines if not is_noise(line.rstrip(b"\r\n").decode(errors="replace"))
    )


@contextmanager
def filter_tf_noise() -> Iterator[None]:
    """``with filter_tf_noise(): import keras`` (or the first device query): fd 2 goes to a
    temporary file inside the block, and what is not noise is written to the real stderr
    when the block ends, also when it raises (before the exception goes on). A process that
    dies inside the block (a C++ abort) loses what was captured: ``NNTUNE_TF_LOGS=1``."""
    redirected = None if os.environ.get(SHOW_ENV, "") not in ("", "0") else _redirect()
    if redirected is None:  # asked to show everything, or no stderr or temporary file
        yield
        return
    capture, saved = redirected
    try:
        yield
    finally:
        _flush_stderr()
        os.dup2(saved, 2)
        os.close(saved)
        with capture:
            capture.seek(0)
            _write_all(2, keep(capture.read()))


def _redirect() -> tuple[IO[bytes], int] | None:
    """fd 2 on a fresh temporary file: (the file, a duplicate of the old fd 2), or ``None``
    where that cannot be done (no fd 2, no writable temporary folder): then nothing is
    filtered, rather than a stage failing."""
    _flush_stderr()
    try:
        capture = tempfile.TemporaryFile()  # noqa: SIM115  # filter_tf_noise closes it
    except OSError:
        return None
    try:
        saved = os.dup(2)
    except OSError:
        capture.close()
        return None
    try:
        os.dup2(capture.fileno(), 2)
    except OSError:
        os.close(saved)
        capture.close()
        return None
    return capture, saved


def import_keras_quietly() -> None:
    """:func:`nntune.stage.import_keras_without_sklearn` with TensorFlow's start-up noise
    filtered: how the train and pretrain stages, and the warm runner's server, load Keras."""
    from nntune.stage.entry import import_keras_without_sklearn

    with filter_tf_noise():
        import_keras_without_sklearn()


def _flush_stderr() -> None:
    """What Python buffered for fd 2 goes to the file fd 2 is on now."""
    with suppress(Exception):
        if sys.stderr is not None:
            sys.stderr.flush()


def _write_all(fd: int, data: bytes) -> None:
    with suppress(OSError):  # a closed stderr must not hide the block's own exception
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
