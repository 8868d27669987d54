"""The study's driver: keeps the queue fed with Optuna's suggestions and promotions and
tells Optuna what finished, rebuilding its view from DVC and the journal on every pass so
that a killed driver, restarted, neither loses nor duplicates a trial."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from nntune import experiments
from nntune.config.mapping import apply
from nntune.config.metrics import Objective
from nntune.config.params import parse_params
from nntune.config.sections import ParamsError
from nntune.tuning import search_space
from nntune.tuning.optuna_internals import live_trial
from nntune.tuning.study import Settings

if TYPE_CHECKING:
    from optuna import Study
    from optuna.trial import FrozenTrial

    from nntune.experiments import DvcRepo

MODEL_OUT = ("train", "models/last.keras")  # the last epoch's state: what a promotion continues
BASELINE_QUEUED = "baseline_experiment_queued"  # study attribute: {study}-baseline queued
BASELINE_ATTR = "baseline_experiment"  # study attribute: what {study}-baseline scored


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


class Executor(Protocol):
    """What runs the experiments the driver queues in DVC's queue."""

    def refresh(self, repo: DvcRepo) -> object:
        """Collect what finished elsewhere (before the driver reads the refs)."""

    def state(self, repo: DvcRepo) -> experiments.QueueState:
        """Queued, running and failed experiments."""

    def start(self, repo: DvcRepo) -> None:
        """Make the queued experiments run."""

    def wait_for_news(self, stop: threading.Event, seconds: float) -> bool:
        """Wait up to ``seconds`` (less when a trial ends); whether ``stop`` was set."""

    def stop(self, repo: DvcRepo) -> None:
        """The study is done: let go of the workers (they must not idle on)."""


class Driver:
    """Keeps ``jobs`` experiments in DVC's queue until the study has its trials; the
    executor (DVC's local workers, or Ray) runs them."""

    def __init__(
        self,
        settings: Settings,
        space: Mapping[str, search_space.Dimension],
        base: Mapping[str, Any],
        objective: Objective,
        jobs: int,
        executor: Executor,
        baseline: bool = False,
    ) -> None:
        self.settings = settings
        # A TPE study also runs the project's own params (its baseline) at the study's
        # budget, as one more experiment outside Optuna's sampling, so that the best of the
        # study is never worse on the objective than what the user started from.
        self.baseline = baseline and settings.method == "tpe"
        self.space = space
        self.base = base
        self.objective = objective
        self.jobs = jobs
        self.executor = executor
        self.brackets = search_space.brackets(
            settings.method, settings.min_epochs, settings.max_epochs, settings.eta
        )

    def run(
        self,
        repo: DvcRepo,
        study: Study,
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
                if self.executor.wait_for_news(ctrl_c, poll_seconds):  # or less, once a trial ends
                    raise KeyboardInterrupt

    def step(self, repo: DvcRepo, study: Study, baseline: str) -> Snapshot:
        """One pass: read DVC, tell Optuna, queue what may run now."""
        self.executor.refresh(repo)
        # One consistent view: the queue first, the refs second. An entry only moves
        # forward (queued -> running -> done), and DVC writes a finished experiment's ref
        # before its task leaves the running list, so an experiment that finishes between
        # the two reads is still seen: running in the first, with a ref in the second.
        # (Refs first would miss it in both, and queue its name again.)
        queue = self.executor.state(repo)
        commits = experiments.experiment_commits(repo, baseline)
        every = self._states(queue, commits)
        prefix = f"{self.settings.study}-t"
        states, jobs = self._sync(
            repo, study, {k: v for k, v in every.items() if k.startswith(prefix)}
        )
        queued_now = 0
        if self.baseline:
            reference = self._reference(repo, study, every.get(self.reference_name))
            queued_now += reference.state == "queued" and self.reference_name not in every
            jobs.append(reference)
        pending = sum(job.state in ("queued", "running") for job in jobs)
        # Each worker gets one experiment waiting behind the one it runs, so that it never
        # idles while the driver polls, reads results and queues the next.
        free = 2 * self.jobs - pending
        for trial in study.get_trials(deepcopy=False):  # asked, but no experiment yet
            state = states.get(trial.number)
            if free > 0 and state is not None and not state.started and not state.finished:
                self._queue_first(repo, study, trial)
                free, queued_now = free - 1, queued_now + 1
        if self.settings.method != "tpe" and free > 0:
            for promotion in search_space.promotions(
                states, self.brackets, self.objective, self.settings.eta
            )[:free]:
                self._queue_promotion(repo, study, promotion, commits)
                free, queued_now = free - 1, queued_now + 1
        while free > 0 and len(study.trials) < self.settings.trials:
            asked = study.ask()
            states[asked.number] = search_space.TrialState(asked.number)
            self._queue_first(repo, study, study.trials[asked.number])
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

    def _states(self, state: experiments.QueueState, commits: Mapping[str, str]) -> dict[str, str]:
        """Experiments by name, in every state DVC knows: queued, running, failed, or
        success (a ref in ``commits``, or a finished queue task whose ref is not read yet).
        A name in here is never queued again."""
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
        return known

    @property
    def reference_name(self) -> str:
        return f"{self.settings.study}-baseline"

    def _reference(self, repo: DvcRepo, study: Study, state: str | None) -> Job:
        """The study's baseline experiment: the project's params at the study's budget,
        queued once (DVC's run cache restores it without training where the workspace was
        reproduced with those params); its objective competes for the study's best. The
        study's journal remembers that it was queued and what it scored, so that one
        removed since (`nntune gc`) is not queued again by a later pass or run."""
        top = self.settings.max_epochs
        job = Job(self.reference_name, -1, top, 0, state or "queued")
        seen = study.user_attrs.get(BASELINE_ATTR)  # {"value", "epochs_run"} once read
        if state is None and seen is None and not study.user_attrs.get(BASELINE_QUEUED):
            experiments.queue_experiment(repo, job.name, self._budget(top))
            study.set_user_attr(BASELINE_QUEUED, True)
        elif state is None:  # queued before, and removed since: not queued again
            job.state = "success" if seen is not None else "removed"
        elif state == "success" and seen is None:
            metrics = experiments.experiment_metrics(repo, job.name)
            seen = {"value": self._score(metrics), "epochs_run": metrics.get("epochs_run")}
            study.set_user_attr(BASELINE_ATTR, seen)
        if job.state == "success" and seen is not None:
            job.value = seen["value"]  # None: diverged, or no objective: no contender
        return job

    def _sync(
        self, repo: DvcRepo, study: Study, known: dict[str, str]
    ) -> tuple[dict[int, search_space.TrialState], list[Job]]:
        """Tell Optuna every result it has not heard yet; return each trial's state."""
        import optuna

        states: dict[int, search_space.TrialState] = {}
        jobs: list[Job] = []
        for frozen in study.get_trials(deepcopy=False):
            number = frozen.number
            state = search_space.TrialState(number, finished=frozen.state.is_finished())
            state.results = {int(k): float(v) for k, v in frozen.intermediate_values.items()}
            bracket = search_space.bracket_of(number, len(self.brackets))
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
        self,
        repo: DvcRepo,
        study: Study,
        frozen: FrozenTrial,
        state: search_space.TrialState,
        job: Job,
    ) -> float | None:
        import optuna

        if job.epochs in state.results:
            return state.results[job.epochs]
        if state.finished:  # failed or told already (e.g. diverged at an earlier rung)
            return None
        metrics = experiments.experiment_metrics(repo, job.name)
        value = self._score(metrics)
        trial = live_trial(study, frozen)
        spent = metrics.get("epochs_run", metrics.get("epochs_trained"))
        trial.set_user_attr(f"epochs_run_{job.epochs}", int(spent) if spent else 0)
        if value is None:
            trial.set_user_attr("diverged", job.name)
            study.tell(job.trial, state=optuna.trial.TrialState.FAIL)
            state.finished = True
            return None
        trial.report(value, job.epochs)
        state.results[job.epochs] = value
        return value

    def _score(self, metrics: Mapping[str, Any]) -> float | None:
        """An experiment's objective; None where it diverged or has no finite one."""
        value = metrics.get(self.objective.metric)
        diverged = str(metrics.get("diverged")).lower() == "true"
        if not isinstance(value, int | float) or not math.isfinite(value) or diverged:
            return None
        return float(value)

    # --- queueing -----------------------------------------------------------------------

    def _name(self, number: int, epochs: int) -> str:
        budget = None if self.settings.method == "tpe" else epochs
        return search_space.experiment_name(self.settings.study, number, budget)

    def _point(self, study: Study, frozen: FrozenTrial) -> dict[str, Any] | None:
        """The trial's params (sampled now, or read back from the journal), checked like
        any run; an invalid point is told to Optuna as failed, with the reason."""
        import optuna

        trial = live_trial(study, frozen)
        point = search_space.suggest(trial, self.space)
        try:
            parse_params(apply(self.base, point), source=f"trial {frozen.number}")
        except ParamsError as exc:
            trial.set_user_attr("invalid", "; ".join(exc.problems))
            study.tell(frozen.number, state=optuna.trial.TrialState.FAIL)
            return None
        return point

    def _queue_first(self, repo: DvcRepo, study: Study, frozen: FrozenTrial) -> None:
        point = self._point(study, frozen)
        if point is None:
            return
        bracket = self.brackets[search_space.bracket_of(frozen.number, len(self.brackets))]
        overrides = {**point, **self._budget(bracket[0])}
        experiments.queue_experiment(repo, self._name(frozen.number, bracket[0]), overrides)

    def _queue_promotion(
        self,
        repo: DvcRepo,
        study: Study,
        promotion: search_space.Promotion,
        commits: Mapping[str, str],
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

    def _finish(self, study: Study) -> None:
        """No promotion is left: trials waiting at a lower rung are pruned there."""
        import optuna

        for frozen in study.get_trials(deepcopy=False):
            if not frozen.state.is_finished():
                study.tell(frozen.number, state=optuna.trial.TrialState.PRUNED)

    def _snapshot(self, study: Study, jobs: list[Job]) -> Snapshot:
        trials = study.get_trials(deepcopy=False)
        snapshot = Snapshot(jobs=jobs, asked=len(trials))
        snapshot.finished = sum(t.state.is_finished() for t in trials)
        snapshot.epochs_spent = sum(
            int(v) for t in trials for k, v in t.user_attrs.items() if k.startswith("epochs_run_")
        ) + int(study.user_attrs.get(BASELINE_ATTR, {}).get("epochs_run") or 0)
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


def baseline_note(snapshot: Snapshot) -> str | None:
    """What ``nntune search`` says about the study's baseline experiment (rich markup)."""
    job = next((j for j in snapshot.jobs if j.trial == -1), None)
    if job is None:
        return None
    if snapshot.best and snapshot.best[0] == job.name:
        return (
            "[yellow]no sampled configuration beat params.yaml as it is[/yellow] "
            f"({job.name}): keep it, or widen the space"
        )
    unchecked = "the best is not checked against params.yaml"
    if job.state == "failed":
        return f"[yellow]{job.name} failed[/yellow]: {unchecked} (`nntune logs {job.name}`)"
    if job.state == "removed":
        return f"[yellow]{job.name} was removed before its result was read[/yellow]: {unchecked}"
    if job.state == "success" and job.value is None:
        return f"[yellow]{job.name} diverged or has no objective[/yellow]: {unchecked}"
    return None
