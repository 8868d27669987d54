"""A warm runner for the stage scripts of one ``nntune run``.

Every stage of a trial is a fresh process that DVC starts, and the training and evaluation
stages spend about 4 s each importing TensorFlow before they do any work: on digits that is
more than the training itself. ``nntune run`` therefore starts servers for the run
(``python -m nntune.warm SOCKET``) that import the stages' third-party libraries once
(TensorFlow, Keras, pandas, pyarrow, dvclive; one of them also scikit-learn's metrics, for
the evaluate stage) and then fork a child per stage. DVC still starts each stage's command
as it always does; the stage script's first call, :func:`handoff`, passes its argv, working
directory, environment and then standard streams over a Unix socket, and exits with the
child's exit code.

What keeps a forked stage equal to a cold one:

- The server imports but never initialises TensorFlow's runtime (no op, no device), so no
  runtime thread or device exists when it forks; CUDA, thread pools and devices are created
  in the child, from the child's own environment (``CUDA_VISIBLE_DEVICES`` of its worker).
- The child imports nntune afresh: every ``nntune`` module is dropped from ``sys.modules``
  and ``sys.path`` is rebuilt as ``PYTHONPATH=src python stages/X.py`` would build it in the
  stage's working copy, so a queued experiment runs its own snapshot's code.
- Settings read while the libraries load (``TF_*``, ``KERAS_*``, the interpreter) must equal
  the server's; otherwise the server refuses and the stage runs cold, as it does when no
  server answers.
- The child gets its own session: when the stage's process dies (DVC cancels the trial), the
  server kills the child's process group. A Ctrl-C (SIGINT) that reaches the stage's process
  is passed on to the child, whose SIGINT handling is Python's default, as in a cold stage.

Crash safety: a stage runs exactly once, warm or cold, never both. The server forks the
child, which waits, and answers ``started`` with the child's pid (and the protocol it
speaks); only when the stage's process has that answer does it send the go, with its
standard streams, which the server passes on to the child. Until then anything that goes
wrong (no server, a refusal, a server that dies, another :data:`PROTOCOL`, no answer within
``NNTUNE_WARM_CONNECT_TIMEOUT`` seconds, default 60, which covers a server still importing
TensorFlow) means nothing ran: the stage runs cold, the child (if any) exits without
running it, and the server holds none of the stage's streams. After ``started`` the
stage is never rerun cold: if the server or the connection dies before the child's exit
code comes back, the stage's process stops the child (its pid came with ``started``), says
so in one line on stderr and exits with 1; ``nntune run`` runs the trial again, and
``nntune run --cold`` runs without the warm runner.

Only the standard library is imported at the top: the client side runs in every stage.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

SOCKET_ENV = "NNTUNE_WARM_SOCKET"
PROFILE_ENV = "NNTUNE_PROFILE"  # nntune.stage's; repeated here to keep this module light
PROFILE_CLIENT_ENV = "NNTUNE_PROFILE_CLIENT_PID"
CONNECT_TIMEOUT_ENV = "NNTUNE_WARM_CONNECT_TIMEOUT"
CONNECT_TIMEOUT = 60.0  # seconds; a server answers once its imports are done
# 2: the server answers `started` (the child's pid) and the child waits for the client's go.
PROTOCOL = 2
_GO = b"g"
LOST_EXIT = 1  # the stage's exit code when the runner died while it ran the stage
_NOT_RUN = 70  # a child's exit code when its go did not come (nobody is told it)
# What the stages of a trial import; each one costs a cold stage its start-up time.
# dvc.repo: dvclive's Live() opens the trial's DVC repository (0.18 s to import here).
PRELOAD = (
    "numpy",
    "pandas",
    "pyarrow.parquet",
    "yaml",
    "keras",
    "dvclive",
    "dvclive.keras",
    "dvc.repo",
)
# One server per preload set, named by the suffix of its socket. Scikit-learn gets its own:
# loaded in the server that forks the train stage, it made that stage's `fit` 13-15% slower
# (paired medians of 5-6 runs; loaded in a cold process it does not), while the evaluate
# stage needs its metrics (1.0-1.5 s to import).
FLAVOURS: dict[str, tuple[str, ...]] = {"": PRELOAD, "sklearn": (*PRELOAD, "sklearn.metrics")}
# Read by TensorFlow, Keras or the interpreter while they load, so a child must see the
# values the server loaded with. (TF_CPP_* only sets the log level of C++ messages.)
_LOAD_TIME_PREFIXES = ("TF_", "KERAS_")
_LOAD_TIME_KEYS = (
    "PYTHONHASHSEED",
    "PYTHONWARNINGS",
    "PYTHONOPTIMIZE",
    "PYTHONSAFEPATH",
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "ARROW_DEFAULT_MEMORY_POOL",
)
_HEADER = struct.Struct("!Q")


def load_time_env(env: dict[str, str]) -> dict[str, str]:
    """The part of an environment the server's imports depended on."""
    return {
        key: value
        for key, value in env.items()
        if (key.startswith(_LOAD_TIME_PREFIXES) and not key.startswith("TF_CPP_"))
        or key in _LOAD_TIME_KEYS
    }


# -- client: the first call of every stage script ---------------------------------------


def handoff(module: str = "__main__", flavour: str = "") -> None:
    """Run this stage in the warm runner when ``nntune run`` started one. A stage script
    calls it first, with its ``__name__`` (imported as a module, it hands nothing off), and
    the :data:`FLAVOURS` key of the server whose preloaded modules it needs.

    Does not return when the warm runner started the stage: the process exits with the
    stage's exit code, or with :data:`LOST_EXIT` when the runner died while it ran the stage
    (never rerun cold: it may have done part of its work). Returns (and the script goes on
    cold) when there is no runner, it cannot be reached, it does not answer in time or it
    refuses; the reason goes to stderr."""
    base = os.environ.get(SOCKET_ENV)
    if not base or module != "__main__":
        return
    request = {
        "protocol": PROTOCOL,
        "argv": sys.argv,
        "cwd": str(Path.cwd()),
        "env": dict(os.environ),
        "prefix": sys.prefix,
        "version": sys.version,
        "pid": os.getpid(),
        # Started in the background by a non-interactive shell, a process ignores SIGINT;
        # the child keeps that, as the cold stage would.
        "sigint_ignored": signal.getsignal(signal.SIGINT) is signal.SIG_IGN,
    }
    timeout = _connect_timeout()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        reply = _handshake(sock, _socket(base, flavour), request, timeout)
    except TimeoutError:
        sock.close()
        print(
            f"nntune: warm runner did not answer within {timeout:g} s ({CONNECT_TIMEOUT_ENV});"
            " this stage starts cold",
            file=sys.stderr,
        )
        return
    except (OSError, ValueError) as exc:
        sock.close()
        print(f"nntune: warm runner not reachable ({exc}); this stage starts cold", file=sys.stderr)
        return
    if "started" not in reply or reply.get("protocol") != PROTOCOL:
        sock.close()  # without our go, a child the server forked exits before the stage
        reason = reply.get("refused") or (
            f"it speaks protocol {reply.get('protocol')}, this stage {PROTOCOL}"
            if "started" in reply
            else "it stopped before answering"
        )
        print(f"nntune: warm runner refused ({reason}); this stage starts cold", file=sys.stderr)
        return
    # From here on the stage may be running in the child: it is never rerun cold.
    _relay(sock, int(reply["started"]))


def _connect_timeout() -> float:
    try:
        value = float(os.environ.get(CONNECT_TIMEOUT_ENV) or CONNECT_TIMEOUT)
    except ValueError:
        return CONNECT_TIMEOUT
    return value if value > 0 else CONNECT_TIMEOUT


def _handshake(
    sock: socket.socket, path: str, request: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """Connect, pass the request, and read the server's first
    answer, all within ``timeout`` seconds (:class:`TimeoutError` past it). The standard
    streams go with the go, so that a server that answers late holds none of them."""
    deadline = time.monotonic() + timeout

    def step() -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        sock.settimeout(left)

    step()
    sock.connect(path)
    payload = json.dumps(request).encode()
    step()
    sock.sendall(_HEADER.pack(len(payload)) + payload)
    data = b""
    while not data.endswith(b"\n"):
        step()
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    reply = json.loads(data or b"{}")
    if not isinstance(reply, dict):
        raise ValueError(f"unexpected answer {reply!r}")
    return reply


def _relay(sock: socket.socket, child: int) -> NoReturn:
    """Let the started child run the stage, pass a Ctrl-C on to it, and exit with its exit
    code; stop it and fail when the runner goes away first."""
    with suppress(ValueError):  # not the main thread: no Ctrl-C to pass on
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, lambda *_: _signal_group(child, signal.SIGINT))
    data = b""
    try:
        sock.settimeout(None)
        socket.send_fds(sock, [_GO], [0, 1, 2])  # the go, with the stage's standard streams
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)  # retried after the SIGINT handler (PEP 475)
            if not chunk:
                break
            data += chunk
        code = int(json.loads(data)["exit"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        what = f"its connection failed ({exc})" if isinstance(exc, OSError) else "it went away"
        _lost(child, what)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if code >= 0 else 128 - code)  # killed by signal N: 128 + N, as a shell says


def _lost(child: int, what: str) -> NoReturn:
    """The runner died after it had started the stage: stop the stage's child and fail."""
    stopped = "stopped it" if _end_group(child) else "it had already ended"
    print(
        f"nntune: the warm runner failed while it ran this stage ({what}; pid {child}, "
        f"{stopped}); the stage was not rerun cold, so that it cannot run twice: rerun "
        "`nntune run` to run it again, or `nntune run --cold` to run without the warm runner",
        file=sys.stderr,
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(LOST_EXIT)


def _signal_group(child: int, signum: int) -> None:
    """Signal the child's process group (its own session), if the pid is still that child."""
    with suppress(OSError):
        if os.getsid(child) == child and _alive(child):
            os.killpg(child, signum)


def _end_group(child: int, grace: float = 5.0) -> bool:
    """Stop the child's process group, SIGTERM then SIGKILL; whether it was still alive."""
    try:
        if os.getsid(child) != child or not _alive(child):
            return False  # gone, or its pid is another process's by now
    except OSError:
        return False
    for signum in (signal.SIGTERM, signal.SIGKILL):
        _signal_group(child, signum)
        deadline = time.monotonic() + grace
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not _alive(child):
            break
    return True


def _socket(base: str | Path, flavour: str) -> str:
    return f"{base}.{flavour}" if flavour else str(base)


# -- server -------------------------------------------------------------------------------


@dataclass
class Job:
    """One stage, run in a forked child of the server."""

    request: dict[str, Any]
    fds: list[int]  # the stage's standard streams; with a gate, they come through it
    base_path: list[str]
    gate: socket.socket | None = None  # the child's end of the pair the go comes through

    def run(self) -> None:
        """Wait for the client's go, become the stage's process, then run its script as
        ``__main__``. Exits without running it when the go does not come."""
        import importlib
        import types

        os.setsid()  # the server kills this group if the stage's client goes away
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        # Ctrl-C as in a cold stage: Python's default, or ignored where the stage's is.
        ignored = self.request.get("sigint_ignored") is True
        signal.signal(signal.SIGINT, signal.SIG_IGN if ignored else signal.default_int_handler)
        if self.gate is not None:
            try:  # b"": the client or the server went away
                go, self.fds, _, _ = socket.recv_fds(self.gate, len(_GO), 3)
            except BaseException:  # whatever it is (a Ctrl-C), the stage must not run
                go = b""
            if go != _GO or len(self.fds) != 3:
                os._exit(_NOT_RUN)
            self.gate.close()
        for target, fd in enumerate(self.fds):
            os.dup2(fd, target)
            os.close(fd)
        _reopen_stdio()
        argv = list(self.request["argv"])
        os.chdir(self.request["cwd"])
        os.environ.clear()
        os.environ.update(self.request["env"])
        os.environ.pop(SOCKET_ENV, None)  # inside the runner there is no runner
        if os.environ.get(PROFILE_ENV):  # the profile times the stage from its client's start
            os.environ[PROFILE_CLIENT_ENV] = str(self.request["pid"])
        script = Path(argv[0]).absolute()
        sys.path[:] = [str(script.parent), *_pythonpath(), *self.base_path]
        for name in [m for m in sys.modules if m == "nntune" or m.startswith("nntune.")]:
            del sys.modules[name]
        importlib.invalidate_caches()
        sys.argv = argv
        # What `python SCRIPT` does: a fresh __main__ with an absolute __file__.
        main = types.ModuleType("__main__")
        main.__file__ = str(script)
        sys.modules["__main__"] = main
        exec(compile(script.read_bytes(), str(script), "exec"), main.__dict__)


@dataclass
class _Child:
    """The server's side of a forked stage: its client's connection, and its end of the
    pair the go goes through until it has gone through (``None`` after)."""

    conn: socket.socket
    gate: socket.socket | None
    released: bool = False  # the go went through: the child runs the stage

    def open_gate(self) -> bool:
        """Read the client's go and pass it on, with the stage's standard streams; without
        it (the client went away, or sent something else) close the gate, so that the
        child exits without running the stage. Whether the stage runs."""
        fds: list[int] = []
        try:
            go, fds, _, _ = socket.recv_fds(self.conn, len(_GO), 3)
            if go == _GO and len(fds) == 3 and self.gate is not None:
                socket.send_fds(self.gate, [_GO], fds)
                self.released = True
        except OSError:
            pass
        for fd in fds:
            os.close(fd)
        self.close_gate()
        return self.released

    def close_gate(self) -> None:
        if self.gate is not None:
            self.gate.close()
            self.gate = None

    def close(self) -> None:
        self.close_gate()
        self.conn.close()


def _reopen_stdio() -> None:
    """Standard streams on the stage's descriptors, buffered as a fresh interpreter would
    buffer them (line-buffered on a terminal; stderr always)."""
    sys.stdin = open(0, encoding=sys.stdin.encoding, closefd=False)  # noqa: SIM115
    sys.stdout = open(  # noqa: SIM115
        1, "w", buffering=1 if os.isatty(1) else -1, encoding=sys.stdout.encoding, closefd=False
    )
    sys.stderr = open(  # noqa: SIM115
        2, "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace", closefd=False
    )


class Server:
    """Accepts stages on ``path`` and forks a child for each; answers each client with its
    child's exit code. Single-threaded, so that forking is safe."""

    def __init__(self, path: str, owner: int | None = None) -> None:
        self.path = path
        self.owner = owner
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)  # clients may connect (and wait) while the imports run
        self.listener.listen(128)
        self.children: dict[int, _Child] = {}
        self.stopping = False
        # From here on a stop request is remembered, also while the imports run, so that a
        # run that ends during them still gets its folder cleaned up.
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        own = set(_pythonpath())  # sys.path[0] is the server's folder (python -m)
        self.base_path = [p for p in sys.path[1:] if str(Path(p).absolute()) not in own]
        self.env = load_time_env(dict(os.environ))

    def preload(self, modules: Sequence[str] = PRELOAD) -> list[str]:
        """Import what the stages import; returns the modules that failed to import."""
        import importlib

        from nntune.quiet import import_keras_quietly

        failed = []
        for name in modules:
            try:
                if name == "keras":
                    import_keras_quietly()  # as the train stage loads it, start-up noise filtered
                importlib.import_module(name)
            except ImportError:
                failed.append(name)
        return failed

    def serve(self) -> Job | None:
        """The server's loop. Returns ``None`` in the server once it has stopped and its
        children have finished, and the child's :class:`Job` in each forked child."""
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ, None)
        selector.register(wake_r, selectors.EVENT_READ, None)
        while True:
            if self.owner is not None and not _alive(self.owner):
                self._stop()
            if self.stopping and self.listener.fileno() != -1:
                selector.unregister(self.listener)
                self._close_listener()
            if self.stopping and not self.children:
                return None
            for key, _ in selector.select(timeout=1.0):
                if key.fileobj is self.listener:
                    job = self._accept(selector)
                    if job is not None:  # in the child
                        selector.close()
                        signal.set_wakeup_fd(-1)  # the server's, which the child must not feed
                        os.close(wake_r)
                        os.close(wake_w)
                        return job
                elif key.fileobj == wake_r:
                    _drain(wake_r)  # a child exited (SIGCHLD) or a stop was asked
                else:  # a client's connection: its go, or its process went away
                    pid = key.data
                    child = self.children.get(pid)
                    if child is not None and child.gate is not None:
                        if child.open_gate():
                            continue  # the stage runs now
                        selector.unregister(key.fileobj)  # the child exits without running it
                        continue
                    selector.unregister(key.fileobj)
                    with suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGTERM)
            self._reap(selector)

    def _accept(self, selector: selectors.BaseSelector) -> Job | None:
        conn, _ = self.listener.accept()
        try:
            conn.settimeout(10)
            (size,) = _HEADER.unpack(_read_exactly(conn, _HEADER.size))
            request = json.loads(_read_exactly(conn, size))
            refused = self._refusal(request)
        except (OSError, ValueError, struct.error) as exc:
            refused = f"bad request: {exc}"
        if refused:
            with suppress(OSError):
                _send(conn, {"refused": refused})
            conn.close()
            return None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            ours.close()
            self._close_listener(unlink=False)
            for other in self.children.values():
                other.close()
            conn.close()
            return Job(request, [], self.base_path, theirs)
        theirs.close()
        child = self.children[pid] = _Child(conn, ours)
        try:
            _send(conn, {"started": pid, "protocol": PROTOCOL})
        except OSError:  # its client is gone already: the child exits without running it
            child.close_gate()
            return None
        conn.settimeout(None)
        selector.register(conn, selectors.EVENT_READ, pid)
        return None

    def _refusal(self, request: dict[str, Any]) -> str | None:
        if request.get("protocol") != PROTOCOL:
            return f"protocol {request.get('protocol')}, the runner speaks {PROTOCOL}"
        if request.get("prefix") != sys.prefix or request.get("version") != sys.version:
            return f"the stage runs another Python ({request.get('prefix')}), not {sys.prefix}"
        env = load_time_env(request.get("env", {}))
        if env != self.env:
            keys = sorted(k for k in set(env) | set(self.env) if env.get(k) != self.env.get(k))
            return f"{', '.join(keys)} differ from the runner's, which its imports read"
        return None

    def _reap(self, selector: selectors.BaseSelector) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue
            with suppress(KeyError):  # already unregistered if its client went away
                selector.unregister(child.conn)
            if child.released:  # else it did not run the stage: its client has no exit code
                with suppress(OSError):
                    _send(child.conn, {"exit": os.waitstatus_to_exitcode(status)})
            child.close()

    def _stop(self, *_: Any) -> None:
        self.stopping = True

    def _close_listener(self, unlink: bool = True) -> None:
        self.listener.close()
        if unlink:
            Path(self.path).unlink(missing_ok=True)


def _pythonpath() -> list[str]:
    """PYTHONPATH's entries, absolute, as the interpreter puts them on sys.path."""
    entries = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    return [str(Path(entry).absolute()) for entry in entries if entry]


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _read_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the stage closed its connection")
        data += chunk
    return data


def _send(conn: socket.socket, message: dict[str, Any]) -> None:
    conn.sendall(json.dumps(message).encode() + b"\n")


# -- the run's side: start and stop a server ----------------------------------------------


@contextmanager
def warm_runner(
    enabled: bool = True, flavours: dict[str, tuple[str, ...]] = FLAVOURS
) -> Iterator[str | None]:
    """Start the servers (one per flavour) for the duration of a run and point the stages of
    DVC's queue workers (started inside the block: they inherit the environment) at them.

    Yields the base socket path, or ``None`` when disabled or when a server did not start
    (the stages then run cold). On leaving, the servers stop accepting and exit once the
    stages they run have finished; stages that start later run cold. The servers are daemons
    (they outlive the run while stages they started still run) and stop by themselves if the
    run's process dies."""
    if not enabled:
        yield None
        return
    import subprocess
    import tempfile
    import time

    folder = Path(tempfile.mkdtemp(prefix="nntune-warm-"))
    base = folder / "socket"
    sockets = {flavour: Path(_socket(base, flavour)) for flavour in flavours}
    for flavour, modules in flavours.items():
        command = [sys.executable, "-m", "nntune.warm", str(sockets[flavour])]
        with Path(f"{sockets[flavour]}.log").open("wb") as log:
            subprocess.run(
                [*command, "--owner", str(os.getpid()), "--preload", ",".join(modules), "--daemon"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=folder,
                start_new_session=True,  # Ctrl-C stops the run, not the stages already running
                check=False,
            )
    deadline = time.monotonic() + 30
    waiting = dict(sockets)
    while waiting and time.monotonic() < deadline:
        for flavour, path in list(waiting.items()):
            pid = _pid(path)
            if path.exists() or (pid is not None and not _alive(pid)):
                del waiting[flavour]  # listening, or dead before it listened (its log says why)
        time.sleep(0.02)
    started = all(path.exists() for path in sockets.values())
    saved = os.environ.get(SOCKET_ENV)
    if started:
        os.environ[SOCKET_ENV] = str(base)
    try:
        yield str(base) if started else None
    finally:
        if saved is None:
            os.environ.pop(SOCKET_ENV, None)
        else:
            os.environ[SOCKET_ENV] = saved
        for path in sockets.values():
            pid = _pid(path)
            if pid is not None:
                with suppress(OSError):
                    os.kill(pid, signal.SIGTERM)  # drains, then exits


def _pid(socket_path: Path) -> int | None:
    """The pid a daemon wrote beside its socket, once it wrote it."""
    try:
        return int(Path(f"{socket_path}.pid").read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """Whether a process runs: a zombie (dead, its parent has not reaped it yet) does not.
    Where there is no ``/proc`` (not Linux), a zombie counts as alive."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return not Path("/proc/self/stat").exists()  # with /proc, reaped since os.kill
    except OSError:
        return True
    state = stat.rpartition(")")[2].split()[:1]  # the command, in (), may hold anything
    return state not in (["Z"], ["X"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nntune.warm", description=__doc__)
    parser.add_argument("socket", help="the Unix socket to listen on")
    parser.add_argument("--owner", type=int, help="stop when this process is gone")
    parser.add_argument("--preload", default=",".join(PRELOAD), help="modules to import")
    parser.add_argument("--daemon", action="store_true", help="detach; pid in SOCKET.pid")
    args = parser.parse_args(argv)
    pid_file = Path(f"{args.socket}.pid")
    if args.daemon:
        if os.fork() > 0:
            os._exit(0)  # the starter's subprocess returns; init reaps the server
        Path(f"{pid_file}.tmp").write_text(str(os.getpid()))
        Path(f"{pid_file}.tmp").replace(pid_file)  # whole or absent for the starter
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # what the stage scripts set
    server = Server(args.socket, args.owner)
    failed = server.preload([name for name in args.preload.split(",") if name])
    print(f"nntune warm runner on {args.socket}; not preloaded: {failed or 'none'}", flush=True)
    job = server.serve()
    if job is None:
        if args.daemon:  # the last server of a warm_runner folder removes it
            pid_file.unlink(missing_ok=True)
            Path(f"{args.socket}.log").unlink(missing_ok=True)
            with suppress(OSError):
                Path(args.socket).parent.rmdir()
        return 0
    job.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
