"""End-to-end: the tuning loop in a scaffolded project. `nntune grid` queues a grid as DVC
experiments, `nntune run -j 2` runs DVC's queue with one trial made to fail, `compare`
ranks the rest and sets the failure apart, `best --branch` promotes the winner."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from project import NNTUNE, chromium_dom, run, scaffold

pytestmark = pytest.mark.e2e

GRID = ["-p", "model.units=8,16", "-p", "train.learning_rate=0.003,0.03"]


def test_grid_run_compare_best(tmp_path: Path) -> None:
    project = scaffold(tmp_path / "project")
    run(project, "dvc", "repro")
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "--quiet", "-m", "baseline")

    queued = run(project, NNTUNE, "grid", *GRID)
    assert "queued 4 experiment(s)" in queued.stdout
    # One trial fails on purpose: its data file does not exist.
    run(project, "dvc", "exp", "run", "--queue", "-n", "broken", "-S", "data.source=data/no.csv")

    # Two workers, each pinned as if it owned a GPU (there are none here: the trials fall back
    # to the CPU under runtime.device auto, and record what they saw).
    result = run(project, NNTUNE, "run", "--gpus", "0,1", check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "one worker per GPU: CUDA_VISIBLE_DEVICES = 0, 1" in result.stdout
    assert "1 trial(s) failed: broken" in result.stderr
    assert "failed: broken; last lines of `dvc queue logs broken`" in result.stdout
    assert "best:" in result.stdout

    shown = json.loads(run(project, NNTUNE, "compare", "--format", "json").stdout)
    by_status: dict[str, list[dict]] = {}  # type: ignore[type-arg]
    for row in shown["experiments"]:
        by_status.setdefault(row["status"], []).append(row)
    ranked = by_status["ok"]
    assert sorted(r["experiment"] for r in ranked) == [
        "u16-lr0.003",
        "u16-lr0.03",
        "u8-lr0.003",
        "u8-lr0.03",
    ]
    losses = [r["val_loss"] for r in ranked]
    assert losses == sorted(losses)  # val_loss: lower is better
    assert [r["rank"] for r in ranked] == [1, 2, 3, 4]
    assert shown["best"] == ranked[0]["experiment"]
    assert [r["experiment"] for r in by_status["failed"]] == ["broken"]
    assert by_status["failed"][0]["val_loss"] is None  # not the baseline's number
    assert {"model.units", "train.learning_rate"} <= set(ranked[0])
    seen = _recorded(project, "cuda_visible_devices")
    pinned = {seen[r["experiment"]] for r in ranked}
    assert pinned <= {"0", "1"} and pinned, seen  # every trial saw its worker's one GPU

    # Same grid again: everything already ran, nothing is queued.
    again = run(project, NNTUNE, "grid", *GRID)
    assert "4 point(s) skipped" in again.stdout
    assert "queued" not in again.stdout.replace("points to queue", "")

    best = run(project, NNTUNE, "best", "--branch", "tuned")
    assert f"best: {shown['best']}" in best.stdout
    branches = run(project, "git", "branch", "--list", "tuned").stdout
    assert "tuned" in branches
    # One offline page with the learning curves of the top 3 and the objective against each
    # varied parameter, rendered for real by a browser.
    written = run(project, NNTUNE, "plots", "--top", "3")
    assert "4 charts, 3 experiments" in written.stdout
    assert "left out of the page" not in written.stderr  # every trial's curves reached git
    dom = chromium_dom(project / "plots" / "experiments.html")
    svgs = re.findall(r"<svg.*?</svg>", dom, flags=re.DOTALL)
    assert len(svgs) == 4
    assert all("<path" in svg or "<line" in svg for svg in svgs)  # drawn marks, not empty
    for title in ("Loss", "Accuracy", "val_loss (min) vs model.units"):
        assert title in dom
    assert "error" not in dom.lower()
    assert shown["best"] in dom

    # Plain DVC sees the same experiments.
    assert f'"{shown["best"]}"' in run(project, "dvc", "exp", "show", "--json").stdout

    # --apply brings the winner's params into the workspace.
    run(project, NNTUNE, "best", "--apply")
    applied = yaml.safe_load((project / "params.yaml").read_text())
    winner = ranked[0]
    assert applied["model"]["units"] == winner["model.units"]
    assert applied["train"]["learning_rate"] == winner["train.learning_rate"]
    run(project, "git", "checkout", "--", ".")

    # --force replaces the experiments that already ran instead of skipping them.
    forced = run(project, NNTUNE, "grid", *GRID, "--force")
    assert "queued 4 experiment(s)" in forced.stdout
    assert run(project, "dvc", "queue", "status").stdout.count("Queued") == 4
    after = json.loads(run(project, NNTUNE, "compare", "--format", "json").stdout)
    assert [r["experiment"] for r in after["experiments"]] == ["broken"]  # old four removed
    assert len(after["pending"]) == 4
    run(project, "dvc", "queue", "remove", "--queued")


def _recorded(project: Path, key: str) -> dict[str, object]:
    """{experiment: value of `key` in its reports/train_run.json} from `dvc exp show`."""
    found = {}
    for baseline in json.loads(run(project, "dvc", "exp", "show", "--json").stdout):
        for exp_range in baseline.get("experiments") or []:
            for rev in exp_range["revs"]:
                metrics = ((rev.get("data") or {}).get("metrics") or {}).get(
                    "reports/train_run.json"
                )
                if rev.get("name") and metrics:
                    found[rev["name"]] = metrics["data"].get(key)
    return found
