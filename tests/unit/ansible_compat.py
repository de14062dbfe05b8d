"""What the unit tests need from ansible-core, on every version requires_ansible allows (2.16+).

ansible-core 2.19 has ``ansible.module_utils.testing.patch_module_args`` and decides in
``_traceback`` whether ``fail_json`` keeps a traceback; older versions read the module's
arguments from ``basic._ANSIBLE_ARGS`` and always keep the ``exception`` given to it.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Any

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


__all__ = ["keep_tracebacks", "patch_module_args"]
