"""Adaptive search without DVC: the space, the successive-halving schedule, and the driver
against an in-memory stand-in for DVC's queue (the real queue is in test_search_e2e)."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest

from nntune import experiments
from nntune.backends.local import LocalQueue
from nntune.config.metrics import Objective
from nntune.experiments import QueueState
from nntune.tuning import driver, search_space
from nntune.tuning.driver import Driver
from nntune.tuning.search_space import (
    Choice,
    Range,
    SearchError,
    TrialState,
    parse_space,
    promotions,
)
from nntune.tuning.study import (
    Settings,
    StudyError,
    needed_by_unfinished_studies,
    open_study,
    study_lock,
)

MIN = Objective("val_loss", "min")


def test_rungs_grow_by_eta_up_to_max_epochs() -> None:
    assert search_space.rungs(1, 27, 3) == [1, 3, 9, 27]
    assert search_space.rungs(3, 20, 3) == [3, 9, 20]
    assert search_space.rungs(5, 5, 3) == [5]
    assert search_space.brackets("hyperband", 1, 9, 3) == [[1, 3, 9], [3, 9], [9]]
    assert search_space.brackets("tpe", 1, 50, 3) == [[50]]
    with pytest.raises(SearchError, match="--eta must be >= 2"):
        search_space.rungs(1, 9, 1)
    with pytest.raises(SearchError, match=r"--min-epochs \(10\) must be >= 1 and <= --max"):
        search_space.rungs(10, 9, 3)


def _states(values: dict[int, float], rung: int = 1, started: set[int] | None = None) -> Any:
    return {
        n: TrialState(
            n, results={rung: v}, started={rung} | ({3} if n in (started or ()) else set())
        )
        for n, v in values.items()
    }


def test_asha_promotes_only_the_best_third_of_a_rung() -> None:
    budgets = [[1, 3, 9]]
    # Two results: floor(2/3) = 0, nobody is promoted yet, however good.
    assert promotions(_states({0: 0.1, 1: 0.5}), budgets, MIN, 3) == []
    six = _states({0: 0.9, 1: 0.2, 2: 0.5, 3: 0.1, 4: 0.7, 5: 0.3})
    found = promotions(six, budgets, MIN, 3)
    assert [(p.trial, p.from_epochs, p.to_epochs) for p in found] == [(3, 1, 3), (1, 1, 3)]
    # Already promoted trials are not promoted twice; the rest of the top third still is.
    assert [
        p.trial
        for p in promotions(
            _states({**{n: s.results[1] for n, s in six.items()}}, started={3}), budgets, MIN, 3
        )
    ] == [1]
    # "max" objectives rank the other way round; diverged (non-finite) results never rise.
    up = Objective("val_accuracy", "max")
    three = _states({0: math.inf, 1: 0.2, 2: 0.5})
    assert [p.trial for p in promotions(three, budgets, up, 3)] == [2]
    assert promotions(_states({0: math.nan, 1: 0.9, 2: 0.8}), budgets, MIN, 3)[0].trial == 2


def test_hyperband_promotes_within_each_bracket() -> None:
    budgets = search_space.brackets("hyperband", 1, 9, 3)  # [[1, 3, 9], [3, 9], [9]]
    states = {n: TrialState(n, results={1: 1.0 / (n + 1)}, started={1}) for n in (0, 3, 6)}
    states.update({n: TrialState(n, results={3: 0.0}, started={3}) for n in (1, 4, 7)})
    found = {(p.trial, p.from_epochs, p.to_epochs) for p in promotions(states, budgets, MIN, 3)}
    assert found == {(6, 1, 3), (1, 3, 9)}  # the best of bracket 0 and the first of bracket 1


def test_space_files_take_lists_and_ranges() -> None:
    space = parse_space(
        {
            "model.units": [32, 64],
            "train.learning_rate": {"low": 1e-4, "high": 0.1, "log": True},
            "model.hidden_layers": {"low": 0, "high": 3},
        },
        "space.yaml",
    )
    assert space["model.units"] == Choice((32, 64))
    assert space["train.learning_rate"] == Range(1e-4, 0.1, log=True)
    assert space["model.hidden_layers"] == Range(0, 3, integer=True)
    assert search_space.grid_size({"a": Choice((1, 2)), "b": Range(0, 3, integer=True)}) == 8
    assert search_space.grid_size(space) is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"train.learning_rate": {"low": 0.1, "high": 0.01}}, r"low \(0.1\) must be below high"),
        ({"train.learning_rate": {"low": 0, "high": 1, "log": True}}, "log range needs low > 0"),
        ({"train.learning_rate": {"low": 0.1}}, "a range needs numbers low and high"),
        ({"train.learning_rate": {"low": 0.1, "high": 1, "scale": 2}}, "unknown range keys"),
        ({"model.units": []}, "model.units has no values"),
        ({"model.units": [[64, 32]]}, "search values must be numbers, text or bools"),
    ],
)
def test_bad_space_is_refused_with_the_key(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(SearchError, match=message):
        parse_space(raw, "space.yaml")


def test_space_values_are_checked_against_params(raw_params: dict[str, Any]) -> None:
    with pytest.raises(SearchError, match=r"model.dropout=1.0: model.dropout must be < 1"):
        search_space.check_against({"model.dropout": Range(0.0, 1.0)}, raw_params)
    with pytest.raises(SearchError, match=r"model.widht=3: model.widht is not a known key"):
        search_space.check_against({"model.widht": Choice((3,))}, raw_params)
    search_space.check_against(search_space.DEFAULT_SPACE, raw_params)  # the default space is valid


class DriverKilledError(Exception):
    """Stands in for kill -9 of the driver in the middle of a pass."""


class FakeDVC:
    """DVC's queue and experiment refs in memory. Queuing a name DVC already knows fails
    the test: that is the duplicate the driver must never create.

    With ``racy``, the world moves on *during* a pass, as DVC's real workers do: after every
    read of the queue or of the refs, running experiments finish (ref written, task done)
    and queued ones start, so a pass's two reads see two different moments."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, racy: bool = False) -> None:
        self.racy = racy
        self.queued: dict[str, dict[str, Any]] = {}
        self.running: dict[str, dict[str, Any]] = {}
        self.done: dict[str, dict[str, Any]] = {}
        self.params: dict[str, dict[str, Any]] = {}
        self.rung_results_at_promotion: dict[str, list[float]] = {}
        self.kill_at_queue: int | None = None
        self.queue_calls = 0
        self.fail: set[str] = set()
        self.base_rate = 0.01  # params.yaml's learning rate (an experiment that sets none)
        for name in (
            "queue_state",
            "experiment_commits",
            "queue_experiment",
            "output_md5",
            "experiment_metrics",
            "start_workers",
            "baseline_rev",
            "revive_queue",
        ):
            monkeypatch.setattr(experiments, name, getattr(self, name))

    def queue_state(self, repo: Any) -> QueueState:
        failed = {n: "rev" for n in self.done if n in self.fail}
        succeeded = {n: f"commit-{n}" for n in self.done if n not in self.fail}
        state = QueueState(
            queued=list(self.queued), running=list(self.running), failed=failed, succeeded=succeeded
        )
        self._moment_passes()
        return state

    def experiment_commits(self, repo: Any, baseline: str) -> dict[str, str]:
        commits = {n: f"commit-{n}" for n in self.done if n not in self.fail}
        self._moment_passes()
        return commits

    def _moment_passes(self) -> None:
        if self.racy:
            self.finish(len(self.running))
            self.begin(2)

    def queue_experiment(self, repo: Any, name: str, overrides: dict[str, Any]) -> None:
        self.queue_calls += 1
        if self.kill_at_queue == self.queue_calls:
            raise DriverKilledError
        known = (*self.queued, *self.running, *self.done)
        assert name not in known, f"{name} queued twice"
        self.queued[name] = overrides
        parent = overrides.get("train.warm_start.experiment")
        if parent:
            rung = overrides["train.warm_start.epochs"]
            self.rung_results_at_promotion[name] = sorted(
                m["val_loss"] for n, m in self.done.items() if n.endswith(f"-e{rung}")
            )

    def output_md5(self, repo: Any, rev: str, stage: str, path: str) -> str:
        return "f" * 32

    def experiment_metrics(self, repo: Any, name: str) -> dict[str, Any]:
        return self.done[name]

    def start_workers(self, repo: Any, jobs: int, gpus: list[str] | None = None) -> int:
        return 0

    def revive_queue(
        self, repo: Any, state: QueueState, jobs: int, gpus: list[str] | None = None
    ) -> dict[str, bool]:
        return {}  # the fake's workers never die

    def baseline_rev(self, repo: Any) -> str:
        return "base"

    def work(self, n: int) -> None:
        """Run the first ``n`` queued experiments from start to end."""
        self.begin(n)
        self.finish(n)

    def begin(self, n: int) -> None:
        for name in list(self.queued)[:n]:
            self.running[name] = self.queued.pop(name)

    def finish(self, n: int) -> None:
        """The first ``n`` running experiments end: val_loss from the learning rate (best
        near 0.01) shrinking with the epochs trained."""
        for name in list(self.running)[:n]:
            overrides = self.running.pop(name)
            self.params[name] = overrides
            epochs = overrides["train.max_epochs"]
            start = overrides.get("train.warm_start.epochs", 0)
            rate = overrides.get("train.learning_rate", self.base_rate)  # the baseline's
            distance = abs(math.log10(rate) + 2)
            self.done[name] = {
                "val_loss": distance + 1.0 / epochs,
                "epochs_run": epochs - start,
                "diverged": "False",
            }


LR: dict[str, search_space.Dimension] = {"train.learning_rate": Range(1e-4, 1e-1, log=True)}


def _settings(
    method: search_space.Method = "asha", trials: int = 9, space: dict[str, Any] | None = None
) -> Settings:
    space = space or LR
    return Settings(
        study="s",
        method=method,
        trials=trials,
        min_epochs=1,
        max_epochs=9,
        eta=3,
        seed=0,
        space=search_space.describe_space(space),
    )


def _drive(
    tmp_path: Path,
    raw: dict[str, Any],
    fake: FakeDVC,
    settings: Settings,
    jobs: int = 2,
    space: dict[str, Any] | None = None,
    baseline: bool = False,
) -> Any:
    space = space or LR
    with study_lock(tmp_path, settings.study):
        study = open_study(tmp_path, settings, MIN, "base", space)
        driver = Driver(settings, space, raw, MIN, jobs, LocalQueue(jobs), baseline)
        for _ in range(200):
            snapshot = driver.step(None, study, "base")
            if snapshot.done:
                return study, snapshot
            if not fake.racy:
                fake.work(jobs)
    raise AssertionError("the study did not finish in 200 passes")


def test_asha_driver_promotes_from_the_top_third_and_continues_the_parent(
    tmp_path: Path, raw_params: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeDVC(monkeypatch)
    study, snapshot = _drive(tmp_path, raw_params, fake, _settings())
    assert len(study.trials) == 9
    assert sum(name.endswith("-e1") for name in fake.done) == 9
    promoted = [n for n in fake.params if "train.warm_start.experiment" in fake.params[n]]
    assert promoted, "nothing was promoted"
    for name in promoted:
        p = fake.params[name]
        trial, epochs = name.split("-")[1], int(name.rsplit("-e", 1)[1])
        rung = p["train.warm_start.epochs"]
        assert p["train.warm_start.experiment"] == f"s-{trial}-e{rung}"
        assert p["train.max_epochs"] == epochs and p["train.early_stopping.enabled"] is False
        # It was among the best floor(n / eta) of its rung when it was promoted.
        seen = fake.rung_results_at_promotion[name]
        top = seen[: len(seen) // 3]
        assert fake.done[f"s-{trial}-e{rung}"]["val_loss"] <= top[-1]
    states = {t.state for t in study.trials}
    assert states <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete and all(9 in t.intermediate_values for t in complete)
    assert snapshot.best is not None and snapshot.best[0].endswith("-e9")
    assert snapshot.epochs_spent == sum(m["epochs_run"] for m in fake.done.values())
    assert snapshot.epochs_spent < 9 * 9


GRID: dict[str, search_space.Dimension] = {
    "train.learning_rate": Choice((0.001, 0.003, 0.01)),
    "model.units": Range(8, 10, integer=True),
}


@pytest.mark.parametrize("kill_at", [None, 2, 5])
def test_asha_samples_a_finite_space_without_repeats_even_across_a_kill(
    tmp_path: Path,
    raw_params: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    kill_at: int | None,
) -> None:
    fake = FakeDVC(monkeypatch)
    settings = _settings(trials=9, space=GRID)
    fake.kill_at_queue = kill_at
    if kill_at is not None:
        with pytest.raises(DriverKilledError):
            _drive(tmp_path, raw_params, fake, settings, space=GRID)
        fake.kill_at_queue = None
    _drive(tmp_path, raw_params, fake, settings, space=GRID)
    first = [fake.params[n] for n in fake.params if n.endswith("-e1")]
    points = {(p["train.learning_rate"], p["model.units"]) for p in first}
    assert len(first) == 9 and len(points) == 9  # all 3 x 3 points, each once


@pytest.mark.parametrize("kill_at", [1, 4, 7])
def test_a_driver_killed_mid_pass_continues_without_losing_or_duplicating(
    tmp_path: Path,
    raw_params: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    kill_at: int,
) -> None:
    fake = FakeDVC(monkeypatch)
    fake.kill_at_queue = kill_at  # between Optuna's ask (journaled) and DVC's queue
    with pytest.raises(DriverKilledError):
        _drive(tmp_path, raw_params, fake, _settings())
    fake.kill_at_queue = None
    study, _ = _drive(tmp_path, raw_params, fake, _settings())  # the same command again
    assert len(study.trials) == 9
    assert sorted(n for n in fake.done if n.endswith("-e1")) == sorted(
        f"s-t{n}-e1" for n in range(9)
    )


@pytest.mark.parametrize("method", ["asha", "hyperband", "tpe"])
@pytest.mark.parametrize("kill_at", [None, 3, 6])
def test_trials_that_finish_between_a_passs_reads_are_never_queued_again(
    tmp_path: Path,
    raw_params: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    method: search_space.Method,
    kill_at: int | None,
) -> None:
    # Experiments start and finish between the driver's read of the queue and its read of
    # the refs (the race a fresh-clone CI run hit): FakeDVC fails on any name queued twice.
    fake = FakeDVC(monkeypatch, racy=True)
    settings = _settings(method, trials=6)
    fake.kill_at_queue = kill_at
    if kill_at is not None:
        with pytest.raises(DriverKilledError):
            _drive(tmp_path, raw_params, fake, settings)
        fake.kill_at_queue = None
    study, _ = _drive(tmp_path, raw_params, fake, settings)
    assert len(study.trials) == 6
    assert all(t.state.is_finished() for t in study.trials)
    assert not fake.queued and not fake.running
    first = [n for n in fake.done if n.startswith("s-t") and n.count("-e") <= 1]
    assert len({n.split("-e")[0] for n in first}) == 6  # every trial ran, each name once


def test_failed_and_diverged_experiments_fail_their_trial(
    tmp_path: Path, raw_params: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeDVC(monkeypatch)
    fake.fail = {"s-t1"}
    original = fake.work

    def work(n: int) -> None:
        original(n)
        if "s-t2" in fake.done:
            fake.done["s-t2"].update(val_loss=math.nan, diverged="True")

    monkeypatch.setattr(fake, "work", work)
    study, _ = _drive(tmp_path, raw_params, fake, _settings("tpe", trials=4))
    by_number = {t.number: t for t in study.trials}
    assert by_number[1].state == optuna.trial.TrialState.FAIL
    assert by_number[2].state == optuna.trial.TrialState.FAIL
    assert by_number[2].user_attrs["diverged"] == "s-t2"
    assert by_number[0].state == optuna.trial.TrialState.COMPLETE


HOLD_LOCK = """
import sys, time
from pathlib import Path
from nntune.tuning.study import study_lock
with study_lock(Path(sys.argv[1]), "s"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_one_driver_per_study_and_same_settings_to_resume(
    tmp_path: Path, raw_params: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        busy = r"study s already has a driver \(pid \d+\)"
        with pytest.raises(StudyError, match=busy), study_lock(tmp_path, "s"):
            pass
    finally:
        holder.kill()
        holder.communicate()
    with study_lock(tmp_path, "s"):  # the kernel dropped the dead holder's lock
        pass
    FakeDVC(monkeypatch)
    with study_lock(tmp_path, "s"):
        open_study(tmp_path, _settings(), MIN, "base", LR)
        with pytest.raises(StudyError, match=r"exists with other settings.*eta: 3 -> 2"):
            open_study(tmp_path, Settings(**{**_settings().__dict__, "eta": 2}), MIN, "base", LR)
        with pytest.raises(StudyError, match="started on commit base, HEAD is other"):
            open_study(tmp_path, _settings(), MIN, "other", LR)
        more = Settings(**{**_settings().__dict__, "trials": 20})
        assert open_study(tmp_path, more, MIN, "base", LR).study_name == "s"  # may grow


def test_a_torn_last_journal_line_is_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    FakeDVC(monkeypatch)
    with study_lock(tmp_path, "s"):
        study = open_study(tmp_path, _settings(), MIN, "base", LR)
        study.ask()
    journal = tmp_path / ".nntune/studies/s.journal"
    with journal.open("ab") as stream:
        stream.write(b'{"op_code": 5, "worker_id": "x", "tria')  # kill -9 mid-append
    (tmp_path / ".nntune/studies/s.journal.lock").write_text("stale")
    with study_lock(tmp_path, "s"):
        study = open_study(tmp_path, _settings(), MIN, "base", LR)
        assert len(study.trials) == 1
        study.ask()
        assert len(study.trials) == 2


def test_gc_spares_what_an_unfinished_study_still_builds_on(
    tmp_path: Path, raw_params: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeDVC(monkeypatch)
    settings = _settings(trials=9)
    with study_lock(tmp_path, "s"):
        study = open_study(tmp_path, settings, MIN, "base", LR)
        driver = Driver(settings, LR, raw_params, MIN, 2, LocalQueue(2))
        for _ in range(6):  # part of the study: first rungs done, promotions waiting
            driver.step(None, study, "base")
            fake.work(2)
    names = [*fake.done, "other-t0-e1", "s-t0-e1x", "mine"]
    needed = needed_by_unfinished_studies(tmp_path, names)
    open_trials = {t.number for t in study.trials if not t.state.is_finished()}
    assert open_trials, "the study should still be running"
    expected = {n for n in fake.done if int(n.split("-t")[1].split("-")[0]) in open_trials}
    assert set(needed) == expected
    assert all("unfinished study s" in why for why in needed.values())

    _drive(tmp_path, raw_params, fake, settings)  # the study ends: nothing is needed
    assert needed_by_unfinished_studies(tmp_path, list(fake.done)) == {}


@pytest.mark.parametrize(("base_rate", "baseline_wins"), [(0.01, True), (1e-4, False)])
def test_a_tpe_study_runs_its_baseline_once_and_the_baseline_competes_for_best(
    tmp_path: Path,
    raw_params: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    base_rate: float,
    baseline_wins: bool,
) -> None:
    fake = FakeDVC(monkeypatch)
    fake.base_rate = base_rate  # the fake's best rate is 0.01: there the baseline wins
    settings = _settings("tpe", trials=6)
    fake.kill_at_queue = 2  # killed as it queues its first trial, the baseline queued
    with pytest.raises(DriverKilledError):
        _drive(tmp_path, raw_params, fake, settings, baseline=True)
    fake.kill_at_queue = None
    study, snapshot = _drive(tmp_path, raw_params, fake, settings, baseline=True)  # resumed
    # Queued once (FakeDVC fails on a second time), with only the study's budget set.
    assert fake.params["s-baseline"] == {"train.max_epochs": settings.max_epochs}
    assert len(study.trials) == 6  # Optuna samples as many as without it
    trials = {n: m["val_loss"] for n, m in fake.done.items() if n.startswith("s-t")}
    assert len(trials) == 6
    if baseline_wins:
        assert fake.done["s-baseline"]["val_loss"] < min(trials.values())
        assert snapshot.best == ("s-baseline", fake.done["s-baseline"]["val_loss"])
    else:
        assert snapshot.best == min(trials.items(), key=lambda item: item[1])
    assert "s-baseline" in {job.name for job in snapshot.jobs}
    assert snapshot.epochs_spent == 7 * settings.max_epochs  # the baseline's epochs count
    assert (driver.baseline_note(snapshot) is not None) == baseline_wins

    # Removed afterwards (`nntune gc`): more trials do not queue it again, and the score
    # the study's journal kept still competes.
    del fake.done["s-baseline"]
    more = dataclasses.replace(settings, trials=8)
    study, again = _drive(tmp_path, raw_params, fake, more, baseline=True)
    assert "s-baseline" not in fake.done and "s-baseline" not in fake.queued
    assert len(study.trials) == 8
    if baseline_wins:
        assert again.best == snapshot.best


@pytest.mark.parametrize("outcome", ["failed", "diverged"])
def test_a_failed_or_diverged_baseline_leaves_the_best_to_the_trials_and_says_so(
    tmp_path: Path, raw_params: dict[str, Any], monkeypatch: pytest.MonkeyPatch, outcome: str
) -> None:
    fake = FakeDVC(monkeypatch)
    if outcome == "failed":
        fake.fail.add("s-baseline")
    else:
        finish = fake.finish

        def diverging(n: int) -> None:
            finish(n)
            if "s-baseline" in fake.done:
                fake.done["s-baseline"].update(diverged="True", val_loss=float("nan"))

        fake.finish = diverging  # type: ignore[method-assign]
    study, snapshot = _drive(tmp_path, raw_params, fake, _settings("tpe", trials=4), baseline=True)
    assert snapshot.done and len(study.trials) == 4
    assert snapshot.best is not None and snapshot.best[0].startswith("s-t")
    note = driver.baseline_note(snapshot)
    assert note is not None and "the best is not checked against params.yaml" in note
    assert ("failed" if outcome == "failed" else "diverged") in note


def test_an_asha_study_or_no_baseline_runs_no_baseline_experiment(
    tmp_path: Path, raw_params: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeDVC(monkeypatch)
    _drive(tmp_path, raw_params, fake, _settings(), baseline=True)  # asha: rungs continue models
    _drive(tmp_path / "off", raw_params, fake, _settings("tpe", trials=3), baseline=False)
    assert not any(name.endswith("-baseline") for name in fake.done)
