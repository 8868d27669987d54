"""End-to-end adaptive search in a scaffolded project, on DVC's real queue: a TPE study
ends with one experiment per trial; an ASHA driver killed with SIGKILL mid-study and started
again ends with exactly its trials, no duplicate names, and a promoted experiment that
continues its parent's model and that `dvc repro` rebuilds from its params alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from project import NNTUNE, project_env, run, scaffold

pytestmark = pytest.mark.e2e

SPACE = "model.units: [8, 16]\ntrain.learning_rate: {low: 0.001, high: 0.1, log: true}\n"


def _project(tmp_path: Path) -> Path:
    project = scaffold(tmp_path / "project")
    (project / "space.yaml").write_text(SPACE)
    run(project, "dvc", "repro")
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "--quiet", "-m", "baseline")
    return project


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
    project = _project(tmp_path)
    cmd = [NNTUNE, "search", "--method", "tpe", "-n", "6", "-j", "2", "--max-epochs", "2"]
    result = run(project, *cmd, "-s", "space.yaml")
    assert "best: tpe-t" in result.stdout
    assert _experiments(project) == [f"tpe-t{n}" for n in range(6)]
    study = _study(project, "tpe")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 6
    shown = json.loads(run(project, NNTUNE, "compare", "--format", "json").stdout)
    assert len([r for r in shown["experiments"] if r["status"] == "ok"]) == 6
    assert shown["best"] == f"tpe-t{study.best_trial.number}"

    # gc: keep the best 2 and the worst, promoted to a branch; the other 3 go, with the
    # cache entries only they used (their models), while the kept models stay.
    ranked = [r["experiment"] for r in shown["experiments"]]
    models = _model_md5s(project, ranked)
    run(project, "dvc", "exp", "branch", ranked[-1], "tuned")
    dry = run(project, NNTUNE, "gc", "--keep", "2", "--dry-run")
    assert f"would remove 3: {', '.join(ranked[2:5])}" in " ".join(dry.stdout.split())
    assert _experiments(project) == sorted(ranked)
    run(project, NNTUNE, "gc", "--keep", "2", "--yes")
    assert _experiments(project) == sorted([*ranked[:2], ranked[-1]])
    cache = project / ".dvc" / "cache" / "files" / "md5"
    for name, md5 in models.items():
        kept = name in (*ranked[:2], ranked[-1])
        assert (cache / md5[:2] / md5[2:]).is_file() == kept, name


def test_asha_driver_killed_and_restarted_finishes_the_study(tmp_path: Path) -> None:
    project = _project(tmp_path)
    cmd = [NNTUNE, "search", "--method", "asha", "-n", "4", "-j", "2", "-s", "space.yaml"]
    cmd += ["--min-epochs", "1", "--max-epochs", "3", "--eta", "3"]
    driver = subprocess.Popen(
        cmd, cwd=project, env=project_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while not _experiments(project):  # kill it once a first experiment has finished
        assert time.monotonic() < deadline and driver.poll() is None, "no experiment finished"
        time.sleep(1)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()

    again = run(project, *cmd)  # the same command continues the study
    names = _experiments(project)
    assert len(names) == len(set(names))
    first_rung = [n for n in names if n.endswith("-e1")]
    assert first_rung == [f"asha-t{n}-e1" for n in range(4)]
    promoted = [n for n in names if n.endswith("-e3")]
    assert len(promoted) == 1  # floor(4 / eta) of the first rung
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
