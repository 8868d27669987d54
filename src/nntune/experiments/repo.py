"""Opening the project's DVC repository and the facts every other part of the gateway needs:
the baseline commit, the interpreter DVC's stages run with."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeAlias

from nntune.errors import NntuneError

# DVC ships no type information (mypy skips it, see pyproject.toml): these name what a value
# is where a signature takes or returns one of DVC's objects.
DvcRepo: TypeAlias = Any  # dvc.repo.Repo; DVC ships no type information
DvcQueue: TypeAlias = Any  # dvc.repo.experiments.queue.celery.LocalCeleryQueue
DvcQueueEntry: TypeAlias = Any  # dvc.repo.experiments.queue.base.QueueEntry
DvcExecutorInfo: TypeAlias = Any  # dvc.repo.experiments.executor.base.ExecutorInfo


class ExperimentError(NntuneError):
    pass


def use_this_python() -> None:
    """DVC stage commands call ``python`` and queue workers call ``dvc``: make both the
    ones of the interpreter running nntune, even when its environment is not activated."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[0] != bin_dir:
        os.environ["PATH"] = f"{bin_dir}{os.pathsep}{path}"


@contextmanager
def open_repo(root: str | Path = ".") -> Iterator[DvcRepo]:
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        repo = Repo(str(root))
    except NotDvcRepoError:
        raise ExperimentError(
            f"{Path(root).resolve()}: not a DVC project; run `make setup` or `dvc init`"
        ) from None
    try:
        yield repo
    finally:
        repo.close()


def baseline_rev(repo: DvcRepo) -> str:
    """The commit experiments are queued on (HEAD)."""
    return str(repo.scm.get_rev())
