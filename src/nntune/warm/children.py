"""The warm runner's server side of its forked children (:mod:`nntune.warm.server`)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from nntune.warm.client import GO


@dataclass
class Child:
    """The server's side of a forked child: its stage's client connection (``None`` while
    it waits, resident, for a next stage) and the server's end of the pair the go goes
    through. A child that may stay resident keeps that pair open: it reports a stage that
    ended well through it, and takes the next request through it."""

    conn: socket.socket | None
    gate: socket.socket | None
    cwd: str
    resident: bool = False  # it may report a stage's good end instead of exiting
    awaiting_go: bool = True  # the stage's client has not sent its go yet
    released: bool = False  # the go went through: the child runs the stage
    idle_since: float | None = None  # resident and waiting for a next stage

    def open_gate(self) -> bool:
        """Read the client's go and pass it on, with the stage's standard streams; without
        it (the client went away, or sent something else) close the gate, so that the
        child exits without running the stage. Whether the stage runs."""
        fds: list[int] = []
        self.awaiting_go = False
        try:
            if self.conn is not None:
                go, fds, _, _ = socket.recv_fds(self.conn, len(GO), 3)
                if go == GO and len(fds) == 3 and self.gate is not None:
                    socket.send_fds(self.gate, [GO], fds)
                    self.released = True
        except OSError:
            pass
        for fd in fds:
            os.close(fd)
        return self.released

    def close_gate(self) -> None:
        if self.gate is not None:
            self.gate.close()
            self.gate = None

    def close(self) -> None:
        self.close_gate()
        if self.conn is not None:
            self.conn.close()
