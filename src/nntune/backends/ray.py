"""``nntune run --backend ray``: the trials of DVC's local queue as Ray tasks.

DVC's queue is local to one machine (its broker is a folder under ``.dvc/tmp``). Here each
queued entry becomes one Ray task that runs the per-trial entry point (``nntune trial``,
see ``nntune.backends.trial``) on whichever node has the requested CPUs and GPUs: clone from the
project's git remote, pull from its DVC remote, ``dvc exp run``, ``dvc exp push``. The
driver pulls each finished experiment back with ``dvc exp pull`` and removes its queue
entry, so ``nntune compare`` and ``dvc exp show`` see every trial as if it ran here.

Ray retries a task whose node or worker is lost; the entry point is idempotent, so a retry
never duplicates an experiment. A trial that fails on its own (bad params, diverging code)
is not retried and stays in the local queue.
"""

from __future__ import annotations

import atexit
import contextlib
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any, TypeAlias, cast

from rich.console import Console, Group
from rich.live import Live

from nntune import experiments
from nntune.backends.options import RayOptions
from nntune.backends.trial import LOG_TAIL, TrialError, TrialResult, TrialSpec
from nntune.backends.view import Finished, RunOutcome, finished_trial, trials_progress, trials_view
from nntune.config.metrics import Objective
from nntune.errors import NntuneError
from nntune.experiments import DvcRepo
from nntune.stage.backend import declared

# mypy skips Ray (pyproject.toml), so its objects are untyped; these name what a value is.
RayQueue: TypeAlias = Any  # ray.util.queue.Queue: started trials report (name, host) to it
ObjectRef: TypeAlias = Any  # ray.ObjectRef of a submitted trial task


class ClusterError(NntuneError):
    pass


# The warm runner of this Ray worker process, per Keras backend (None: it did not start),
# started by its first trial and kept for the next ones; it stops with the worker.
_WARM: dict[str, str | None] = {}


def keep_warm_runner(backend: str) -> str | None:
    """Start the warm runner's servers for ``backend`` once per process and keep them: the
    environment then points every later ``nntune trial`` child (and the stages its
    ``dvc exp run`` starts) at them. Each trial's stages are forked from a process that has
    imported TensorFlow (or JAX) already, instead of importing it twice (train, evaluate).
    The servers stop when this process ends (``--owner``), and the stages running then end
    with their own processes. Returns the socket base, or None where they did not start
    (the stages then run cold, as before)."""
    if backend not in _WARM:
        from nntune.warm.launcher import warm_runner

        stack = contextlib.ExitStack()
        _WARM[backend] = stack.enter_context(warm_runner(True, backends=(backend,)))
        atexit.register(stack.close)
    return _WARM[backend]


def ray_trial(
    spec: TrialSpec, cache_dir: str | None, events: RayQueue, warm_backend: str | None = None
) -> dict[str, Any]:
    """The Ray task: ``nntune trial`` in a child process that leads its own process group
    and dies with this worker (``remote.watch_parent``), so a lost node leaves nothing
    running that could race the retry. With ``warm_backend``, the stages are forked from
    this worker's warm runner (:func:`keep_warm_runner`)."""
    import socket

    with contextlib.suppress(Exception):  # the live view only: never fail a trial over it
        events.put_nowait((spec.name, socket.gethostname()))
    if warm_backend is not None:
        keep_warm_runner(warm_backend)
    command = spec.command(str(Path(sys.executable).parent / "nntune"))
    if cache_dir:
        command += ["--cache-dir", cache_dir]
    out = subprocess.run(
        command, capture_output=True, text=True, start_new_session=True, check=False
    )
    if out.returncode != 0:
        tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-LOG_TAIL:])
        raise TrialError(tail or f"nntune trial exited {out.returncode}")
    return asdict(TrialResult.from_json(out.stdout.strip().splitlines()[-1]))


def trial_specs(root: str | Path, remote: str) -> list[TrialSpec]:
    """The queued entries as trial specs, once the remotes they need are checked."""
    with experiments.open_repo(root) as repo:
        trials = experiments.queued_trials(repo)
    if not trials:
        return []
    url, rev = check_remotes(root, remote)
    return [TrialSpec(url, rev, name, tuple(overrides)) for name, overrides in trials]


def check_remotes(root: str | Path, remote: str) -> tuple[str, str]:
    """What trials on other machines need: a git remote holding HEAD, and a default DVC
    remote to share models through. Returns (git URL, HEAD)."""
    with experiments.open_repo(root) as repo:
        rev = experiments.baseline_rev(repo)
    url = experiments.git_remote_url(root, remote)
    experiments.check_pushed(root, remote, rev)
    if experiments.default_dvc_remote(root) is None:
        raise ClusterError(
            "this project has no default DVC remote, so trials on other machines could not "
            "share models; run `nntune remote setup GIT_URL DVC_URL`"
        )
    return url, rev


class RayExecutor:
    """Runs the entries of DVC's local queue as Ray tasks and pulls finished ones back.

    ``start`` submits every queued entry not submitted yet; ``refresh`` collects finished
    tasks: a success is pulled (``dvc exp pull``) and leaves the queue, a failure stays
    queued and is remembered in ``failed``; ``state`` is the queue as a local worker pool
    would show it. ``nntune run`` and ``nntune search`` drive it the same way.
    """

    def __init__(
        self,
        ray: ModuleType,
        events: RayQueue,
        url: str,
        rev: str,
        options: RayOptions,
        warm_backend: str | None = None,
    ) -> None:
        self.ray = ray
        self.events = events
        self.url, self.rev = url, rev
        self.options = options
        self.warm_backend = warm_backend  # the Keras backend of the workers' warm runners
        self.task = ray.remote(ray_trial).options(
            num_cpus=options.num_cpus,
            num_gpus=options.num_gpus,
            max_retries=options.retries,
            retry_exceptions=False,
        )
        self.pending: dict[ObjectRef, TrialSpec] = {}
        self.started: dict[str, str] = {}  # name -> host, as tasks report their start
        self.failed: dict[str, str] = {}  # name -> error
        self.timings: dict[str, dict[str, float]] = {}  # name -> phase -> seconds
        self.succeeded: list[str] = []  # pulled back, models not fetched yet

    @classmethod
    def connect(cls, root: str | Path, options: RayOptions) -> RayExecutor:
        """Check the remotes, then connect to Ray (``options.address``)."""
        url, rev = check_remotes(root, options.remote)
        ray = _import_ray()
        ray.init(address=options.address, log_to_driver=False, logging_level="WARNING")
        backend = declared(Path(root) / "params.yaml")[0] if options.warm else None
        return cls(ray, _event_queue(ray), url, rev, options, backend)

    def close(self) -> None:
        self.ray.shutdown()

    def start(self, repo: DvcRepo) -> None:
        busy = {spec.name for spec in self.pending.values()} | set(self.failed)
        for name, overrides in experiments.queued_trials(repo, skip=busy):
            spec = TrialSpec(self.url, self.rev, name, tuple(overrides))
            task = self.task.remote(spec, self.options.cache_dir, self.events, self.warm_backend)
            self.pending[task] = spec

    def refresh(self, repo: DvcRepo, timeout: float = 0.0) -> list[tuple[str, bool]]:
        """Wait up to ``timeout`` for a task to finish; collect every finished one."""
        done: list[ObjectRef] = []
        if self.pending:
            refs = list(self.pending)
            first, _ = self.ray.wait(refs, num_returns=1, timeout=timeout)
            if first:
                done, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0)
        self.started.update(_drain(self.events))
        finished = []
        for ref in done:
            spec = self.pending.pop(ref)
            self.started.pop(spec.name, None)
            try:
                result = TrialResult(**self.ray.get(ref))
            except Exception as exc:  # RayTaskError wraps the trial's own error
                self.failed[spec.name] = str(getattr(exc, "cause", None) or exc).strip()
                finished.append((spec.name, False))
                continue
            self.timings[spec.name] = dict(result.seconds)
            # Refs only (params, metrics): fast enough to do while trials run. The models
            # follow in one batch at the end (fetch_models).
            experiments.pull_experiments(repo, self.options.remote, [spec.name], cache=False)
            experiments.remove_queued(repo, [spec.name])
            self.succeeded.append(spec.name)
            finished.append((spec.name, True))
        return finished

    def fetch_models(self, repo: DvcRepo) -> int:
        """``dvc exp pull`` of the finished experiments' outputs from the DVC remote, so
        ``dvc exp apply`` / ``nntune best --apply`` work here. Returns how many."""
        names, self.succeeded = self.succeeded, []
        if names:
            experiments.pull_experiments(repo, self.options.remote, names, cache=True)
        return len(names)

    def state(self, repo: DvcRepo) -> experiments.QueueState:
        """DVC's queue as the search driver reads it: entries failed on Ray are failed."""
        local = experiments.queue_state(repo)
        running = [s.name for s in self.pending.values() if s.name in self.started]
        return experiments.QueueState(
            queued=[n for n in local.queued if n not in self.failed and n not in running],
            running=running,
            failed={**local.failed, **dict.fromkeys(self.failed, "")},
            succeeded=local.succeeded,
        )

    def wait_for_news(self, stop: threading.Event, seconds: float) -> bool:
        return stop.wait(seconds)  # refresh() waits on Ray's results itself

    def stop(self, repo: DvcRepo) -> None:
        return None  # Ray's tasks end with their trial; close() disconnects

    def cancel(self) -> int:
        for ref in self.pending:
            self.ray.cancel(ref, force=True)
        return len(self.pending)


def run_on_ray(
    root: str | Path,
    options: RayOptions,
    objective: Objective,
    console: Console,
    poll_seconds: float = 1.0,
) -> RunOutcome:
    """Run every queued trial on Ray and block until all have finished (or Ctrl-C)."""
    with experiments.open_repo(root) as repo:
        if not experiments.queued_trials(repo):  # checks every entry before Ray starts
            return RunOutcome(total=0)
    executor = RayExecutor.connect(root, options)
    try:
        with experiments.open_repo(root) as repo:
            executor.start(repo)
            outcome = RunOutcome(total=len(executor.pending))
            _watch(executor, repo, outcome, objective, console, poll_seconds)
            fetch_models(executor, repo, console)
    finally:
        executor.close()
    return outcome


def fetch_models(executor: RayExecutor, repo: DvcRepo, console: Console) -> None:
    """The finished experiments' models, from the DVC remote, in one batch."""
    if not executor.succeeded:
        return
    start = time.perf_counter()
    count = executor.fetch_models(repo)
    seconds = time.perf_counter() - start
    console.print(
        f"fetched the models of {count} experiment(s) from the DVC remote ({seconds:.1f} s)"
    )


def _watch(
    executor: RayExecutor,
    repo: DvcRepo,
    outcome: RunOutcome,
    objective: Objective,
    console: Console,
    poll_seconds: float,
) -> None:
    progress = trials_progress(console)
    bar = progress.add_task("trials", total=outcome.total)

    def view() -> Group:
        names = [s.name for s in executor.pending.values()]
        hosts = executor.started
        state = experiments.QueueState(
            queued=[n for n in names if n not in hosts],
            running=[f"{n} ({hosts[n]})" for n in names if n in hosts],
        )
        return trials_view(progress, state, outcome, objective)

    try:
        with Live(view(), console=console) as live:
            while executor.pending:
                for name, ok in executor.refresh(repo, poll_seconds):
                    done = finished_trial(repo, name, objective) if ok else Finished(name, False)
                    outcome.finished.append(done)
                progress.update(bar, completed=len(outcome.finished))
                live.update(view())
    except KeyboardInterrupt:
        outcome.interrupted = True
        outcome.still_queued = executor.cancel()
    outcome.errors = dict(executor.failed)
    outcome.timings = dict(executor.timings)
    console.print()


def _drain(events: RayQueue) -> dict[str, str]:
    started: dict[str, str] = {}
    try:
        while not events.empty():
            name, host = events.get_nowait()
            started[name] = host
    except Exception:  # the queue actor's node was lost: only the view loses
        pass
    return started


def _event_queue(ray: ModuleType) -> RayQueue:
    """Tasks report their start here: a queue actor pinned to the driver's node (so losing
    a worker node never loses it), reserving no CPU (it must never wait for a free one)."""
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    return Queue(
        actor_options={
            "num_cpus": 0,
            "scheduling_strategy": NodeAffinitySchedulingStrategy(here, soft=True),
        }
    )


def _import_ray() -> ModuleType:
    try:
        import ray
    except ImportError:
        raise ClusterError(
            "--backend ray needs Ray: pip install 'nntune[ray]' (or pip install 'ray>=2.9')"
        ) from None
    return cast(ModuleType, ray)  # mypy skips Ray: the module is Any to it
