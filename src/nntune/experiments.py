"""The one place that talks to DVC from Python: queueing trials, watching DVC's queue,
reading experiments back (``dvc.api.exp_show``) and promoting one.

Everything here goes through DVC's own machinery (``dvc exp run --queue``, its celery
queue, ``exp apply`` / ``exp branch``); nntune adds names, checks and views on top.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nntune.errors import NntuneError
from nntune.grid import Trial, flatten, override_args


class ExperimentError(NntuneError):
    pass


@dataclass(frozen=True)
class Experiment:
    """One row of ``dvc exp show``: an experiment and what it recorded."""

    name: str
    rev: str
    state: str  # Success, Failed, Queued, Running
    params: dict[str, Any]  # flattened params.yaml keys
    metrics: dict[str, Any]  # flattened metrics (only meaningful when state is Success)
    created: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.state == "Success"

    @property
    def diverged(self) -> bool:
        # exp_show returns booleans of metrics files as "True" / "False" strings.
        return str(self.metrics.get("diverged")).lower() == "true"


@dataclass
class QueueState:
    """What DVC's queue holds now, by experiment name (or short rev when unnamed)."""

    queued: list[str] = field(default_factory=list)
    running: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # name -> stash rev
    succeeded: dict[str, str] = field(default_factory=dict)  # name -> experiment commit

    @property
    def pending(self) -> int:
        return len(self.queued) + len(self.running)


def use_this_python() -> None:
    """DVC stage commands call ``python`` and queue workers call ``dvc``: make both the
    ones of the interpreter running nntune, even when its environment is not activated."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[0] != bin_dir:
        os.environ["PATH"] = f"{bin_dir}{os.pathsep}{path}"


@contextmanager
def open_repo(root: str | Path = ".") -> Iterator[Any]:
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


def workspace_metrics(root: str | Path = ".") -> dict[str, Any]:
    """Every metrics file dvc.yaml declares, merged into one mapping (names are distinct:
    val_* from train, test_* from evaluate, timings from the run report)."""
    import dvc.api

    return dict(dvc.api.metrics_show(repo=str(root)))


def list_experiments(
    root: str | Path, param_keys: Iterable[str], all_commits: bool = False
) -> list[Experiment]:
    """Experiments of HEAD (or of every commit on the branch) as ``Experiment`` rows."""
    import dvc.api
    from dvc.exceptions import NotDvcRepoError

    keys = set(param_keys)
    if not Path(root, ".dvc").is_dir():  # exp_show would try to clone it as a URL
        raise ExperimentError(
            f"{Path(root).resolve()}: not a DVC project; run nntune in the project's root "
            "(the folder with .dvc/), or set one up: `nntune init` or `make setup`"
        )
    try:
        rows = dvc.api.exp_show(repo=str(root), num=-1 if all_commits else 1)
    except NotDvcRepoError:
        raise ExperimentError(
            f"{Path(root).resolve()}: not a DVC project; run `make setup` or `dvc init`"
        ) from None
    experiments = []
    for row in rows:
        name = row.get("Experiment")
        if not name or row.get("typ") == "baseline":
            continue
        experiments.append(
            Experiment(
                name=str(name),
                rev=str(row.get("rev")),
                state=_state(row),
                params={k: v for k, v in row.items() if k in keys},
                metrics={k: v for k, v in row.items() if k not in keys and not _meta(k)},
                created=row.get("Created"),
            )
        )
    return experiments


def _state(row: dict[str, Any]) -> str:
    """DVC knows Queued / Running / Success / Failed only for experiments its queue ran
    here. One pulled from a remote (``dvc exp pull``, a Ray or Slurm trial) comes back with
    no State; it is an experiment commit, and DVC commits only experiments that finished."""
    state = row.get("State")
    if state is None and row.get("typ") in ("branch_commit", "branch_base"):
        return "Success"
    return str(state)


def _meta(column: str) -> bool:
    # exp_show mixes bookkeeping columns and dependency hashes (paths) into each row.
    bookkeeping = {"Experiment", "rev", "typ", "Created", "parent", "State", "Executor"}
    return column in bookkeeping or "/" in column


def same_params(recorded: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Whether an experiment's recorded params equal ``wanted`` (flattened). exp_show
    turns ints into floats and booleans and lists into strings, so compare loosely by type."""
    return all(_same(recorded.get(key), value) for key, value in wanted.items())


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, list | tuple):
        a = yaml.safe_load(a)  # exp_show gives lists as text: "[]", "[64, 32]"
    if isinstance(b, bool) or isinstance(a, bool):
        return str(a).lower() == str(b).lower()
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0.0)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def queue_trials(root: str | Path, trials: Iterable[Trial]) -> list[str]:
    """``dvc exp run --queue -n NAME -S key=value ...`` for each trial, in one DVC session."""
    queued = []
    with open_repo(root) as repo:
        for trial in trials:
            repo.experiments.run(params=override_args(trial.overrides), queue=True, name=trial.name)
            queued.append(trial.name)
    return queued


def remove_experiments(root: str | Path, names: list[str]) -> None:
    if names:
        with open_repo(root) as repo:
            repo.experiments.remove(exp_names=names)


def queue_state(repo: Any) -> QueueState:
    """Queued, running and finished entries of DVC's queue, in one linear pass over its
    processed messages. (DVC's own ``iter_done`` looks each finished entry up by scanning
    every processed message again: quadratic, minutes per call after a few hundred
    experiments, which stalled a search driver that polls it every two seconds.)"""
    queue = repo.experiments.celery_queue
    state = QueueState()
    state.queued = [_label(e) for e in queue.iter_queued()]
    state.running = [_label(entry) for _, entry in queue._iter_active_tasks()]
    for _, entry in queue._iter_done_tasks():
        try:
            result = queue._load_info(entry.stash_rev).result
        except FileNotFoundError:  # the run never wrote its info file: it failed early
            result = None
        # Its ref is written before the task is done, unless its worker died before
        # collecting it: then the experiment was not saved, and it failed.
        saved = result is not None and result.exp_hash and result.ref_info
        if saved and repo.scm.get_ref(str(result.ref_info)):
            state.succeeded[result.ref_info.name] = str(result.exp_hash)
        else:
            state.failed[_label(entry)] = entry.stash_rev
    return state


def _label(entry: Any) -> str:
    return str(entry.name or entry.stash_rev[:7])


def start_workers(repo: Any, jobs: int, gpus: list[str] | None = None) -> int:
    """``dvc queue start -j jobs``; with ``gpus``, one worker per GPU instead, each started
    with its own ``CUDA_VISIBLE_DEVICES`` (workers and their trials inherit the environment
    they start with), so concurrent trials never share a card."""
    use_this_python()
    queue = repo.experiments.celery_queue
    if not gpus:
        return int(queue.start_workers(jobs))
    active = queue.worker_status()
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    started = 0
    try:
        for number, gpu in enumerate(gpus, start=1):
            if any(name.endswith(f"-{number}@localhost") for name in active):
                continue  # a worker with this number already runs, pinned when it started
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
            queue._spawn_worker(number)  # start_workers() would give every worker one env
            started += 1
    finally:
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved
    return started


def stop_workers(repo: Any) -> None:
    """Let running trials finish, keep queued ones queued: ``dvc queue stop``."""
    repo.experiments.celery_queue.shutdown(kill=False)


def live_workers(repo: Any) -> list[int]:
    """Pids of this project's DVC queue workers, read from the process table (celery's
    ping can time out on a busy machine and would report live workers dead)."""
    import hashlib

    import psutil

    wdir = repo.experiments.celery_queue.wdir
    node = f"dvc-exp-{hashlib.sha256(wdir.encode('utf-8')).hexdigest()[:6]}-"
    pids = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info.get("cmdline") or []
        if proc.info.get("status") == psutil.STATUS_ZOMBIE or "queue-worker" not in cmdline:
            continue
        if any(arg.startswith(node) for arg in cmdline):
            pids.append(proc.pid)
    return pids


def revive_queue(
    repo: Any, state: QueueState, jobs: int, gpus: list[str] | None = None
) -> dict[str, bool]:
    """When every worker of this project has died (killed, out of memory) while the queue
    still holds work: settle the trials they were running (``settle_orphans``) and start
    new workers for what is queued. Returns the settled trials: name -> whether its
    experiment was saved."""
    if not state.pending or live_workers(repo):
        return {}
    settled = settle_orphans(repo, state.running) if state.running else {}
    if state.queued:
        start_workers(repo, jobs, gpus)
    return settled


def settle_orphans(repo: Any, names: list[str]) -> dict[str, bool]:
    """Running entries whose worker died. A trial whose own process still runs is left to
    finish. Once it has ended, what the dead worker would have done is done here: a trial
    that completed is collected into its experiment ref (DVC's own ``collect_exp`` task),
    and the entry is marked done (``dvc queue kill`` on an ended process does that), so it
    shows as succeeded or failed instead of 'running' forever. Returns name -> saved."""
    from dvc.repo.experiments.exceptions import UnresolvedRunningExpNamesError
    from dvc.repo.experiments.executor.local import TempDirExecutor
    from dvc.repo.experiments.queue.exceptions import CannotKillTasksError
    from dvc.repo.experiments.queue.tasks import collect_exp

    queue = repo.experiments.celery_queue
    active = {_label(entry): entry for _, entry in queue._iter_active_tasks()}
    settled: dict[str, bool] = {}
    for name in names:
        entry = active.get(name)
        if entry is None or _trial_process_alive(queue, entry.stash_rev):
            continue
        try:
            info = queue._load_info(entry.stash_rev)
        except FileNotFoundError:
            info = None
        result = info.result if info is not None else None
        if result is not None and result.exp_hash and result.ref_info:
            collect_exp({}, entry.asdict())
        try:
            queue.kill([name], force=True)
        except (UnresolvedRunningExpNamesError, CannotKillTasksError):
            continue  # ended meanwhile, or a live worker has it after all
        if info is not None:  # the temp copy the trial ran in, as the worker removes it
            with contextlib.suppress(OSError):
                TempDirExecutor.from_info(info).cleanup(queue.get_infofile_path(entry.stash_rev))
        ref = result.ref_info if result is not None else None
        settled[name] = ref is not None and bool(repo.scm.get_ref(str(ref)))
    return settled


def _trial_process_alive(queue: Any, stash_rev: str) -> bool:
    """Whether an entry's ``dvc exp exec-run`` process still runs (it may outlive its
    worker, as the child of a killed process)."""
    import psutil

    info = queue.proc.get(stash_rev)
    if info is None or info.returncode is not None or not info.pid:
        return False
    try:
        proc = psutil.Process(info.pid)
        return proc.status() != psutil.STATUS_ZOMBIE and "exec-run" in proc.cmdline()
    except psutil.Error:
        return False


def experiment_metrics(repo: Any, name: str) -> dict[str, Any]:
    """The metrics an experiment recorded, read from its git commit."""
    from dvc.repo.experiments.utils import resolve_name

    ref = resolve_name(repo.scm, name).get(name)
    if ref is None:
        return {}
    rev = repo.scm.get_ref(str(ref))
    shown = repo.metrics.show(revs=[rev])
    merged: dict[str, Any] = {}
    for files in shown.get(rev, {}).get("data", {}).values():
        merged.update(flatten(files.get("data", {})))
    return merged


def queue_log_tail(root: str | Path, name: str, lines: int = 12) -> str:
    """The last lines of a trial's log (``dvc queue logs NAME``)."""
    use_this_python()
    out = subprocess.run(
        ["dvc", "queue", "logs", name],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    text = (out.stdout + out.stderr).strip().splitlines()
    return "\n".join(text[-lines:])


def promote(root: str | Path, name: str, branch: str | None) -> None:
    """``dvc exp branch NAME BRANCH`` or ``dvc exp apply NAME``. DVC's apply overwrites
    uncommitted changes without asking, so a dirty workspace is refused first."""
    with open_repo(root) as repo:
        if branch:
            repo.experiments.branch(name, branch)
            return
        dirty = _uncommitted(repo)
        if dirty:
            shown = ", ".join(dirty[:5]) + (f" and {len(dirty) - 5} more" if len(dirty) > 5 else "")
            raise ExperimentError(
                f"the workspace has uncommitted changes ({shown}), which applying {name} would "
                "overwrite: commit or stash them first (git stash), or use --branch BRANCH"
            )
        repo.experiments.apply(name)


def _uncommitted(repo: Any) -> list[str]:
    """Tracked files that differ from HEAD (git's own view, untracked files aside)."""
    out = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
        cwd=repo.root_dir,
        capture_output=True,
        text=True,
        check=False,
    )
    return [line[3:] for line in out.stdout.splitlines() if line.strip()]


def baseline_rev(repo: Any) -> str:
    """The commit experiments are queued on (HEAD)."""
    return str(repo.scm.get_rev())


def experiment_commits(repo: Any, baseline: str) -> dict[str, str]:
    """Every experiment of ``baseline`` that has a git ref, by name: its commit. A ref is
    what survives DVC's queue clean-ups, so it is the record of a finished experiment."""
    from dvc.repo.experiments.utils import exp_refs_by_baseline

    refs = exp_refs_by_baseline(repo.scm, {baseline}).get(baseline, [])
    return {ref.name: str(repo.scm.get_ref(str(ref))) for ref in refs}


def queue_experiment(repo: Any, name: str, overrides: dict[str, Any]) -> bool:
    """``dvc exp run --queue -n NAME -S key=value ...`` for one experiment. False, and
    nothing queued, when DVC already has an experiment of that name (it has finished: DVC
    checks the refs only)."""
    from dvc.repo.experiments.exceptions import ExperimentExistsError

    try:
        repo.experiments.run(params=override_args(overrides), queue=True, name=name)
    except ExperimentExistsError:
        return False
    return True


def output_md5(repo: Any, rev: str, stage: str, path: str) -> str:
    """The md5 dvc.lock records at commit ``rev`` for output ``path`` of ``stage``: how a
    later experiment names, exactly, the file it builds on."""
    fs = repo.scm.get_fs(rev)
    lock_path = (Path(repo.root_dir).relative_to(repo.scm.root_dir) / "dvc.lock").as_posix()
    try:
        with fs.open(lock_path, encoding="utf-8") as stream:
            lock = yaml.safe_load(stream) or {}
    except FileNotFoundError:
        raise ExperimentError(f"{rev[:7]}: no dvc.lock; the experiment did not run") from None
    for out in lock.get("stages", {}).get(stage, {}).get("outs", []):
        if out.get("path") == path and out.get("md5"):
            return str(out["md5"])
    raise ExperimentError(f"{rev[:7]}: dvc.lock records no md5 for {stage} output {path}")


def collect_garbage(repo: Any, other_projects: Iterable[str] = ()) -> None:
    """``dvc gc`` that keeps every object any branch, tag, commit, experiment or the
    workspace still uses, in this project and in ``other_projects`` (``dvc gc --projects``,
    for a shared cache): only what the removed experiments alone used goes."""
    repo.gc(
        workspace=True,
        all_branches=True,
        all_tags=True,
        all_commits=True,
        all_experiments=True,
        force=True,
        repos=list(other_projects) or None,
    )


def shared_cache(repo: Any) -> str | None:
    """The DVC cache folder when it lies outside this project's ``.dvc/`` (``dvc cache
    dir``): other projects may use it, so ``dvc gc`` there could delete their objects."""
    cache = Path(repo.cache.local_cache_dir).resolve()
    own = Path(repo.dvc_dir).resolve()
    return None if cache.is_relative_to(own) else str(cache)


def protected_experiments(
    repo: Any, rows: list[Experiment], workspace: dict[str, Any]
) -> dict[str, str]:
    """Experiments a user promoted: on a git branch (``dvc exp branch``, ``nntune best
    --branch``) or applied to the workspace (its params are the workspace's)."""
    protected: dict[str, str] = {}
    for exp in rows:
        if exp.rev and exp.rev != "None":
            branches = repo.scm.get_refs_containing(exp.rev, "refs/heads")
            names = sorted(str(b).removeprefix("refs/heads/") for b in branches)
            if names:
                protected[exp.name] = f"on branch {', '.join(names)}"
                continue
        if exp.params and same_params(exp.params, workspace):
            protected[exp.name] = "applied to the workspace"
    return protected


def queued_trials(repo: Any, skip: Iterable[str] = ()) -> list[tuple[str, list[str]]]:
    """The entries of DVC's local queue as (name, ``-S`` overrides), for executors that run
    them elsewhere (Ray, Slurm), leaving out ``skip``. A remote trial clones the baseline
    commit and sets params only, so an entry must be named, queued on HEAD and change
    nothing but params.yaml."""
    head = baseline_rev(repo)
    skipped = set(skip)
    trials = []
    for entry in repo.experiments.celery_queue.iter_queued():
        label = _label(entry)
        if label in skipped:
            continue
        if not entry.name:
            raise ExperimentError(
                f"queued experiment {label} has no name; remove it (dvc queue remove {label}) "
                "and queue it with -n NAME (nntune grid names every point)"
            )
        if entry.baseline_rev != head:
            raise ExperimentError(
                f"queued experiment {label} is based on commit {entry.baseline_rev[:7]}, not "
                f"HEAD ({head[:7]}); check that commit out or remove it: dvc queue remove {label}"
            )
        extra = [p for p in _changed_paths(repo, head, entry.stash_rev) if p != "params.yaml"]
        if extra:
            raise ExperimentError(
                f"queued experiment {label} carries uncommitted changes to {', '.join(extra)}; "
                "a remote trial runs the commit with its params only: commit the changes, "
                f"then queue it again (dvc queue remove {label})"
            )
        trials.append((label, _param_changes(repo, head, entry.stash_rev, label)))
    return trials


def _changed_paths(repo: Any, base: str, rev: str) -> list[str]:
    out = subprocess.run(
        ["git", "diff", "--name-only", base, rev, "--", "."],
        cwd=repo.root_dir,
        capture_output=True,
        text=True,
        check=True,
    )
    # DVC stashes its own bookkeeping (.dvc/tmp/repro.dat) with every queued entry.
    paths = [Path(repo.scm.root_dir, p).relative_to(repo.root_dir) for p in out.stdout.split()]
    return [p.as_posix() for p in paths if p.parts[:2] != (".dvc", "tmp")]


def _param_changes(repo: Any, base: str, rev: str, label: str) -> list[str]:
    before, after = (flatten(_params_at(repo, r)) for r in (base, rev))
    dropped = sorted(set(before) - set(after))
    if dropped:
        raise ExperimentError(f"queued experiment {label} removes params {', '.join(dropped)}")
    return override_args({k: v for k, v in after.items() if k not in before or before[k] != v})


def _params_at(repo: Any, rev: str) -> dict[str, Any]:
    path = (Path(repo.root_dir).relative_to(repo.scm.root_dir) / "params.yaml").as_posix()
    with repo.scm.get_fs(rev).open(path, encoding="utf-8") as stream:
        loaded = yaml.safe_load(stream) or {}
    return dict(loaded)


def remove_queued(repo: Any, names: list[str]) -> None:
    """``dvc queue remove NAME ...``: entries that ran elsewhere and were pulled back."""
    if names:
        repo.experiments.celery_queue.remove(names)


def git_remote_url(root: str | Path, remote: str) -> str:
    out = subprocess.run(
        ["git", "remote", "get-url", remote], cwd=root, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise ExperimentError(
            f"this project has no git remote {remote!r}; set one up with "
            "`nntune remote setup GIT_URL DVC_URL`"
        )
    return out.stdout.strip()


def check_pushed(root: str | Path, remote: str, rev: str) -> None:
    """Remote trials clone ``rev`` from ``remote``: it must be on one of its branches."""
    subprocess.run(["git", "fetch", "--quiet", remote], cwd=root, check=False)
    out = subprocess.run(
        ["git", "branch", "--remotes", "--contains", rev, "--list", f"{remote}/*"],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    if not out.stdout.strip():
        raise ExperimentError(
            f"commit {rev[:7]} is not on {remote} yet, and remote trials clone it from there; "
            f"push it first: git push {remote} HEAD (and `dvc push` for the baseline's data)"
        )


def pull_experiments(
    repo: Any, remote: str, names: list[str] | None = None, cache: bool = True
) -> list[str]:
    """``dvc exp pull REMOTE NAME ...`` (every experiment of HEAD when ``names`` is None):
    git refs and, with ``cache``, the outputs from the DVC remote. Returns the names that
    were new or updated."""
    if names == []:
        return []
    pulled = repo.experiments.pull(remote, exp_names=names, pull_cache=cache)
    return [str(name) for name in pulled]


def default_dvc_remote(root: str | Path) -> str | None:
    with open_repo(root) as repo:
        name = repo.config["core"].get("remote")
    return str(name) if name else None


def setup_remotes(
    root: str | Path, git_remote: str, git_url: str, dvc_remote: str, dvc_url: str
) -> bool:
    """``git remote add`` (or ``set-url``) and ``dvc remote add --default --force``.
    Returns whether .dvc/config changed (it must be committed for clones to see it)."""
    known = subprocess.run(
        ["git", "remote", "get-url", git_remote], cwd=root, capture_output=True, check=False
    )
    verb = "set-url" if known.returncode == 0 else "add"
    subprocess.run(["git", "remote", verb, git_remote, git_url], cwd=root, check=True)
    config = Path(root, ".dvc", "config")
    before = config.read_text(encoding="utf-8") if config.is_file() else ""
    with open_repo(root) as repo, repo.config.edit("repo") as conf:
        conf["remote"][dvc_remote] = {"url": dvc_url}
        conf["core"]["remote"] = dvc_remote
    return config.read_text(encoding="utf-8") != before


def sync_remote(root: str | Path, remote: str) -> tuple[list[str], list[str]]:
    """Pull every experiment of HEAD from ``remote`` (git refs only: metrics and params
    live in git; ``dvc exp pull REMOTE NAME`` fetches one's models), then drop local queue
    entries that ran elsewhere meanwhile (a Slurm array). Returns (pulled, dequeued)."""
    with open_repo(root) as repo:
        pulled = pull_experiments(repo, remote, None, cache=False)
        done = set(experiment_commits(repo, baseline_rev(repo)))
        queued = repo.experiments.celery_queue.iter_queued()
        dequeued = [e.name for e in queued if e.name and e.name in done]
        remove_queued(repo, dequeued)
    return pulled, dequeued
