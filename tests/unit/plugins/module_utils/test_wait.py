"""Waiting with a timeout, on a fake clock (no real sleeping)."""

from __future__ import annotations

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._errors import KvmTimeoutError
from ansible_collections.virtops.kvm.plugins.module_utils._wait import wait_until


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_returns_the_first_truthy_value():
    clock = FakeClock()
    answers = iter([None, "", {"state": "running"}])
    value = wait_until(
        lambda: next(answers), timeout=10, what="guest start", clock=clock, sleep=clock.sleep
    )
    assert value == {"state": "running"}
    assert clock.sleeps == [0.5, 0.5]


def test_probe_runs_once_even_with_zero_timeout():
    clock = FakeClock()
    calls = []
    assert wait_until(lambda: calls.append(1) or "ok", timeout=0, what="x", clock=clock) == "ok"
    assert calls == [1]


def test_timeout_names_what_and_the_last_state():
    clock = FakeClock()
    with pytest.raises(KvmTimeoutError) as err:
        wait_until(
            lambda: False,
            timeout=2,
            what="guest g1 to shut off",
            interval=0.75,
            clock=clock,
            sleep=clock.sleep,
            describe=lambda: "running",
        )
    assert (
        err.value.msg == "Timed out after 2 s waiting for guest g1 to shut off (last seen: running)"
    )
    assert err.value.details == {"timeout": 2}
    # Never sleeps past the deadline: 0.75 + 0.75 + the 0.5 that remained.
    assert clock.sleeps == [0.75, 0.75, 0.5]
    assert clock.now == 102.0


def test_timeout_without_describe():
    clock = FakeClock()
    with pytest.raises(KvmTimeoutError, match=r"^Timed out after 0.5 s waiting for x$"):
        wait_until(lambda: 0, timeout=0.5, what="x", clock=clock, sleep=clock.sleep)
