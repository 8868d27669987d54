"""Ctrl-C as a flag for the polling loops: the first press is kept for the loop's next
safe point, the second interrupts at once, and the old handler comes back."""

from __future__ import annotations

import os
import signal
import time

import pytest

from nntune.interrupts import deferred_ctrl_c


def test_first_ctrl_c_is_a_flag_the_second_interrupts() -> None:
    before = signal.getsignal(signal.SIGINT)
    with deferred_ctrl_c() as pressed:
        assert not pressed.is_set()
        os.kill(os.getpid(), signal.SIGINT)  # would raise KeyboardInterrupt right here
        assert pressed.wait(5)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler runs at once; this is never reached in time
    assert signal.getsignal(signal.SIGINT) is before
