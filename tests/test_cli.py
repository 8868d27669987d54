from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from conftest import REPO
from typer.testing import CliRunner

from nntune.cli import app
from nntune.data import digits_frame

runner = CliRunner()


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("check", "summary", "export-digits"):
        assert command in result.output


def test_check_accepts_the_repository_params() -> None:
    result = runner.invoke(app, ["check", str(REPO / "params.yaml")])
    assert result.exit_code == 0, result.output
    assert "ok" in result.output
    assert "learning rate 0.01" in result.output


def test_check_rejects_bad_params_with_exit_code_2(
    tmp_path: Path, raw_params: dict[str, Any]
) -> None:
    raw_params["train"]["learning_rate"] = -0.1
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw_params))
    result = runner.invoke(app, ["check", str(path)])
    assert result.exit_code == 2
    assert "train.learning_rate must be > 0, got -0.1" in result.output


def test_export_digits(tmp_path: Path) -> None:
    out = tmp_path / "d.csv"
    result = runner.invoke(app, ["export-digits", str(out)])
    assert result.exit_code == 0
    pd.testing.assert_frame_equal(pd.read_csv(out), digits_frame())
