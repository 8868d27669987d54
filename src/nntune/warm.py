"""A warm runner for the stage scripts of one ``nntune run``.

Every stage of a trial is a fresh process that DVC starts, and the training and evaluation
stages spend about 4 s each importing TensorFlow before they do any work: on digits that is
more than the training itself. ``nntune run`` therefore starts servers for the run
(``python -m nntune.warm SOCKET``) that import the stages' third-party libraries once
(TensorFlow, Keras, pandas, pyarrow, dvclive; one of them also scikit-learn's metrics, for
the evaluate stage) and then fork a child per stage. DVC still starts each stage's command
as it always does; the stage script's first call, :func:`handoff`, passes its argv, working
directory, environment and standard streams over a Unix socket, and exits with the child's
exit code.

What keeps a forked stage equal to a cold one:

- The server imports but never initialises TensorFlow's runtime (no op, no device), so no
  runtime thread or device exists when it forks; CUDA, thread pools and devices are created
  in the child, from the child's own environment (``CUDA_VISIBLE_DEVICES`` of its worker).
- The child imports nntune afresh: every ``nntune`` module is dropped from ``sys.modules``
  and ``sys.path`` is rebuilt as ``PYTHONPATH=src python stages/X.py`` would build it in the
  stage's working copy, so a queued experiment runs its own snapshot's code.
- Settings read while the libraries load (``TF_*``, ``KERAS_*``, the interpreter) must equal
  the server's; otherwise the server refuses and the stage runs cold, as it does when no
  server answers. A stage never fails because of the warm runner.
- The child gets its own session: when the stage's process dies (DVC cancels the trial), the
  server kills the child's process group.

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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SOCKET_ENV = "NNTUNE_WARM_SOCKET"
PROFILE_ENV = "NNTUNE_PROFILE"  # nntune.stage's; repeated here to keep this module light
PROFILE_CLIENT_ENV = "NNTUNE_PROFILE_CLIENT_PID"
PROTOCOL = 1
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

    Does not return when the warm runner ran the stage: the process exits with the stage's
    exit code. Returns (and the script goes on cold) when there is no runner, it cannot be
    reached or it refuses; the reason goes to stderr."""
    base = os.environ.get(SOCKET_ENV)
    if not base or module != "__main__":
        return
    path = _socket(base, flavour)
    request = {
        "protocol": PROTOCOL,
        "argv": sys.argv,
        "cwd": str(Path.cwd()),
        "env": dict(os.environ),
        "prefix": sys.prefix,
        "version": sys.version,
        "pid": os.getpid(),
    }
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(path)
            payload = json.dumps(request).encode()
            socket.send_fds(sock, [_HEADER.pack(len(payload))], [0, 1, 2])
            sock.sendall(payload)
            reply = json.loads(_read_line(sock) or b"{}")
    except (OSError, ValueError) as exc:
        print(f"nntune: warm runner not reachable ({exc}); this stage starts cold", file=sys.stderr)
        return
    if "exit" not in reply:
        reason = reply.get("refused", "it stopped before answering")
        print(f"nntune: warm runner refused ({reason}); this stage starts cold", file=sys.stderr)
        return
    sys.stdout.flush()
    sys.stderr.flush()
    code = int(reply["exit"])
    os._exit(code if code >= 0 else 128 - code)  # killed by signal N: 128 + N, as a shell says


def _socket(base: str | Path, flavour: str) -> str:
    return f"{base}.{flavour}" if flavour else str(base)


def _read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


# -- server -------------------------------------------------------------------------------


@dataclass
class Job:
    """One stage, run in a forked child of the server."""

    request: dict[str, Any]
    fds: list[int]
    base_path: list[str]

    def run(self) -> None:
        """Become the stage's process, then run its script as ``__main__``."""
        import importlib
        import types

        os.setsid()  # the server kills this group if the stage's client goes away
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
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
        self.children: dict[int, socket.socket] = {}
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

        from nntune.stage import import_keras_without_sklearn

        failed = []
        for name in modules:
            try:
                if name == "keras":
                    import_keras_without_sklearn()  # as the train stage loads it
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
                        os.close(wake_r)
                        os.close(wake_w)
                        return job
                elif key.fileobj == wake_r:
                    _drain(wake_r)  # a child exited (SIGCHLD) or a stop was asked
                else:  # a client's connection: readable only when its process went away
                    pid = key.data
                    selector.unregister(key.fileobj)
                    with suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGTERM)
            self._reap(selector)

    def _accept(self, selector: selectors.BaseSelector) -> Job | None:
        conn, _ = self.listener.accept()
        try:
            conn.settimeout(10)
            header, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
            (size,) = _HEADER.unpack(header)
            payload = b""
            while len(payload) < size:
                chunk = conn.recv(size - len(payload))
                if not chunk:
                    raise ConnectionError("the stage closed its connection")
                payload += chunk
            request = json.loads(payload)
            refused = self._refusal(request, fds)
        except (OSError, ValueError, struct.error) as exc:
            refused, fds = f"bad request: {exc}", locals().get("fds", [])
        if refused:
            for fd in fds:
                os.close(fd)
            _send(conn, {"refused": refused})
            conn.close()
            return None
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self._close_listener(unlink=False)
            for other in self.children.values():
                other.close()
            conn.close()
            return Job(request, fds, self.base_path)
        for fd in fds:
            os.close(fd)
        conn.settimeout(None)
        self.children[pid] = conn
        selector.register(conn, selectors.EVENT_READ, pid)
        return None

    def _refusal(self, request: dict[str, Any], fds: list[int]) -> str | None:
        if request.get("protocol") != PROTOCOL:
            return f"protocol {request.get('protocol')}, the runner speaks {PROTOCOL}"
        if len(fds) != 3:
            return "the stage did not pass its standard streams"
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
            conn = self.children.pop(pid, None)
            if conn is None:
                continue
            with suppress(KeyError):  # already unregistered if its client went away
                selector.unregister(conn)
            with suppress(OSError):
                _send(conn, {"exit": os.waitstatus_to_exitcode(status)})
            conn.close()

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
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0


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
