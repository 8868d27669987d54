"""Scaffold the pipeline into a temp project (own git repo, own DVC) and run commands in it,
the way a user would. Shared by the end-to-end tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from conftest import REPO, processes_under, shrink

PIPELINE_FILES = [
    "dvc.yaml",
    "params.yaml",
    ".dvcignore",
    "data/digits.csv",
    "data/digits.schema.yaml",
    "grid.yaml",
]
PIPELINE_DIRS = ["stages", "src/nntune"]
# The console script installed beside this interpreter.
NNTUNE = str(Path(sys.executable).parent / "nntune")


def project_env() -> dict[str, str]:
    env = dict(os.environ)
    # Stage commands call `python`: make it this interpreter, with its packages.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env.pop("PYTHONPATH", None)
    return env


def run(project: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(cmd), cwd=project, env=project_env(), capture_output=True, text=True, timeout=600
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
    return result


def scaffold(dest: Path) -> Path:
    """Copy the pipeline into ``dest`` with shrunk params, as a fresh git + DVC repo."""
    for name in PIPELINE_FILES:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, dest / name)
    for name in PIPELINE_DIRS:
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    params = shrink(yaml.safe_load((REPO / "params.yaml").read_text()))
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (dest / ".gitignore").write_text(".nntune/\n")  # what `nntune init` ignores too
    run(dest, "git", "init", "--quiet", "--initial-branch=main")
    run(dest, "git", "config", "user.email", "e2e@nntune.invalid")
    run(dest, "git", "config", "user.name", "nntune e2e")
    run(dest, "dvc", "init", "--quiet")
    run(dest, "dvc", "config", "core.analytics", "false")
    run(dest, "git", "add", "-A")
    run(dest, "git", "commit", "--quiet", "-m", "scaffold")
    return dest


def baseline_project(tmp_path: Path, extra: dict[str, str] | None = None) -> Path:
    """A scaffolded project (with ``extra`` files written into it) whose baseline is
    reproduced and committed: what queued trials run against."""
    project = scaffold(tmp_path / "project")
    for name, text in (extra or {}).items():
        (project / name).write_text(text)
    run(project, "dvc", "repro")
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "--quiet", "-m", "baseline")
    return project


def wait_until(what: str, ready: Callable[[], object], seconds: float = 300) -> None:
    """Poll ``ready`` until it is true; fail the test after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not ready():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.2)


def processes_with(project: Path, marker: str) -> list[Any]:
    """The live processes inside ``project`` whose command line has ``marker`` (a worker:
    DVC's ``queue-worker``, nntune's ``nntune.executor.worker``)."""
    import psutil

    found = []
    for proc in processes_under(project):
        try:
            if marker in proc.cmdline():
                found.append(proc)
        except psutil.Error:
            continue
    return found


def start_run(project: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """``nntune run ARGS`` in the background, its output to ``log``: a file, not a pipe,
    since DVC's workers inherit it and outlive ``nntune run``."""
    with log.open("w") as out:
        return subprocess.Popen(
            [NNTUNE, "run", *args], cwd=project, env=project_env(), stdout=out, stderr=out
        )


def shared_project(
    tmp_path: Path, repro: bool = False, max_epochs: int | None = None
) -> tuple[Path, Path]:
    """A scaffolded project whose remotes are a bare git repo and a DVC folder, pushed."""
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "--quiet", "--bare", "-b", "main", str(remote)], check=True)
    project = scaffold(tmp_path / "project")
    if max_epochs is not None:
        raw = yaml.safe_load((project / "params.yaml").read_text())
        raw["train"]["max_epochs"] = max_epochs
        (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    run(project, NNTUNE, "remote", "setup", str(remote), str(tmp_path / "dvc-store"))
    if repro:
        run(project, "dvc", "repro", "--quiet")
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "--quiet", "-m", "shared remotes and baseline")
    run(project, "git", "push", "--quiet", "-u", "origin", "main")
    run(project, "dvc", "push", "--quiet")
    return project, remote


def remote_experiments(remote: Path) -> dict[str, str]:
    out = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps"],
        cwd=remote,
        capture_output=True,
        text=True,
        check=True,
    )
    pairs = (line.split() for line in out.stdout.splitlines())
    return {ref.rsplit("/", 1)[-1]: sha for ref, sha in pairs}


def chromium_dom(page: Path) -> str:
    """The DOM of ``page`` after headless Chromium has loaded and rendered it."""
    import pytest

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("NNTUNE_REQUIRE_CHROMIUM"):
            raise AssertionError("chromium is required here (NNTUNE_REQUIRE_CHROMIUM) but missing")
        pytest.skip("chromium is not installed (make test installs it when run as root)")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={page.parent / '.chromium-profile'}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        page.resolve().as_uri(),
    ]
    out = subprocess.run([browser, *flags], capture_output=True, text=True, timeout=120, check=True)
    return out.stdout


def record_fault_run(
    scenario: str, expected: int, saved: int, failed: int, duplicates: int
) -> None:
    """One line of benchmarks/faults.py's table, when it runs the fault tests
    (``NNTUNE_FAULT_LOG``): trials expected, saved as experiments, failed visibly,
    queued twice, and lost (neither saved nor reported failed)."""
    import json

    path = os.environ.get("NNTUNE_FAULT_LOG")
    if not path:
        return
    record = {
        "scenario": scenario,
        "expected": expected,
        "saved": saved,
        "failed": failed,
        "duplicates": duplicates,
        "lost": expected - saved - failed,
    }
    with Path(path).open("a", encoding="utf-8") as stream:
        stream.write(json.dumps(record) + "\n")
