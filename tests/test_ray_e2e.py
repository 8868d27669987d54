"""``nntune run --backend ray`` on a real 2-node Ray cluster (one machine, 1 CPU per node).

Ray advertises the host's routable address and listens on every interface even when told
127.0.0.1, so every Ray process here runs inside ``unshare -n -p -f --mount-proc``: a
network namespace with only loopback (no traffic can leave the machine) and a PID namespace
that reaps every Ray process when the scenario ends (tests/ray_cluster.py).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from project import NNTUNE, project_env, remote_experiments, run, shared_project

from nntune.experiments.ensembles import out_of_fold_files

UNSHARE = ["unshare", "-n", "-p", "-f", "--mount-proc"]
KERAS_STAGES = {"train", "evaluate"}
SCENARIO = Path(__file__).with_name("ray_cluster.py")


def require_isolation() -> None:
    """Skip (with the reason) where a private network namespace is impossible; fail instead
    where NNTUNE_REQUIRE_UNSHARE is set, as on CI, so CI can never skip these tests."""
    reason = None
    if importlib.util.find_spec("ray") is None:
        reason = "Ray is not installed (pip install 'nntune[ray]')"
    elif shutil.which("unshare") is None:
        reason = "unshare (util-linux) is not installed"
    elif os.geteuid() != 0:
        reason = "unshare -n needs root"
    else:
        probe = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True, check=False)
        if probe.returncode != 0:
            reason = f"unshare -n -p failed here: {probe.stderr.strip()}"
    if reason is None:
        return
    if os.environ.get("NNTUNE_REQUIRE_UNSHARE"):
        pytest.fail(f"Ray tests must run here (NNTUNE_REQUIRE_UNSHARE) but: {reason}")
    pytest.skip(f"{reason}; Ray tests run only inside a private network namespace")


def on_cluster(
    project: Path, tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run tests/ray_cluster.py (``args``: ``--kill`` and/or ``-- NNTUNE ARGS``) in its own
    namespaces on ``project``; its report, whose ``returncode`` is nntune's."""
    report = tmp_path / "ray.json"
    subprocess.run(
        [*UNSHARE, sys.executable, str(SCENARIO), str(project), str(tmp_path / "c"), str(report),
         *args],
        env=env or project_env(), capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(report.read_text())
    return result


def test_scenario_refuses_to_run_outside_a_namespace(tmp_path: Path) -> None:
    """The scenario starts Ray only as PID 1 of its own namespaces."""
    out = subprocess.run(
        [sys.executable, str(SCENARIO), str(tmp_path), str(tmp_path), str(tmp_path / "o.json")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode != 0 and "unshare" in out.stderr
    assert not (tmp_path / "o.json").exists()


@pytest.mark.e2e
def test_ray_cluster_runs_the_grid_and_survives_a_lost_node(tmp_path: Path) -> None:
    require_isolation()
    project, remote = shared_project(tmp_path, repro=True, max_epochs=2)
    run(project, NNTUNE, "grid", "-p", "train.learning_rate=0.003,0.01", "-p", "model.units=8,16")
    names = {"lr0.003-u8", "lr0.003-u16", "lr0.01-u8", "lr0.01-u16"}
    profile = tmp_path / "stages.jsonl"  # every stage that ran to its end, on either node
    env = {**project_env(), "NNTUNE_PROFILE": str(profile)}
    result = on_cluster(project, tmp_path, "--kill", env=env)
    assert result["returncode"] == 0, result["stdout"] + result["stderr"]
    assert result["interfaces"] == ["lo"]  # nothing but loopback in the namespace
    # Each Ray worker's warm runner forked the trials' Keras stages: no stage imported
    # TensorFlow itself. Every trial trained, but the baseline's point (lr0.01-u16: DVC
    # runs no stage for it) and maybe the lost one (its retry may restore a train stage
    # that had ended from DVC's run cache, which both nodes share here).
    stages = [json.loads(line) for line in profile.read_text().splitlines()]
    keras_stages = [s for s in stages if s["trial"] in names and s["stage"] in KERAS_STAGES]
    trained = {s["trial"] for s in keras_stages if s["stage"] == "train"}
    lost = {n for n in names if any(f"--name {n} " in c for c in result["lost_node_commands"])}
    assert len(lost) == 1 and names - {"lr0.01-u16"} - lost <= trained
    assert all(s["warm"] for s in keras_stages), keras_stages
    # The worker node was lost while it ran a trial, and none of that trial's processes
    # (`nntune trial`, `dvc exp run`, the stage) outlived it to race the retry.
    assert result["killed_at_s"] is not None
    assert any(" trial " in command for command in result["lost_node_commands"])
    assert result["survivors"] == []
    assert result["lost_warm_runners"] >= 2  # per Ray worker there, one per flavour
    assert result["lingering_warm_runners"] == []
    assert "4/4" in result["stdout"] and "failed 0" in result["stdout"]

    # All four experiments are on the git remote, once each, and none is queued here.
    assert set(remote_experiments(remote)) == names
    assert "No experiment tasks in the queue" in run(project, "dvc", "queue", "status").stdout

    # A fresh clone sees every trial with its metrics.
    fresh = tmp_path / "fresh"
    run(tmp_path, "git", "clone", "--quiet", str(remote), str(fresh))
    shown = run(fresh, NNTUNE, "compare", "--remote", "origin", "-f", "json")
    rows = json.loads(shown.stdout)["experiments"]
    assert {r["experiment"] for r in rows} == names
    assert all(r["status"] == "ok" and math.isfinite(r["val_loss"]) for r in rows)
    assert {r["epochs_trained"] for r in rows} == {2}


@pytest.mark.e2e
def test_asha_search_on_ray_promotes_through_the_remotes(tmp_path: Path) -> None:
    """A promoted trial on another node continues its parent's model, which that node
    gets from the DVC remote (the parent ran elsewhere)."""
    require_isolation()
    project, remote = shared_project(tmp_path, repro=True)
    # The space file stays outside the project: a queued experiment must change params only.
    space = tmp_path / "space.yaml"
    space.write_text("model.units: [8, 16]\ntrain.learning_rate: [0.003, 0.01]\n")
    search = ["search", "--method", "asha", "-n", "4", "-j", "2", "--min-epochs", "1",
              "--max-epochs", "3", "--eta", "3", "-s", str(space)]  # fmt: skip
    result = on_cluster(project, tmp_path, "--", *search)
    assert result["returncode"] == 0, result["stdout"] + result["stderr"]
    assert "epochs spent: 6, against 12" in result["stdout"]

    first_rung = {f"asha-t{n}-e1" for n in range(4)}
    on_remote = set(remote_experiments(remote))
    promoted = on_remote - first_rung
    assert first_rung <= on_remote and len(promoted) == 1  # floor(4 / eta) promoted
    child = promoted.pop()
    parent = child.replace("-e3", "-e1")
    # Pulled back here: the promoted experiment names its parent and trained 2 more epochs.
    run(project, "dvc", "exp", "apply", child)
    params = (project / "params.yaml").read_text()
    assert f"experiment: {parent}" in params
    recorded = json.loads((project / "metrics/train.json").read_text())
    assert recorded["epochs_trained"] == 3 and recorded["epochs_run"] == 2


@pytest.mark.e2e
def test_cross_validated_search_on_ray_scores_the_average_on_fetched_folds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trials ran on other nodes, which pushed their out-of-fold predictions to the DVC
    remote with their models; the search's closing choice reads them from there (or from
    the models' fetch) and scores the average of its best on them. It fails when the nodes
    push the experiments without their outputs (``dvc exp push --no-cache``)."""
    require_isolation()
    project, remote = shared_project(tmp_path, max_epochs=2)
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["data"]["cv_folds"] = [0, 1]
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    run(project, "git", "commit", "--quiet", "-am", "two folds")
    run(project, "git", "push", "--quiet")
    space = tmp_path / "space.yaml"
    space.write_text("model.units: [8, 16]\ntrain.learning_rate: [0.003, 0.01]\n")
    search = ["search", "-n", "2", "-j", "2", "--max-epochs", "2", "--ensemble", "3",
              "-s", str(space)]  # fmt: skip
    result = on_cluster(project, tmp_path, "--", *search)
    out = " ".join(result["stdout"].split())
    assert result["returncode"] == 0, result["stdout"] + result["stderr"]
    trials = set(remote_experiments(remote))
    assert trials == {"tpe-baseline", "tpe-t0", "tpe-t1"}  # run on the cluster, pushed there
    # All three scored on their folds' held-out rows, so their fold files reached here.
    verdict = re.search(r"the average of the best 3 has log loss (\S+) against (\S+)", out)
    assert verdict, out
    monkeypatch.chdir(project)  # DVC in-process, as the CLI runs it
    for name in trials:  # each fold of each a Parquet file, readable from here
        assert all(data[:4] == b"PAR1" for data in out_of_fold_files(project, name, 2))
