"""Each worker's persistent ``git worktree`` under ``.dvc/tmp/nntune/workers/``.

A worktree shares the project's git objects and refs, so an experiment ref a worker writes
there is at once in the project's ``dvc exp show``, with no fetch; its index, ``HEAD`` and
files are its own. Its DVC cache is the project's (``.dvc/config.local``), so outputs are
stored once and DVC's run cache is shared. A worktree that git no longer knows, or that a
killed git left locked, is rebuilt from scratch on the next use: it holds nothing that is
not in git or the cache. A stage that outlived its worker and ``nntune run`` both (a kill -9
of the two) is ended before the next worker uses the worktree: it must not write a killed
trial's files into the next trial's.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from nntune.executor.records import state_dir
from nntune.experiments.repo import ExperimentError


def worktree_dir(root: str | Path, number: int) -> Path:
    return state_dir(root) / "workers" / f"w{number}"


def git(cwd: str | Path, *args: str) -> str:
    """Run git in ``cwd``; its stdout, or an :class:`ExperimentError` with its stderr."""
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise ExperimentError(f"git {' '.join(args)} in {cwd}: {out.stderr.strip()}")
    return out.stdout


def ensure_worktree(
    root: str | Path, number: int, cache_dir: str | Path, fresh: bool = False
) -> Path:
    """Worker ``number``'s worktree, made (or remade, when broken or ``fresh``) at the
    project's HEAD, with ``cache_dir`` as its DVC cache. Returns its git root."""
    root = Path(root).resolve()
    path = worktree_dir(root, number)
    end_strays(path)
    if fresh or not _healthy(path):
        rebuild(root, path)
    prefix = git(root, "rev-parse", "--show-prefix").strip()
    local = Path(".dvc") / "config.local"
    _local_config(root / local, path / prefix / local, cache_dir)
    return path


def end_strays(path: Path, proc: Path = Path("/proc"), wait: float = 10.0) -> list[int]:
    """Kill every process whose working directory is in ``path`` (this user's: the others'
    cannot be read) and wait until they are gone; returns their pids. Only the worker that
    holds the worktree's lock calls this, so any such process is a stage of a trial whose
    worker died: one the pool did not end because ``nntune run`` died too, or one forked
    by the warm runner. Without ``/proc`` (not Linux) nothing is checked."""
    path = Path(path).resolve()
    if not proc.is_dir() or not path.exists():
        return []
    me = os.getpid()
    strays = [pid for pid in _pids(proc) if pid != me and _inside(_cwd_of(proc, pid), path)]
    for pid in strays:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:  # killed: gone, or a zombie (its cwd unreadable)
        if not any(_inside(_cwd_of(proc, pid), path) for pid in strays):
            break
        time.sleep(0.02)
    return strays


def _pids(proc: Path) -> list[int]:
    return [int(entry.name) for entry in proc.iterdir() if entry.name.isdigit()]


def _cwd_of(proc: Path, pid: int) -> Path | None:
    try:
        return (proc / str(pid) / "cwd").readlink()
    except OSError:  # gone, a zombie, or another user's
        return None


def _inside(cwd: Path | None, path: Path) -> bool:
    return cwd is not None and (cwd == path or path in cwd.parents)


def _local_config(project: Path, worktree: Path, cache_dir: str | Path) -> None:
    """The worktree's ``.dvc/config.local``: a copy of the project's (remotes, credentials),
    with the project's cache as its cache (``dvc config --local cache.dir``)."""
    from dvc.config import Config

    worktree.parent.mkdir(parents=True, exist_ok=True)
    if project.exists():
        shutil.copyfile(project, worktree)
    else:
        worktree.unlink(missing_ok=True)
    with Config(dvc_dir=str(worktree.parent)).edit("local") as config:
        config["cache"]["dir"] = str(Path(cache_dir).resolve())


def rebuild(root: Path, path: Path) -> None:
    """Remove whatever is at ``path`` and add a fresh detached worktree there."""
    if path.exists():
        shutil.rmtree(path)
    git(root, "worktree", "prune")
    path.parent.mkdir(parents=True, exist_ok=True)
    git(root, "worktree", "add", "--quiet", "--detach", "--force", str(path), "HEAD")


def _healthy(path: Path) -> bool:
    if not (path / ".git").is_file():
        return False
    try:
        top = git(path, "rev-parse", "--show-toplevel").strip()
        gitdir = Path(git(path, "rev-parse", "--absolute-git-dir").strip())
    except ExperimentError:
        return False
    if Path(top).resolve() != path.resolve():
        return False
    # A git killed mid-write leaves its index lock; the worker owning this worktree holds
    # its lock, so no other git runs here: the lock is stale.
    (gitdir / "index.lock").unlink(missing_ok=True)
    return True
