"""The private APIs of DVC's celery queue that nntune needs, and nowhere else.

DVC's public queue API (``repo.experiments.celery_queue``) lists entries by state but
cannot say which finished ones failed with what result, nor start one worker with its own
environment (one GPU each). These four calls can; they are private, so ``pyproject.toml``
bounds DVC to the versions they were tested with, and ``tests/test_layout.py`` checks that
the installed DVC still has them.
"""

from __future__ import annotations

from nntune.experiments.repo import DvcExecutorInfo, DvcQueue, DvcQueueEntry

# The private methods of dvc.repo.experiments.queue.celery.LocalCeleryQueue used below.
USED = ("_iter_active_tasks", "_iter_done_tasks", "_load_info", "_spawn_worker")


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
