"""End-to-end: nntune's own executor (the default of ``nntune run``) on DVC's real queue.

The same params through nntune's executor and through DVC's queue workers give the same
experiment (metrics, dvc.lock output hashes); the experiment is an ordinary DVC one
(``dvc exp apply``, then ``dvc status`` clean and ``dvc repro`` a no-op); a failed trial
keeps its log and is queued again by ``--retry-failed``; and a worker, or ``nntune run``
itself, killed with SIGKILL mid-trial loses no trial and runs none twice."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from project import NNTUNE, baseline_project, processes_with, run, start_run, wait_until

pytestmark = pytest.mark.e2e

STATE = Path(".dvc/tmp/nntune")
# Outputs whose bytes record when they were made, not what: dvclive's step timestamps, and
# the run report's timings. Everything else a stage writes must be byte-identical.
TIMESTAMPED = {"dvclive", "dvclive_pretrain", "reports/train_run.json"}


def _queue(project: Path, name: str, *overrides: str) -> None:
    args = [arg for o in overrides for arg in ("-S", o)]
    run(project, "dvc", "exp", "run", "--queue", "--quiet", "-n", name, *args)


def _lock_outs(project: Path, rev: str) -> dict[str, str]:
    text = run(project, "git", "show", f"{rev}:dvc.lock").stdout
    stages = yaml.safe_load(text)["stages"]
    return {
        f"{stage}:{out['path']}": out["md5"]
        for stage, entry in stages.items()
        for out in entry.get("outs", [])
        if out["path"] not in TIMESTAMPED
    }


def _metrics(project: Path, rev: str) -> dict[str, Any]:
    names = run(project, "git", "ls-tree", "--name-only", rev, "metrics/").stdout.split()
    return {n: json.loads(run(project, "git", "show", f"{rev}:{n}").stdout) for n in names}


def _exp_rev(project: Path, name: str) -> str:
    refs = run(project, "git", "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps/")
    for line in refs.stdout.splitlines():
        rev, ref = line.split()
        if ref.endswith(f"/{name}"):
            return rev
    raise AssertionError(f"no experiment {name}: {refs.stdout}")


def test_same_experiment_as_dvcs_queue_and_an_ordinary_one(tmp_path: Path) -> None:
    project = baseline_project(tmp_path)
    _queue(project, "own", "model.units=12")
    out = run(project, NNTUNE, "run", "-j", "1").stdout
    assert "best: own" in out, out
    # The same params through DVC's own workers; without the run cache, so it trains too.
    run(project, "rm", "-rf", ".dvc/cache/runs")
    _queue(project, "theirs", "model.units=12")
    run(project, NNTUNE, "run", "-j", "1", "--executor", "dvc")

    own, theirs = _exp_rev(project, "own"), _exp_rev(project, "theirs")
    assert _metrics(project, own) == _metrics(project, theirs)
    assert _lock_outs(project, own) == _lock_outs(project, theirs)
    assert "train:models/model.keras" in _lock_outs(project, own)
    # Both are experiments of the baseline commit, under DVC's own ref namespace.
    refs = run(project, "git", "for-each-ref", "--format=%(refname)", "refs/exps/").stdout
    head = run(project, "git", "rev-parse", "HEAD").stdout.strip()
    assert f"refs/exps/{head[:2]}/{head[2:]}/own" in refs.split(), refs
    # The queue is empty, and says so truthfully.
    status = run(project, "dvc", "queue", "status").stdout
    assert "own" not in status and "Queued" not in status, status

    run(project, "dvc", "exp", "apply", "own")
    assert "up to date" in run(project, "dvc", "status").stdout
    repro = run(project, "dvc", "repro").stdout
    assert "Running stage" not in repro, repro
    diff = run(project, "dvc", "exp", "diff", "own", "theirs", "--json").stdout
    assert set(json.loads(diff).get("metrics", {})) <= {"reports/train_run.json"}, diff  # timings


def test_a_failed_trial_keeps_its_log_and_retry_failed_runs_it_again(tmp_path: Path) -> None:
    project = baseline_project(tmp_path)
    _queue(project, "good", "model.units=8")
    _queue(project, "broken", "data.source=data/later.csv")  # no such file yet
    result = run(project, NNTUNE, "run", "-j", "2", check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 trial(s) failed: broken" in result.stderr
    assert "failed: broken; last lines of `nntune logs broken`" in result.stdout
    log = run(project, NNTUNE, "logs", "broken").stdout
    assert "# broken" in log and "data/later.csv" in log, log
    shown = json.loads(run(project, NNTUNE, "compare", "--format", "json").stdout)
    status = {row["experiment"]: row["status"] for row in shown["experiments"]}
    assert status == {"good": "ok", "broken": "failed"}, status
    assert "broken" not in run(project, "dvc", "queue", "status").stdout

    # The cause mended and committed: the same params are queued again, on HEAD.
    run(project, "cp", "data/digits.csv", "data/later.csv")
    run(project, "git", "add", "data/later.csv")
    run(project, "git", "commit", "--quiet", "-m", "the data arrived")
    again = run(project, NNTUNE, "run", "--retry-failed", "-j", "1")
    assert "queued again: broken data.source=data/later.csv" in again.stdout, again.stdout
    assert "best:" in again.stdout
    names = run(project, "dvc", "exp", "list", "--name-only").stdout.split()
    assert names == ["broken"], names  # an experiment of the new HEAD
    assert "no failed trial to retry" in run(project, NNTUNE, "run", "--retry-failed").stdout


def _training(project: Path) -> str | None:
    """The trial whose train stage runs now (its log says so, and it has no record yet)."""
    logs = project / STATE / "logs"
    done = {json.loads(p.read_text())["name"] for p in (project / STATE / "done").glob("*.json")}
    for log in logs.glob("*.log") if logs.is_dir() else []:
        last_attempt = log.read_text(errors="replace").rsplit(f"# {log.stem} (", 1)[-1]
        if log.stem not in done and "Running stage 'train'" in last_attempt:
            return log.stem
    return None


def _attempts(project: Path, name: str) -> int:
    return (project / STATE / "logs" / f"{name}.log").read_text().count(f"# {name} (")


def _workers(project: Path) -> list[psutil.Process]:
    return processes_with(project, "nntune.executor.worker")


def test_kill_9_of_a_worker_or_of_nntune_run_loses_nothing_and_runs_nothing_twice(
    tmp_path: Path,
) -> None:
    project = baseline_project(tmp_path)
    names = [f"u{units}" for units in (8, 12, 16, 20)]
    for name in names:
        _queue(project, name, f"model.units={name[1:]}", "train.max_epochs=30")

    # A worker SIGKILLed mid-train: nntune run notices, and the trial runs again from the
    # start in a new worker (its claim died with the worker); nothing else is disturbed.
    first = start_run(project, tmp_path / "first.log", "-j", "1")
    try:
        wait_until("a trial trains", lambda: _training(project))
        victim = _training(project)
        for worker in _workers(project):
            worker.kill()
        first.wait(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, (tmp_path / "first.log").read_text()
    assert victim is not None and _attempts(project, victim) == 2
    run_names = run(project, "dvc", "exp", "list", "--name-only").stdout.split()
    assert sorted(run_names) == sorted(names)

    # SIGKILL of nntune run itself mid-trial: its worker finishes that trial and exits
    # (its parent is gone); the same command then runs the rest, and nothing runs twice.
    run(project, "dvc", "exp", "remove", *names)
    for name in names:
        _queue(project, f"{name}b", f"model.units={name[1:]}", "train.max_epochs=31")
    second = start_run(project, tmp_path / "second.log", "-j", "1")
    try:
        wait_until("a trial trains", lambda: _training(project))
        os.kill(second.pid, signal.SIGKILL)
        second.wait(timeout=60)
    finally:
        if second.poll() is None:
            second.kill()
    wait_until("the orphaned worker exits", lambda: not _workers(project), seconds=300)
    run(project, NNTUNE, "run", "-j", "1")
    again = sorted(run(project, "dvc", "exp", "list", "--name-only").stdout.split())
    assert again == sorted(f"{n}b" for n in names)
    assert [_attempts(project, f"{n}b") for n in names] == [1, 1, 1, 1]
    assert "Queued" not in run(project, "dvc", "queue", "status").stdout


def test_an_entry_whose_ref_exists_is_settled_not_run_and_a_broken_worktree_is_rebuilt(
    tmp_path: Path,
) -> None:
    """A worker that died after its experiment's ref was written, before it took the entry
    off the queue: the next worker takes it off without running it again."""
    project = baseline_project(tmp_path)
    _queue(project, "once", "model.units=10")
    script = (
        "from dvc.repo import Repo\n"
        "from nntune.executor.runner import run_entry\n"
        "from nntune.executor.worktrees import ensure_worktree\n"
        "repo = Repo('.')\n"
        "entry = next(iter(repo.experiments.celery_queue.iter_queued()))\n"
        "run_entry(ensure_worktree('.', 1, repo.cache.local_cache_dir), '', entry)\n"
    )
    run(project, "python", "-c", script)
    assert run(project, "dvc", "exp", "list", "--name-only").stdout.split() == ["once"]
    assert "once" in run(project, "dvc", "queue", "status").stdout  # still queued
    worktree = project / STATE / "workers" / "w1"
    (worktree / ".git").unlink()  # git no longer knows it as a worktree

    out = run(project, NNTUNE, "run", "-j", "1").stdout
    assert "best: once" in out, out
    assert not (project / STATE / "logs" / "once.log").exists()  # settled, never run
    assert "once" not in run(project, "dvc", "queue", "status").stdout
    assert run(project, "dvc", "exp", "list", "--name-only").stdout.split() == ["once"]

    _queue(project, "next", "model.units=11")
    run(project, NNTUNE, "run", "-j", "1")  # in the rebuilt worktree
    assert (worktree / ".git").is_file()
    assert _attempts(project, "next") == 1
    # Its DVC cache is the project's: the model it trained is in the project's cache.
    cache = run(project, "dvc", "cache", "dir").stdout.strip()
    assert cache in (worktree / ".dvc" / "config.local").read_text()
    md5 = _lock_outs(project, _exp_rev(project, "next"))["train:models/model.keras"]
    assert (Path(cache) / "files" / "md5" / md5[:2] / md5[2:]).is_file()


def test_ctrl_c_lets_the_running_trial_finish_and_keeps_the_rest_queued(tmp_path: Path) -> None:
    project = baseline_project(tmp_path)
    for units in (8, 12, 16):
        _queue(project, f"c{units}", f"model.units={units}", "train.max_epochs=20")
    first = start_run(project, tmp_path / "first.log", "-j", "1")
    try:
        wait_until("a trial trains", lambda: _training(project))
        interrupted = _training(project)
        first.send_signal(signal.SIGINT)
        first.wait(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    out = (tmp_path / "first.log").read_text()
    assert first.returncode == 130, out
    assert "2 trial(s) stay queued; resume with `nntune run`" in out, out
    wait_until("the worker finishes its trial and exits", lambda: not _workers(project), 300)
    names = run(project, "dvc", "exp", "list", "--name-only").stdout.split()
    assert names == [interrupted], names
    assert run(project, "dvc", "queue", "status").stdout.count("Queued") == 2

    run(project, NNTUNE, "run", "-j", "1")
    names = run(project, "dvc", "exp", "list", "--name-only").stdout.split()
    assert sorted(names) == ["c12", "c16", "c8"]
    assert [_attempts(project, f"c{u}") for u in (8, 12, 16)] == [1, 1, 1]
