"""Helpers shared by the tests that drive real processes."""

import http.client
import os
import random
import signal
import socket
import time
import urllib.request
from pathlib import Path


def wait_for(condition, timeout: float, what: str, interval: float = 0.5):
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)  # the processes under test have no event to wait on
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# Ports for the services a test starts: above Ray's default worker ports (10002-19999) and the
# ranges tests/test_cluster.py gives its nodes' workers (21000-23040), below the kernel's ephemeral
# range (32768 up here). A port from that range, which binding port 0 gives, can be taken by any
# outgoing connection (Ray's processes open many) between the test choosing it and its service
# binding it: seen once, the MLflow server's health check was answered by some other process.
SERVICE_PORTS = range(24_000, 32_768)
_handed_out: set[int] = set()


def free_port() -> int:
    """A port no one listens on now, from SERVICE_PORTS, not handed out before in this process."""
    for port in random.sample(SERVICE_PORTS, len(SERVICE_PORTS)):
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # in use
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {SERVICE_PORTS}")


def http_ok(url) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status == 200
    except (OSError, http.client.HTTPException):  # not up yet, or not an HTTP server on that port
        return False


def kill_processes(marker: str, groups=()) -> None:
    """SIGKILL the process groups we started and every process whose command line mentions `marker`
    (Ray's daemons and workers: give each test's Ray its own temp dir and use that as the marker)."""
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                os.kill(int(cmdline.parent.name), signal.SIGKILL)
        except (OSError, ValueError):
            pass  # already gone
