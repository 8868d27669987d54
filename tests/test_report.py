"""`nntune plots`' reading of `dvc plots diff --json` (what DVC could not read is named,
never silently dropped) and its page: a section per question, a table that fits."""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from nntune.config.metrics import Objective
from nntune.errors import NntuneError
from nntune.experiments import Experiment
from nntune.tuning import report
from nntune.tuning.ranking import compare, records


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


# The page: one section per question, each under its heading.

LOSS = Objective("val_loss", "min")


def grid(rates: list[float], units: list[int]) -> list[Experiment]:
    """A grid whose loss depends on the learning rate alone (best at 0.01)."""
    return [
        Experiment(
            f"u{u}-lr{lr}",
            f"r{u}{lr}",
            "Success",
            {"model.units": float(u), "train.learning_rate": lr, "train.epochs": 5.0},
            {"val_loss": 0.1 + abs(math.log10(lr) + 2) + u / 1e4, "diverged": False},
        )
        for u in units
        for lr in rates
    ]


CURVE = {
    "$schema": report.VEGA_LITE_SCHEMA,
    "title": "Loss",
    "data": {"values": [{"step": s, "loss": 1 / (s + 1)} for s in range(4)]},
    "mark": "line",
    "encoding": {"x": {"field": "step", "type": "quantitative"}, "y": {"field": "loss"}},
}
HEADINGS = [
    "Top experiments",
    "Warnings",
    "Learning curves",
    "Parameter importance",
    "Parallel coordinates",
    "Objective against each parameter",
]


def test_the_page_has_a_section_per_question(tmp_path: Path) -> None:
    comparison = compare(grid([0.001, 0.003, 0.01, 0.03, 0.1], [8, 16, 32]), LOSS, "binary")
    rows = [
        {**row, "diagnosis": "stopped early at its best epoch"} for row in records(comparison, 3)
    ]
    sections = report.chart_sections(comparison, [CURVE])
    edge = "the best train.learning_rate (0.01) is not on the grid's edge"
    page = tmp_path / "plots.html"
    report.write_page(page, comparison, rows, sections, [edge])

    text = page.read_text()
    headings = re.findall(r"<h2>(.*?)</h2>", text)
    assert headings == HEADINGS
    assert f"<li>{edge}</li>" in text.replace("&#x27;", "'")
    # The table scrolls in its own box instead of running off the page's right edge.
    box = re.search(r'<div class="table-box"><table>.*?</table></div>', text, flags=re.DOTALL)
    assert box and '<th class="text">diagnosis</th>' in box.group(0)
    assert '<td class="prose">stopped early at its best epoch</td>' in box.group(0)
    assert box.group(0).count("<tr") == 4  # the header and the top 3
    # Curve, importance bar, parallel coordinates, one slice per varying parameter.
    assert text.count("<svg") == 5
    assert "share of the variance of val_loss (fANOVA)" in text
    assert "one line per experiment, coloured by val_loss (min)" in text
    assert "val_loss (min) vs model.units" in text and "vs train.epochs" not in text


def test_importance_ranks_the_rate_and_parallel_axes_show_ranges() -> None:
    comparison = compare(grid([0.001, 0.003, 0.01, 0.03, 0.1], [8, 16, 32]), LOSS, "binary")
    importance, parallel = report.chart_sections(comparison, [])[1:3]
    bars = importance.specs[0]["data"]["values"]
    assert bars[0]["parameter"] == "train.learning_rate" and bars[0]["importance"] > 0.5
    spec = parallel.specs[0]
    axes = spec["encoding"]["x"]["sort"]
    assert axes[:2] == ["model.units (8 to 32)", "train.learning_rate (0.001 to 0.1, log)"]
    assert axes[2].startswith("val_loss (0.1") and len(axes) == 3
    # Vega reads a dot in a field name as a path: the fold names escape it.
    assert spec["transform"][0]["fold"][0] == "model\\.units (8 to 32)"
    best = next(r for r in spec["data"]["values"] if r["experiment"] == "u8-lr0.01")
    assert best["train.learning_rate (0.001 to 0.1, log)"] == pytest.approx(0.5)
    assert best["model.units (8 to 32)"] == 0.0
    assert len(spec["data"]["values"]) == 15


def test_too_few_experiments_leave_a_sentence_not_a_chart(tmp_path: Path) -> None:
    comparison = compare(grid([0.001, 0.01], [8, 16]), LOSS, "binary")
    sections = report.chart_sections(comparison, [CURVE])
    importance = sections[1]
    assert importance.specs == []
    assert importance.note.startswith("Too few experiments to tell which parameters matter: 4")
    page = tmp_path / "plots.html"
    report.write_page(page, comparison, records(comparison), sections)
    text = page.read_text()
    assert "Warnings" not in text  # no advice, no section
    assert "Too few experiments to tell which parameters matter" in text
    assert text.count("<svg") == 4  # curve, parallel coordinates, two slices
