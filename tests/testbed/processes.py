"""Stopping test daemons by pid (never by name: other tests' daemons of the same program run too)."""

from __future__ import annotations

import os
import signal
import time
from typing import Optional


def read_pid(pid_file: str) -> Optional[int]:
    """The pid in ``pid_file``, or None when the file is missing or empty."""
    try:
        with open(pid_file, encoding="ascii") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def stop_pid(pid: Optional[int], timeout: float = 10.0) -> bool:
    """SIGTERM ``pid`` and wait until it is gone; True when it is gone (or never ran)."""
    if pid is None:
        return True
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False
