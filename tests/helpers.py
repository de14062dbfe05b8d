"""Helpers shared by the test modules (which import these, never each other)."""

from __future__ import annotations

import time
from typing import Callable, Optional, TypeVar

T = TypeVar("T")


def wait_for(
    check: Callable[[], T],
    timeout: float,
    what: str,
    *,
    interval: float = 0.2,
    error: type[Exception] = AssertionError,
    detail: Optional[Callable[[], str]] = None,
) -> T:
    """Call ``check`` until it returns something true and return that; after ``timeout``
    seconds raise ``error`` saying ``what`` did not happen (with ``detail()`` appended, for
    example a console tail). ``check`` runs at least once, and once more at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = detail() if detail is not None else ""
            raise error(f"{what}: not within {timeout:g} s{extra}")
        time.sleep(interval)
