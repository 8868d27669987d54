"""Ctrl-C for the polling loops of ``nntune run`` and ``nntune search``.

A ``KeyboardInterrupt`` raised wherever SIGINT happens to land can be swallowed by the
library running at that moment (DVC's queue reads, celery's control calls) and then the
loop simply carries on. So the loops take Ctrl-C as a flag instead, and check it at their
own safe points: the first press asks them to stop there, a second press interrupts at
once, as Python would.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


@contextmanager
def deferred_ctrl_c() -> Iterator[threading.Event]:
    """Within the block, the first SIGINT sets the returned event; a second one raises
    KeyboardInterrupt. Off the main thread (where no handler can be set) the event is
    never set and SIGINT keeps Python's behaviour."""
    pressed = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield pressed
        return

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        if pressed.is_set():
            raise KeyboardInterrupt
        pressed.set()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, previous)
