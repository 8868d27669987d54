"""The per-trial entry point (``nntune trial``), the Slurm script that calls it, project
remotes and ``compare --remote``. The end-to-end tests use a bare git remote and a
local-folder DVC remote in a temp dir; nothing leaves the machine."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from project import NNTUNE, project_env, remote_experiments, run, shared_project
from typer.testing import CliRunner

from nntune.backends.slurm import SlurmOptions, slurm_script
from nntune.backends.trial import TrialError, TrialSpec, exp_ref, parse_overrides
from nntune.cli import app

REV = "0123456789abcdef0123456789abcdef01234567"


def test_exp_ref_is_dvcs_layout() -> None:
    assert exp_ref(REV, "lr0.01") == f"refs/exps/01/{REV[2:]}/lr0.01"
    with pytest.raises(TrialError, match="40-character"):
        exp_ref("0123abc", "x")


def test_overrides_need_key_and_value() -> None:
    assert parse_overrides(["a.b=1", "c=[1,2]"]) == ("a.b=1", "c=[1,2]")
    with pytest.raises(TrialError, match="KEY=VALUE"):
        parse_overrides(["train.learning_rate"])


def _specs() -> list[TrialSpec]:
    return [
        TrialSpec("git@host:team/proj.git", REV, "lr0.001", ("train.learning_rate=0.001",)),
        TrialSpec("git@host:team/proj.git", REV, "it's", ("model.units=[64,32]", "x=a b")),
    ]


def test_slurm_script_header_and_array() -> None:
    text = slurm_script(_specs(), SlurmOptions(cpus=4, gpus=1, max_parallel=1, partition="gpu"))
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    assert "#SBATCH --array=0-1%1" in lines
    assert "#SBATCH --cpus-per-task=4" in lines
    assert "#SBATCH --gres=gpu:1" in lines
    assert "#SBATCH --partition=gpu" in lines
    no_gpu = slurm_script(_specs(), SlurmOptions())
    assert "--gres" not in no_gpu and "#SBATCH --array=0-1" in no_gpu.splitlines()
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)


def test_slurm_elements_call_the_entry_point_with_exact_args(tmp_path: Path) -> None:
    """Each element execs `nntune trial` with its spec's arguments, quoting intact."""
    script = tmp_path / "t.sbatch"
    script.write_text(slurm_script(_specs(), SlurmOptions(cache_dir="/scratch/c")))
    recorder = tmp_path / "record"
    recorder.write_text(
        "#!/usr/bin/env python3\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n"
    )
    recorder.chmod(0o755)
    for index, spec in enumerate(_specs()):
        env = {**os.environ, "SLURM_ARRAY_TASK_ID": str(index), "NNTUNE": str(recorder)}
        out = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == [*spec.command()[1:], "--cache-dir", "/scratch/c"]
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "2", "NNTUNE": str(recorder)}
    out = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert out.returncode == 2 and "no trial 2 in this array (0-1)" in out.stderr
    env = {k: v for k, v in os.environ.items() if k != "SLURM_ARRAY_TASK_ID"}
    out = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "submit this script with sbatch" in out.stderr


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (SlurmOptions(time_limit="two hours"), "--time"),
        (SlurmOptions(cpus=0), "--cpus"),
        (SlurmOptions(max_parallel=0), "--max-parallel"),
    ],
)
def test_slurm_options_are_checked(options: SlurmOptions, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        slurm_script(_specs(), options)


@pytest.mark.parametrize("command", ["run", "search"])
def test_run_and_search_refuse_an_unknown_backend(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--backend", "spark"])
    assert result.exit_code == 2
    assert "'spark' is not one of" in " ".join(result.output.replace("│", " ").split())


def test_trial_refuses_a_bad_override(tmp_path: Path) -> None:
    args = ["trial", str(tmp_path), "--rev", REV, "--name", "x", "-S", "units"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "-S 'units': expected KEY=VALUE" in result.output


def test_trial_reports_an_unreachable_remote(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere.git")
    args = ["trial", missing, "--rev", REV, "--name", "x", "--cache-dir", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "cannot read the git remote" in result.output and missing in result.output


# ---------------------------------------------------------------------------------------
# End to end: a bare git remote and a local DVC remote.


@pytest.mark.e2e
def test_slurm_element_runs_pushes_and_is_idempotent(tmp_path: Path) -> None:
    project, remote = shared_project(tmp_path)
    head = run(project, "git", "rev-parse", "HEAD").stdout.strip()
    run(project, NNTUNE, "grid", "-p", "train.learning_rate=0.001,0.003")
    out = run(project, NNTUNE, "slurm-script", "-o", "trials.sbatch", "--cache-dir", "cache")
    assert "2 trial(s) as a job array" in out.stdout
    env_extra = {"SLURM_ARRAY_TASK_ID": "0", "NNTUNE": NNTUNE}

    def element() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "trials.sbatch"], cwd=project, env={**project_env(), **env_extra},
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip

    first = element()
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout.splitlines()[-1])
    assert result["status"] == "pushed" and result["name"] == "lr0.001"
    assert remote_experiments(remote) == {"lr0.001": result["commit"]}
    # The experiment's ref sits under the baseline, where `dvc exp show` looks for it.
    refs = run(remote, "git", "for-each-ref", "--format=%(refname)", "refs/exps").stdout.split()
    assert refs == [f"refs/exps/{head[:2]}/{head[2:]}/lr0.001"]
    # Its models reached the DVC remote: a clone can `dvc exp apply` and check them out.
    assert any((tmp_path / "dvc-store").rglob("*")), "nothing was pushed to the DVC remote"

    again = element()
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.splitlines()[-1]) == {
        **result,
        "seconds": {},
        "status": "skipped",
    }
    assert remote_experiments(remote) == {"lr0.001": result["commit"]}

    # The same name with other params is a collision, never a silent skip.
    clash = run(
        project, NNTUNE, "trial", str(remote), "--rev", head, "--name", "lr0.001",
        "-S", "train.learning_rate=0.5", "--cache-dir", "cache", check=False,
    )  # fmt: skip
    assert clash.returncode == 2
    assert "name collision" in clash.stderr and "train.learning_rate=0.001" in clash.stderr
    # The run left no clone behind.
    assert list((project / "cache" / "work").iterdir()) == []

    # A teammate's fresh clone sees it with metrics; the queue here drops what ran remotely.
    fresh = tmp_path / "fresh"
    run(tmp_path, "git", "clone", "--quiet", str(remote), str(fresh))
    shown = run(fresh, NNTUNE, "compare", "--remote", "origin", "-f", "json")
    rows = json.loads(shown.stdout)["experiments"]
    assert [(r["experiment"], r["status"]) for r in rows] == [("lr0.001", "ok")]
    assert rows[0]["val_loss"] > 0
    here = run(project, NNTUNE, "compare", "--remote", "origin")
    assert "1 of them were queued here and left the queue" in here.stdout
    assert "lr0.003" in run(project, "dvc", "queue", "status").stdout
    assert "lr0.001" not in run(project, "dvc", "queue", "status").stdout


@pytest.mark.e2e
def test_remote_backends_refuse_what_a_clone_would_miss(tmp_path: Path) -> None:
    """Queued entries must be named, on HEAD, change only params, and HEAD must be pushed."""
    project, _ = shared_project(tmp_path)
    run(project, NNTUNE, "grid", "-p", "train.learning_rate=0.001")
    (project / "stages" / "train.py").write_text("# edited, not committed\n", encoding="utf-8")
    run(project, "dvc", "exp", "run", "--queue", "-n", "dirty", "-S", "model.units=8")
    out = run(project, NNTUNE, "slurm-script", check=False)
    assert out.returncode == 2
    assert "dirty carries uncommitted changes to stages/train.py" in out.stderr
    run(project, "dvc", "queue", "remove", "dirty")
    run(project, "git", "checkout", "--", "stages/train.py")
    run(project, "git", "commit", "--quiet", "--allow-empty", "-m", "not pushed")
    out = run(project, NNTUNE, "run", "--backend", "ray", check=False)
    assert out.returncode == 2
    assert "based on commit" in out.stderr  # the entry was queued on the previous commit
    run(project, "dvc", "queue", "remove", "--all")
    run(project, NNTUNE, "grid", "-p", "train.learning_rate=0.001")
    out = run(project, NNTUNE, "run", "--backend", "ray", check=False)
    assert out.returncode == 2
    assert "is not on origin yet" in out.stderr and "git push origin HEAD" in out.stderr
