"""tests/helpers.py: the one wait loop and the one check/apply/check/apply runner."""

from __future__ import annotations

import pytest

from tests.helpers import PlaybookRun, four_times, wait_for


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


class FakePlaybook:
    """Stands in for the ``playbook`` fixture: each task reports ``changed`` from ``answers``
    (one per task run, in order); records the calls."""

    def __init__(self, *answers: bool):
        self.answers = list(answers)
        self.calls: list[dict] = []

    def __call__(self, tasks=None, *, plays=None, check=False, diff=False) -> PlaybookRun:
        self.calls.append({"tasks": tasks, "plays": plays, "check": check, "diff": diff})
        results = [
            {"task": t["name"], "status": "ok", "result": {"changed": self.answers.pop(0)}}
            for t in tasks or plays
        ]
        return PlaybookRun(0, "", "", results)


def test_four_times_runs_the_four_steps_in_one_playbook_and_splits_the_results():
    fake = FakePlaybook(True, False, True, True, False, False, False, False)
    runs = four_times(fake, [{"name": "a"}, {"name": "b"}])
    [call] = fake.calls
    assert [(t["name"], t["check_mode"]) for t in call["tasks"]] == [
        ("a", True), ("b", True), ("a", False), ("b", False),
        ("a", True), ("b", True), ("a", False), ("b", False),
    ]  # fmt: skip
    assert call["diff"] is True
    assert [[e["result"]["changed"] for e in run.results] for run in runs] == [
        [True, False],
        [True, True],
        [False, False],
        [False, False],
    ]


@pytest.mark.parametrize(
    ("answers", "first_changed", "step"),
    [
        ((True, True, True, False), True, 2),  # the second check still changes
        ((True, True, False, True), True, 3),  # the second apply still changes
        ((False, True, False, False), True, 0),  # check mode predicted nothing
        ((True, True, False, False), False, 0),  # nothing was meant to change
    ],
)
def test_four_times_fails_on_the_step_that_reports_the_wrong_change(answers, first_changed, step):
    with pytest.raises(AssertionError, match=rf"^step {step} "):
        four_times(FakePlaybook(*answers), [{"name": "t"}], first_changed=first_changed)


def test_four_times_with_after_each_runs_four_playbooks_and_calls_it_between():
    fake = FakePlaybook(True, True, False, False)
    seen = []
    runs = four_times(fake, [{"name": "t"}], diff=False, after_each=lambda i, run: seen.append(i))
    assert [(c["check"], c["diff"]) for c in fake.calls] == [
        (True, False), (False, False), (True, False), (False, False),
    ]  # fmt: skip
    assert seen == [0, 1, 2, 3] and len(runs) == 4


def test_four_times_fails_when_a_run_fails():
    def failing(tasks=None, **_kwargs):
        results = [{"task": "t", "status": "failed", "result": {"msg": "boom"}}]
        return PlaybookRun(2, "out", "err", results)

    with pytest.raises(AssertionError, match="t: boom"):
        four_times(failing, [{"name": "t"}])
