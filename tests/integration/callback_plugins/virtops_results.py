# Test-only callback: writes every task result of a playbook run to the JSON file named by
# VIRTOPS_RESULTS_FILE, so integration tests can assert on `changed`, `diff` and return values.
from __future__ import annotations

import json
import os

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: virtops_results
type: aggregate
short_description: Write task results to a JSON file (virtops.kvm tests only)
description: Writes every task result to the file named by E(VIRTOPS_RESULTS_FILE).
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "virtops_results"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.results = []

    def _record(self, result, status):
        data = dict(result._result)
        self.results.append(
            {
                "task": result._task.get_name(),
                "host": result._host.get_name(),
                "status": status,
                "result": json.loads(json.dumps(data, default=str)),
            }
        )

    def v2_runner_on_ok(self, result):
        self._record(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, "failed")

    def v2_runner_on_skipped(self, result):
        self._record(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._record(result, "unreachable")

    def v2_playbook_on_stats(self, stats):
        path = os.environ.get("VIRTOPS_RESULTS_FILE")
        if path:
            with open(path, "w", encoding="utf-8") as handle:
                json.dump(self.results, handle, indent=2)
