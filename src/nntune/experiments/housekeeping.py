"""Promoting an experiment to the workspace or a branch, removing experiments, and
``dvc gc`` with the experiments that unfinished studies still need kept."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nntune.experiments.repo import DvcRepo, ExperimentError, open_repo
from nntune.experiments.rows import Experiment, same_params


def remove_experiments(root: str | Path, names: list[str]) -> None:
    if names:
        with open_repo(root) as repo:
            repo.experiments.remove(exp_names=names)


def promote(root: str | Path, name: str, branch: str | None) -> None:
    """``dvc exp branch NAME BRANCH`` or ``dvc exp apply NAME``. DVC's apply overwrites
    uncommitted changes without asking, so a dirty workspace is refused first."""
    with open_repo(root) as repo:
        if branch:
            repo.experiments.branch(name, branch)
            return
        dirty = _uncommitted(repo)
        if dirty:
            shown = ", ".join(dirty[:5]) + (f" and {len(dirty) - 5} more" if len(dirty) > 5 else "")
            raise ExperimentError(
                f"the workspace has uncommitted changes ({shown}), which applying {name} would "
                "overwrite: commit or stash them first (git stash), or use --branch BRANCH"
            )
        repo.experiments.apply(name)


def _uncommitted(repo: DvcRepo) -> list[str]:
    """Tracked files that differ from HEAD (git's own view, untracked files aside)."""
    out = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
        cwd=repo.root_dir,
        capture_output=True,
        text=True,
        check=False,
    )
    return [line[3:] for line in out.stdout.splitlines() if line.strip()]


def collect_garbage(repo: DvcRepo, other_projects: Iterable[str] = ()) -> None:
    """``dvc gc`` that keeps every object any branch, tag, commit, experiment or the
    workspace still uses, in this project and in ``other_projects`` (``dvc gc --projects``,
    for a shared cache): only what the removed experiments alone used goes."""
    repo.gc(
        workspace=True,
        all_branches=True,
        all_tags=True,
        all_commits=True,
        all_experiments=True,
        force=True,
        repos=list(other_projects) or None,
    )


def shared_cache(repo: DvcRepo) -> str | None:
    """The DVC cache folder when it lies outside this project's ``.dvc/`` (``dvc cache
    dir``): other projects may use it, so ``dvc gc`` there could delete their objects."""
    cache = Path(repo.cache.local_cache_dir).resolve()
    own = Path(repo.dvc_dir).resolve()
    return None if cache.is_relative_to(own) else str(cache)


def protected_experiments(
    repo: DvcRepo, rows: list[Experiment], workspace: dict[str, Any]
) -> dict[str, str]:
    """Experiments a user promoted: on a git branch (``dvc exp branch``, ``nntune best
    --branch``) or applied to the workspace (its params are the workspace's)."""
    protected: dict[str, str] = {}
    for exp in rows:
        if exp.rev and exp.rev != "None":
            branches = repo.scm.get_refs_containing(exp.rev, "refs/heads")
            names = sorted(str(b).removeprefix("refs/heads/") for b in branches)
            if names:
                protected[exp.name] = f"on branch {', '.join(names)}"
                continue
        if exp.params and same_params(exp.params, workspace):
            protected[exp.name] = "applied to the workspace"
    return protected
