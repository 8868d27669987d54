"""``nntune run --backend ray``: the trials of DVC's local queue as Ray tasks.

DVC's queue is local to one machine (its broker is a folder under ``.dvc/tmp``). Here each
queued entry becomes one Ray task that runs the per-trial entry point (``nntune trial``,
see ``nntune.remote``) on whichever node has the requested CPUs and GPUs: clone from the
project's git remote, pull from its DVC remote, ``dvc exp run``, ``dvc exp push``. The
driver pulls each finished experiment back with ``dvc exp pull`` and removes its queue
entry, so ``nntune compare`` and ``dvc exp show`` see every trial as if it ran here.

Ray retries a task whose node or worker is lost; the entry point is idempotent, so a retry
never duplicates an experiment. A trial that fails on its own (bad params, diverging code)
is not retried and stays in the local queue.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live

from nntune import experiments
from nntune.errors import NntuneError
from nntune.metrics import Objective
from nntune.monitor import Finished, RunOutcome, finished_trial, trials_progress, trials_view
from nntune.remote import LOG_TAIL, TrialError, TrialResult, TrialSpec


class ClusterError(NntuneError):
    pass


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None: RAY_ADDRESS, or a local Ray started for this run
    num_cpus: float = 1.0  # Ray resources each trial reserves
    num_gpus: float = 0.0  # Ray sets CUDA_VISIBLE_DEVICES to the GPUs it grants
    retries: int = 3  # re-runs of a trial whose node or worker died
    cache_dir: str | None = None  # clones and DVC cache on each node; None: its default
    remote: str = "origin"  # the git remote trials clone from and push to


def ray_trial(spec: TrialSpec, cache_dir: str | None, events: Any) -> dict[str, Any]:
    """The Ray task: ``nntune trial`` in a child process that leads its own process group
    and dies with this worker (``remote.watch_parent``), so a lost node leaves nothing
    running that could race the retry."""
    import socket

    with contextlib.suppress(Exception):  # the live view only: never fail a trial over it
        events.put_nowait((spec.name, socket.gethostname()))
    command = spec.command(str(Path(sys.executable).parent / "nntune"))
    if cache_dir:
        command += ["--cache-dir", cache_dir]
    out = subprocess.run(
        command, capture_output=True, text=True, start_new_session=True, check=False
    )
    if out.returncode != 0:
        tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-LOG_TAIL:])
        raise TrialError(tail or f"nntune trial exited {out.returncode}")
    return dict(asdict(TrialResult.from_json(out.stdout.strip().splitlines()[-1])))


def trial_specs(root: str | Path, remote: str) -> list[TrialSpec]:
    """The queued entries as trial specs, once the remotes they need are checked."""
    with experiments.open_repo(root) as repo:
        trials = experiments.queued_trials(repo)
        rev = experiments.baseline_rev(repo)
    if not trials:
        return []
    url = experiments.git_remote_url(root, remote)
    experiments.check_pushed(root, remote, rev)
    if experiments.default_dvc_remote(root) is None:
        raise ClusterError(
            "this project has no default DVC remote, so trials on other machines could not "
            "share models; run `nntune remote setup GIT_URL DVC_URL`"
        )
    return [TrialSpec(url, rev, name, tuple(overrides)) for name, overrides in trials]


def run_on_ray(
    root: str | Path,
    options: RayOptions,
    objective: Objective,
    console: Console,
    poll_seconds: float = 1.0,
) -> RunOutcome:
    """Run every queued trial on Ray and block until all have finished (or Ctrl-C)."""
    specs = trial_specs(root, options.remote)
    outcome = RunOutcome(total=len(specs))
    if not specs:
        return outcome
    ray = _import_ray()
    ray.init(address=options.address, log_to_driver=False, logging_level="WARNING")
    try:
        events = _event_queue(ray)
        task = ray.remote(ray_trial).options(
            num_cpus=options.num_cpus,
            num_gpus=options.num_gpus,
            max_retries=options.retries,
            retry_exceptions=False,
        )
        pending = {task.remote(spec, options.cache_dir, events): spec for spec in specs}
        with experiments.open_repo(root) as repo:
            _watch(ray, repo, pending, events, outcome, options, objective, console, poll_seconds)
    finally:
        ray.shutdown()
    return outcome


def _watch(
    ray: Any,
    repo: Any,
    pending: dict[Any, TrialSpec],
    events: Any,
    outcome: RunOutcome,
    options: RayOptions,
    objective: Objective,
    console: Console,
    poll_seconds: float,
) -> None:
    progress = trials_progress(console)
    bar = progress.add_task("trials", total=outcome.total)
    running: dict[str, str] = {}  # name -> host, as the tasks report their start

    def view() -> Any:
        names = [s.name for s in pending.values()]
        state = experiments.QueueState(
            queued=[n for n in names if n not in running],
            running=[f"{n} ({running[n]})" for n in names if n in running],
        )
        return trials_view(progress, state, outcome, objective)

    try:
        with Live(view(), console=console) as live:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=poll_seconds)
                running.update(_drain(events))
                for ref in done:
                    spec = pending.pop(ref)
                    running.pop(spec.name, None)
                    outcome.finished.append(_collect(ray, ref, spec, repo, outcome, options))
                    finished = outcome.finished[-1]
                    if finished.ok:
                        outcome.finished[-1] = finished_trial(repo, spec.name, objective)
                progress.update(bar, completed=len(outcome.finished))
                live.update(view())
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        outcome.interrupted = True
        outcome.still_queued = len(pending)
    console.print()


def _collect(
    ray: Any, ref: Any, spec: TrialSpec, repo: Any, outcome: RunOutcome, options: RayOptions
) -> Finished:
    """The task's result; a success is pulled back and leaves the local queue."""
    try:
        result = TrialResult(**ray.get(ref))
    except Exception as exc:  # RayTaskError wraps the trial's own error
        cause = getattr(exc, "cause", None) or exc
        outcome.errors[spec.name] = str(cause).strip()
        return Finished(name=spec.name, ok=False)
    outcome.timings[spec.name] = {**result.seconds}
    experiments.pull_experiments(repo, options.remote, [spec.name])
    experiments.remove_queued(repo, [spec.name])
    return Finished(name=spec.name, ok=True)


def _drain(events: Any) -> dict[str, str]:
    started: dict[str, str] = {}
    try:
        while not events.empty():
            name, host = events.get_nowait()
            started[name] = host
    except Exception:  # the queue actor's node was lost: only the view loses
        pass
    return started


def _event_queue(ray: Any) -> Any:
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


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ClusterError(
            "--backend ray needs Ray: pip install 'nntune[ray]' (or pip install 'ray>=2.9')"
        ) from None
    return ray
