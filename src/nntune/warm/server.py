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
import time
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

from nntune.warm.children import Child, Job, Spare, leave_loop
from nntune.warm.client import (
    HEADER,
    PRELOAD,
    PROTOCOL,
    load_time_env,
    process_alive,
    read_exactly,
    requested_backend,
    send_message,
)
from nntune.warm.snapshot import (
    fingerprint_nntune,
    select_backend,
    stat_nntune,
)
from nntune.warm.spare import enabled as spares_enabled
from nntune.warm.spare import runtime_env

MAX_REQUEST = 16 * 1024 * 1024  # bytes: a stage's argv and environment are far less
MAX_SPARE_REQUEST = 64 * 1024  # bytes: what a spare's socket buffers at once
# The stage scripts whose work a spare's warm-up is for (they train a model); the others
# (validate, prepare, evaluate, pretrain and warmstart when off) fork as before.
SPARE_SCRIPTS = frozenset({"train.py", "fold.py"})


# -- server -------------------------------------------------------------------------------


class Server:
    """Accepts stages on ``path`` and forks a child for each; answers each client with its
    child's exit code. Single-threaded, so that forking is safe."""

    def __init__(self, path: str, owner: int | None = None, project: str | None = None) -> None:
        self.path = path
        self.owner = owner
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)  # clients may connect (and wait) while the imports run
        self.listener.listen(128)
        self.children: dict[int, Child] = {}
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
        self.spare: Spare | None = None  # a child forked ahead of the next stage
        self.spares = spares_enabled(os.environ)
        # As the server was started: importing TensorFlow sets TPU_* variables of its own.
        self.runtime_env = runtime_env(os.environ)
        self.project = project or str(Path.cwd())  # whose params.yaml a spare warms up with

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
                self._drop_spare()
                return None
            if self.spares and self.spare is None and not self.stopping:
                job = self._fork_spare()  # it warms up while the stage it replaces runs
                if job is not None:  # in the spare
                    return leave_loop(job, selector, wake_r, wake_w)
            for key, _ in selector.select(timeout=1.0):
                if key.fileobj is self.listener:
                    job = self._accept(selector)
                    if job is not None:  # in the child
                        return leave_loop(job, selector, wake_r, wake_w)
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
        taken = self._take_spare(request)
        if taken is not None:
            pid, ours = taken
        else:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            pid = self._fork()
            if pid == 0:
                ours.close()
                conn.close()
                return Job(request, [], self.base_path, theirs, self.fingerprints)
            theirs.close()
        child = self.children[pid] = Child(conn, ours)
        try:
            send_message(conn, {"started": pid, "protocol": PROTOCOL})
        except OSError:  # its client is gone already: the child exits without running it
            child.close_gate()
            return None
        conn.settimeout(None)
        selector.register(conn, selectors.EVENT_READ, pid)
        return None

    def _fork(self) -> int:
        """Fork; in the child, close what belongs to the server and its other children."""
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self._close_listener(unlink=False)
            for other in self.children.values():
                other.close()
            if self.spare is not None:
                self.spare.gate.close()
        return pid

    def _fork_spare(self) -> Job | None:
        """Fork a spare; the spare's :class:`Job` in the spare, None in the server."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = self._fork()
        if pid == 0:
            ours.close()
            return Job({}, [], self.base_path, theirs, self.fingerprints, spare_of=self.project)
        theirs.close()
        self.spare = Spare(pid, ours)
        return None

    def _take_spare(self, request: dict[str, Any]) -> tuple[int, socket.socket] | None:
        """Hand ``request`` to the spare, if there is one that may run it: its pid and the
        server's end of its gate (the spare is then an ordinary child)."""
        spare = self.spare
        if spare is None or Path(request["argv"][0]).name not in SPARE_SCRIPTS:
            return None
        if runtime_env(request["env"]) != self.runtime_env:
            return None  # another device set: its runtime must start with the stage's
        payload = json.dumps(request).encode()
        if len(payload) > MAX_SPARE_REQUEST:
            return None
        ready = spare.is_ready()
        if ready is None:  # it died: the next loop forks another
            self._drop_spare()
        if not ready:  # never make a stage wait for a warm-up: fork it as before
            return None
        self.spare = None
        try:
            spare.gate.setblocking(False)  # the buffer takes it whole, or the spare is dropped
            spare.gate.sendall(HEADER.pack(len(payload)) + payload)
            spare.gate.setblocking(True)
        except OSError:
            self.spare = spare
            self._drop_spare()
            return None
        return spare.pid, spare.gate

    def _drop_spare(self, grace: float = 3.0) -> None:
        """Stop the idle spare (it may be warming up: SIGTERM lets it remove its temp
        folder, SIGKILL after ``grace`` seconds) and reap it."""
        spare, self.spare = self.spare, None
        if spare is None:
            return
        spare.gate.close()
        deadline = time.monotonic() + grace
        with suppress(ProcessLookupError, ChildProcessError):
            os.kill(spare.pid, signal.SIGTERM)
            while os.waitpid(spare.pid, os.WNOHANG) == (0, 0):
                if time.monotonic() > deadline:
                    os.kill(spare.pid, signal.SIGKILL)
                    os.waitpid(spare.pid, 0)
                    break
                time.sleep(0.02)

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
                if self.spare is not None and pid == self.spare.pid:  # it died idle
                    self.spare.gate.close()
                    self.spare = None
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
    parser.add_argument("--project", help="the project whose params.yaml spares warm up with")
    args = parser.parse_args(argv)
    pid_file = Path(f"{args.socket}.pid")
    if args.daemon:
        if os.fork() > 0:
            os._exit(0)  # the starter's subprocess returns; init reaps the server
        Path(f"{pid_file}.tmp").write_text(str(os.getpid()))
        Path(f"{pid_file}.tmp").replace(pid_file)  # whole or absent for the starter
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # what the stage scripts set
    server = Server(args.socket, args.owner, args.project)
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
