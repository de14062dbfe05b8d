"""What a module ships and does at start: only the module_utils it imports, no host probing.

Ansible puts into a module's payload every module_utils file the module imports, directly or
through another module_utils file, wherever the import statement stands (also inside a
function); each call then compiles what it imports. The closure below follows the same rule.
"""

from __future__ import annotations

import ast
from pathlib import Path

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._domain import DomainManager

from .domain_fakes import FakeKvm

PLUGINS = Path(__file__).resolve().parents[4] / "plugins"
PACKAGE = "ansible_collections.virtops.kvm.plugins.module_utils"


def _imported_utils(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module is None:  # from . import _xml
                names.update(alias.name for alias in node.names)
            elif node.level == 1:  # from ._xml import ...
                names.add(node.module.split(".")[0])
            elif node.module == PACKAGE:
                names.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith(PACKAGE + "."):
                names.add(node.module[len(PACKAGE) + 1 :].split(".")[0])
    return names


def shipped_utils(module: str) -> set[str]:
    """The module_utils files (without .py) in the payload of ``virtops.kvm.<module>``."""
    todo = _imported_utils(PLUGINS / "modules" / f"{module}.py")
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo |= _imported_utils(PLUGINS / "module_utils" / f"{name}.py")
    return seen


def test_closure_follows_imports_into_functions():
    # _host imports _host_kvm at the top; host_info itself names only _client and _host
    assert {"_client", "_host", "_host_kvm", "_errors"} <= shipped_utils("host_info")


def test_host_info_ships_no_guest_model():
    # the CPU lists of its cache banks go through _cpuset, not the domain field model
    assert not [u for u in shipped_utils("host_info") if u.startswith("_domain")]


def test_domain_ships_the_virt_type_but_not_the_host_summary():
    utils = shipped_utils("domain")
    assert "_host_kvm" in utils
    assert "_host" not in utils


def test_no_module_util_over_700_lines_among_the_host_files():
    for name in ("_host", "_host_kvm"):
        lines = (PLUGINS / "module_utils" / f"{name}.py").read_text(encoding="utf-8").count("\n")
        assert lines <= 700, name


class CountingConn:
    """A connection that counts the calls made on it (the domain objects it hands out are
    the real ones: the host's description is asked on the connection)."""

    def __init__(self, conn):
        self._conn = conn
        self.calls: list[str] = []

    def __getattr__(self, name):
        attr = getattr(self._conn, name)
        if not callable(attr):
            return attr

        def counted(*args, **kwargs):
            self.calls.append(name)
            return attr(*args, **kwargs)

        return counted


HOST_PROBES = {"getCapabilities", "getDomainCapabilities"}


@pytest.fixture
def counting():
    """A counting connection to the test driver; ``counting.calls`` is emptied by the test."""
    real = libvirt.open("test:///default")
    yield CountingConn(real)
    real.close()


def ensure(conn, params) -> dict:
    return DomainManager(FakeKvm(conn, params)).run()


@pytest.mark.parametrize("virt_type", ["qemu", "auto"])
def test_no_change_run_does_not_probe_the_host(counting, virt_type, monkeypatch):
    params = {"name": "start1", "virt_type": virt_type, "memory": 64, "vcpus": 1}
    assert ensure(counting, params)["changed"] is True
    local_reads: list[str] = []
    real_open = open

    def watched_open(path, *args, **kwargs):
        if str(path).startswith(("/proc", "/sys", "/dev/kvm")):
            local_reads.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", watched_open)
    counting.calls.clear()
    assert ensure(counting, params)["changed"] is False
    assert counting.calls, "the counting connection was not used"
    assert HOST_PROBES.isdisjoint(counting.calls), counting.calls
    assert local_reads == []


def test_creating_with_qemu_does_not_probe_the_host(counting):
    assert ensure(counting, {"name": "start2", "virt_type": "qemu", "memory": 64})["changed"]
    assert HOST_PROBES.isdisjoint(counting.calls), counting.calls


def test_a_machine_type_is_still_checked_against_the_host(counting):
    ensure(counting, {"name": "start3", "virt_type": "qemu", "memory": 64, "machine": "pc"})
    assert "getCapabilities" in counting.calls
