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
import socket as socket_module
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from hashlib import sha256
from pathlib import Path

import pytest
from conftest import REPO

from nntune.warm.client import (
    CONNECT_TIMEOUT_ENV,
    HEADER,
    LOST_EXIT,
    PROTOCOL,
    SOCKET_ENV,
    flavour_socket,
    load_time_env,
    process_alive,
)
from nntune.warm.launcher import warm_runner
from nntune.warm.snapshot import fingerprint_nntune, stat_nntune

PROBE = """
import json, os, signal, sys, time
from nntune.warm.client import handoff

handoff(__name__, os.environ.get("PROBE_FLAVOUR", ""))
kept = "nntune.errors" in sys.modules  # the server's module, kept (nothing here imports it)
import importlib, nntune

lazy = os.environ.get("PROBE_IMPORT")
lazy = importlib.import_module(lazy) if lazy else None

if os.environ.get("PROBE_LOG"):  # one line each time the stage's body runs
    with open(os.environ["PROBE_LOG"], "a") as log:
        log.write(f"{os.getpid()}\\n")
mode = sys.argv[1]
print(json.dumps({
    "preloaded": "wave" in sys.modules,
    "extra": "colorsys" in sys.modules,
    "nntune": nntune.__file__,
    "marker": getattr(nntune, "MARKER", None),
    "kept_errors": kept,
    "errors_file": sys.modules["nntune.errors"].__file__ if kept else None,
    "lazy_marker": getattr(lazy, "MARKER", None),
    "lazy_file": getattr(lazy, "__file__", None),
    "argv": sys.argv,
    "cwd": os.getcwd(),
    "socket_env": os.environ.get("NNTUNE_WARM_SOCKET"),
    "probe_value": os.environ.get("PROBE_VALUE"),
    "path0": sys.path[0],
    "pid": os.getpid(),
    "sigint_default": signal.getsignal(signal.SIGINT) is signal.default_int_handler,
    "sigint_ignored": signal.getsignal(signal.SIGINT) is signal.SIG_IGN,
    "wakeup_fd": signal.set_wakeup_fd(-1),
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
def same_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working copy whose nntune has the installed one's bytes, except for one module that
    no server preloads, which carries a marker."""
    root = tmp_path_factory.mktemp("same")
    shutil.copytree(REPO / "src" / "nntune", root / "src" / "nntune")
    rows = root / "src" / "nntune" / "experiments" / "rows.py"
    rows.write_text(rows.read_text() + 'MARKER = "snapshot"\n')
    (root / "stages").mkdir()
    (root / "stages" / "probe.py").write_text(PROBE)
    return root


@pytest.fixture(scope="module")
def runner() -> Iterator[str]:
    flavours = {"": ("wave",), "extra": ("wave", "colorsys"), "nntune": ("wave", "nntune.errors")}
    with warm_runner(flavours=flavours, backends=("tensorflow",)) as socket:
        assert socket is not None, "the warm runner did not start"
        yield socket


def probe(
    workspace: Path, socket: str | None, *args: str, ignore_sigint: bool = False, **env: str
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
        preexec_fn=sigint_ignored if ignore_sigint else sigint_as_in_a_terminal,
    )


def sigint_as_in_a_terminal() -> None:
    """A background job of a non-interactive shell (`make test &`, nohup) ignores SIGINT, and
    so would every probe: give the probes SIGINT's default, as a terminal's command has."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def sigint_ignored() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


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


def test_a_stage_keeps_the_servers_nntune_where_its_copy_has_the_same_bytes(
    same_copy: Path, workspace: Path, runner: str
) -> None:
    """The server preloaded nntune.errors. A copy with the same bytes keeps it, re-pointed at
    the copy, and what it imports later comes from the copy; a copy where one module the
    server loaded differs (the workspace's __init__) imports all of nntune afresh."""
    lazy = "nntune.experiments.rows"  # not preloaded; only the copy's carries the marker
    seen = report(probe(same_copy, runner, "exit", "0", PROBE_FLAVOUR="nntune", PROBE_IMPORT=lazy))
    assert seen["preloaded"] is True
    assert seen["kept_errors"] is True
    assert seen["errors_file"] == str(same_copy / "src" / "nntune" / "errors.py")
    assert seen["nntune"] == str(same_copy / "src" / "nntune" / "__init__.py")
    assert seen["lazy_marker"] == "snapshot"
    assert seen["lazy_file"] == str(same_copy / "src" / "nntune" / "experiments" / "rows.py")

    seen = report(probe(workspace, runner, "exit", "0", PROBE_FLAVOUR="nntune", PROBE_IMPORT=lazy))
    assert seen["preloaded"] is True
    assert seen["kept_errors"] is False
    assert seen["marker"] == "snapshot"
    assert seen["lazy_marker"] is None  # the workspace's rows.py is the installed one's
    assert seen["lazy_file"] == str(workspace / "src" / "nntune" / "experiments" / "rows.py")


def test_a_module_changed_after_the_imports_began_is_not_fingerprinted() -> None:
    """Its bytes may not be those that were imported: a module whose file's modification
    time is not the one taken before the imports is left out, and a child then imports all
    of nntune afresh."""
    errors = REPO / "src/nntune/errors.py"
    before = stat_nntune()
    now = fingerprint_nntune(before)
    assert now["nntune.errors"] == ("errors.py", sha256(errors.read_bytes()).hexdigest())
    changed = {**before, str(errors): before[str(errors)] - 1}
    assert "nntune.errors" not in fingerprint_nntune(changed)
    assert "nntune.config" in fingerprint_nntune(changed)  # the others stay
    assert fingerprint_nntune({}) == {}


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
    out = probe(workspace, runner, "exit", "0", KERAS_HOME="/not/the/runners")
    assert out.returncode == 0, out.stderr
    assert report(out)["preloaded"] is False
    assert "warm runner refused (KERAS_HOME differ" in out.stderr
    assert "this stage starts cold" in out.stderr


def test_a_stage_goes_to_the_runner_of_its_keras_backend(workspace: Path, runner: str) -> None:
    """The runner of `runner` loaded TensorFlow only: a JAX stage finds no runner of its
    backend and starts cold; with a JAX server beside it, it runs warm there."""
    cold = probe(workspace, runner, "exit", "0", KERAS_BACKEND="jax")
    assert report(cold)["preloaded"] is False
    assert "warm runner not reachable" in cold.stderr
    with warm_runner(flavours={"": ("wave",)}, backends=("tensorflow", "jax")) as both:
        assert both is not None
        assert Path(f"{both}.jax").exists()
        warm = probe(workspace, both, "exit", "0", KERAS_BACKEND="jax")
        default = probe(workspace, both, "exit", "0")  # no KERAS_BACKEND: TensorFlow's
    assert warm.returncode == 0, warm.stderr
    assert report(warm)["preloaded"] is True, warm.stderr
    assert report(default)["preloaded"] is True, default.stderr


def test_a_server_refuses_a_stage_of_another_backend(tmp_path: Path) -> None:
    from nntune.warm.server import Server

    server = Server(str(tmp_path / "socket"))
    try:
        request = {
            "protocol": PROTOCOL,
            "prefix": sys.prefix,
            "version": sys.version,
            "argv": ["stages/train.py"],
            "cwd": str(tmp_path),
        }
        env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
        assert server._refusal({**request, "env": env}) is None
        refused = server._refusal({**request, "env": {**env, "KERAS_BACKEND": "jax"}})
        assert refused == "the stage runs Keras on jax, this runner loaded tensorflow"
    finally:
        server.listener.close()


def test_unreachable_runner_means_a_cold_start(workspace: Path, tmp_path: Path) -> None:
    out = probe(workspace, str(tmp_path / "no-socket"), "exit", "4")
    assert out.returncode == 4
    assert report(out)["preloaded"] is False
    assert "warm runner not reachable" in out.stderr


def start_probe(
    workspace: Path, socket: str | None, seconds: str, **env: str
) -> subprocess.Popen[str]:
    """A probe that sleeps, started in the background; its first stdout line is its report."""
    full = {**os.environ, "PYTHONPATH": "src", **env}
    full.pop(SOCKET_ENV, None)
    if socket is not None:
        full[SOCKET_ENV] = socket
    return subprocess.Popen(
        [sys.executable, "stages/probe.py", "sleep", seconds],
        cwd=workspace,
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_as_in_a_terminal,
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
        "KERAS_BACKEND": "jax",  # compared apart: each backend has servers of its own
        "KERAS_HOME": "/k",
        "JAX_ENABLE_X64": "1",
        "XLA_FLAGS": "--xla_gpu_deterministic_ops=true",  # read when XLA starts, in the child
        "PYTHONHASHSEED": "0",
        "CUDA_VISIBLE_DEVICES": "1",  # read when the child starts CUDA, not at import
        "PATH": "/bin",
    }
    assert load_time_env(env) == {
        "TF_ENABLE_ONEDNN_OPTS": "0",
        "KERAS_HOME": "/k",
        "JAX_ENABLE_X64": "1",
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
    from nntune.backends import local
    from nntune.experiments import QueueState

    started = []
    monkeypatch.setattr(local, "warm_runner", lambda *a, **k: started.append(a))
    monkeypatch.setattr(local, "open_repo", lambda root: _Nothing())
    for executor in ("nntune", "dvc"):
        workers = local.local_executor(tmp_path, executor, 2)  # type: ignore[arg-type]
        monkeypatch.setattr(workers, "state", lambda repo: QueueState())
        monkeypatch.setattr(local, "local_executor", lambda *a, w=workers: w)
        outcome = local.run_queue(tmp_path, 2, None, None, executor=executor)  # type: ignore[arg-type]
        assert outcome.total == 0 and not started


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


# -- crash safety: a stage runs exactly once, warm or cold ---------------------------------


def ran(log: Path) -> list[str]:
    """The pids that ran the probe's body, one line each time it ran."""
    return log.read_text().splitlines() if log.exists() else []


def connected(path: str, timeout: float = 10) -> bool:
    """Whether a client has connected to the listening socket ``path`` (Linux: the pending
    connection is listed under the listener's path in /proc/net/unix)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = Path("/proc/net/unix").read_text().splitlines()
        if sum(line.endswith(f" {path}") for line in lines) > 1:
            return True
        time.sleep(0.02)
    return False


def ended(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not process_alive(pid)


@pytest.fixture
def slow_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, int]]:
    """A runner whose server is still importing (60 s) when the test's stages connect: its
    socket path and its pid. Left behind by a test that kills the server: its folder."""
    (tmp_path / "slow_import.py").write_text("import time\ntime.sleep(60)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    with warm_runner(flavours={"": ("slow_import",)}) as socket:
        assert socket is not None
        pid_file = Path(f"{socket}.pid")
        deadline = time.monotonic() + 10
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        server = int(pid_file.read_text())
        try:
            yield socket, server
        finally:
            with suppress(ProcessLookupError):
                os.kill(server, signal.SIGKILL)
    shutil.rmtree(Path(socket).parent, ignore_errors=True)


def test_the_child_handles_signals_as_a_cold_stage(workspace: Path, runner: str) -> None:
    """Ctrl-C raises KeyboardInterrupt in the stage (not the server's stop handler), and the
    server's signal wakeup fd is not the child's (a signal would write into whatever file
    got that descriptor number)."""
    warm = report(probe(workspace, runner, "exit", "0"))
    cold = report(probe(workspace, None, "exit", "0"))
    assert warm["preloaded"] is True
    assert warm["sigint_default"] is cold["sigint_default"] is True
    assert warm["wakeup_fd"] == cold["wakeup_fd"] == -1


def test_a_stage_that_ignores_sigint_has_a_child_that_ignores_it(
    workspace: Path, runner: str
) -> None:
    """`nntune run &` from a script: the stages ignore SIGINT cold, and so warm."""
    warm = report(probe(workspace, runner, "exit", "0", ignore_sigint=True))
    cold = report(probe(workspace, None, "exit", "0", ignore_sigint=True))
    assert warm["preloaded"] is True and cold["preloaded"] is False
    assert warm["sigint_ignored"] is cold["sigint_ignored"] is True


def test_ctrl_c_reaches_the_stage_as_in_a_cold_run(
    workspace: Path, runner: str, tmp_path: Path
) -> None:
    log = tmp_path / "ran"
    outcomes = {}
    for mode, socket in (("warm", runner), ("cold", None)):
        with start_probe(workspace, socket, "30", PROBE_LOG=str(log)) as client:
            assert client.stdout is not None
            assert json.loads(client.stdout.readline())["preloaded"] is (mode == "warm")
            client.send_signal(signal.SIGINT)  # the stage's process, as DVC's Ctrl-C does
            _, err = client.communicate(timeout=30)
        assert "KeyboardInterrupt" in err, err
        outcomes[mode] = client.returncode
    # Killed by SIGINT: the warm client exits 128 + 2, as a shell reports the cold one.
    assert outcomes == {"warm": 128 + signal.SIGINT, "cold": -signal.SIGINT}
    assert len(ran(log)) == 2  # once each


def test_runner_killed_mid_stage_fails_the_stage_and_never_reruns_it(
    workspace: Path, tmp_path: Path
) -> None:
    log = tmp_path / "ran"
    with warm_runner(flavours={"": ("wave",)}) as socket:
        assert socket is not None
        server = int(Path(f"{socket}.pid").read_text())
        with start_probe(workspace, socket, "20", PROBE_LOG=str(log)) as client:
            assert client.stdout is not None
            seen = json.loads(client.stdout.readline())
            assert seen["preloaded"] is True
            os.kill(server, signal.SIGKILL)
            started = time.monotonic()
            _, err = client.communicate(timeout=60)
            took = time.monotonic() - started
    shutil.rmtree(Path(socket).parent, ignore_errors=True)
    assert ran(log) == [str(seen["pid"])], err  # exactly once: not rerun cold
    assert client.returncode == LOST_EXIT, err
    message = [line for line in err.splitlines() if line.startswith("nntune:")]
    assert len(message) == 1, err
    assert "warm runner failed while it ran this stage" in message[0]
    assert "not rerun cold" in message[0]
    assert "rerun `nntune run`" in message[0] and "`nntune run --cold`" in message[0]
    assert ended(int(seen["pid"]), timeout=1), "the stage's child outlived its client"
    assert took < 10  # stopped, not waited for (it sleeps 20 s)


def test_runner_killed_before_it_answers_means_one_cold_run(
    workspace: Path, tmp_path: Path, slow_server: tuple[str, int]
) -> None:
    socket, server = slow_server
    log = tmp_path / "ran"
    with start_probe(workspace, socket, "0", PROBE_LOG=str(log)) as client:
        assert connected(socket), "the stage did not connect"
        os.kill(server, signal.SIGKILL)  # still importing: it has not answered
        out, err = client.communicate(timeout=30)
    assert client.returncode == 0, err
    assert json.loads(out.splitlines()[0])["preloaded"] is False
    assert "this stage starts cold" in err  # connection reset or closed: nothing ran
    assert "warm runner failed" not in err
    assert len(ran(log)) == 1


def test_no_answer_in_time_means_a_cold_start(workspace: Path, tmp_path: Path) -> None:
    """A server that accepts connections (its backlog does) but never answers."""
    path = tmp_path / "silent"
    with socket_module.socket(socket_module.AF_UNIX, socket_module.SOCK_STREAM) as silent:
        silent.bind(str(path))
        silent.listen(8)
        started = time.monotonic()
        out = probe(workspace, str(path), "exit", "5", **{CONNECT_TIMEOUT_ENV: "0.5"})
        took = time.monotonic() - started
    assert out.returncode == 5, out.stderr
    assert report(out)["preloaded"] is False
    assert "did not answer within 0.5 s (NNTUNE_WARM_CONNECT_TIMEOUT)" in out.stderr
    assert "this stage starts cold" in out.stderr
    assert took < 5


def test_an_answer_after_the_timeout_does_not_run_the_stage_again(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stage that gave up runs cold; the server answers its connection later, once its
    imports are done, and that child must not run the stage too."""
    (tmp_path / "slow_import.py").write_text("import time\ntime.sleep(1.5)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    log = tmp_path / "ran"
    with warm_runner(flavours={"": ("slow_import",)}) as socket:
        assert socket is not None
        early = probe(
            workspace, socket, "exit", "0", PROBE_LOG=str(log), **{CONNECT_TIMEOUT_ENV: "0.3"}
        )
        assert report(early)["preloaded"] is False
        assert "did not answer within 0.3 s" in early.stderr
        later = probe(workspace, socket, "exit", "0", PROBE_LOG=str(log))  # after the early one
        assert "starts cold" not in later.stderr  # forked by the server
        time.sleep(0.5)  # time enough for a child that ran the early stage to have logged it
    assert ran(log) == [str(report(early)["pid"]), str(report(later)["pid"])]


def raw_request(path: str, request: dict[str, object]) -> socket_module.socket:
    """What handoff sends first."""
    sock = socket_module.socket(socket_module.AF_UNIX, socket_module.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(path)
    payload = json.dumps(request).encode()
    sock.sendall(HEADER.pack(len(payload)) + payload)
    return sock


def go(sock: socket_module.socket) -> None:
    """What handoff sends once started: the go, with /dev/null as the standard streams."""
    null = os.open(os.devnull, os.O_RDWR)
    try:
        socket_module.send_fds(sock, [b"g"], [null, null, null])
    finally:
        os.close(null)


def probe_request(workspace: Path, log: Path) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": "src", "PROBE_LOG": str(log)}
    env.pop(SOCKET_ENV, None)
    return {
        "protocol": PROTOCOL,
        "argv": ["stages/probe.py", "exit", "0"],
        "cwd": str(workspace),
        "env": env,
        "prefix": sys.prefix,
        "version": sys.version,
        "pid": os.getpid(),
    }


def answer(sock: socket_module.socket) -> dict[str, object]:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return dict(json.loads(data or b"{}"))


def test_a_started_child_waits_for_its_clients_go(
    workspace: Path, runner: str, tmp_path: Path
) -> None:
    log = tmp_path / "ran"
    with raw_request(runner, probe_request(workspace, log)) as sock:
        started = answer(sock)
    assert started.get("protocol") == PROTOCOL, started
    child = int(str(started["started"]))
    assert ended(child), "a child whose client left before its go still runs"
    assert ran(log) == []  # it exited without running the stage
    with raw_request(runner, probe_request(workspace, log)) as sock:
        child = int(str(answer(sock)["started"]))
        go(sock)
        assert answer(sock) == {"exit": 0}
    assert ran(log) == [str(child)]


def test_both_sides_refuse_another_protocol(workspace: Path, runner: str, tmp_path: Path) -> None:
    log = tmp_path / "ran"
    old = {**probe_request(workspace, log), "protocol": PROTOCOL - 1}
    with raw_request(runner, old) as sock:
        refused = answer(sock)
    assert refused == {"refused": f"protocol {PROTOCOL - 1}, the runner speaks {PROTOCOL}"}
    # A server of another protocol that answers `started`: the stage must not send its go.
    path = tmp_path / "other"
    got: list[bytes] = []
    with socket_module.socket(socket_module.AF_UNIX, socket_module.SOCK_STREAM) as other:
        other.bind(str(path))
        other.listen(1)

        def serve() -> None:
            conn, _ = other.accept()
            with conn:
                conn.settimeout(30)
                (size,) = HEADER.unpack(conn.recv(HEADER.size))
                while size > 0:
                    size -= len(conn.recv(size))
                conn.sendall(json.dumps({"started": 1, "protocol": PROTOCOL - 1}).encode() + b"\n")
                got.append(conn.recv(1))

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        out = probe(workspace, str(path), "exit", "0", PROBE_LOG=str(log))
        thread.join(10)
    assert got == [b""], "the stage sent its go to a server of another protocol"
    assert out.returncode == 0 and report(out)["preloaded"] is False
    assert f"speaks protocol {PROTOCOL - 1}, this stage {PROTOCOL}" in out.stderr
    assert len(ran(log)) == 1


def zombie() -> subprocess.Popen[bytes]:
    """A child of this process that was killed and that nobody has reaped yet."""
    process = subprocess.Popen(["sleep", "60"])
    process.kill()
    deadline = time.monotonic() + 10
    stat = Path(f"/proc/{process.pid}/stat")
    while stat.read_text().rpartition(")")[2].split()[0] != "Z":
        assert time.monotonic() < deadline, "no zombie"
        time.sleep(0.01)
    return process


def test_a_zombie_is_not_alive() -> None:
    assert process_alive(os.getpid())
    process = zombie()
    try:
        os.kill(process.pid, 0)  # the process table still has it
        assert not process_alive(process.pid)
    finally:
        process.wait()
    assert not process_alive(process.pid)
    assert not process_alive(0) and not process_alive(-1)


def test_a_server_stops_when_its_owner_is_a_zombie(tmp_path: Path) -> None:
    """A `nntune run` killed by its parent that has not reaped it yet is dead all the
    same: its servers must not outlive it."""
    owner = zombie()
    path = tmp_path / "socket"
    try:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nntune.warm.server",
                str(path),
                "--owner",
                str(owner.pid),
                "--preload=",
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            assert server.wait(timeout=15) == 0
        finally:
            server.kill()
            server.wait()
    finally:
        owner.wait()
    assert not path.exists()


def test_each_flavours_server_preloads_the_nntune_modules_its_stage_scripts_import() -> None:
    """A module missing from STAGE_MODULES would not break a stage (it imports it), but
    every stage would pay for its import again: keep the list in step with stages/."""
    import ast

    from nntune.warm.client import FLAVOURS, STAGE_MODULES

    checked = 0
    for script in sorted((REPO / "stages").glob("*.py")):
        tree = ast.parse(script.read_text())
        calls = [
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "handoff"
        ]
        if not calls:
            continue  # a stage that never runs warm (validate, prepare, ensemble)
        args = calls[0].args
        flavour = args[1].value if len(args) > 1 and isinstance(args[1], ast.Constant) else ""
        imported = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nntune"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    is_module = (REPO / "src" / (sub.replace(".", "/") + ".py")).exists()
                    imported.add(sub if is_module else str(node.module))
        imported.discard("nntune.warm.client")  # the runner's own
        assert imported <= set(STAGE_MODULES[flavour]), (script.name, flavour)
        assert set(STAGE_MODULES[flavour]) <= set(FLAVOURS[flavour])
        checked += 1
    assert checked >= 4  # train, pretrain, warmstart, evaluate, fold


SELECT_PROBE = """
import json, os, sys
from nntune.warm.client import handoff

handoff(__name__, select=True)
print(json.dumps({
    "preloaded": "wave" in sys.modules,
    "server": os.getppid(),
    "backend": os.environ.get("KERAS_BACKEND"),
    "preallocate": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"),
}), flush=True)
"""


def select_probe(copy: Path, socket: str, backend: str) -> subprocess.CompletedProcess[str]:
    (copy / "stages" / "select_probe.py").write_text(SELECT_PROBE)
    (copy / f"{backend}.yaml").write_text(f"runtime:\n  backend: {backend}\n")
    env = {**os.environ, "PYTHONPATH": "src", SOCKET_ENV: socket, "KERAS_BACKEND": "tensorflow"}
    return subprocess.run(
        [sys.executable, "stages/select_probe.py", f"{backend}.yaml"],
        cwd=copy, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_the_runner_reads_a_stages_backend_from_its_params_and_sends_it_to_that_server(
    same_copy: Path, tmp_path: Path
) -> None:
    """A stage handed off with `select` imports no YAML parser: the run's server (TensorFlow
    here) reads runtime.backend of the stage's params file, runs a TensorFlow stage, and
    sends a JAX one to the JAX server, with the environment select_for_stage gives it. The
    environment's KERAS_BACKEND does not count, as in a cold stage."""
    flavours = {"": ("wave", "nntune.stage.backend")}
    with warm_runner(flavours=flavours, backends=("tensorflow", "jax")) as both:
        assert both is not None
        servers = {
            b: int(Path(flavour_socket(both, "", b) + ".pid").read_text())
            for b in ("tensorflow", "jax")
        }
        on_jax = select_probe(same_copy, both, "jax")
        on_tf = select_probe(same_copy, both, "tensorflow")
    assert on_jax.returncode == 0, on_jax.stderr
    assert report(on_jax) == {
        "preloaded": True,
        "server": servers["jax"],
        "backend": "jax",
        "preallocate": "false",
    }
    assert report(on_tf) == {
        "preloaded": True,
        "server": servers["tensorflow"],
        "backend": "tensorflow",
        "preallocate": None,
    }
    assert "cold" not in on_jax.stderr + on_tf.stderr

    # Without a JAX server the JAX stage starts cold; so does a stage whose copy of the
    # module that reads the backend is not the runner's.
    changed = tmp_path / "changed"
    shutil.copytree(same_copy / "src", changed / "src")
    (changed / "stages").mkdir()
    backend_py = changed / "src" / "nntune" / "stage" / "backend.py"
    backend_py.write_text(backend_py.read_text() + "\n# changed\n")
    with warm_runner(flavours=flavours, backends=("tensorflow",)) as alone:
        assert alone is not None
        cold = select_probe(same_copy, alone, "jax")
        other = select_probe(changed, alone, "tensorflow")
    assert report(cold)["preloaded"] is False
    assert "warm runner not reachable" in cold.stderr
    assert report(other)["preloaded"] is False
    assert "nntune.stage.backend differs from this runner's" in other.stderr


def test_a_bad_request_is_refused_and_the_server_goes_on_serving(
    workspace: Path, runner: str, tmp_path: Path
) -> None:
    """Whatever a client sends (not an object, an environment that is no mapping, with and
    without `select`, JSON nested past the parser's depth, a size no stage sends), the
    server answers with a refusal and still runs the next stage."""
    base = probe_request(workspace, tmp_path / "ran")
    bad: list[object] = [
        [1, 2],
        {**base, "env": "x", "select": True},
        {**base, "env": [1], "select": True},
        {**base, "env": ["a"]},
        {**base, "argv": []},
        {**base, "cwd": 3, "select": True},
    ]
    for request in bad:
        sock = socket_module.socket(socket_module.AF_UNIX, socket_module.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(runner)
        payload = json.dumps(request).encode()
        sock.sendall(HEADER.pack(len(payload)) + payload)
        with sock:
            reply = answer(sock)
        assert "bad request" in str(reply.get("refused")), (request, reply)
    deep = b"[" * 100_000 + b"]" * 100_000
    for header, payload in ((HEADER.pack(len(deep)), deep), (HEADER.pack(2**62), b"")):
        with socket_module.socket(socket_module.AF_UNIX, socket_module.SOCK_STREAM) as sock:
            sock.settimeout(30)
            sock.connect(runner)
            sock.sendall(header + payload)
            assert "bad request" in str(answer(sock).get("refused"))
    out = probe(workspace, runner, "exit", "0")
    assert out.returncode == 0 and report(out)["preloaded"] is True, out.stderr
