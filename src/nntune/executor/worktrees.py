"""Each worker's persistent ``git worktree`` under ``.dvc/tmp/nntune/workers/``.

A worktree shares the project's git objects and refs, so an experiment ref a worker writes
there is at once in the project's ``dvc exp show``, with no fetch; its index, ``HEAD`` and
files are its own. Its DVC cache is the project's (``.dvc/config.local``), so outputs are
stored once and DVC's run cache is shared. A worktree that git no longer knows, or that a
killed git left locked, is rebuilt from scratch on the next use: it holds nothing that is
not in git or the cache.
"""

from __future__ import annotations

import shutil
import subprocess
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
    if fresh or not _healthy(path):
        rebuild(root, path)
    prefix = git(root, "rev-parse", "--show-prefix").strip()
    local = Path(".dvc") / "config.local"
    _local_config(root / local, path / prefix / local, cache_dir)
    return path


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
