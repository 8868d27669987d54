"""The private APIs of DVC's celery queue that nntune needs, and nowhere else.

DVC's public queue API (``repo.experiments.celery_queue``) lists entries by state but
cannot say which finished ones failed with what result, nor start one worker with its own
environment (one GPU each), nor take one entry off the queue as its own workers do when
they start it (nntune's executor runs entries itself). These calls can; they are private,
so ``pyproject.toml`` bounds DVC to the versions they were tested with, and
``tests/test_layout.py`` checks that the installed DVC still has them.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
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
    # dvc.dvcfile.ProjectFile's: the dvc.lock beside a dvc.yaml.
    "_lockfile",
    # Module functions that lean_bookkeeping and parsed_once swap while active: the stage
    # locks that dvc.stage.decorators.rwlocked imports from dvc.rwlock at each call, and the
    # YAML parser that dvc.utils.serialize._yaml.load_yaml and dvc.utils.strictyaml.load
    # call by name.
    "rwlock",
    "parse_yaml",
    # dvc.repo's: the repository lock whose outermost holder drops the index (one_index).
    "lock_repo",
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
    ``dvc.repo.reproduce._reproduce_stage``), with its two writes moved after the last stage
    and made cheaper:

    - the ``dvc.lock`` entries of the stages that ran are written in one rewrite
      (:func:`dump_lock`), not in one round-trip YAML parse and dump of the whole file per
      stage;
    - each stage's files are listed for git once all stages ran, not after each (listing
      them builds DVC's index again, since running a stage resets it), and a dependency git
      tracks, or that a stage of the run outputs, is known without asking DVC's index
      (:func:`stage_files`).

    Nothing reads ``dvc.lock`` or those listings between stages: each stage decides whether
    it changed from its entry loaded before the run and from its dependencies' files. So the
    stages that run, the dvc.lock written and the commit are the same as DVC's."""

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
        every visited stage's files (dvc.yaml, dvc.lock, its deps and outs git has or must
        have), relative to the working directory, as DVC's ``_get_stage_files`` gives them."""
        by_file: dict[str, list[Any]] = {}
        for stage in self.ran:
            by_file.setdefault(stage.dvcfile.relpath, []).append(stage)
        for stages in by_file.values():
            dump_lock(stages[0].dvcfile._lockfile, stages)
        paths = [stages[0].dvcfile._lockfile.relpath for stages in by_file.values()]
        known = _git_files() if self.visited else set()
        # Every visited stage's outputs: a dependency that is one (or inside one) is DVC's.
        outs = {str(out.fs_path) for stage in self.visited for out in stage.outs}
        for stage in self.visited:
            paths.extend(stage_files(stage, known, outs))
        self.visited.clear()
        self.ran.clear()
        return list(dict.fromkeys(paths))


def dump_lock(lockfile: Any, stages: list[Any]) -> None:
    """``Lockfile.dump_stages(stages, update_pipeline=False)``, writing the same bytes, with
    the file read by DVC's C-backed safe YAML loader instead of its pure-Python round-trip
    one (0.2 s against 0.035 s for this project's 830-line dvc.lock). The round-trip load
    keeps comments and styles; a dvc.lock DVC wrote has none, and DVC's dumper writes the
    same text for the plain data (a unit test compares the bytes with ``dvc repro``'s). A
    dvc.lock that is missing or has a comment goes through DVC's own ``dump_stages``."""
    from dvc.stage import serialize
    from dvc.utils.serialize import dumps_yaml, parse_yaml

    from nntune.stage.artifacts import atomic_path

    path = Path(lockfile.path)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if not text or "#" in text:
        lockfile.dump_stages(stages, update_pipeline=False)
        return
    data = parse_yaml(text, str(path))
    entries = data.setdefault("stages", {})
    modified = False
    for stage in stages:
        stage_data = serialize.to_lockfile(stage, update_pipeline=False)
        modified |= entries.get(stage.name, {}) != stage_data.get(stage.name, {})
        entries.update(stage_data)
    if not modified:
        return
    logger.info("Updating lock file '%s'", lockfile.relpath)
    with atomic_path(path) as temp:  # a kill leaves the old dvc.lock or the new one
        temp.write_text(dumps_yaml(data), encoding="utf-8")
    lockfile.repo.scm_context.track_file(lockfile.relpath)


def stage_files(stage: Any, tracked: set[str], outs: set[str]) -> list[str]:
    """DVC's ``dvc.stage.utils._get_stage_files(stage)`` without asking DVC's index whether
    each dependency is DVC's (``dvcfs.isdvc``, which builds the index again after a stage
    ran: 0.1-0.2 s per trial): a dependency in ``tracked`` (git tracks it) is listed, one in
    ``outs`` or inside one (an output of a stage of the run) is not, and only any other
    asks DVC. Listing a tracked file that is also an output changes nothing: the
    experiment commit stages every tracked file's change anyway (``scm.add([],
    update=True)``)."""
    from dvc.utils import relpath

    file = stage.dvcfile
    paths = [file.relpath]
    if hasattr(file, "_lockfile"):  # a dvc.yaml (ProjectFile), not a .dvc file
        paths.append(file._lockfile.relpath)
    for dep in stage.deps:
        if dep.use_scm_ignore or not dep.is_in_repo:
            continue
        path = relpath(dep.fs_path)
        if path in tracked:
            paths.append(path)
        elif _inside_any(str(dep.fs_path), outs):
            continue
        elif not stage.repo.dvcfs.isdvc(stage.repo.dvcfs.from_os_path(str(dep))):
            paths.append(path)
    for out in stage.outs:
        if out.is_in_repo and not out.use_scm_ignore:
            paths.append(relpath(out.fs_path))
    return paths


def _inside_any(path: str, outs: set[str]) -> bool:
    """Whether ``path`` is one of ``outs`` or inside one of them (a file of an output
    folder)."""
    return path in outs or any(str(parent) in outs for parent in Path(path).parents)


def _git_files() -> set[str]:
    """The files git tracks under the working directory, relative to it."""
    import subprocess

    out = subprocess.run(
        ["git", "ls-files", "-z"], capture_output=True, text=True, check=True
    ).stdout
    return {os.path.normpath(name) for name in out.split("\0") if name}


@contextmanager
def one_index(dvc: DvcRepo) -> Iterator[None]:
    """Hold the repository lock across several of DVC's locked calls. Each takes that lock,
    and its outermost holder (``dvc.repo.lock_repo``) drops the repository's index (every
    stage of dvc.yaml and dvc.lock, rebuilt from the files: about 0.07 s here) on taking
    and on releasing it, so that a call sees what another DVC process changed meanwhile.

    - A worker holds its worktree's across a trial's checkout, reproduce and listing of its
      top-level files: nobody else runs DVC there, and the checkout changes outputs, not
      dvc.yaml or dvc.lock. (A stage's command still runs with the lock released and the
      index dropped, as in ``dvc repro``.)
    - ``queue_trials`` holds the project's across a batch of queued entries, as DVC's own
      ``exp run --queue`` does for a sweep: each entry restores the workspace it stashed."""
    from dvc.repo import lock_repo

    with lock_repo(dvc):
        yield


def top_level_paths(dvc: DvcRepo) -> list[str]:
    """The top-level metrics, params and plots files an experiment commit includes."""
    from dvc.repo.experiments.executor.base import BaseExecutor

    return list(BaseExecutor._get_top_level_paths(dvc))


_PARSED: OrderedDict[str, Any] = OrderedDict()  # YAML text -> DVC's safe parse of it
_PARSED_MAX = 32  # texts kept: dvc.yaml, dvc.lock, params.yaml, run-cache entries
_PARSED_LOCK = threading.Lock()


@contextmanager
def lean_bookkeeping() -> Iterator[None]:
    """Two of DVC's per-stage costs, taken off while nntune's executor reproduces a trial in
    a worktree that only its worker uses (its claim says so):

    - **Stage read/write locks.** Around every stage operation (status, run, commit,
      checkout) DVC reads and rewrites the JSON file ``.dvc/tmp/rwlock`` twice: about 40
      edits per trial. They keep two DVC processes *in one repository* from running stages
      on the same files while DVC's repository lock is released for a stage's command.
      Nobody else runs DVC in a worker's worktree (its ``.dvc/tmp`` is its own), so they
      guard nothing there. DVC's repository lock is still taken, and the experiments' locks
      (``get_exp_rwlock``, imported by name elsewhere) and every other repository's are
      untouched.
    - **YAML parses** (:func:`parsed_once`): about 40 safe parses per trial of 3-4 texts.

    Process-wide while active (the worker runs one trial at a time, with no other thread
    using DVC); both are restored on exit."""
    import dvc.rwlock

    saved = dvc.rwlock.rwlock
    dvc.rwlock.rwlock = _no_stage_lock
    try:
        with parsed_once():
            yield
    finally:
        dvc.rwlock.rwlock = saved


@contextmanager
def parsed_once() -> Iterator[None]:
    """DVC parses dvc.yaml, dvc.lock and params.yaml again for every stage it checks and
    every experiment it queues. While active, a text parsed before gets a deep copy of its
    first parse (a copy, since DVC may change what it gets); the cache is keyed by the text
    itself, so a file that changed is parsed afresh. Round-trip parses, which keep
    comments, are not cached. Process-wide; restored on exit."""
    import dvc.utils.strictyaml
    from dvc.utils.serialize import _yaml

    parse = _yaml.parse_yaml
    saved = (_yaml.parse_yaml, dvc.utils.strictyaml.parse_yaml)

    def cached_parse(text: str, path: Any, typ: str = "safe") -> Any:
        if typ != "safe":
            return parse(text, path, typ=typ)
        with _PARSED_LOCK:
            if text in _PARSED:
                _PARSED.move_to_end(text)
                return copy.deepcopy(_PARSED[text])
        data = parse(text, path, typ=typ)  # a YAML error is raised, and nothing is kept
        with _PARSED_LOCK:
            _PARSED[text] = copy.deepcopy(data)
            while len(_PARSED) > _PARSED_MAX:
                _PARSED.popitem(last=False)
        return data

    _yaml.parse_yaml = dvc.utils.strictyaml.parse_yaml = cached_parse
    try:
        yield
    finally:
        _yaml.parse_yaml, dvc.utils.strictyaml.parse_yaml = saved


@contextmanager
def _no_stage_lock(*args: Any, **kwargs: Any) -> Iterator[None]:
    yield
