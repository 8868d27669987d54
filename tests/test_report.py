"""`nntune plots`' reading of `dvc plots diff --json`: what DVC could not read is named,
never silently dropped."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from nntune.errors import NntuneError
from nntune.tuning import report


def curve(name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    content = {"encoding": {"x": {"field": "step"}}, "data": {"values": rows}, "title": name}
    return {"type": "vega", "revs": sorted({r["rev"] for r in rows}), "content": content}


def missing(name: str, rev: str, source: str) -> dict[str, Any]:
    msg = f"[Errno 2] No such file or directory: '{source}'"
    return {"name": name, "rev": rev, "source": source, "type": "FileNotFoundError", "msg": msg}


def fake_dvc(monkeypatch: pytest.MonkeyPatch, stdout: str, code: int = 0, err: str = "") -> None:
    def run(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        assert cmd[:4] == ["dvc", "plots", "diff", "--json"]
        return subprocess.CompletedProcess(cmd, code, stdout, err)

    monkeypatch.setattr(report.subprocess, "run", run)


TRAIN = "dvclive/plots/metrics/train/loss.tsv"
PRETRAIN = "dvclive_pretrain/plots/metrics/train/loss.tsv"


def test_a_curve_one_revision_lacks_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    shown = {
        "data": {
            "Loss": [curve("Loss", [{"rev": "u4", "step": 0, "loss": 1.0, "filename": TRAIN}])],
            "Confusion matrix (test)": [{"type": "vega", "content": {"data": {"values": []}}}],
        },
        "errors": [
            missing("Loss", "u8", TRAIN),
            # Pretraining off in both: no curve to miss. The confusion matrix: no curve.
            missing("Reconstruction loss (pretrain)", "u4", PRETRAIN),
            missing("Reconstruction loss (pretrain)", "u8", PRETRAIN),
            missing("Confusion matrix (test)", "u8", "reports/predictions.csv"),
        ],
    }
    fake_dvc(monkeypatch, json.dumps(shown))
    curves = report.learning_curves(".", ["u4", "u8"])
    assert [spec["title"] for spec in curves.specs] == ["Loss"]
    assert curves.missing == [f"u8: {TRAIN} not found"]


def test_with_no_curve_drawn_every_error_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    errors = [missing("Loss", rev, path) for rev in ("u4", "u8") for path in (TRAIN, PRETRAIN)]
    errors.append({"rev": "u8", "type": "SCMError", "msg": "unknown\nrevision"})
    fake_dvc(monkeypatch, json.dumps({"errors": errors}))
    curves = report.learning_curves(".", ["u4", "u8"])
    assert curves.specs == []
    assert curves.missing == [
        f"u4: {TRAIN} not found, {PRETRAIN} not found",
        f"u8: {TRAIN} not found, {PRETRAIN} not found, dvc.yaml's plots SCMError: unknown revision",
    ]


def test_dvc_failing_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dvc(monkeypatch, "", code=255, err="ERROR: unexpected error\n  - bad rev 'nope'\n")
    with pytest.raises(NntuneError, match=r"exit 255\): ERROR: unexpected error / - bad rev"):
        report.learning_curves(".", ["nope"])
