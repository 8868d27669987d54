"""``nntune search``: an Optuna study whose every trial is a DVC experiment.

Optuna samples (TPE, or random points for successive halving) and keeps the books through
its ask-and-tell interface; DVC's queue runs each experiment. The study lives in a journal
file under ``.nntune/studies/`` and is tied to the commit it started on.

The driver is crash-safe because it never trusts its own memory: every pass rebuilds what
happened from DVC (queued, running, failed experiments and the refs of finished ones) and
from the journal, then tells Optuna what it has not been told yet. Experiment names are
deterministic (``{study}-t{N}-e{epochs}``), and a name that DVC already knows is never
queued again, so a driver killed at any point (even ``kill -9``) and started again with
the same command goes on without losing or duplicating a trial. A file lock keeps it to one
driver per study.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from nntune.config.metrics import Objective
from nntune.errors import NntuneError
from nntune.locks import LockHeldError, record_lock
from nntune.tuning import search_space

if TYPE_CHECKING:
    from collections.abc import Sequence

    import optuna

STUDIES = Path(".nntune") / "studies"


class StudyError(NntuneError):
    pass


@dataclass(frozen=True)
class Settings:
    """What defines a study; resuming with different settings is refused."""

    study: str
    method: search_space.Method
    trials: int
    min_epochs: int
    max_epochs: int
    eta: int
    seed: int
    space: dict[str, Any]  # search_space.describe_space()

    def identity(self) -> dict[str, Any]:
        """Everything but the trial count, which a later run may raise."""
        return {k: v for k, v in asdict(self).items() if k != "trials"}


@contextmanager
def study_lock(root: Path, study: str) -> Iterator[None]:
    """One driver per study: an exclusive POSIX record lock on a file, which the kernel
    drops when the process dies, however it dies. (Not ``flock``: DVC's queue workers are
    forked from the driver and would inherit, and keep, an ``flock``.)"""
    path = root / STUDIES / f"{study}.lock"
    with ExitStack() as stack:
        try:
            handle = stack.enter_context(record_lock(path, wait=False))
        except LockHeldError:
            holder = path.read_text(encoding="utf-8").strip() or "another process"
            raise StudyError(
                f"study {study} already has a driver ({holder}); wait for it, or stop it "
                "first: a second driver would queue the same trials twice"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        yield


def _journal(root: Path, study: str) -> optuna.storages.JournalStorage:
    """The study's journal storage. A ``kill -9`` in the middle of an append can leave a
    last line without its newline: that record never took effect, so it is cut off (the
    driver holds the study lock, so nobody else is writing)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    path = root / STUDIES / f"{study}.journal"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with path.open("r+b") as stream:
                stream.truncate(data.rfind(b"\n") + 1)

    # Optuna's own lock file would outlive a killed driver and stall the next one for its
    # grace period; this process holds the study lock, so any such file is stale.
    Path(f"{path}.lock").unlink(missing_ok=True)
    backend = JournalFileBackend(str(path))
    return optuna.storages.JournalStorage(backend)


def needed_by_unfinished_studies(root: Path, names: Iterable[str]) -> dict[str, str]:
    """Which of ``names`` a study that has not ended still builds on, with why: every
    rung of a trial Optuna has not finished (its next rung warm-starts from the last).
    ``nntune gc`` must not remove them. Read-only: the journals are not repaired here."""
    import re

    import optuna
    from optuna.storages.journal import JournalFileBackend

    open_trials: set[tuple[str, int]] = set()
    for journal in sorted((root / STUDIES).glob("*.journal")):
        storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
        for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            for trial in study.get_trials(deepcopy=False):
                if not trial.state.is_finished():
                    open_trials.add((summary.study_name, trial.number))
    needed: dict[str, str] = {}
    for name in names:
        match = re.fullmatch(r"(?P<study>[A-Za-z][A-Za-z0-9_]*)-t(?P<n>[0-9]+)(-e[0-9]+)?", name)
        if match and (match["study"], int(match["n"])) in open_trials:
            needed[name] = (
                f"needed by the unfinished study {match['study']} (trial {match['n']}): "
                "repeat its `nntune search` command to finish it first"
            )
    return needed


def open_study(
    root: Path,
    settings: Settings,
    objective: Objective,
    baseline: str,
    space: Mapping[str, search_space.Dimension],
) -> optuna.Study:
    """Create the study, or load it and check it is the same study on the same commit."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = _journal(root, settings.study)
    direction: Literal["minimize", "maximize"] = (
        "minimize" if objective.direction == "min" else "maximize"
    )
    existing = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    study = optuna.create_study(
        study_name=settings.study,
        storage=storage,
        direction=direction,
        load_if_exists=True,
    )
    identity = {**settings.identity(), "objective": objective.metric, "baseline": baseline}
    if settings.study not in existing:
        for key, value in identity.items():
            study.set_user_attr(key, value)
    else:
        _check_same_study(settings.study, dict(study.user_attrs), identity)
    study.sampler = _sampler(settings, space, len(study.trials))
    return study


def _sampler(
    settings: Settings, space: Mapping[str, search_space.Dimension], done: int
) -> optuna.samplers.BaseSampler:
    """TPE for tpe. For successive halving, where promotions do the adapting: the grid in
    a seeded random order without repeats when the space is finite and has room for every
    trial, else random points."""
    import optuna

    # A resumed random sampler must not replay the numbers of the first run.
    seed = settings.seed + done
    if settings.method == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    grid = search_space.grid_points(space)
    if grid is not None and settings.trials <= (search_space.grid_size(space) or 0):

        class ShuffledGrid(optuna.samplers.GridSampler):
            # Trial N takes point N of the seeded shuffle (so a resumed driver gets the
            # same points: same seed); the driver, not the sampler, ends the study.
            def after_trial(
                self,
                study: optuna.Study,
                trial: optuna.trial.FrozenTrial,
                state: optuna.trial.TrialState,
                values: Sequence[float] | None,
            ) -> None:
                pass

        return ShuffledGrid(grid, seed=settings.seed)
    return optuna.samplers.RandomSampler(seed=seed)


def _check_same_study(name: str, stored: dict[str, Any], wanted: dict[str, Any]) -> None:
    if stored.get("baseline") != wanted["baseline"]:
        raise StudyError(
            f"study {name} started on commit {str(stored.get('baseline'))[:7]}, HEAD is "
            f"{wanted['baseline'][:7]}: check that commit out to continue it, or pass "
            "another --study name to start a new one"
        )
    changed = [k for k, v in wanted.items() if json.dumps(stored.get(k)) != json.dumps(v)]
    if changed:
        details = ", ".join(f"{k}: {stored.get(k)} -> {wanted[k]}" for k in changed)
        raise StudyError(
            f"study {name} exists with other settings ({details}); repeat its command to "
            "continue it, or pass another --study name"
        )
