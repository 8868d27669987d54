"""Run one entry of DVC's queue in a worker's worktree, in this process, as DVC's own
executor would, and record it as an ordinary DVC experiment.

The steps are DVC's (``BaseExecutor.reproduce`` and ``BaseExecutor.commit``), taken through
DVC's API without its temp clone, celery task and ``dvc exp exec-run`` process:

1. the worktree is put at the entry's baseline commit, with the queued snapshot's files
   (its code and params) on top, exactly the tree DVC's executor merges;
2. the repro arguments DVC packed into the snapshot are unpacked and removed from it;
3. the outputs are checked out from the shared cache, and ``Repo.reproduce`` runs with
   DVC's own ``repro_fn``, except that the dvc.lock entries of the stages that ran are
   written, and every stage's files staged, once after the last stage instead of after
   each (``dvc_internals.DeferredLockRepro``), without DVC's stage locks and with each
   YAML text parsed once (``dvc_internals.lean_bookkeeping``: the worktree is the
   worker's alone), and with one index of the stages for the checkout and the reproduce
   (``dvc_internals.one_index``);
4. the top-level metrics, params and plots files are staged, the experiment hash is DVC's
   ``hash_exp``, and the commit gets DVC's message on the baseline commit;
5. the ref ``refs/exps/<baseline>/<name>`` is created only if it does not exist (git's own
   compare-and-swap), retried while another worker holds git's lock on it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nntune.executor.worktrees import git
from nntune.experiments import dvc_internals
from nntune.experiments.repo import DvcQueueEntry, ExperimentError

REPRO_ARGS = Path(".dvc") / "tmp" / "repro.dat"  # DVC's PACKED_ARGS_FILE in a snapshot
logger = logging.getLogger(__name__)
REF_RETRIES = 50  # tries of a ref update while another process holds git's lock on it


@dataclass
class Outcome:
    exp_rev: str
    ref: str
    seconds: dict[str, float]


def exp_ref_name(baseline_rev: str, name: str) -> str:
    from dvc.repo.experiments.refs import ExpRefInfo

    return str(ExpRefInfo(baseline_rev, name))


def prepare(
    worktree: Path, prefix: str, entry: DvcQueueEntry
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Steps 1 and 2: the worktree holds the entry's snapshot on its baseline; returns the
    packed repro arguments."""
    from dvc.repo.experiments.executor.base import BaseExecutor

    git(worktree, "checkout", "--quiet", "--detach", "--force", entry.baseline_rev)
    git(worktree, "clean", "--quiet", "-d", "--force")  # untracked, not ignored: a past trial's
    git(worktree, "read-tree", "--reset", "-u", entry.stash_rev)
    packed = worktree / prefix / REPRO_ARGS
    if not packed.exists():
        return (), {}
    args, kwargs = BaseExecutor.unpack_repro_args(str(packed))
    git(worktree, "rm", "--quiet", "--cached", "--", str(Path(prefix) / REPRO_ARGS))
    packed.unlink()
    return tuple(args), dict(kwargs)


def run_entry(worktree: Path, prefix: str, entry: DvcQueueEntry) -> Outcome:
    """Steps 1-5 for ``entry`` (see the module doc); raises on a failed stage."""
    from dvc.repo import Repo
    from dvc.repo.checkout import checkout as dvc_checkout
    from dvc.repo.experiments.executor.base import BaseExecutor
    from dvc.scm import add_no_submodules

    seconds: dict[str, float] = {}
    started = time.perf_counter()
    args, kwargs = prepare(worktree, prefix, entry)
    project = worktree / prefix
    # The worktree is this worker's alone: DVC's stage locks and repeated YAML parses go.
    with _cwd(project), dvc_internals.lean_bookkeeping(), Repo(str(project)) as dvc:
        dvc.scm_context.quiet = True
        targets = args[0] if args else kwargs.get("targets")
        with dvc_internals.one_index(dvc):
            dvc_checkout(
                dvc,
                targets=targets,
                with_deps=targets is not None,
                force=True,
                allow_missing=True,
                recursive=kwargs.get("recursive", False),
            )
            seconds["prepare"] = time.perf_counter() - started
            kwargs["repro_fn"] = repro = dvc_internals.DeferredLockRepro()
            stages, tracked = reproduce(dvc, repro, args, kwargs)
            paths = dvc_internals.top_level_paths(dvc)
        if tracked:
            dvc.scm_context.add(tracked)
        seconds["reproduce"] = time.perf_counter() - started - seconds["prepare"]
        committed = time.perf_counter()
        if paths:
            add_no_submodules(dvc.scm, paths)
        exp_hash = BaseExecutor.hash_exp(stages)
        dvc.scm.add([], update=True)
        dvc.scm.commit(f"dvc: commit experiment {exp_hash}", no_verify=True)
        exp_rev = str(dvc.scm.get_rev())
    ref = exp_ref_name(entry.baseline_rev, entry.name or f"exp-{exp_hash[:5]}")
    create_ref(worktree, ref, exp_rev)
    seconds["commit"] = time.perf_counter() - committed
    return Outcome(exp_rev, ref, seconds)


def reproduce(
    dvc: Any, repro: dvc_internals.DeferredLockRepro, args: tuple[Any, ...], kwargs: Any
) -> tuple[list[Any], list[str]]:
    """``dvc.reproduce`` with ``repro`` as its ``repro_fn``, then ``repro.flush()``: the
    stages reproduced and the paths to stage in git. When a stage fails, the lock entries of
    those that ran before it are still written (as DVC's per-stage writes would have left
    them), and the stage's error is the one raised: a failure of that write is only logged."""
    try:
        stages = dvc.reproduce(*args, **kwargs)
    except BaseException:
        try:
            repro.flush()
        except Exception:
            logger.warning("could not write dvc.lock after a failed stage", exc_info=True)
        raise
    return stages, repro.flush()  # dvc.lock, once for all the stages that ran


def create_ref(cwd: Path, ref: str, rev: str, force: bool = False) -> None:
    """``git update-ref REF REV ''``: create ``ref`` only where it does not exist yet; an
    existing ref is an :class:`ExperimentError` (never overwritten), unless ``force``.
    Retried while another process holds git's lock on the ref."""
    expected = [] if force else [""]
    for attempt in range(REF_RETRIES):
        out = subprocess.run(
            ["git", "update-ref", "-m", "nntune: experiment", ref, rev, *expected],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode == 0:
            return
        held = "Unable to create" in out.stderr and ".lock" in out.stderr  # git's ref lock
        if not held or attempt == REF_RETRIES - 1:
            raise ExperimentError(f"could not create {ref}: {out.stderr.strip()}")
        time.sleep(0.05 * (attempt + 1))


@contextmanager
def _cwd(path: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)
