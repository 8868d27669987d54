"""End-to-end: `nntune init` around a generated CSV with numeric and categorical columns and
missing values; `dvc repro` stops at validate under `missing: error` and trains under
`missing: impute`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO
from project import NNTUNE, run

pytestmark = pytest.mark.e2e


def customers(n_rows: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    plan = rng.choice(["basic", "plus", "pro"], size=n_rows)
    tenure = rng.integers(1, 60, size=n_rows).astype("float64")
    spend = rng.normal(50, 15, size=n_rows).round(2)
    churn = np.where((plan == "basic") & (tenure < 20) | (spend < 35), "yes", "no")
    frame = pd.DataFrame(
        {"id": np.arange(n_rows), "plan": plan, "tenure": tenure, "spend": spend, "churn": churn}
    )
    frame.loc[[5, 17, 42], "tenure"] = np.nan
    frame.loc[[8, 99], "plan"] = None
    return frame


def set_param(project: Path, key: str, value: str) -> None:
    params = project / "params.yaml"
    lines = params.read_text().splitlines()
    lines = [
        f"{line[: line.index(':') + 1]} {value}" if line.strip().startswith(f"{key}:") else line
        for line in lines
    ]
    params.write_text("\n".join(lines) + "\n")


def test_init_then_repro_on_your_own_csv(tmp_path: Path) -> None:
    source = tmp_path / "incoming" / "customers.csv"
    source.parent.mkdir()
    customers().to_csv(source, index=False)
    before = source.read_bytes()

    made = run(tmp_path, NNTUNE, "init", "shop", "--data", str(source), "--target", "churn")
    assert "task: binary (inferred from the target column" in made.stdout
    project = tmp_path / "shop"
    tracked = run(project, "git", "ls-files").stdout.splitlines()
    assert "data/customers.csv.dvc" in tracked and "data/customers.csv" not in tracked
    assert {"dvc.yaml", "params.yaml", "stages/train.py", "src/nntune/data.py"} <= set(tracked)
    assert "data/customers.schema.yaml" in tracked
    assert run(project, "git", "status", "--porcelain").stdout == ""
    assert source.read_bytes() == before  # the raw file is never modified

    refused = run(
        tmp_path, NNTUNE, "init", "shop", "--data", str(source), "--target", "churn", check=False
    )
    assert refused.returncode == 2 and "refusing to overwrite" in refused.stderr

    # The id column would leak row order; exclude it, and keep training short.
    set_param(project, "exclude", "[id]")
    set_param(project, "max_epochs", "5")
    failed = run(project, "dvc", "repro", check=False)
    assert failed.returncode != 0
    assert "failed to reproduce 'validate'" in failed.stderr
    report = json.loads((project / "reports" / "validation.json").read_text())
    missing = {f["column"]: f for f in report["failures"]}
    assert missing["tenure"]["check"] == "no missing values (data.missing: error)"
    assert [e["row"] for e in missing["tenure"]["examples"]] == [5, 17, 42]
    assert [e["row"] for e in missing["plan"]["examples"]] == [8, 99]
    assert not (project / "data" / "prepared").exists()

    set_param(project, "missing", "impute")
    run(project, "dvc", "repro")
    meta = json.loads((project / "data" / "prepared" / "meta.json").read_text())
    assert meta["features"] == ["tenure", "spend", "plan_basic", "plan_plus", "plan_pro"]
    evaluation = json.loads((project / "metrics" / "evaluate.json").read_text())
    assert evaluation["test_accuracy"] > 0.6
    assert set(evaluation) == {"test_accuracy", "test_f1_macro", "test_log_loss", "test_roc_auc"}
    assert source.read_bytes() == before


def test_init_from_an_installed_wheel(tmp_path: Path) -> None:
    """`nntune init` works from a regular (non-editable) install: the wheel carries the
    pipeline files, and they are exactly the checkout's."""
    source_tree = tmp_path / "checkout"
    files = run(REPO, "git", "ls-files", "--cached", "--others", "--exclude-standard").stdout
    for name in files.splitlines():
        if (REPO / name).is_file():
            (source_tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source_tree / name)
    wheels = tmp_path / "wheels"
    run(
        source_tree,
        sys.executable,
        *("-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "--quiet"),
        *("-w", str(wheels)),
    )
    (wheel,) = wheels.glob("nntune-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    packaged = site / "nntune" / "pipeline"
    for name in ("dvc.yaml", "params.yaml", "grid.yaml", ".dvcignore", "stages/train.py"):
        assert (packaged / name).read_bytes() == (REPO / name).read_bytes(), name
    assert sorted(p.name for p in (packaged / "stages").iterdir()) == sorted(
        p.name for p in (REPO / "stages").glob("*.py")
    )

    table = tmp_path / "customers.csv"
    customers(120).to_csv(table, index=False)
    command = (
        "import sys, nntune; from nntune.cli import app; "
        "print('library:', nntune.__file__, file=sys.stderr); app()"
    )
    env = {**os.environ, "PYTHONPATH": str(site), "DVC_NO_ANALYTICS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    made = subprocess.run(
        [sys.executable, "-c", command, "init", "shop", "--data", str(table), "--target", "churn"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stderr
    assert f"library: {site / 'nntune' / '__init__.py'}" in made.stderr
    project = tmp_path / "shop"
    assert (project / "dvc.yaml").read_bytes() == (REPO / "dvc.yaml").read_bytes()
    assert (project / "stages" / "train.py").read_bytes() == (REPO / "stages/train.py").read_bytes()
    assert not (project / "src" / "nntune" / "pipeline").exists()  # root files are the copy
    assert (project / "src" / "nntune" / "data.py").read_bytes() == (
        REPO / "src" / "nntune" / "data.py"
    ).read_bytes()
