"""The Ray executor's bookkeeping against a fake Ray and a fake DVC queue: what is
submitted, what a success and a failure do to the local queue, and what the search driver
is told. (The real cluster runs in test_ray_e2e.py.)"""

from __future__ import annotations

from typing import Any

import pytest

from nntune import experiments
from nntune.backends import ray as cluster
from nntune.backends.options import RayOptions
from nntune.backends.ray import RayExecutor
from nntune.backends.trial import TrialError, TrialResult

REV = "ab" * 20


class FakeRay:
    """Tasks finish when the test says so, with a result or an error."""

    def __init__(self) -> None:
        self.submitted: list[Any] = []  # (ref, spec)
        self.outcomes: dict[int, Any] = {}  # ref -> result dict or exception
        self.options_seen: dict[str, Any] = {}
        self.warm_backends: list[Any] = []  # per submitted task

    def remote(self, function: Any) -> FakeRay:
        assert function is cluster.ray_trial
        return self

    def options(self, **kwargs: Any) -> FakeRay:
        self.options_seen = kwargs
        return self

    def submit(self, spec: Any, cache_dir: Any, events: Any, warm_backend: Any) -> int:
        ref = len(self.submitted)
        self.submitted.append((ref, spec))
        self.warm_backends.append(warm_backend)
        return ref

    def wait(
        self, refs: list[int], num_returns: int, timeout: float
    ) -> tuple[list[int], list[int]]:
        ready = [r for r in refs if r in self.outcomes][:num_returns]
        return ready, [r for r in refs if r not in ready]

    def get(self, ref: int) -> Any:
        outcome = self.outcomes[ref]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


class FakeEvents:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def empty(self) -> bool:
        return not self.items

    def get_nowait(self) -> tuple[str, str]:
        return self.items.pop(0)


class TaskError(Exception):
    """Like RayTaskError: the trial's own error in ``cause``."""

    def __init__(self, cause: Exception) -> None:
        super().__init__("ray wrapper text")
        self.cause = cause


@pytest.fixture
def queue(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """DVC's local queue, faked: queued names, and what was pulled and removed."""
    state: dict[str, Any] = {"queued": ["a", "b", "c"], "pulled": [], "removed": []}

    def queued_trials(repo: Any, skip: Any = ()) -> list[tuple[str, list[str]]]:
        return [
            (n, [f"model.units={i + 8}"]) for i, n in enumerate(state["queued"]) if n not in skip
        ]

    def pull(repo: Any, remote: str, names: list[str], cache: bool = True) -> list[str]:
        state["pulled"].append((remote, list(names), cache))
        return names

    def remove(repo: Any, names: list[str]) -> None:
        state["removed"] += names
        state["queued"] = [n for n in state["queued"] if n not in names]

    monkeypatch.setattr(experiments, "queued_trials", queued_trials)
    monkeypatch.setattr(experiments, "pull_experiments", pull)
    monkeypatch.setattr(experiments, "remove_queued", remove)
    monkeypatch.setattr(
        experiments,
        "queue_state",
        lambda repo: experiments.QueueState(queued=list(state["queued"]), failed={"old": "x"}),
    )
    return state


def _executor() -> tuple[RayExecutor, FakeRay, FakeEvents]:
    ray, events = FakeRay(), FakeEvents()
    options = RayOptions(num_cpus=2, num_gpus=1, retries=5, remote="team")
    executor = RayExecutor(ray, events, "git@host:p.git", REV, options, "jax")
    executor.task.remote = ray.submit  # type: ignore[attr-defined]
    return executor, ray, events


def test_success_is_pulled_and_dequeued_failure_stays_queued(queue: dict[str, Any]) -> None:
    executor, ray, events = _executor()
    assert ray.options_seen == {
        "num_cpus": 2, "num_gpus": 1, "max_retries": 5, "retry_exceptions": False,
    }  # fmt: skip
    executor.start(repo=None)
    assert ray.warm_backends == ["jax"] * 3  # each task keeps its worker's warm runner
    specs = [spec for _, spec in ray.submitted]
    assert [(s.name, s.rev, s.git_url, s.overrides) for s in specs] == [
        ("a", REV, "git@host:p.git", ("model.units=8",)),
        ("b", REV, "git@host:p.git", ("model.units=9",)),
        ("c", REV, "git@host:p.git", ("model.units=10",)),
    ]
    events.items += [("a", "node1"), ("b", "node2")]
    ray.outcomes[0] = TrialResult("a", "pushed", "c0ffee", "node1", {"run": 20.0}).__dict__
    ray.outcomes[1] = TaskError(TrialError("trial b: `dvc exp run` exited 1: boom"))
    finished = executor.refresh(repo=None)
    assert finished == [("a", True), ("b", False)]
    # a: refs pulled at once (no models yet), then it leaves the local queue.
    assert queue["pulled"] == [("team", ["a"], False)] and queue["removed"] == ["a"]
    assert executor.failed == {"b": "trial b: `dvc exp run` exited 1: boom"}
    assert executor.timings == {"a": {"run": 20.0}}

    # What the search driver sees: b failed (not queued), c still queued, old failures kept.
    state = executor.state(repo=None)
    assert state.queued == ["c"] and state.running == []
    assert set(state.failed) == {"old", "b"}
    events.items.append(("c", "node1"))
    executor.refresh(repo=None)
    assert executor.state(repo=None).running == ["c"]

    # Starting again submits nothing twice: b stays failed until a new run, c is pending.
    executor.start(repo=None)
    assert len(ray.submitted) == 3

    # The models come in one batch.
    ray.outcomes[2] = TrialResult("c", "skipped", "beef", "node1", {}).__dict__
    executor.refresh(repo=None)
    assert executor.fetch_models(repo=None) == 2
    assert queue["pulled"][-1] == ("team", ["a", "c"], True)
    assert executor.fetch_models(repo=None) == 0


def test_a_lost_event_queue_never_fails_the_view() -> None:
    class Broken:
        def empty(self) -> bool:
            raise RuntimeError("actor died with its node")

    assert cluster._drain(Broken()) == {}


def test_a_ray_worker_starts_its_warm_runner_once_and_keeps_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first trial of a Ray worker process starts the servers; the next ones reuse them,
    and they are stopped only when the process exits."""
    import contextlib

    from nntune.warm import launcher

    started: list[tuple[bool, Any]] = []
    stopped: list[str] = []

    @contextlib.contextmanager
    def fake_runner(enabled: bool, backends: Any = None) -> Any:
        started.append((enabled, backends))
        yield f"/tmp/socket-{len(started)}"
        stopped.append("stopped")

    monkeypatch.setattr(launcher, "warm_runner", fake_runner)
    monkeypatch.setattr(cluster, "_WARM", {})
    exits: list[Any] = []
    monkeypatch.setattr(cluster.atexit, "register", exits.append)
    assert cluster.keep_warm_runner("tensorflow") == "/tmp/socket-1"
    assert cluster.keep_warm_runner("tensorflow") == "/tmp/socket-1"
    assert started == [(True, ("tensorflow",))] and stopped == [] and len(exits) == 1
    exits[0]()  # at the worker's exit
    assert stopped == ["stopped"]
