"""End-to-end: `nntune init` around a generated CSV with numeric and categorical columns and
missing values; `dvc repro` stops at validate under `missing: error` and trains under
`missing: impute`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
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
