"""End-to-end: the tuning loop in a scaffolded project. `nntune grid` queues a grid as DVC
experiments, `nntune run -j 2` runs DVC's queue with one trial made to fail, `compare`
ranks the rest and sets the failure apart, `best --branch` promotes the winner."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

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
    assert "failed: broken; last lines of `nntune logs broken`" in result.stdout
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
    # One offline page: the top 3's table and learning curves, parallel coordinates, the
    # objective against each varied parameter, and (4 trials are too few) why importance is
    # missing; rendered for real by a browser.
    written = run(project, NNTUNE, "plots", "--top", "3")
    assert "5 charts, 3 experiments" in written.stdout
    assert "left out of the page" not in written.stderr  # every trial's curves reached git
    page = project / "plots" / "experiments.html"
    dom = chromium_dom(page)
    svgs = re.findall(r"<svg.*?</svg>", dom, flags=re.DOTALL)
    assert len(svgs) == 5
    assert all("<path" in svg or "<line" in svg for svg in svgs)  # drawn marks, not empty
    titles = ("Loss", "Accuracy", "one line per experiment", "val_loss (min) vs model.units")
    assert all(title in dom for title in titles)
    headings = re.findall(r"<h2>(.*?)</h2>", dom)
    assert [h for h in headings if h != "Warnings"] == [
        "Top experiments",
        "Learning curves",
        "Parameter importance",
        "Parallel coordinates",
        "Objective against each parameter",
    ]
    assert "Too few experiments to tell which parameters matter: 4 finished" in dom
    assert "error" not in dom.lower()
    layout = _browser_layout(page, width=1400)
    assert layout["overflowX"] == "auto"
    assert layout["lastColumnRight"] <= layout["width"], layout  # every column reachable
    assert len(layout["charts"]) == 5 and all(w > 200 and h > 150 for w, h in layout["charts"])
    shot = tmp_path / "plots-1400.png"
    _chromium(page, "--window-size=1400,2400", f"--screenshot={shot}")
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 50_000
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


# Measured in the page once loaded: the table box's overflow, the right edge of the last
# column once the box is scrolled all the way right, and each chart's size.
LAYOUT_PROBE = """<script>
addEventListener("load", () => {
  const box = document.querySelector(".table-box");
  box.scrollLeft = box.scrollWidth;
  const last = box.querySelector("tr > :last-child").getBoundingClientRect();
  const charts = [...document.querySelectorAll("figure.chart svg")].map((svg) => {
    const size = svg.getBoundingClientRect();
    return [Math.round(size.width), Math.round(size.height)];
  });
  document.body.dataset.layout = JSON.stringify({
    width: innerWidth, lastColumnRight: last.right, charts: charts,
    overflowX: getComputedStyle(box).overflowX,
  });
});
</script>"""


def _browser_layout(page: Path, width: int) -> dict[str, Any]:
    """How ``page`` lays out in headless Chromium ``width`` pixels wide (LAYOUT_PROBE)."""
    probe = page.with_name("layout-probe.html")
    probe.write_text(page.read_text().replace("</body>", f"{LAYOUT_PROBE}</body>"))
    dom = _chromium(probe, f"--window-size={width},900", "--virtual-time-budget=5000", "--dump-dom")
    found = re.search(r'data-layout="([^"]*)"', dom)
    assert found, "the layout probe did not run"
    measured: dict[str, Any] = json.loads(html.unescape(found.group(1)))
    return measured


def _chromium(page: Path, *flags: str) -> str:
    """Headless Chromium on ``page`` with ``flags`` (chromium_dom skipped the test if it is
    missing); its stdout."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser is not None
    quiet = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars"]
    quiet += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]
    profile = f"--user-data-dir={page.parent / '.chromium-profile'}"
    cmd = [browser, *quiet, profile, *flags, page.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout


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
