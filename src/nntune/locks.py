"""One lock for files that processes share: an exclusive POSIX record lock (``lockf``).

The kernel drops it when its process dies, however it dies, so a killed driver or trial
never leaves a stale lock behind. Not ``flock``: DVC's queue workers are forked from the
process that starts them and would inherit, and keep, an ``flock``; record locks are not
inherited by a fork.
"""

from __future__ import annotations

import errno
import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from nntune.errors import NntuneError


class LockHeldError(NntuneError):
    """Another process holds the lock (only with ``wait=False``)."""


@contextmanager
def record_lock(path: Path, *, wait: bool = True) -> Iterator[IO[str]]:
    """Hold an exclusive record lock on ``path`` (created, with its folder, if missing) for
    the block, and yield the open file (for a note of who holds it). With ``wait=False``,
    raise :class:`LockHeldError` at once if another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+", encoding="utf-8") as handle:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as exc:
            if wait or exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            raise LockHeldError(f"{path} is locked by another process") from None
        try:
            yield handle
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)
