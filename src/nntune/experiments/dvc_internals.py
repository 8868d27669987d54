"""The private APIs of DVC's celery queue that nntune needs, and nowhere else.

DVC's public queue API (``repo.experiments.celery_queue``) lists entries by state but
cannot say which finished ones failed with what result, nor start one worker with its own
environment (one GPU each), nor take one entry off the queue as its own workers do when
they start it (nntune's executor runs entries itself). These calls can; they are private,
so ``pyproject.toml`` bounds DVC to the versions they were tested with, and
``tests/test_layout.py`` checks that the installed DVC still has them.
"""

from __future__ import annotations

import logging
from typing import Any

from nntune.experiments.repo import DvcExecutorInfo, DvcQueue, DvcQueueEntry, DvcRepo

logger = logging.getLogger("dvc")

# The private methods of dvc.repo.experiments.queue.celery.LocalCeleryQueue used below.
USED = (
    "_iter_active_tasks",
    "_iter_done_tasks",
    "_iter_queued",
    "_load_info",
    "_spawn_worker",
    # dvc.repo.experiments.executor.base.BaseExecutor's, the steps of its reproduce that
    # nntune's executor takes in its own worktrees:
    "_get_top_level_paths",
    # dvc.stage.utils': the files of a stage that an experiment commit stages.
    "_get_stage_files",
    # dvc.dvcfile.ProjectFile's: the dvc.lock beside a dvc.yaml.
    "_lockfile",
)


def active_entries(queue: DvcQueue) -> list[DvcQueueEntry]:
    """The queue entries (``QueueEntry``) a worker is running now."""
    return [entry for _, entry in queue._iter_active_tasks()]


def done_entries(queue: DvcQueue) -> list[DvcQueueEntry]:
    """The queue entries whose task finished, successfully or not."""
    return [entry for _, entry in queue._iter_done_tasks()]


def executor_info(queue: DvcQueue, stash_rev: str) -> DvcExecutorInfo:
    """The ``ExecutorInfo`` DVC wrote for a queued entry (its result once it finished)."""
    return queue._load_info(stash_rev)


def spawn_worker(queue: DvcQueue, number: int) -> None:
    """Start worker ``number`` with this process's environment (``start_workers`` would
    give every worker the same one)."""
    queue._spawn_worker(number)


def take_off_queue(queue: DvcQueue, entry: DvcQueueEntry) -> bool:
    """Remove ``entry`` from DVC's queue as a DVC worker does when it takes it: its celery
    message goes, and its stash entry is dropped under DVC's experiments lock (so that a
    ``dvc exp run --queue`` stashing at the same moment cannot interleave). The snapshot's
    commit itself stays in git until garbage collection. False when it was no longer
    queued."""
    from dvc.repo.experiments.queue.base import BaseStashQueue

    # The stash entry first (DVC retries its lock for up to 180 s), the message second: a
    # kill between the two leaves the entry listed, and the next worker that meets it
    # finds its record and finishes the removal (both steps may be repeated).
    BaseStashQueue.get_stash_entry(queue.repo.experiments, entry)  # drops it when stashed
    found = False
    for msg, queued in queue._iter_queued():
        if queued.stash_rev == entry.stash_rev and msg.delivery_tag:
            try:
                queue.celery.reject(msg.delivery_tag)
            except ValueError:
                continue  # another process removed it meanwhile
            found = True
    return found


class DeferredLockRepro:
    """DVC's ``repro_fn`` for experiments (``BaseExecutor._repro_and_track``, which calls
    ``dvc.repo.reproduce._reproduce_stage``), with its two writes moved after the last stage:

    - the ``dvc.lock`` entries of the stages that ran are written in one rewrite, not in one
      round-trip YAML parse and dump of the whole file per stage (0.16 s each here);
    - each stage's files are listed for git once all stages ran, not after each (listing
      them builds DVC's index again, since running a stage resets it: 0.09 s each).

    Nothing reads ``dvc.lock`` or those listings between stages: each stage decides whether
    it changed from its entry loaded before the run and from its dependencies' files. So the
    stages that run and the files written and staged are the same as DVC's."""

    def __init__(self) -> None:
        self.visited: list[Any] = []  # every stage reproduce went through (DVC stages them all)
        self.ran: list[Any] = []  # those that ran: their dvc.lock entries are new

    def __call__(self, stage: Any, **kwargs: Any) -> Any:
        if stage.frozen and not stage.is_import:
            logger.warning("%s is frozen. Its dependencies are not going to be reproduced.", stage)
        ret = stage.reproduce(**kwargs)
        if not kwargs.get("dry"):
            self.visited.append(stage)
            if ret:
                self.ran.append(stage)
        return ret

    def flush(self) -> list[str]:
        """Write the lock entries of the stages that ran; returns the paths to stage in git:
        every visited stage's files (dvc.yaml, dvc.lock, its git-tracked deps and outs)."""
        from dvc.stage.utils import _get_stage_files

        by_file: dict[str, list[Any]] = {}
        for stage in self.ran:
            by_file.setdefault(stage.dvcfile.relpath, []).append(stage)
        for stages in by_file.values():
            stages[0].dvcfile.dump_stages(stages, update_pipeline=False)
        paths = [stages[0].dvcfile._lockfile.relpath for stages in by_file.values()]
        for stage in self.visited:
            paths.extend(_get_stage_files(stage))
        self.visited.clear()
        self.ran.clear()
        return list(dict.fromkeys(paths))


def top_level_paths(dvc: DvcRepo) -> list[str]:
    """The top-level metrics, params and plots files an experiment commit includes."""
    from dvc.repo.experiments.executor.base import BaseExecutor

    return list(BaseExecutor._get_top_level_paths(dvc))
