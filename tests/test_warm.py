"""The warm runner (nntune.warm): a stage handed to it runs in a forked child with the
stage's own argv, working copy, environment, streams and library snapshot, and exits with
the stage's code; anything it cannot do falls back to a cold start. The servers here preload
only `wave` (and one also `colorsys`: stdlib modules nothing else imports), so a probe can
tell where it ran; the real preload (TensorFlow) is covered by the pipeline's end-to-end
determinism test."""

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

from nntune.warm import SOCKET_ENV, load_time_env, warm_runner

PROBE = """
import json, os, sys, time
from nntune.warm import handoff

handoff(__name__, os.environ.get("PROBE_FLAVOUR", ""))
import nntune

mode = sys.argv[1]
print(json.dumps({
    "preloaded": "wave" in sys.modules,
    "extra": "colorsys" in sys.modules,
    "nntune": nntune.__file__,
    "marker": getattr(nntune, "MARKER", None),
    "argv": sys.argv,
    "cwd": os.getcwd(),
    "socket_env": os.environ.get("NNTUNE_WARM_SOCKET"),
    "probe_value": os.environ.get("PROBE_VALUE"),
    "path0": sys.path[0],
    "pid": os.getpid(),
}), flush=True)
print("probe on stderr", file=sys.stderr, flush=True)
if mode == "exit":
    sys.exit(int(sys.argv[2]))
if mode == "raise":
    raise RuntimeError("boom from the probe")
if mode == "kill":
    os.kill(os.getpid(), 9)
if mode == "sleep":
    time.sleep(float(sys.argv[2]))
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working copy like a queued experiment's: stages/ and its own src/nntune, whose
    __init__ carries a marker that the installed nntune does not have."""
    root = tmp_path_factory.mktemp("workspace")
    shutil.copytree(REPO / "src" / "nntune", root / "src" / "nntune")
    init = root / "src" / "nntune" / "__init__.py"
    init.write_text(init.read_text() + 'MARKER = "snapshot"\n')
    (root / "stages").mkdir()
    (root / "stages" / "probe.py").write_text(PROBE)
    return root


@pytest.fixture(scope="module")
def runner() -> Iterator[str]:
    with warm_runner(flavours={"": ("wave",), "extra": ("wave", "colorsys")}) as socket:
        assert socket is not None, "the warm runner did not start"
        yield socket


def probe(
    workspace: Path, socket: str | None, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": "src", **env}
    full.pop(SOCKET_ENV, None)
    if socket is not None:
        full[SOCKET_ENV] = socket
    return subprocess.run(
        [sys.executable, "stages/probe.py", *args],
        cwd=workspace,
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )


def report(out: subprocess.CompletedProcess[str]) -> dict[str, object]:
    return dict(json.loads(out.stdout.splitlines()[0]))


def test_stage_runs_forked_with_its_own_argv_cwd_env_streams_and_code(
    workspace: Path, runner: str
) -> None:
    out = probe(workspace, runner, "exit", "3", PROBE_VALUE="from the stage")
    assert out.returncode == 3, out.stderr
    seen = report(out)
    assert seen["preloaded"] is True  # it ran in the runner's child
    assert seen["argv"] == ["stages/probe.py", "exit", "3"]
    assert seen["cwd"] == str(workspace)
    assert seen["probe_value"] == "from the stage"
    assert seen["socket_env"] is None  # inside the runner there is no runner
    # The working copy's own library, not the installed one the server imported.
    assert seen["nntune"] == str(workspace / "src" / "nntune" / "__init__.py")
    assert seen["marker"] == "snapshot"
    assert seen["path0"] == str(workspace / "stages")
    assert "probe on stderr" in out.stderr
    assert "cold" not in out.stderr


def test_cold_run_sees_the_same_as_the_warm_one(workspace: Path, runner: str) -> None:
    warm = report(probe(workspace, runner, "exit", "0"))
    cold = report(probe(workspace, None, "exit", "0"))
    assert cold["preloaded"] is False and warm["preloaded"] is True
    keys = ("nntune", "marker", "argv", "cwd", "socket_env", "path0")
    assert {k: warm[k] for k in keys} == {k: cold[k] for k in keys}


def test_a_stage_picks_the_server_of_its_flavour(workspace: Path, runner: str) -> None:
    plain = report(probe(workspace, runner, "exit", "0"))
    extra = report(probe(workspace, runner, "exit", "0", PROBE_FLAVOUR="extra"))
    assert plain["preloaded"] and not plain["extra"]
    assert extra["preloaded"] and extra["extra"]
    unknown = probe(workspace, runner, "exit", "0", PROBE_FLAVOUR="nope")
    assert report(unknown)["preloaded"] is False
    assert "warm runner not reachable" in unknown.stderr


def test_uncaught_exception_and_signal_exit_as_in_a_cold_process(
    workspace: Path, runner: str
) -> None:
    raised = probe(workspace, runner, "raise")
    assert raised.returncode == 1
    assert "RuntimeError: boom from the probe" in raised.stderr
    assert report(raised)["preloaded"] is True
    killed = probe(workspace, runner, "kill")
    assert killed.returncode == 128 + signal.SIGKILL


def test_settings_the_imports_read_must_match_or_the_stage_runs_cold(
    workspace: Path, runner: str
) -> None:
    out = probe(workspace, runner, "exit", "0", KERAS_BACKEND="numpy-not-the-runners")
    assert out.returncode == 0, out.stderr
    assert report(out)["preloaded"] is False
    assert "warm runner refused (KERAS_BACKEND differ" in out.stderr
    assert "this stage starts cold" in out.stderr


def test_unreachable_runner_means_a_cold_start(workspace: Path, tmp_path: Path) -> None:
    out = probe(workspace, str(tmp_path / "no-socket"), "exit", "4")
    assert out.returncode == 4
    assert report(out)["preloaded"] is False
    assert "warm runner not reachable" in out.stderr


def start_probe(workspace: Path, socket: str, seconds: str) -> subprocess.Popen[str]:
    """A probe that sleeps, started in the background; its first stdout line is its report."""
    return subprocess.Popen(
        [sys.executable, "stages/probe.py", "sleep", seconds],
        cwd=workspace,
        env={**os.environ, "PYTHONPATH": "src", SOCKET_ENV: socket},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def gone(path: Path, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not path.exists()


def test_stage_dies_with_its_client(workspace: Path, runner: str) -> None:
    with start_probe(workspace, runner, "60") as client:
        assert client.stdout is not None
        child = int(json.loads(client.stdout.readline())["pid"])
        assert child != client.pid and Path(f"/proc/{child}").exists()
        client.kill()  # what happens to a stage when DVC kills the trial
    assert gone(Path(f"/proc/{child}")), "the stage outlived its client"


def test_runner_drains_running_stages_then_cleans_up(workspace: Path) -> None:
    with warm_runner(flavours={"": ("wave",)}) as socket:
        assert socket is not None
        running = start_probe(workspace, socket, "3")
        assert running.stdout is not None
        assert json.loads(running.stdout.readline())["preloaded"] is True
    assert SOCKET_ENV not in os.environ or os.environ[SOCKET_ENV] != socket
    assert gone(Path(socket)), "the runner still accepts stages after its run"
    after = probe(workspace, socket, "exit", "0")  # a stage that starts after the run
    assert report(after)["preloaded"] is False
    _, err = running.communicate(timeout=30)
    assert running.returncode == 0, err  # the stage it was running still finished
    assert gone(Path(socket).parent)


def test_disabled_runner_changes_nothing() -> None:
    before = os.environ.get(SOCKET_ENV)
    with warm_runner(enabled=False) as socket:
        assert socket is None
        assert os.environ.get(SOCKET_ENV) == before


def test_load_time_env_keeps_what_imports_read() -> None:
    env = {
        "TF_ENABLE_ONEDNN_OPTS": "0",
        "TF_CPP_MIN_LOG_LEVEL": "2",  # log level only
        "KERAS_BACKEND": "tensorflow",
        "PYTHONHASHSEED": "0",
        "CUDA_VISIBLE_DEVICES": "1",  # read when the child starts CUDA, not at import
        "PATH": "/bin",
    }
    assert load_time_env(env) == {
        "TF_ENABLE_ONEDNN_OPTS": "0",
        "KERAS_BACKEND": "tensorflow",
        "PYTHONHASHSEED": "0",
    }


def test_a_run_that_ends_while_the_runner_imports_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`nntune run` can end within seconds, while its servers still import TensorFlow: the
    stop is kept for after the imports, and the folder is removed."""
    (tmp_path / "slow_import.py").write_text("import time\ntime.sleep(2)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    with warm_runner(flavours={"": ("slow_import",)}) as socket:
        assert socket is not None
    assert gone(Path(socket).parent, timeout=20), "a server killed in its imports left its folder"


def test_an_empty_queue_starts_no_runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nntune import monitor

    started = []
    monkeypatch.setattr(monitor, "warm_runner", lambda *a, **k: started.append(a))
    monkeypatch.setattr(monitor, "open_repo", lambda root: _Nothing())
    monkeypatch.setattr(monitor, "queue_state", lambda repo: monitor.QueueState())
    outcome = monitor.run_queue(tmp_path, 2, None, None)  # type: ignore[arg-type]
    assert outcome.total == 0 and not started


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None
