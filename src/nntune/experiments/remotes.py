"""Git and DVC remotes: checking that a commit was pushed, pulling experiments back, and
setting up the remotes that scale-out backends need."""

from __future__ import annotations

import subprocess
from pathlib import Path

from nntune.experiments.queue import remove_queued
from nntune.experiments.refs import experiment_commits
from nntune.experiments.repo import DvcRepo, ExperimentError, baseline_rev, open_repo


def git_remote_url(root: str | Path, remote: str) -> str:
    out = subprocess.run(
        ["git", "remote", "get-url", remote], cwd=root, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise ExperimentError(
            f"this project has no git remote {remote!r}; set one up with "
            "`nntune remote setup GIT_URL DVC_URL`"
        )
    return out.stdout.strip()


def check_pushed(root: str | Path, remote: str, rev: str) -> None:
    """Remote trials clone ``rev`` from ``remote``: it must be on one of its branches."""
    subprocess.run(["git", "fetch", "--quiet", remote], cwd=root, check=False)
    out = subprocess.run(
        ["git", "branch", "--remotes", "--contains", rev, "--list", f"{remote}/*"],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    if not out.stdout.strip():
        raise ExperimentError(
            f"commit {rev[:7]} is not on {remote} yet, and remote trials clone it from there; "
            f"push it first: git push {remote} HEAD (and `dvc push` for the baseline's data)"
        )


def pull_experiments(
    repo: DvcRepo, remote: str, names: list[str] | None = None, cache: bool = True
) -> list[str]:
    """``dvc exp pull REMOTE NAME ...`` (every experiment of HEAD when ``names`` is None):
    git refs and, with ``cache``, the outputs from the DVC remote. Returns the names that
    were new or updated."""
    if names == []:
        return []
    pulled = repo.experiments.pull(remote, exp_names=names, pull_cache=cache)
    return [str(name) for name in pulled]


def default_dvc_remote(root: str | Path) -> str | None:
    with open_repo(root) as repo:
        name = repo.config["core"].get("remote")
    return str(name) if name else None


def setup_remotes(
    root: str | Path, git_remote: str, git_url: str, dvc_remote: str, dvc_url: str
) -> bool:
    """``git remote add`` (or ``set-url``) and ``dvc remote add --default --force``.
    Returns whether .dvc/config changed (it must be committed for clones to see it)."""
    known = subprocess.run(
        ["git", "remote", "get-url", git_remote], cwd=root, capture_output=True, check=False
    )
    verb = "set-url" if known.returncode == 0 else "add"
    subprocess.run(["git", "remote", verb, git_remote, git_url], cwd=root, check=True)
    config = Path(root, ".dvc", "config")
    before = config.read_text(encoding="utf-8") if config.is_file() else ""
    with open_repo(root) as repo, repo.config.edit("repo") as conf:
        conf["remote"][dvc_remote] = {"url": dvc_url}
        conf["core"]["remote"] = dvc_remote
    return config.read_text(encoding="utf-8") != before


def sync_remote(root: str | Path, remote: str) -> tuple[list[str], list[str]]:
    """Pull every experiment of HEAD from ``remote`` (git refs only: metrics and params
    live in git; ``dvc exp pull REMOTE NAME`` fetches one's models), then drop local queue
    entries that ran elsewhere meanwhile (a Slurm array). Returns (pulled, dequeued)."""
    with open_repo(root) as repo:
        pulled = pull_experiments(repo, remote, None, cache=False)
        done = set(experiment_commits(repo, baseline_rev(repo)))
        queued = repo.experiments.celery_queue.iter_queued()
        dequeued = [e.name for e in queued if e.name and e.name in done]
        remove_queued(repo, dequeued)
    return pulled, dequeued
