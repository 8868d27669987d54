"""The warm runner server's children: a stage's :class:`Job` (what a forked child, or a
spare once its request came, does to become the stage's process), the server's side of a
running child (:class:`_Child`) and of an idle spare (:class:`_Spare`)."""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nntune.warm.client import GO, HEADER, PROFILE_CLIENT_ENV, PROFILE_ENV, SOCKET_ENV, read_exactly
from nntune.warm.snapshot import adopt_or_drop_nntune, stage_path
from nntune.warm.spare import warm_up

NOT_RUN = 70  # a child's exit code when its go did not come (nobody is told it)
READY = b"r"  # what a spare sends the server once it has warmed up


@dataclass
class Job:
    """One stage, run in a forked child of the server."""

    request: dict[str, Any]
    fds: list[int]  # the stage's standard streams; with a gate, they come through it
    base_path: list[str]
    gate: socket.socket | None = None  # the child's end of the pair the go comes through
    fingerprints: dict[str, tuple[str, str]] = field(default_factory=dict)  # fingerprint_nntune
    spare_of: str | None = None  # a spare (nntune.warm.spare): its project; request comes later

    def run(self) -> None:
        """Wait for the client's go, become the stage's process, then run its script as
        ``__main__``. Exits without running it when the go does not come. A spare first
        warms up, then reads its request through the gate."""
        import importlib
        import types

        os.setsid()  # the server kills this group if the stage's client goes away
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        if self.spare_of is not None and self.gate is not None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the run's Ctrl-C is not for it
            signal.signal(signal.SIGTERM, _not_needed)  # the server's stop: clean up, exit
            started = time.monotonic()
            try:
                warmed = warm_up(self.spare_of)
            except SystemExit:  # stopped while it warmed up: its temp folder is gone
                os._exit(NOT_RUN)
            took = time.monotonic() - started
            print(f"spare {os.getpid()}: {'warmed up' if warmed else 'no warm-up'} ({took:.2f} s)")
            sys.stdout.flush()  # the server's log
            try:  # ready; then the request, or b"": the server went away, or had no need
                self.gate.sendall(READY)
                (size,) = HEADER.unpack(read_exactly(self.gate, HEADER.size))
                self.request = json.loads(read_exactly(self.gate, size))
            except BaseException:
                os._exit(NOT_RUN)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        # Ctrl-C as in a cold stage: Python's default, or ignored where the stage's is.
        ignored = self.request.get("sigint_ignored") is True
        signal.signal(signal.SIGINT, signal.SIG_IGN if ignored else signal.default_int_handler)
        if self.gate is not None:
            try:  # b"": the client or the server went away
                go, self.fds, _, _ = socket.recv_fds(self.gate, len(GO), 3)
            except BaseException:  # whatever it is (a Ctrl-C), the stage must not run
                go = b""
            if go != GO or len(self.fds) != 3:
                os._exit(NOT_RUN)
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
class Child:
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


def _not_needed(*_: Any) -> None:
    """A spare's SIGTERM: leave (its warm-up's temp folder goes on the way out)."""
    raise SystemExit(NOT_RUN)


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


@dataclass
class Spare:
    pid: int
    gate: socket.socket  # the server's end: READY comes, then the request and the go go

    ready: bool = False

    def is_ready(self) -> bool | None:
        """Whether it has warmed up (sent READY); None when it is gone."""
        if not self.ready:
            try:
                got = self.gate.recv(len(READY), socket.MSG_DONTWAIT)
            except BlockingIOError:
                return False
            except OSError:
                return None
            if got != READY:
                return None
            self.ready = True
        return True


def leave_loop(job: Job, selector: selectors.BaseSelector, wake_r: int, wake_w: int) -> Job:
    """In a freshly forked child: drop the server's loop (its selector, its wake-up pipe)."""
    selector.close()
    signal.set_wakeup_fd(-1)  # the server's, which the child must not feed
    os.close(wake_r)
    os.close(wake_w)
    return job
