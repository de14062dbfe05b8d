"""Helpers to run a module's main() in-process (fast unit tests, e.g. against test:///default)."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from typing import Any

import pytest
from ansible.module_utils.testing import patch_module_args


def run_module(
    module, args: dict[str, Any], *, check_mode: bool = False, diff: bool = False
) -> dict[str, Any]:
    """Run ``module.main()`` with ``args``; return its JSON result (``failed`` set on failure)."""
    args = dict(args)
    if check_mode:
        args["_ansible_check_mode"] = True
    if diff:
        args["_ansible_diff"] = True
    out = io.StringIO()
    with patch_module_args(args), redirect_stdout(out), pytest.raises(SystemExit):
        module.main()
    return json.loads(out.getvalue())


@pytest.fixture
def module_runner():
    return run_module
