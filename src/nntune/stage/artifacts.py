"""Atomic writers for every file and folder a stage produces.

A stage killed half-way must never leave a truncated file that a later stage (or DVC's
cache) mistakes for a result: each writer fills a temporary file in the target folder and
renames it into place, which is atomic on POSIX file systems. A folder output (the prepared
splits, the dvclive curves) is built whole in a temporary sibling and swapped in the same
way (``atomic_dir``), so it is the old folder or the new one, never a mix of the two.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import hashlib
import json
import math
import os
import shutil
import sys
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


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty folder beside ``path`` to fill; on success it replaces ``path`` as a
    whole, on an exception it is removed and ``path`` stays as it was. What an earlier,
    killed write left beside ``path`` is cleared first (``recover_interrupted``).

    The temporary folder is ``.<name>.tmp-<pid>`` in the same parent (a rename never
    crosses file systems) and holds a ``.gitignore`` of ``*`` until the swap: git, and so
    dvclive's ``git add`` of its folder and DVC's queue snapshot, never pick up a half-built
    or stale folder. The caller must not write a ``.gitignore`` of its own into it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted(path)
    tmp = path.parent / f".{path.name}{_TMP}{os.getpid()}"
    tmp.mkdir()
    (tmp / ".gitignore").write_text("*\n", encoding="utf-8")
    try:
        yield tmp
        (tmp / ".gitignore").unlink()
        _swap_in(tmp, path)
    finally:
        _remove(tmp)  # unfinished, or (after an exchange) the old folder


_TMP = ".tmp-"  # .<name>.tmp-<pid>: a folder being built
_OLD = ".old-"  # .<name>.old-<pid>: the old folder set aside where no exchange is possible


def recover_interrupted(path: str | Path) -> None:
    """Clear what a killed ``atomic_dir`` left beside ``path``: unfinished folders go; an
    old folder set aside by the two-rename swap goes back to ``path`` if the kill fell
    between the renames (``path`` absent), and goes otherwise. Every leftover counts as
    stale: DVC's lock allows one stage run per workspace, so none is being written now."""
    path = Path(path)
    pattern = f".{glob.escape(path.name)}"
    for tmp in path.parent.glob(pattern + _TMP + "*"):
        _remove(tmp)
    for old in sorted(path.parent.glob(pattern + _OLD + "*")):
        if not os.path.lexists(path):
            old.rename(path)
        else:
            _remove(old)


def _swap_in(new: Path, path: Path) -> None:
    """Put the folder ``new`` at ``path``. Onto nothing, one rename. Onto an old folder,
    Linux swaps the two in one step (renameat2 RENAME_EXCHANGE) and ``new`` then holds the
    old one, for the caller to remove; where the system or file system cannot, the old
    folder is renamed aside first, and a kill between that and the second rename leaves
    ``path`` absent until ``recover_interrupted`` puts the old folder back."""
    if not os.path.lexists(path):
        new.rename(path)
    elif not _exchange(new, path):
        old = path.parent / f".{path.name}{_OLD}{os.getpid()}"
        path.rename(old)
        new.rename(path)
        _remove(old)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False where renameat2 or its exchange is not supported."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:  # glibc before 2.28, or a libc without it
        return False
    at_fdcwd, rename_exchange = -100, 2  # from <fcntl.h> and <linux/fs.h>
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes += [ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def save_model(net: Any, path: str | Path) -> None:
    """A Keras model (weights and optimiser state) as a ``.keras`` file, atomically, and
    byte for byte the same whenever the model is, in any process: Keras stamps the save's
    date into the archive (``metadata.json``'s ``date_saved``, the weights entry's zip time)
    and the memory addresses of shared objects into ``config.json`` (``shared_object_id``),
    which would give the same trained model a new md5 in dvc.lock on every run."""
    with atomic_path(path) as tmp:
        net.save(tmp)
        _deterministic(tmp)


ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold


def _deterministic(path: Path) -> None:
    import zipfile

    with zipfile.ZipFile(path) as archive:
        entries = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for info, data in entries:
            if info.filename == "metadata.json":
                meta = json.loads(data)
                if "date_saved" in meta:
                    meta["date_saved"] = "1980-01-01@00:00:00"
                data = json.dumps(meta).encode("utf-8")
            elif info.filename == "config.json":
                config = _renumbered(json.loads(data), {})
                data = json.dumps(config).encode("utf-8")
            info.date_time = ZIP_EPOCH
            archive.writestr(info, data)


def _renumbered(node: Any, ids: dict[Any, int]) -> Any:
    """``node`` with each ``shared_object_id`` (an ``id()``) replaced by its order of first
    appearance: the same sharing, without the addresses."""
    if isinstance(node, dict):
        return {
            key: ids.setdefault(value, len(ids) + 1)
            if key == "shared_object_id"
            else _renumbered(value, ids)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_renumbered(value, ids) for value in node]
    return node


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


def file_md5(path: str | Path) -> str:
    """MD5 of the file's bytes: the hash DVC 3 writes for a file dependency in dvc.lock,
    so a run's lineage can be matched to the exact data version."""
    digest = hashlib.md5(usedforsecurity=False)
    with Path(path).open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
