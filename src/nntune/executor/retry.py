"""The failed trials, by either executor: their logs (``nntune logs NAME``) and queueing
them again with the same params (``nntune run --retry-failed``, DVC's issue 8867)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from nntune.executor.records import FAILED_REF, forget_record, log_path, read_records
from nntune.experiments.queue import queue_state
from nntune.experiments.refs import param_changes
from nntune.experiments.repo import DvcRepo, ExperimentError, baseline_rev, use_this_python


@dataclass
class Requeued:
    name: str
    overrides: list[str]
    moved: bool  # its first run was queued on another commit than HEAD


def requeue_failed(repo: DvcRepo) -> list[Requeued]:
    """Queue every failed trial again under its name, with the params it had (``-S`` the
    same overrides, on HEAD), and forget its failure. Failures of nntune's executor and of
    DVC's queue workers alike."""
    from dvc.repo.experiments.exceptions import ExperimentExistsError

    root = Path(repo.root_dir)
    head = baseline_rev(repo)
    ours = {r.name: r for r in read_records(root) if not r.ok}
    theirs = {n: rev for n, rev in queue_state(repo).failed.items() if n not in ours}
    done = []
    for name, stash_rev in [(n, r.stash_rev) for n, r in ours.items()] + list(theirs.items()):
        base = str(repo.scm.resolve_rev(f"{stash_rev}^1"))
        overrides = param_changes(repo, base, stash_rev, name)
        if name in theirs:
            repo.experiments.celery_queue.remove([name])  # DVC's failed entry
        try:
            repo.experiments.run(params=overrides, queue=True, name=name)
        except ExperimentExistsError:
            raise ExperimentError(
                f"{name}: an experiment of that name exists now; remove it first "
                f"(dvc exp remove {name}) to run it again"
            ) from None
        if name in ours:
            forget_record(root, ours[name].stash_rev)
            subprocess.run(
                ["git", "update-ref", "-d", f"{FAILED_REF}/{stash_rev}"], cwd=root, check=False
            )
        done.append(Requeued(name, overrides, base != head))
    return done


def log_file(root: str | Path, name: str) -> Path | None:
    """The log nntune's executor wrote for trial ``name`` (running, finished or failed)."""
    for record in reversed(read_records(root)):
        if record.name == name and record.log and Path(record.log).exists():
            return Path(record.log)
    path = log_path(root, name)
    return path if path.exists() else None


def log_text(root: str | Path, name: str) -> str:
    """Trial ``name``'s whole log: nntune's executor's, else ``dvc queue logs NAME``."""
    path = log_file(root, name)
    if path is not None:
        return path.read_text(encoding="utf-8", errors="replace")
    use_this_python()
    out = subprocess.run(
        ["dvc", "queue", "logs", name], cwd=root, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise ExperimentError(
            f"no log of a trial named {name!r}: neither nntune's executor nor DVC's queue "
            "ran one (names: nntune compare)"
        )
    return out.stdout + out.stderr
