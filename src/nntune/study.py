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

import errno
import fcntl
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from nntune import experiments, search
from nntune.errors import NntuneError
from nntune.grid import apply
from nntune.metrics import Objective
from nntune.params import ParamsError, parse_params

if TYPE_CHECKING:
    pass

STUDIES = Path(".nntune") / "studies"
MODEL_OUT = ("train", "models/last.keras")  # the last epoch's state: what a promotion continues


class StudyError(NntuneError):
    pass


@dataclass(frozen=True)
class Settings:
    """What defines a study; resuming with different settings is refused."""

    study: str
    method: search.Method
    trials: int
    min_epochs: int
    max_epochs: int
    eta: int
    seed: int
    space: dict[str, Any]  # search.describe_space()

    def identity(self) -> dict[str, Any]:
        """Everything but the trial count, which a later run may raise."""
        return {k: v for k, v in asdict(self).items() if k != "trials"}


@dataclass
class Job:
    """One experiment of a trial at one epoch budget."""

    name: str
    trial: int
    epochs: int  # budget (train.max_epochs); for tpe the params' max_epochs
    bracket: int
    state: str = "queued"  # queued, running, success, failed
    value: float | None = None


@dataclass
class Snapshot:
    """What one pass of the driver saw, for the live view and the summary."""

    jobs: list[Job] = field(default_factory=list)
    asked: int = 0
    finished: int = 0  # trials told to Optuna
    epochs_spent: int = 0
    best: tuple[str, float] | None = None  # experiment, objective value
    done: bool = False


@contextmanager
def study_lock(root: Path, study: str) -> Iterator[None]:
    """One driver per study: an exclusive POSIX record lock on a file, which the kernel
    drops when the process dies, however it dies. (Not ``flock``: DVC's queue workers are
    forked from the driver and would inherit, and keep, an ``flock``.)"""
    path = root / STUDIES / f"{study}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+", encoding="utf-8") as handle:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise StudyError(
                f"study {study} already has a driver ({holder}); wait for it, or stop it "
                "first: a second driver would queue the same trials twice"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)


def _journal(root: Path, study: str) -> Any:
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
    space: Mapping[str, search.Dimension],
) -> Any:
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


def _sampler(settings: Settings, space: Mapping[str, search.Dimension], done: int) -> Any:
    """TPE for tpe. For successive halving, where promotions do the adapting: the grid in
    a seeded random order without repeats when the space is finite and has room for every
    trial, else random points."""
    import optuna

    # A resumed random sampler must not replay the numbers of the first run.
    seed = settings.seed + done
    if settings.method == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    grid = search.grid_points(space)
    if grid is not None and settings.trials <= (search.grid_size(space) or 0):

        class ShuffledGrid(optuna.samplers.GridSampler):
            # Trial N takes point N of the seeded shuffle (so a resumed driver gets the
            # same points: same seed); the driver, not the sampler, ends the study.
            def after_trial(self, *args: Any) -> None:
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


class Executor(Protocol):
    """What runs the experiments the driver queues in DVC's queue."""

    def refresh(self, repo: Any) -> Any:
        """Collect what finished elsewhere (before the driver reads the refs)."""

    def state(self, repo: Any) -> experiments.QueueState:
        """Queued, running and failed experiments."""

    def start(self, repo: Any) -> None:
        """Make the queued experiments run."""

    def stop(self, repo: Any) -> None:
        """The study is done: let go of the workers (they must not idle on)."""


@dataclass
class LocalQueue:
    """DVC's own queue workers on this machine."""

    jobs: int
    started: float = -math.inf  # time.monotonic() of the last start or check
    check_seconds: float = 15.0

    def refresh(self, repo: Any) -> None:
        return None  # DVC's workers commit finished experiments here themselves

    def state(self, repo: Any) -> experiments.QueueState:
        state = experiments.queue_state(repo)
        if state.pending and time.monotonic() - self.started >= self.check_seconds:
            # Workers that died leave their trials 'running' forever: fail those (the
            # driver tells Optuna), and start new workers for the rest.
            self.started = time.monotonic()
            if experiments.revive_queue(repo, state, self.jobs):  # orphans settled
                state = experiments.queue_state(repo)
        return state

    def start(self, repo: Any) -> None:
        experiments.start_workers(repo, self.jobs)
        self.started = time.monotonic()

    def stop(self, repo: Any) -> None:
        experiments.stop_workers(repo)


class Driver:
    """Keeps ``jobs`` experiments in DVC's queue until the study has its trials; the
    executor (DVC's local workers, or Ray) runs them."""

    def __init__(
        self,
        settings: Settings,
        space: Mapping[str, search.Dimension],
        base: Mapping[str, Any],
        objective: Objective,
        jobs: int,
        executor: Executor | None = None,
    ) -> None:
        self.settings = settings
        self.space = space
        self.base = base
        self.objective = objective
        self.jobs = jobs
        self.executor = executor or LocalQueue(jobs)
        self.brackets = search.brackets(
            settings.method, settings.min_epochs, settings.max_epochs, settings.eta
        )

    def run(
        self,
        repo: Any,
        study: Any,
        show: Callable[[Snapshot], None] = lambda s: None,
        poll_seconds: float = 2.0,
    ) -> Snapshot:
        from nntune.interrupts import deferred_ctrl_c

        baseline = experiments.baseline_rev(repo)
        with deferred_ctrl_c() as ctrl_c:  # Ctrl-C stops between passes, never mid-pass
            while True:
                snapshot = self.step(repo, study, baseline)
                show(snapshot)
                if snapshot.done:
                    self.executor.stop(repo)
                    return snapshot
                if ctrl_c.wait(poll_seconds):
                    raise KeyboardInterrupt

    def step(self, repo: Any, study: Any, baseline: str) -> Snapshot:
        """One pass: read DVC, tell Optuna, queue what may run now."""
        self.executor.refresh(repo)
        # One consistent view: the queue first, the refs second. An entry only moves
        # forward (queued -> running -> done), and DVC writes a finished experiment's ref
        # before its task leaves the running list, so an experiment that finishes between
        # the two reads is still seen: running in the first, with a ref in the second.
        # (Refs first would miss it in both, and queue its name again.)
        queue = self.executor.state(repo)
        commits = experiments.experiment_commits(repo, baseline)
        known = self._known(queue, commits)
        states, jobs = self._sync(repo, study, known)
        pending = sum(job.state in ("queued", "running") for job in jobs)
        # Each worker gets one experiment waiting behind the one it runs, so that it never
        # idles while the driver polls, reads results and queues the next.
        free = 2 * self.jobs - pending
        queued_now = 0
        for trial in study.get_trials(deepcopy=False):  # asked, but no experiment yet
            state = states.get(trial.number)
            if free > 0 and state is not None and not state.started and not state.finished:
                self._queue_first(repo, study, trial)
                free, queued_now = free - 1, queued_now + 1
        if self.settings.method != "tpe" and free > 0:
            for promotion in search.promotions(
                states, self.brackets, self.objective, self.settings.eta
            )[:free]:
                self._queue_promotion(repo, study, promotion, commits)
                free, queued_now = free - 1, queued_now + 1
        while free > 0 and len(study.trials) < self.settings.trials:
            trial = study.ask()
            states[trial.number] = search.TrialState(trial.number)
            self._queue_first(repo, study, study.trials[trial.number])
            free, queued_now = free - 1, queued_now + 1
        running = sum(job.state == "running" for job in jobs)
        if queued_now or (pending and not running):  # workers stop when the queue idles
            self.executor.start(repo)
        snapshot = self._snapshot(study, jobs)
        if not queued_now and not pending and len(study.trials) >= self.settings.trials:
            self._finish(study)
            snapshot = self._snapshot(study, jobs)
            snapshot.done = True
        return snapshot

    # --- reading DVC ------------------------------------------------------------------

    def _known(self, state: experiments.QueueState, commits: Mapping[str, str]) -> dict[str, str]:
        """This study's experiments by name, in every state DVC knows: queued, running,
        failed, or success (a ref in ``commits``, or a finished queue task whose ref is
        not read yet). A name in here is never queued again."""
        prefix = f"{self.settings.study}-t"
        known: dict[str, str] = {}
        for name in state.queued:
            known[name] = "queued"
        for name in state.running:
            known[name] = "running"
        for name in state.failed:
            known[name] = "failed"
        for name in state.succeeded:
            # Read before the refs, so its ref is there unless someone removed it since
            # (`dvc exp remove`): its result is lost, which fails the trial.
            known[name] = "success" if name in commits else "failed"
        for name in commits:
            known[name] = "success"
        return {k: v for k, v in known.items() if k.startswith(prefix)}

    def _sync(
        self, repo: Any, study: Any, known: dict[str, str]
    ) -> tuple[dict[int, search.TrialState], list[Job]]:
        """Tell Optuna every result it has not heard yet; return each trial's state."""
        import optuna

        states: dict[int, search.TrialState] = {}
        jobs: list[Job] = []
        for frozen in study.get_trials(deepcopy=False):
            number = frozen.number
            state = search.TrialState(number, finished=frozen.state.is_finished())
            state.results = {int(k): float(v) for k, v in frozen.intermediate_values.items()}
            bracket = search.bracket_of(number, len(self.brackets))
            budgets = self.brackets[bracket]
            for epochs in budgets:
                name = self._name(number, epochs)
                if name not in known:
                    continue
                state.started.add(epochs)
                job = Job(name, number, epochs, bracket, known[name])
                jobs.append(job)
                if job.state == "success":
                    job.value = self._result(repo, study, frozen, state, job)
                elif job.state == "failed" and not state.finished:
                    study.tell(number, state=optuna.trial.TrialState.FAIL)
                    state.finished = True
            top = budgets[-1]
            if not state.finished and top in state.results:
                study.tell(number, state.results[top])
                state.finished = True
            states[number] = state
        return states, jobs

    def _result(
        self, repo: Any, study: Any, frozen: Any, state: search.TrialState, job: Job
    ) -> float | None:
        import optuna

        if job.epochs in state.results:
            return state.results[job.epochs]
        if state.finished:  # failed or told already (e.g. diverged at an earlier rung)
            return None
        metrics = experiments.experiment_metrics(repo, job.name)
        value = metrics.get(self.objective.metric)
        trial = optuna.trial.Trial(study, frozen._trial_id)
        spent = metrics.get("epochs_run", metrics.get("epochs_trained"))
        trial.set_user_attr(f"epochs_run_{job.epochs}", int(spent) if spent else 0)
        diverged = str(metrics.get("diverged")).lower() == "true"
        if not isinstance(value, int | float) or not math.isfinite(value) or diverged:
            trial.set_user_attr("diverged", job.name)
            study.tell(job.trial, state=optuna.trial.TrialState.FAIL)
            state.finished = True
            return None
        trial.report(float(value), job.epochs)
        state.results[job.epochs] = float(value)
        return float(value)

    # --- queueing -----------------------------------------------------------------------

    def _name(self, number: int, epochs: int) -> str:
        budget = None if self.settings.method == "tpe" else epochs
        return search.experiment_name(self.settings.study, number, budget)

    def _point(self, study: Any, frozen: Any) -> dict[str, Any] | None:
        """The trial's params (sampled now, or read back from the journal), checked like
        any run; an invalid point is told to Optuna as failed, with the reason."""
        import optuna

        trial = optuna.trial.Trial(study, frozen._trial_id)
        point = search.suggest(trial, self.space)
        try:
            parse_params(apply(self.base, point), source=f"trial {frozen.number}")
        except ParamsError as exc:
            trial.set_user_attr("invalid", "; ".join(exc.problems))
            study.tell(frozen.number, state=optuna.trial.TrialState.FAIL)
            return None
        return point

    def _queue_first(self, repo: Any, study: Any, frozen: Any) -> None:
        point = self._point(study, frozen)
        if point is None:
            return
        bracket = self.brackets[search.bracket_of(frozen.number, len(self.brackets))]
        overrides = {**point, **self._budget(bracket[0])}
        experiments.queue_experiment(repo, self._name(frozen.number, bracket[0]), overrides)

    def _queue_promotion(
        self, repo: Any, study: Any, promotion: search.Promotion, commits: Mapping[str, str]
    ) -> None:
        frozen = study.trials[promotion.trial]
        point = self._point(study, frozen)
        if point is None:
            return
        parent = self._name(promotion.trial, promotion.from_epochs)
        md5 = experiments.output_md5(repo, commits[parent], *MODEL_OUT)
        overrides = {
            **point,
            **self._budget(promotion.to_epochs),
            "train.warm_start.experiment": parent,
            "train.warm_start.model_md5": md5,
            "train.warm_start.epochs": promotion.from_epochs,
        }
        name = self._name(promotion.trial, promotion.to_epochs)
        experiments.queue_experiment(repo, name, overrides)

    def _budget(self, epochs: int) -> dict[str, Any]:
        if self.settings.method == "tpe":
            return {"train.max_epochs": epochs}  # early stopping as params.yaml says
        # A rung trains exactly its budget and keeps the last epoch's model, which the
        # next rung continues.
        return {"train.max_epochs": epochs, "train.early_stopping.enabled": False}

    # --- the end ------------------------------------------------------------------------

    def _finish(self, study: Any) -> None:
        """No promotion is left: trials waiting at a lower rung are pruned there."""
        import optuna

        for frozen in study.get_trials(deepcopy=False):
            if not frozen.state.is_finished():
                study.tell(frozen.number, state=optuna.trial.TrialState.PRUNED)

    def _snapshot(self, study: Any, jobs: list[Job]) -> Snapshot:
        trials = study.get_trials(deepcopy=False)
        snapshot = Snapshot(jobs=jobs, asked=len(trials))
        snapshot.finished = sum(t.state.is_finished() for t in trials)
        snapshot.epochs_spent = sum(
            int(v) for t in trials for k, v in t.user_attrs.items() if k.startswith("epochs_run_")
        )
        best = None
        for job in jobs:
            if job.value is None:
                continue
            top = self.brackets[job.bracket][-1]
            # Only a trial that reached its bracket's last rung competes for "best".
            if job.epochs == top and (
                best is None or self.objective.better_than(job.value, best[1])
            ):
                best = (job.name, job.value)
        snapshot.best = best
        return snapshot
