# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""Waiting for a transition to finish, with a timeout."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

from ._errors import KvmTimeoutError

T = TypeVar("T")


def wait_until(
    probe: Callable[[], T],
    *,
    timeout: float,
    what: str,
    interval: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    describe: Callable[[], str] | None = None,
) -> T:
    """Call ``probe`` until it returns a truthy value, and return that value.

    Raises ``KvmTimeoutError`` naming ``what`` (and ``describe()``, the state last seen)
    when ``timeout`` seconds pass first. ``probe`` is always called at least once.
    """
    deadline = clock() + timeout
    while True:
        value = probe()
        if value:
            return value
        remaining = deadline - clock()
        if remaining <= 0:
            seen = f" (last seen: {describe()})" if describe else ""
            raise KvmTimeoutError(
                f"Timed out after {timeout:g} s waiting for {what}{seen}", timeout=timeout
            )
        sleep(min(interval, remaining))
