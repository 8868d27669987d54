from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from conftest import REPO
from project import run, scaffold
from typer.testing import CliRunner

from nntune.cli import app
from nntune.stage.data import digits_frame

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


# The experiment commands against a scaffolded project with no experiments yet.


@pytest.fixture(scope="module")
def empty_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return scaffold(tmp_path_factory.mktemp("cli") / "project")


@pytest.fixture
def in_project(empty_project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(empty_project)
    return empty_project


@pytest.mark.parametrize(
    "command", ["grid", "run", "search", "gc", "compare", "best", "check", "summary"]
)
def test_every_command_has_help(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_grid_dry_run_prints_the_default_grid(in_project: Path) -> None:
    result = runner.invoke(app, ["grid", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "42 points (dry run: nothing queued)" in result.output
    assert "12 point(s) give the same params as another" in result.output
    assert "h2-u200-b64-lr0.1" in result.output
    assert "Queued" not in run(in_project, "dvc", "queue", "status").stdout


def test_grid_random_subset(in_project: Path) -> None:
    result = runner.invoke(app, ["grid", "--dry-run", "--random", "3", "--seed", "7"])
    assert result.exit_code == 0, result.output
    assert "3 points (dry run: nothing queued)" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-p", "model.layers=1,2"], "model.layers is not a known key"),
        (["-p", "train.learning_rate=fast,0.1"], "must be a finite number, got 'fast'"),
        (["-p", "model.units="], "expected KEY=V1,V2"),
        (["--space", "missing.yaml"], "search-space file not found"),
        (["-p", "train.batch_size=0,32"], "train.batch_size must be >= 1, got 0"),
    ],
)
def test_grid_rejects_bad_points(in_project: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["grid", "--dry-run", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_grid_rejects_an_empty_space_file(in_project: Path) -> None:
    (in_project / "empty.yaml").write_text("# nothing to vary\n")
    result = runner.invoke(app, ["grid", "--space", "empty.yaml"])
    assert result.exit_code == 2
    assert "the search space is empty" in result.output


def test_search_refuses_a_space_key_params_do_not_have(in_project: Path) -> None:
    (in_project / "space.yaml").write_text("model.widht: [8, 16]\n")
    result = runner.invoke(app, ["search", "--space", "space.yaml"])
    assert result.exit_code == 2
    assert "model.widht=8: model.widht is not a known key" in result.output
    assert not (in_project / ".nntune").exists()  # refused before any study exists


def test_gc_with_no_experiments_removes_nothing(in_project: Path) -> None:
    result = runner.invoke(app, ["gc", "--keep", "3", "--yes"])
    assert result.exit_code == 0, result.output
    assert "nothing to remove" in result.output


def test_compare_best_and_run_with_nothing_to_do(in_project: Path) -> None:
    result = runner.invoke(app, ["compare"])
    assert result.exit_code == 0
    assert "no experiments yet" in result.output
    result = runner.invoke(app, ["best"])
    assert result.exit_code == 1
    assert "no successful experiment" in result.output
    result = runner.invoke(app, ["run"])
    assert result.exit_code == 0
    assert "the queue is empty" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["compare", "--format", "xml"], "'xml' is not one of"),
        (["compare", "--metric", "test_accuracy"], "--metric must be one of val_loss"),
        (["best", "--apply", "--branch", "x"], "use --apply or --branch, not both"),
        (["compare", "--top", "0"], "Invalid value"),
        (["run", "-j", "0"], "Invalid value"),
        (["run", "--gpus", "0,x"], "--gpus must be 'all' or distinct GPU numbers"),
        (["run", "--gpus", "1,1"], "--gpus must be 'all' or distinct GPU numbers"),
        (["search", "--method", "bohb"], "'bohb' is not one of 'tpe',"),
        (["search", "--study", "my study"], "--study 'my study': use letters, digits and _"),
        (["search", "--space", "missing.yaml"], "missing.yaml: search-space file not found"),
        (["search", "--method", "asha", "--min-epochs", "30"], "--min-epochs (30) must be"),
        (["search", "--eta", "1"], "Invalid value"),
        (["gc"], "Missing option '--keep'"),
    ],
)
def test_bad_arguments(in_project: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output


def test_commands_outside_a_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["check"])
    assert result.exit_code == 2
    assert "params.yaml: 1 invalid parameter(s)" in result.output
    assert "file not found" in result.output


def test_all_gpus_when_there_are_none(in_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nntune.stage import device

    monkeypatch.setattr(device, "list_gpus", list)
    result = runner.invoke(app, ["run", "--gpus", "all"])
    assert result.exit_code == 2
    assert "--gpus all: no GPU is visible; use -j N to run on the CPU" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "label", "--task", "ranking"], "Invalid value for '--task'"),
        (["--target", "label", "--reset-params"], "--reset-params replaces an existing"),
        (["--target", "nope"], "no column 'nope'"),
        (["--target", "target", "--data", "missing.csv"], "missing.csv: data file not found"),
    ],
)
def test_init_rejects_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    table = tmp_path / "t.csv"
    pd.DataFrame({"a": [1, 2, 3], "label": ["x", "y", "x"]}).to_csv(table, index=False)
    if "--data" not in args:
        args = [*args, "--data", str(table)]
    else:
        args = [a if a != "missing.csv" else str(tmp_path / "missing.csv") for a in args]
    result = runner.invoke(app, ["init", str(tmp_path / "proj"), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "proj" / "dvc.yaml").exists()


# `nntune plots` with DVC's `plots diff` answer faked: what it could not read is named.


def _plots_setup(monkeypatch: pytest.MonkeyPatch, missing: list[str], drawn: int) -> list[Any]:
    from nntune.config.metrics import Objective
    from nntune.experiments import Experiment
    from nntune.tuning import report
    from nntune.tuning.ranking import compare

    rows = [
        Experiment(n, n, "Success", {"model.units": u}, {"val_loss": v, "diverged": False})
        for n, u, v in (("u4", 4.0, 0.3), ("u8", 8.0, 0.2))
    ]
    comparison = compare(rows, Objective("val_loss", "min"), "binary")
    monkeypatch.setattr("nntune.cli.results.load_comparison", lambda *_: comparison)
    specs = [{"title": f"curve {i}"} for i in range(drawn)]
    monkeypatch.setattr(report, "learning_curves", lambda *_: report.LearningCurves(specs, missing))
    pages: list[Any] = []
    monkeypatch.setattr(report, "write_page", lambda *args: pages.append(args))
    return pages


def test_plots_names_the_curves_dvc_could_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    pages = _plots_setup(monkeypatch, ["u8: dvclive/plots/metrics/train/loss.tsv not found"], 1)
    result = runner.invoke(app, ["plots", "--top", "2"])
    assert result.exit_code == 0, result.output
    assert (
        "warning: left out of the page: u8: dvclive/plots/metrics/train/loss.tsv not found"
        in result.output
    )
    assert len(pages) == 1 and "wrote plots/experiments.html (2 charts" in result.output


def test_plots_fails_when_no_curve_could_be_drawn(monkeypatch: pytest.MonkeyPatch) -> None:
    problems = [f"{rev}: dvclive/plots/metrics/train/loss.tsv not found" for rev in ("u4", "u8")]
    pages = _plots_setup(monkeypatch, problems, 0)
    result = runner.invoke(app, ["plots", "--top", "2"])
    assert result.exit_code == 2
    assert result.output.startswith(
        "error: no learning curve could be drawn: u4: dvclive/plots/metrics/train/loss.tsv not "
        "found; u8: dvclive/plots/metrics/train/loss.tsv not found (is a .gitignore rule"
    )
    assert "Traceback" not in result.output and pages == []


# `nntune compare` and `best` with a faked comparison: each trial's diagnosis and advice.


def _diagnosed_comparison(monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from nntune.config.metrics import Objective
    from nntune.experiments import Experiment
    from nntune.tuning.diagnosis import Diagnosis
    from nntune.tuning.ranking import compare

    rows = [
        Experiment(n, n, "Success", {"train.learning_rate": r}, {"val_loss": v, "diverged": False})
        for n, r, v in (
            ("fast", 0.1, 0.2),
            ("fast2", 0.1, 0.25),
            ("mid", 0.01, 0.3),
            ("slow", 0.001, 0.4),
        )
    ]
    comparison = compare(rows, Objective("val_loss", "min"), "multiclass")
    found = {
        "fast": Diagnosis("overfitting", "val loss rose from 0.2 (epoch 4) to a median 0.5"),
        "mid": Diagnosis("healthy", "best val loss 0.3 at epoch 20 of 30"),
    }
    comparison = dataclasses.replace(comparison, diagnoses=found)
    monkeypatch.setattr("nntune.cli.results.load_comparison", lambda *_: comparison)


EDGE = (
    "train.learning_rate: the best trials use the largest value tried (0.1, in 2 of the top "
    "3); extend the range above it"
)


def test_compare_json_has_each_diagnosis_and_its_advice(monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    _diagnosed_comparison(monkeypatch)
    result = runner.invoke(app, ["compare", "--format", "json", "--top", "1"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    fast = payload["experiments"][0]
    assert (fast["experiment"], fast["diagnosis"]) == ("fast", "overfitting")
    assert fast["advice"] == "more dropout or L2, or fewer units"
    assert fast["evidence"] == "val loss rose from 0.2 (epoch 4) to a median 0.5"
    assert payload["advice"] == [EDGE]  # from the top 3, whatever --top shows


def test_compare_table_and_best_print_the_advice(monkeypatch: pytest.MonkeyPatch) -> None:
    _diagnosed_comparison(monkeypatch)
    result = runner.invoke(app, ["compare"])
    assert result.exit_code == 0, result.output
    assert "diagnosis" in result.output and "overfitting" in result.output
    assert "overfitting (1): try more dropout or L2, or fewer units" in result.output
    assert f"search space: {EDGE}" in result.output
    result = runner.invoke(app, ["best"])
    assert result.exit_code == 0, result.output
    assert "  diagnosis: overfitting (val loss rose from 0.2 (epoch 4)" in result.output
    assert "  next: more dropout or L2, or fewer units" in result.output
    assert f"advice: {EDGE}" in result.output


def test_search_with_the_tabular_space_needs_a_readable_table(in_project: Path) -> None:
    # The tabular preset sizes its batches from the table's rows, read before any study.
    params = in_project / "params.yaml"
    params.write_text(re.sub(r"(?m)^(  source: ).*$", r"\1data/nowhere.csv", params.read_text()))
    result = runner.invoke(app, ["search", "--space", "tabular"])
    assert result.exit_code != 0
    assert "data/nowhere.csv: data file not found" in result.output
    assert "Traceback" not in result.output
    assert not (in_project / ".nntune").exists()
