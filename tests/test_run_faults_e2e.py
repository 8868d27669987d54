"""End-to-end faults of ``nntune run --executor dvc`` on DVC's real queue (nntune's own
executor has its own in test_executor_e2e.py): its workers killed mid-trial,
Ctrl-C, and ``kill -9`` of ``nntune run`` itself. Queued trials stay queued, a running one
finishes or is marked failed where the user sees it, the same command continues, every
trial runs once, and no worker is left behind."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import psutil
import pytest
from conftest import processes_under
from project import (
    NNTUNE,
    baseline_project,
    processes_with,
    record_fault_run,
    run,
    start_run,
    wait_until,
)
from test_search_e2e import QueueWatch

pytestmark = pytest.mark.e2e


def _workers(project: Path) -> list[psutil.Process]:
    return processes_with(project, "queue-worker")


def _start(project: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    return start_run(project, log, "--executor", "dvc", *args)


def _no_worker_left(project: Path) -> None:
    wait_until("the queue's workers exit", lambda: not _workers(project), seconds=30)


def _trial_processes(project: Path) -> list[psutil.Process]:
    found = []
    for proc in processes_under(project):
        try:
            if "exec-run" in proc.cmdline():
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.mark.parametrize("trial_too", [False, True], ids=["workers", "workers-and-trial"])
def test_workers_killed_mid_trial_are_noticed_and_the_rest_runs(
    tmp_path: Path, trial_too: bool
) -> None:
    project = baseline_project(tmp_path)
    run(project, NNTUNE, "grid", "-p", "model.units=8,16", "-p", "train.learning_rate=0.003,0.03")
    watch = QueueWatch(project)
    log = tmp_path / "run.log"
    runner = _start(project, log, "-j", "1")
    try:

        def running() -> bool:
            watch.poll()
            return "Running" in watch.status.values()

        wait_until("a trial runs", running)
        victim = next(n for n, s in watch.status.items() if s == "Running")
        for worker in _workers(project):
            worker.kill()  # as the OOM killer would: no chance to clean up
        if trial_too:
            wait_until("the trial's process is seen", lambda: _trial_processes(project), 60)
            for proc in _trial_processes(project):
                proc.kill()
        runner.wait(timeout=600)
    finally:
        if runner.poll() is None:
            runner.kill()
    out = " ".join(log.read_text().split())
    watch.poll()
    names = run(project, "dvc", "exp", "list", "--name-only").stdout.split()
    scenario = "workers and trial SIGKILLed" if trial_too else "workers SIGKILLed mid-trial"
    failed = int(f"1 trial(s) failed: {victim}" in out)
    record_fault_run(scenario, 4, len(set(names)), failed, len(watch.duplicates()))
    if trial_too:  # nothing to save: the trial is failed, visibly, and the rest run
        assert f"the queue's workers died: {victim} marked failed" in out, out
        assert runner.returncode == 1 and f"1 trial(s) failed: {victim}" in out, out
        assert sorted(names) == sorted(n for n in watch.status if n != victim)
        assert watch.duplicates() == []
        _no_worker_left(project)
        return
    # Its own process outlived the worker and finished; nntune collects what the dead
    # worker could not, so the trial is saved.
    assert f"the queue's workers died: {victim} had finished and was saved" in out, out
    assert runner.returncode == 0, out
    assert set(watch.status.values()) == {"Success"} and len(watch.status) == 4, watch.status
    assert watch.duplicates() == []
    assert sorted(names) == sorted(watch.status)  # every trial has its experiment
    shown = run(project, NNTUNE, "compare", "--format", "csv").stdout
    assert f"{victim}," in shown and "failed" not in shown and "diverged" not in shown
    _no_worker_left(project)


def test_ctrl_c_keeps_the_queue_and_kill_9_loses_nothing(tmp_path: Path) -> None:
    project = baseline_project(tmp_path)
    run(project, NNTUNE, "grid", "-p", "model.units=8,16,24", "-p", "train.learning_rate=0.01")
    watch = QueueWatch(project)

    def running() -> bool:
        watch.poll()
        return "Running" in watch.status.values()

    # Ctrl-C: the running trial finishes, the queued ones stay queued, exit 130.
    first = _start(project, tmp_path / "first.log", "-j", "1")
    try:
        wait_until("a trial runs", running)
        interrupted = next(n for n, s in watch.status.items() if s == "Running")
        first.send_signal(signal.SIGINT)
        first.wait(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    out = (tmp_path / "first.log").read_text()
    assert first.returncode == 130, out
    assert "trial(s) stay queued; resume with `nntune run`" in out

    def settled() -> bool:
        watch.poll()
        return watch.status.get(interrupted) == "Success" and not _workers(project)

    wait_until(f"{interrupted} finishes and the workers exit", settled, seconds=180)
    assert list(watch.status.values()).count("Queued") == 2, watch.status

    # kill -9 of `nntune run` mid-trial; the same command then finishes the queue.
    second = _start(project, tmp_path / "second.log", "-j", "1")
    try:
        wait_until("a trial runs", running)
        os.kill(second.pid, signal.SIGKILL)
        second.wait(timeout=60)
    finally:
        if second.poll() is None:
            second.kill()
    run(project, NNTUNE, "run", "--executor", "dvc", "-j", "1")  # exit 0: nothing failed
    watch.poll()
    names = run(project, "dvc", "exp", "list", "--name-only").stdout.split()
    record_fault_run(
        "Ctrl-C, then kill -9 of nntune run", 3, len(set(names)), 0, len(watch.duplicates())
    )
    assert sorted(watch.status.values()) == ["Success"] * 3, watch.status
    assert watch.duplicates() == []
    assert sorted(names) == sorted(watch.status)
    _no_worker_left(project)
