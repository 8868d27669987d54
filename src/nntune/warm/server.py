"""The warm runner's server: imports the stages' libraries once, then forks a child per
stage that a client hands over, and relays its exit code back. Started as
``python -m nntune.warm.server SOCKET`` by :mod:`nntune.warm.launcher`."""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import sys
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nntune.warm.client import (
    GO,
    HEADER,
    PRELOAD,
    PROFILE_CLIENT_ENV,
    PROFILE_ENV,
    PROTOCOL,
    SOCKET_ENV,
    load_time_env,
    process_alive,
    read_exactly,
    requested_backend,
    send_message,
)
from nntune.warm.snapshot import (
    adopt_or_drop_nntune,
    fingerprint_nntune,
    select_backend,
    stage_path,
    stat_nntune,
)

_NOT_RUN = 70  # a child's exit code when its go did not come (nobody is told it)
MAX_REQUEST = 16 * 1024 * 1024  # bytes: a stage's argv and environment are far less


# -- server -------------------------------------------------------------------------------


@dataclass
class Job:
    """One stage, run in a forked child of the server."""

    request: dict[str, Any]
    fds: list[int]  # the stage's standard streams; with a gate, they come through it
    base_path: list[str]
    gate: socket.socket | None = None  # the child's end of the pair the go comes through
    fingerprints: dict[str, tuple[str, str]] = field(default_factory=dict)  # fingerprint_nntune

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
                go, self.fds, _, _ = socket.recv_fds(self.gate, len(GO), 3)
            except BaseException:  # whatever it is (a Ctrl-C), the stage must not run
                go = b""
            if go != GO or len(self.fds) != 3:
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
        sys.path[:] = stage_path(
            str(script), str(Path.cwd()), os.environ.get("PYTHONPATH", ""), self.base_path
        )
        importlib.invalidate_caches()
        adopt_or_drop_nntune(self.fingerprints)
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
            go, fds, _, _ = socket.recv_fds(self.conn, len(GO), 3)
            if go == GO and len(fds) == 3 and self.gate is not None:
                socket.send_fds(self.gate, [GO], fds)
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
        self.backend = requested_backend(os.environ)  # what its `import keras` loads
        self.fingerprints: dict[str, tuple[str, str]] = {}

    def preload(self, modules: Sequence[str] = PRELOAD) -> list[str]:
        """Import what the stages import; returns the modules that failed to import."""
        import importlib

        from nntune.stage.quiet import import_keras_quietly

        failed = []
        before = stat_nntune()  # so that a file changed during the imports is not kept
        for name in modules:
            try:
                if name == "keras":
                    import_keras_quietly()  # as the train stage loads it, start-up noise filtered
                importlib.import_module(name)
            except ImportError:
                failed.append(name)
        self.fingerprints = fingerprint_nntune(before)  # what a child may keep
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
            if self.owner is not None and not process_alive(self.owner):
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
        answer: dict[str, Any] = {}
        try:  # whatever a client sends, the server answers and goes on serving
            conn.settimeout(10)
            (size,) = HEADER.unpack(read_exactly(conn, HEADER.size))
            if size > MAX_REQUEST:
                raise ValueError(f"{size} bytes, more than {MAX_REQUEST}")
            request = json.loads(read_exactly(conn, size))
            refused = self._refusal(request)
            if refused and request.get("select"):
                answer["backend"] = requested_backend(request["env"])  # where it would run
        except Exception as exc:
            refused = f"bad request: {exc!r}"
        if refused:
            answer["refused"] = refused
            with suppress(OSError):
                send_message(conn, answer)
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
            return Job(request, [], self.base_path, theirs, self.fingerprints)
        theirs.close()
        child = self.children[pid] = _Child(conn, ours)
        try:
            send_message(conn, {"started": pid, "protocol": PROTOCOL})
        except OSError:  # its client is gone already: the child exits without running it
            child.close_gate()
            return None
        conn.settimeout(None)
        selector.register(conn, selectors.EVENT_READ, pid)
        return None

    def _refusal(self, request: Any) -> str | None:
        if not isinstance(request, dict):
            return "bad request: not an object"
        if request.get("protocol") != PROTOCOL:
            return f"protocol {request.get('protocol')}, the runner speaks {PROTOCOL}"
        if request.get("prefix") != sys.prefix or request.get("version") != sys.version:
            return f"the stage runs another Python ({request.get('prefix')}), not {sys.prefix}"
        if not _well_formed(request):
            return "bad request: argv, cwd or env is not what a stage sends"
        if request.get("select"):  # its backend is its params file's, and this server reads it
            refused = select_backend(request, self.base_path, self.fingerprints)
            if refused:
                return refused
        env = load_time_env(request.get("env", {}))
        backend = requested_backend(request.get("env", {}))
        if backend != self.backend:
            return f"the stage runs Keras on {backend}, this runner loaded {self.backend}"
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
                    send_message(child.conn, {"exit": os.waitstatus_to_exitcode(status)})
            child.close()

    def _stop(self, *_: Any) -> None:
        self.stopping = True

    def _close_listener(self, unlink: bool = True) -> None:
        self.listener.close()
        if unlink:
            Path(self.path).unlink(missing_ok=True)


def _well_formed(request: dict[str, Any]) -> bool:
    """argv a non-empty list of strings, cwd a string, env a mapping of strings."""
    argv, cwd, env = request.get("argv"), request.get("cwd"), request.get("env")
    return (
        isinstance(argv, list)
        and bool(argv)
        and all(isinstance(arg, str) for arg in argv)
        and isinstance(cwd, str)
        and isinstance(env, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
    )


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nntune.warm.server", description=__doc__)
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
