"""Waiting for a condition in tests: no sleeps of guessed length, no timed assertions."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(what: Callable[[], Any], timeout: float = 60.0, interval: float = 0.1) -> Any:
    """Calls `what` until it returns something true, and returns that; fails the test with
    "timed out" after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        time.sleep(interval)
