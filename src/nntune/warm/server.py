"""The warm runner's server: imports the stages' libraries once, then forks a child per
stage that a client hands over, and relays its exit code back. A child whose stage ended
well stays resident (:mod:`nntune.warm.child`): the next stage of the same working copy goes
to it instead of a fresh fork, where it takes it. Started as
``python -m nntune.warm.server SOCKET`` by :mod:`nntune.warm.launcher`."""

from __future__ import annotations

import argparse
import gc
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
from typing import Any, NoReturn

from nntune.warm.child import HANDOVER_TIMEOUT, Job, resident_jobs
from nntune.warm.children import Child
from nntune.warm.client import (
    HEADER,
    PRELOAD,
    PROTOCOL,
    load_time_env,
    process_alive,
    read_exactly,
    read_message,
    requested_backend,
    send_message,
)
from nntune.warm.snapshot import fingerprint_nntune, select_backend, stat_nntune

MAX_REQUEST = 16 * 1024 * 1024  # bytes: a stage's argv and environment are far less
MAX_IDLE = 4  # resident children waiting for a next stage, per server; the oldest ends


# -- server -------------------------------------------------------------------------------


class Server:
    """Accepts stages on ``path`` and forks a child for each; answers each client with its
    child's exit code. Single-threaded, so that forking is safe."""

    def __init__(self, path: str, owner: int | None = None) -> None:
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
        self.jobs = resident_jobs(os.environ)  # stages a child may run; 1: one each

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
        # The imports' objects live as long as the server: out of the collector's sight, a
        # child's collections scan only its own objects (0.4 s each after a TensorFlow
        # stage otherwise), and do not write to the pages it shares with the server.
        gc.freeze()
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
            if self.stopping:  # resident children end; the running ones once they are done
                self._end_idle(selector, keep=0)
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
                elif isinstance(key.data, tuple):  # a child's pair: a stage's good end, or EOF
                    child = self.children.get(key.data[1])
                    if child is not None and child.gate is key.fileobj:  # else handled already
                        self._reported(selector, key.data[1])
                else:  # a client's connection: its go, or its process went away
                    pid = key.data
                    child = self.children.get(pid)
                    if child is not None and child.conn is not key.fileobj:
                        continue  # closed earlier in this round (its stage was reported)
                    if child is not None and child.awaiting_go:
                        runs = child.open_gate()
                        if not runs or not child.resident:  # it reports nothing through it
                            self._drop_gate(selector, child)  # without a go, it exits
                        if not runs:
                            selector.unregister(key.fileobj)
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
        pid = self._resident_for(selector, request)
        if pid is not None:
            child = self.children[pid]
            child.conn = conn
        else:
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
                fingerprints = self.fingerprints
                return Job(request, [], self.base_path, theirs, fingerprints, self.jobs)
            theirs.close()
            resident = self.jobs > 1
            child = self.children[pid] = Child(conn, ours, str(request["cwd"]), resident)
            selector.register(ours, selectors.EVENT_READ, ("gate", pid))
        try:
            send_message(conn, {"started": pid, "protocol": PROTOCOL})
        except OSError:  # its client is gone already: the child exits without running it
            self._drop_gate(selector, child)
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
            if child.conn is not None:
                with suppress(KeyError, ValueError):  # unregistered if its client went away
                    selector.unregister(child.conn)
            self._drop_gate(selector, child)
            if child.released and child.conn is not None:  # else no stage's client waits
                with suppress(OSError):
                    send_message(child.conn, {"exit": os.waitstatus_to_exitcode(status)})
            child.close()

    # -- resident children (nntune.warm.child) --

    def _reported(self, selector: selectors.BaseSelector, pid: int) -> None:
        """A resident child's message: its stage ended well (relayed to the stage's client,
        and the child waits for a next stage), or it closed its end (it is ending: its exit
        status is relayed when it is reaped)."""
        child = self.children.get(pid)
        if child is None or child.gate is None:
            return
        try:
            child.gate.settimeout(HANDOVER_TIMEOUT)
            message = read_message(child.gate)
        except (OSError, ValueError):
            message = None
        if not isinstance(message, dict) or message.get("exit") != 0 or child.conn is None:
            self._drop_gate(selector, child)  # a child that sent anything else ends
            return
        with suppress(KeyError, ValueError):
            selector.unregister(child.conn)
        with suppress(OSError):
            send_message(child.conn, {"exit": 0})
        child.conn.close()
        child.conn, child.released, child.idle_since = None, False, time.monotonic()
        self._end_idle(selector, keep=MAX_IDLE)

    def _resident_for(
        self, selector: selectors.BaseSelector, request: dict[str, Any]
    ) -> int | None:
        """The pid of a resident child of the request's working copy that took it, or
        ``None`` (a fresh child is forked). A child that declines ends."""
        for pid, child in self.children.items():
            if child.idle_since is None or child.cwd != request["cwd"] or child.gate is None:
                continue
            try:
                child.gate.settimeout(HANDOVER_TIMEOUT)
                send_message(child.gate, {"request": request})
                answer = read_message(child.gate)
            except (OSError, ValueError):
                answer = None
            if isinstance(answer, dict) and answer.get("taken") is True:
                child.idle_since, child.awaiting_go = None, True
                return pid
            self._drop_gate(selector, child)  # it ends; reaped as usual
            return None
        return None

    def _end_idle(self, selector: selectors.BaseSelector, keep: int) -> None:
        """Close the pair of all but the ``keep`` most recently idle resident children:
        they end."""
        idle = sorted(
            (child.idle_since, pid)
            for pid, child in self.children.items()
            if child.idle_since is not None and child.gate is not None
        )
        for _, pid in idle[: max(0, len(idle) - keep)]:
            self._drop_gate(selector, self.children[pid])
            self.children[pid].idle_since = None

    @staticmethod
    def _drop_gate(selector: selectors.BaseSelector, child: Child) -> None:
        """Close the server's end of a child's pair: a child waiting for a go or a next
        stage ends; one running its stage exits when it is done, as a fresh child does."""
        if child.gate is not None:
            with suppress(KeyError, ValueError):
                selector.unregister(child.gate)
            child.close_gate()

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
        _exit_without_teardown()
    job.run()
    return 0


def _exit_without_teardown() -> NoReturn:
    """The stopped server's end: exit handlers and flushed streams, but no interpreter
    teardown, which takes seconds with TensorFlow loaded (a server whose run's process died
    was seen lingering 4-6 s on 2 busy cores). Only the server: a child ends as its stage's
    script ends, as a cold process would."""
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
