"""End-to-end adaptive search in a scaffolded project, on DVC's real queue: a TPE study
ends with one experiment per trial; an ASHA driver killed with SIGKILL mid-study and started
again ends with exactly its trials, no duplicate names, and a promoted experiment that
continues its parent's model and that `dvc repro` rebuilds from its params alone."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from project import NNTUNE, baseline_project, project_env, record_fault_run, run

pytestmark = pytest.mark.e2e

SPACE = "model.units: [8, 16]\ntrain.learning_rate: {low: 0.001, high: 0.1, log: true}\n"


def _experiments(project: Path) -> list[str]:
    listed = run(project, "dvc", "exp", "list", "--name-only").stdout.split()
    return sorted(listed)


def _study(project: Path, name: str) -> optuna.Study:
    journal = project / ".nntune" / "studies" / f"{name}.journal"
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))
    )
    return optuna.load_study(study_name=name, storage=storage)


def _model_md5s(project: Path, names: list[str]) -> dict[str, str]:
    from nntune import experiments

    with experiments.open_repo(project) as repo:
        commits = experiments.experiment_commits(repo, experiments.baseline_rev(repo))
        return {
            n: experiments.output_md5(repo, commits[n], "train", "models/model.keras")
            for n in names
        }


def test_tpe_study_runs_one_experiment_per_trial_and_gc_removes_the_losers(tmp_path: Path) -> None:
    project = baseline_project(tmp_path, {"space.yaml": SPACE})
    cmd = [NNTUNE, "search", "--method", "tpe", "-n", "6", "-j", "2", "--max-epochs", "2"]
    result = run(project, *cmd, "-s", "space.yaml")
    # One experiment per trial, and the study's baseline (params.yaml at its budget).
    assert _experiments(project) == ["tpe-baseline", *[f"tpe-t{n}" for n in range(6)]]
    study = _study(project, "tpe")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 6
    shown = json.loads(run(project, NNTUNE, "compare", "--format", "json").stdout)
    assert len([r for r in shown["experiments"] if r["status"] == "ok"]) == 7
    ranked = [r["experiment"] for r in shown["experiments"]]
    assert next(n for n in ranked if n != "tpe-baseline") == f"tpe-t{study.best_trial.number}"
    assert f"best: {shown['best']} " in result.stdout  # the search and compare agree

    # gc: keep the best 2 and the worst, promoted to a branch; the other 4 go, with the
    # cache entries only they used (their models), while the kept models stay.
    models = _model_md5s(project, ranked)
    run(project, "dvc", "exp", "branch", ranked[-1], "tuned")
    dry = run(project, NNTUNE, "gc", "--keep", "2", "--dry-run")
    assert f"would remove 4: {', '.join(ranked[2:6])}" in " ".join(dry.stdout.split())
    assert _experiments(project) == sorted(ranked)
    # A cache outside the project may be shared: gc says so and asks, even with --yes.
    shared = tmp_path / "shared-cache"
    shutil.move(project / ".dvc" / "cache", shared)
    run(project, "dvc", "cache", "dir", str(shared))
    refused = subprocess.run(
        [NNTUNE, "gc", "--keep", "2", "--yes"],
        cwd=project,
        env=project_env(),
        input="n\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"the DVC cache {shared} lies outside this project" in refused.stdout
    assert "nothing removed" in refused.stdout
    assert _experiments(project) == sorted(ranked)
    other = tmp_path / "other"  # the project that shares it: named, so its objects stay
    other.mkdir()
    run(other, "git", "init", "--quiet")
    run(other, "dvc", "init", "--quiet")
    run(project, NNTUNE, "gc", "--keep", "2", "--yes", "--project", str(other))
    assert _experiments(project) == sorted([*ranked[:2], ranked[-1]])
    cache = shared / "files" / "md5"
    for name, md5 in models.items():
        kept = name in (*ranked[:2], ranked[-1])
        assert (cache / md5[:2] / md5[2:]).is_file() == kept, name


def test_a_cross_validated_search_ends_with_the_average_of_its_best_where_it_scores_better(
    tmp_path: Path,
) -> None:
    project = baseline_project(tmp_path, {"space.yaml": SPACE})
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["data"]["cv_folds"] = [0, 1]
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    run(project, "git", "commit", "-qam", "two folds")
    cmd = [NNTUNE, "search", "-n", "2", "-j", "2", "--max-epochs", "2", "--ensemble", "3"]
    out = " ".join(run(project, *cmd, "-s", "space.yaml").stdout.split())
    # The baseline and 2 trials, all cross-validated: the average of the 3 is scored on
    # their out-of-fold predictions against the best, and run only if it wins.
    verdict = re.search(r"the average of the best 3 has log loss (\S+) against (\S+)", out)
    assert verdict, out
    together, best = float(verdict.group(1)), float(verdict.group(2))
    shown = json.loads(run(project, NNTUNE, "compare", "--format", "json").stdout)
    ensembles = [e["experiment"] for e in shown["ensembles"]]
    if together < best:
        assert len(ensembles) == 1 and f"the search's result is the ensemble {ensembles[0]}" in out
    else:
        assert ensembles == [] and f"the search's result is its best trial, {shown['best']}" in out


class QueueWatch:
    """Every queue entry seen, by its DVC task id (the stash commit), from polling
    ``dvc queue status``: a name queued twice shows up under two task ids, even after the
    first run finished (refs cannot show that: one name, one ref)."""

    def __init__(self, project: Path) -> None:
        self.project = project
        self.tasks: dict[str, str] = {}  # task id -> name
        self.status: dict[str, str] = {}  # name -> last status seen

    def poll(self) -> None:
        listed = run(self.project, "dvc", "queue", "status", check=False).stdout
        for line in listed.splitlines():
            parts = line.split()
            if len(parts) >= 3 and re.fullmatch(r"[0-9a-f]{7}", parts[0]):
                self.tasks[parts[0]] = parts[1]
                self.status[parts[1]] = parts[-1]

    def duplicates(self) -> list[str]:
        names = list(self.tasks.values())
        return sorted({n for n in names if names.count(n) > 1})


def _first_rung_done(project: Path) -> int:
    return sum(n.endswith("-e1") for n in _experiments(project))


# When the driver is killed: (what, until when to wait). Each is followed by a seeded random
# extra delay, so the kill lands at a different point of the driver's pass each time.
KILLS = [
    ("after the first experiment", lambda p, w: _first_rung_done(p) >= 1),
    ("mid-rung", lambda p, w: _first_rung_done(p) >= 2),
    ("during a promotion", lambda p, w: any(n.endswith("-e3") for n in w.status)),
]


def test_asha_driver_killed_at_chosen_moments_and_restarted_runs_each_trial_once(
    tmp_path: Path,
) -> None:
    project = baseline_project(tmp_path, {"space.yaml": SPACE})
    cmd = [NNTUNE, "search", "--method", "asha", "-n", "4", "-j", "2", "-s", "space.yaml"]
    cmd += ["--min-epochs", "1", "--max-epochs", "3", "--eta", "3"]
    watch = QueueWatch(project)
    jitter = random.Random(22)
    killed = []
    for number, (moment, reached) in enumerate(KILLS):
        # A file, not a pipe: DVC's queue workers inherit the driver's stderr and outlive it.
        log = tmp_path / f"driver-{number}.log"
        with log.open("w") as stderr:
            driver = subprocess.Popen(
                cmd, cwd=project, env=project_env(), stdout=subprocess.DEVNULL, stderr=stderr
            )
        try:
            deadline = time.monotonic() + 300
            while not reached(project, watch) and driver.poll() is None:
                assert time.monotonic() < deadline, f"never reached {moment}"
                watch.poll()
                time.sleep(0.5)
            time.sleep(jitter.uniform(0.0, 2.0))
            if driver.poll() is None:
                os.kill(driver.pid, signal.SIGKILL)
                killed.append(moment)
        finally:
            if driver.poll() is None:
                driver.kill()
            driver.wait()
        assert driver.returncode in (0, -signal.SIGKILL), log.read_text()
        watch.poll()
    assert killed[:2] == [m for m, _ in KILLS[:2]]  # the study outlived the first two kills

    again = run(project, *cmd)  # the same command finishes the study, exit 0
    watch.poll()
    names = _experiments(project)
    record_fault_run("search driver kill -9 x3", 5, len(set(names)), 0, len(watch.duplicates()))
    assert watch.duplicates() == [], watch.tasks
    first_rung = [n for n in names if n.endswith("-e1")]
    assert first_rung == [f"asha-t{n}-e1" for n in range(4)]
    promoted = [n for n in names if n.endswith("-e3")]
    assert len(promoted) == 1  # floor(4 / eta) of the first rung
    assert sorted(names) == sorted(set(watch.tasks.values()))  # every queued name finished
    assert "epochs spent: 6, against 12" in again.stdout
    study = _study(project, "asha")
    assert len(study.trials) == 4
    assert {t.state.name for t in study.trials} == {"COMPLETE", "PRUNED"}

    # The promoted trial continues its parent: lineage in params, history from epoch 1 on.
    child = promoted[0]
    parent = child.replace("-e3", "-e1")
    run(project, "dvc", "exp", "apply", child)
    params = (project / "params.yaml").read_text()
    assert f"experiment: {parent}" in params and "epochs: 1" in params
    recorded = json.loads((project / "metrics/train.json").read_text())
    assert recorded["epochs_trained"] == 3 and recorded["epochs_run"] == 2
    curve = pd.read_csv(project / "dvclive/plots/metrics/eval/loss.tsv", sep="\t")
    assert curve["step"].tolist() == [1, 2]
    lock = (project / "dvc.lock").read_text()
    assert "path: models/init" in lock
    # dvc repro rebuilds it from its params alone (the parent's model comes out of the cache
    # by md5), with the same metrics: the warm start is exact.
    run(project, "dvc", "repro", "--force", "--single-item", "warmstart")
    run(project, "dvc", "repro", "--force", "--single-item", "train")
    rebuilt = json.loads((project / "metrics/train.json").read_text())
    assert rebuilt["val_loss"] == recorded["val_loss"]
    assert rebuilt["train_loss"] == recorded["train_loss"]
