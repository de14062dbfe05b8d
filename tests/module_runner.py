"""Running a module's ``main()`` in-process, on every ansible-core requires_ansible allows (2.16+).

Used by the unit tests and by integration tests that interleave two module runs.

ansible-core 2.19 has ``ansible.module_utils.testing.patch_module_args`` and decides in
``_traceback`` whether ``fail_json`` keeps a traceback; older versions read the module's
arguments from ``basic._ANSIBLE_ARGS`` and always keep the ``exception`` given to it.
"""

from __future__ import annotations

import io
import json
from contextlib import contextmanager, redirect_stdout
from typing import Any

import pytest

try:
    from ansible.module_utils.testing import patch_module_args
except ImportError:
    from ansible.module_utils import basic

    @contextmanager
    def patch_module_args(args: dict[str, Any]):
        saved = basic._ANSIBLE_ARGS
        basic._ANSIBLE_ARGS = json.dumps({"ANSIBLE_MODULE_ARGS": args}).encode()
        try:
            yield
        finally:
            basic._ANSIBLE_ARGS = saved


def keep_tracebacks(monkeypatch) -> None:
    """Make fail_json keep tracebacks, as ansible-playbook -vvv or DISPLAY_TRACEBACK does."""
    try:
        from ansible.module_utils._internal import _traceback  # noqa: PLC0415
    except ImportError:
        return  # before 2.19 fail_json always returns the exception it is given
    monkeypatch.setattr(_traceback, "_is_traceback_enabled", lambda event: True)


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


__all__ = ["keep_tracebacks", "patch_module_args", "run_module"]
