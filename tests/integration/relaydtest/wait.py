"""Waiting without sleeping blind: poll a condition against a deadline."""
import time

from relaydtest.env import POLL


def wait_for(pred, timeout, what="condition", interval=POLL):
    """Polls pred() until it returns a true value; returns that value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s"
                                 % (timeout, what))
        time.sleep(interval)


def holds(pred, seconds, what):
    """pred() stays true for `seconds` (polled): to show that something
    does NOT happen, e.g. no retry after a permanent failure."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert pred(), what
        time.sleep(0.05)
