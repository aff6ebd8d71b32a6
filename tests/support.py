"""Helpers shared by the tests that drive real processes."""

import time


def wait_for(condition, timeout: float, what: str, interval: float = 0.5):
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)  # the processes under test have no event to wait on
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
