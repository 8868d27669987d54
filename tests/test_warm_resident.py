"""Resident children of the warm runner (nntune.warm.child): a child whose stage ended well
takes the next stage of the same working copy, with that stage's own streams, environment
and snapshot of nntune, unless what its runtime started with differs; any other end, a kill,
or the run's end ends it. The servers here preload only `wave`; the real stages (TensorFlow)
are covered by the pipeline's end-to-end determinism test."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO

from nntune.warm.child import RESIDENT_JOBS_ENV
from nntune.warm.client import SOCKET_ENV, process_alive
from nntune.warm.launcher import warm_runner

STAGE = """
import json, os, sys
from nntune.warm.client import handoff

handoff(__name__)
import nntune
from nntune.stage.entry import exit_without_teardown

print(json.dumps({
    "pid": os.getpid(),
    "preloaded": "wave" in sys.modules,
    "marker": getattr(nntune, "MARKER", None),
    "value": os.environ.get("STAGE_VALUE"),
    "argv": sys.argv,
}), flush=True)
print("stage on stderr", sys.argv[2], file=sys.stderr, flush=True)
if sys.argv[2] == "fail":
    sys.exit(3)
if sys.argv[2] == "plain":  # ends as a script without nntune's stage entry
    sys.exit(0)
if sys.argv[2] == "sleep":
    import time
    time.sleep(60)
exit_without_teardown()
"""


def copy(root: Path, runtime: str = "{seed: 1}") -> Path:
    shutil.copytree(REPO / "src" / "nntune", root / "src" / "nntune")
    (root / "stages").mkdir()
    (root / "stages" / "stage.py").write_text(STAGE)
    (root / "params.yaml").write_text(f"runtime: {runtime}\nmodel: {{units: 8}}\n")
    return root


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.delenv(RESIDENT_JOBS_ENV, raising=False)
    with warm_runner(flavours={"": ("wave",)}, backends=("tensorflow",)) as socket:
        assert socket is not None, "the warm runner did not start"
        yield socket


def stage(
    workspace: Path, socket: str | None, mode: str = "ok", **env: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    full = {**os.environ, "PYTHONPATH": "src", **env}
    full.pop(SOCKET_ENV, None)
    if socket is not None:
        full[SOCKET_ENV] = socket
    out = subprocess.run(
        [sys.executable, "stages/stage.py", "params.yaml", mode],
        cwd=workspace,
        env=full,
        capture_output=True,
        text=True,
        timeout=60,  # also: a child that kept the stage's stdout open would hang this
    )
    return out, dict(json.loads(out.stdout.splitlines()[0]))


def ended(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not process_alive(pid)


def test_a_stage_that_ended_well_leaves_a_child_that_runs_the_next_one(
    tmp_path: Path, runner: str
) -> None:
    workspace = copy(tmp_path)
    first, seen = stage(workspace, runner, STAGE_VALUE="one")
    assert first.returncode == 0, first.stderr
    second, again = stage(workspace, runner, STAGE_VALUE="two")
    assert second.returncode == 0, second.stderr
    assert seen["preloaded"] and again["preloaded"]
    assert again["pid"] == seen["pid"]  # the same process
    # Each stage has its own streams, environment and argv.
    assert (seen["value"], again["value"]) == ("one", "two")
    assert first.stdout.count("\n") == 1 and second.stdout.count("\n") == 1
    assert "stage on stderr ok" in second.stderr and "cold" not in second.stderr
    assert process_alive(int(str(seen["pid"])))  # resident until the run ends


def test_another_working_copy_gets_a_child_of_its_own(tmp_path: Path, runner: str) -> None:
    _, one = stage(copy(tmp_path / "a"), runner)
    _, other = stage(copy(tmp_path / "b"), runner)
    assert one["pid"] != other["pid"]


def test_a_stage_that_fails_or_ends_as_a_plain_script_ends_its_child(
    tmp_path: Path, runner: str
) -> None:
    workspace = copy(tmp_path)
    _, first = stage(workspace, runner)
    failed, during = stage(workspace, runner, "fail")
    assert failed.returncode == 3  # its exit code, relayed as before
    assert during["pid"] == first["pid"]
    assert ended(int(str(first["pid"])))
    _, after = stage(workspace, runner)
    assert after["pid"] != first["pid"]
    plain, _ = stage(workspace, runner, "plain")
    assert plain.returncode == 0
    assert ended(int(str(after["pid"])))


def test_a_next_stage_with_another_runtime_section_gets_a_fresh_child(
    tmp_path: Path, runner: str
) -> None:
    workspace = copy(tmp_path)
    _, first = stage(workspace, runner)
    params = workspace / "params.yaml"
    params.write_text(params.read_text().replace("units: 8", "units: 16"))  # not the runtime
    _, same = stage(workspace, runner)
    assert same["pid"] == first["pid"]
    params.write_text(params.read_text().replace("seed: 1", "seed: 2"))
    _, changed = stage(workspace, runner)
    assert changed["pid"] != first["pid"]
    assert ended(int(str(first["pid"])))  # it declined and ended
    _, cuda = stage(workspace, runner, CUDA_VISIBLE_DEVICES="")
    assert cuda["pid"] != changed["pid"]


def test_a_next_stage_runs_its_own_copys_nntune(tmp_path: Path, runner: str) -> None:
    """The worktree is checked out at another snapshot between two trials: the resident
    child imports that copy's nntune afresh (as a fresh child would)."""
    workspace = copy(tmp_path)
    _, first = stage(workspace, runner)
    assert first["marker"] is None
    init = workspace / "src" / "nntune" / "__init__.py"
    init.write_text(init.read_text() + 'MARKER = "next snapshot"\n')
    _, second = stage(workspace, runner)
    assert second["pid"] == first["pid"]
    assert second["marker"] == "next snapshot"


def test_a_killed_resident_child_is_replaced(tmp_path: Path, runner: str) -> None:
    workspace = copy(tmp_path)
    _, first = stage(workspace, runner)
    os.kill(int(str(first["pid"])), signal.SIGKILL)
    assert ended(int(str(first["pid"])))
    out, second = stage(workspace, runner)
    assert out.returncode == 0, out.stderr
    assert second["preloaded"] and second["pid"] != first["pid"]


def test_a_child_runs_at_most_its_share_of_stages_and_ends_with_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = copy(tmp_path)
    monkeypatch.setenv(RESIDENT_JOBS_ENV, "2")
    with warm_runner(flavours={"": ("wave",)}, backends=("tensorflow",)) as socket:
        pids = [stage(workspace, socket)[1]["pid"] for _ in range(5)]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]
    assert all(ended(int(str(pid))) for pid in pids)  # the run's end ends the resident one
    monkeypatch.setenv(RESIDENT_JOBS_ENV, "1")  # one stage each: as before resident children
    with warm_runner(flavours={"": ("wave",)}, backends=("tensorflow",)) as socket:
        pids = [stage(workspace, socket)[1]["pid"] for _ in range(3)]
    assert len(set(pids)) == 3


def test_without_a_runner_the_stage_ends_its_own_process(tmp_path: Path) -> None:
    out, seen = stage(copy(tmp_path), None)
    assert out.returncode == 0 and seen["preloaded"] is False


def test_a_resident_child_dies_with_the_client_of_the_stage_it_runs(
    tmp_path: Path, runner: str
) -> None:
    """DVC cancels a trial (or a worker dies): the stage's process goes, and the resident
    child running that stage goes with it, as a fresh child does."""
    workspace = copy(tmp_path)
    _, first = stage(workspace, runner)
    env = {**os.environ, "PYTHONPATH": "src", SOCKET_ENV: runner}
    client = subprocess.Popen(
        [sys.executable, "stages/stage.py", "params.yaml", "sleep"],
        cwd=workspace,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert client.stdout is not None
    running = json.loads(client.stdout.readline())
    assert running["pid"] == first["pid"]  # the resident child took it
    client.kill()
    client.wait(timeout=10)
    client.stdout.close()
    assert ended(int(str(first["pid"])))
    out, after = stage(workspace, runner)
    assert out.returncode == 0 and after["pid"] != first["pid"]
