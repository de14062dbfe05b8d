# Benchmark-only callback: per task, the wall time from its start to the start of the next
# task (or the end of the play), and how many loop items or hosts reported ok, changed,
# failed. Written as JSON to the file named by VIRTOPS_BENCH_TIMES. Works with any
# ansible-core 2.15+ so both benchmark virtualenvs use the same one.
from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: bench_timer
type: aggregate
short_description: Per-task wall time for the virtops.kvm benchmarks
description: Writes each task's wall time and result counts to E(VIRTOPS_BENCH_TIMES).
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "bench_timer"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tasks = []
        self.current = None

    def _close(self):
        if self.current is not None:
            self.current["seconds"] = time.monotonic() - self.current.pop("_t0")
            self.tasks.append(self.current)
            self.current = None

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._close()
        self.current = {
            "task": task.get_name(),
            "_t0": time.monotonic(),
            "items": 0,
            "changed": 0,
            "failed": 0,
            "results": [],
        }

    def _count(self, result, failed=False):
        if self.current is None:
            return
        data = result._result
        self.current["items"] += 1
        self.current["changed"] += bool(data.get("changed"))
        self.current["failed"] += bool(failed or data.get("failed"))
        if os.environ.get("VIRTOPS_BENCH_KEEP_RESULTS"):
            self.current["results"].append(json.loads(json.dumps(data, default=str)))
        elif failed or data.get("failed"):
            self.current["results"].append({"msg": str(data.get("msg", ""))[:2000]})

    def v2_runner_item_on_ok(self, result):
        self._count(result)

    def v2_runner_item_on_failed(self, result):
        self._count(result, failed=True)

    def v2_runner_on_ok(self, result):
        if not result._result.get("results"):  # a loop's summary is counted per item
            self._count(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        if not result._result.get("results"):
            self._count(result, failed=True)

    def v2_playbook_on_stats(self, stats):
        self._close()
        path = os.environ.get("VIRTOPS_BENCH_TIMES")
        if path:
            with open(path, "w", encoding="utf-8") as handle:
                json.dump(self.tasks, handle, indent=2)
