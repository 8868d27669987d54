"""The CLI's one error boundary: known errors are one line and exit 2, bugs one line and
exit 1, and ``--debug`` / ``NNTUNE_DEBUG=1`` let the traceback through."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from typer.testing import CliRunner

from nntune import experiments
from nntune.cli import app
from nntune.errors import NntuneError

runner = CliRunner()


def _raising(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    """``nntune compare`` raises ``error`` where it reads the experiments."""

    def fail(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(experiments, "list_experiments", fail)
    monkeypatch.chdir(REPO)  # its params.yaml; nothing is read from DVC


def _dvc_errors() -> list[tuple[BaseException, str]]:
    from dvc.exceptions import NotDvcRepoError
    from dvc.lock import LockError
    from dvc.repo.experiments.exceptions import ExperimentExistsError

    return [
        (ExperimentExistsError("h1-u50"), "dvc exp remove NAME"),
        (LockError("Unable to acquire lock"), "holds the project's lock"),
        (NotDvcRepoError("/tmp/x is not a DVC repository"), "run this inside an nntune project"),
    ]


@pytest.mark.parametrize("case", range(4))
def test_known_errors_are_one_line_with_what_to_do_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, case: int
) -> None:
    errors = [(NntuneError("params.yaml: train.units must be > 0"), "train.units must be")]
    errors += _dvc_errors()
    error, expected = errors[case]
    _raising(monkeypatch, error)
    result = runner.invoke(app, ["compare"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert expected in lines[0]
    assert "Traceback" not in result.output


def test_a_bug_is_one_line_that_points_at_debug_and_exits_1(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _raising(monkeypatch, ZeroDivisionError("division by zero"))
    result = runner.invoke(app, ["compare"])
    assert result.exit_code == 1
    assert result.output.strip() == (
        "error: unexpected ZeroDivisionError: division by zero (a bug in nntune: rerun with "
        "--debug or NNTUNE_DEBUG=1 for the traceback, and report it)"
    )


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_lets_the_error_through(monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    error = NntuneError("params.yaml: bad")
    _raising(monkeypatch, error)
    if how == "env":
        monkeypatch.setenv("NNTUNE_DEBUG", "1")
    result = runner.invoke(app, ["--debug", "compare"] if how == "flag" else ["compare"])
    assert result.exception is error
    assert "error: params.yaml: bad" not in result.output


def test_the_installed_command_prints_no_traceback(tmp_path: Path) -> None:
    # The real entry point, outside any project: DVC's own "not a DVC repository".
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    nntune = Path(sys.executable).with_name("nntune")
    out = subprocess.run(
        [str(nntune), "compare"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and "╭" not in out.stderr
    assert out.stderr.startswith("error: ") and "not a DVC project" in out.stderr


def test_apply_refuses_a_dirty_workspace(tmp_path: Path) -> None:
    # DVC's apply would overwrite uncommitted changes without a word.
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    subprocess.run(
        [sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True, capture_output=True
    )
    (tmp_path / "params.yaml").write_text("a: 1\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base")
    (tmp_path / "params.yaml").write_text("a: 2\n")  # the user's edit
    with pytest.raises(NntuneError, match=r"uncommitted changes \(params.yaml\).*git stash"):
        experiments.promote(tmp_path, "some-exp", None)
    assert (tmp_path / "params.yaml").read_text() == "a: 2\n"
