"""How every module is written: its argument spec, its doc fragments, and the _info modules'
one shape (result keys, read-only connection), run against libvirt's test driver."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
import yaml

from ansible_collections.virtops.kvm.plugins.module_utils import _client
from tests.pacemaker_cib import TOOLS_MISSING, make_cib

ROOT = Path(__file__).resolve().parents[4]
MODULES = sorted(p.stem for p in (ROOT / "plugins" / "modules").glob("*.py"))
INFO_MODULES = [m for m in MODULES if m.endswith("_info")]
TEST_URI = "test:///default"


def _load(name: str):
    return importlib.import_module(f"ansible_collections.virtops.kvm.plugins.modules.{name}")


def _fragments(name: str) -> list[str]:
    return yaml.safe_load(_load(name).DOCUMENTATION).get("extends_documentation_fragment") or []


@pytest.mark.parametrize("name", MODULES)
def test_the_spec_is_the_module_level_argument_spec(name):
    tree = ast.parse((ROOT / "plugins" / "modules" / f"{name}.py").read_text())
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "KvmModule"
    ]
    assert len(calls) == 1
    spec = {k.arg: k.value for k in calls[0].keywords}["argument_spec"]
    assert isinstance(spec, ast.Name) and spec.id == "ARGUMENT_SPEC"
    assert isinstance(_load(name).ARGUMENT_SPEC, dict)


def test_no_argument_spec_in_module_utils_but_the_common_one():
    found = []
    for path in sorted((ROOT / "plugins" / "module_utils").glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            targets = (
                node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            )
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            found += [f"{path.name}:{n}" for n in names if "ARGUMENT_SPEC" in n]
    assert found == ["_client.py:COMMON_ARGUMENT_SPEC"]


@pytest.mark.parametrize("name", MODULES)
def test_attributes_come_from_the_fragments(name):
    fragments = _fragments(name)
    if name == "image":  # no connection options, outside the action group: its own attributes
        attributes = yaml.safe_load(_load(name).DOCUMENTATION)["attributes"]
        assert fragments == []
        assert set(attributes) == {"check_mode", "diff_mode", "idempotent"}
        return
    kind = "info_module" if name.endswith("_info") or name == "tuning_plan" else "actions"
    assert "virtops.kvm.attributes" in fragments
    own = [f"virtops.kvm.attributes.{kind}"]
    if name in NO_LIBVIRT:  # outside the action group: that fragment first, so its entry wins
        assert fragments[0] == "virtops.kvm.attributes.not_in_group"
        assert "action_group" not in (yaml.safe_load(_load(name).DOCUMENTATION) or {}).get(
            "attributes", {}
        )
        assert "virtops.kvm.connection" not in fragments
        own.insert(0, "virtops.kvm.attributes.not_in_group")
    else:
        assert "virtops.kvm.connection" in fragments
    assert [f for f in fragments if f.startswith("virtops.kvm.attributes.")] == own


# Modules that run Pacemaker's tools and never connect to libvirt (no uri option).
NO_LIBVIRT = {"cluster_config", "cluster_info", "cluster_node"}

# The _info modules: the result key each returns, the options a call needs on the test
# driver, and whether it connects read-only (None: it opens no libvirt connection).
INFO = {
    "backup_info": ("guests", {"dest": str(ROOT / "changelogs")}, True),  # no backups: []
    "cluster_info": ("cluster", {}, None),
    "domain_info": ("guests", {}, False),  # guest agent queries need read-write
    "host_info": ("host", {}, False),  # domain capabilities need read-write
    "network_info": ("networks", {}, True),
    "pool_info": ("pools", {}, True),
    "secret_info": ("secrets", {}, True),  # the test driver has none: [] and a warning
    "snapshot_info": ("snapshots", {"domain": "test"}, True),
    "volume_info": ("volumes", {"pool": "default-pool"}, True),
}


def test_every_info_module_is_listed():
    assert sorted(INFO) == INFO_MODULES


@pytest.fixture
def connections(monkeypatch):
    """Record the ``readonly`` of every connection a module opens."""
    seen: list[bool] = []
    real = _client.open_connection

    def recording(uri, *, readonly=False, **kwargs):
        seen.append(readonly)
        return real(uri, readonly=readonly, **kwargs)

    monkeypatch.setattr(_client, "open_connection", recording)
    return seen


@pytest.mark.parametrize("name", sorted(INFO))
def test_info_module_shape(name, module_runner, connections, tmp_path, monkeypatch):
    key, args, readonly = INFO[name]
    if readonly is None:
        if TOOLS_MISSING:
            pytest.skip("Pacemaker's tools are not installed")
        monkeypatch.setenv("CIB_file", str(make_cib(tmp_path / "cib.xml").path))
    else:
        args = {"uri": TEST_URI, **args}
    result = module_runner(_load(name), args)
    assert result.get("failed") is not True, result
    assert result["changed"] is False
    assert key in result
    assert connections == ([] if readonly is None else [readonly])


@pytest.mark.parametrize(
    ("name", "args"), [("pool_info", {}), ("volume_info", {"pool": "default-pool"})]
)
def test_refresh_connects_read_write(name, args, module_runner, connections):
    result = module_runner(_load(name), {"uri": TEST_URI, "refresh": True, **args})
    assert result.get("failed") is not True, result
    assert connections == [False]
