"""Waiting for a condition, never for a guessed time."""

from __future__ import annotations

import time
from typing import Callable, Optional, TypeVar, Union

__all__ = ["wait_until"]

T = TypeVar("T")


def wait_until(
    condition: Callable[[], Optional[T]],
    timeout: float = 5.0,
    message: Union[str, Callable[[], object]] = "the condition did not hold",
    interval: float = 0.02,
) -> T:
    """Call ``condition`` until it returns a true value, and return that value.

    ``condition`` is called at once, then every ``interval`` seconds. It may raise to give up
    early (a server process that exited, say). After ``timeout`` seconds this raises
    ``AssertionError`` with ``message``; a callable message is called then, so it can describe
    the state at that moment (``lambda: server.stats()``).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"{text} (waited {timeout:g} s)")
        time.sleep(interval)
