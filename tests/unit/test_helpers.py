"""tests/helpers.py: the one wait loop of the test suite."""

from __future__ import annotations

import pytest

from tests.helpers import wait_for


def test_wait_for_returns_the_first_true_value():
    answers = iter([None, 0, "", "ready", "later"])
    assert wait_for(lambda: next(answers), 5, "an answer", interval=0) == "ready"


def test_wait_for_raises_the_given_error_with_detail_after_one_last_try():
    calls = []

    def never():
        calls.append(1)
        return False

    with pytest.raises(TimeoutError, match=r"^the thing: not within 0.05 s \(seen 2\+\)$"):
        wait_for(
            never,
            0.05,
            "the thing",
            interval=0.01,
            error=TimeoutError,
            detail=lambda: f" (seen {min(len(calls), 2)}+)",
        )
    assert len(calls) >= 2
