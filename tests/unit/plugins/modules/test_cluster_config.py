"""cluster_config run in-process on CIB files made by Pacemaker's tools (CIB_file)."""

from __future__ import annotations

import json

import pytest
from lxml import etree

from ansible_collections.virtops.kvm.plugins.module_utils._client import KvmModule
from ansible_collections.virtops.kvm.plugins.modules import cluster_config
from tests.pacemaker_cib import c14n, cib_for_modules, needs_pacemaker

pytestmark = needs_pacemaker

SECRET = "s3cr3t-Fence-Pw"
NEW_SECRET = "an0ther-Fence-Pw"


@pytest.fixture
def cib(tmp_path, monkeypatch):
    return cib_for_modules(tmp_path, monkeypatch)


def virsh_device(**over) -> dict:
    return {
        "name": "fence-virsh",
        "agent": "fence_virsh",
        "params": {"ip": "198.18.0.9", "username": "root", "ssh": True},
        "secret_params": {"password": SECRET},
        "hosts": ["n1", "n2"],
        **over,
    }


ARGS = {
    "properties": {
        "no-quorum-policy": "stop",
        "placement-strategy": "balanced",
        "cluster-recheck-interval": "5min",
        "stonith-enabled": True,
    },
    "stonith_devices": [virsh_device()],
}


def test_check_apply_check_apply_and_the_secret_never_shows(cib, module_runner):
    before = cib.query()
    predicted = module_runner(cluster_config, ARGS, check_mode=True, diff=True)
    assert predicted.get("failed") is not True, predicted
    assert predicted["changed"] is True
    assert c14n(cib.query()) == c14n(before)  # check mode wrote nothing

    applied = module_runner(cluster_config, ARGS, diff=True)
    assert applied["changed"] is True
    assert applied["stonith_devices"] == predicted["stonith_devices"]
    assert applied["properties"] == predicted["properties"]
    assert {k: applied["properties"][k] for k in ARGS["properties"]} == {
        "no-quorum-policy": "stop",
        "placement-strategy": "balanced",
        "cluster-recheck-interval": "5min",
        "stonith-enabled": "true",
    }
    devices = {d["name"]: d for d in applied["stonith_devices"]}
    assert set(devices) == {"fence-lab", "fence-virsh"}  # the other device is left alone
    assert devices["fence-virsh"] == {
        "name": "fence-virsh",
        "agent": "fence_virsh",
        "params": {"ip": "198.18.0.9", "username": "root", "ssh": "true", "password": "********"},
        "hosts": ["n1", "n2"],
        "monitor_interval": 60,
    }
    assert applied["diff"]["before"]["stonith_devices"] == [
        {
            "name": "fence-lab",
            "agent": "fence_virtopslab",
            "params": {},
            "hosts": ["n1", "n2", "n3"],
            "monitor_interval": None,
        }
    ]
    for result in (predicted, applied):
        assert SECRET not in json.dumps(result)
    # the CIB holds the secret (Pacemaker hands it to the agent), as Pacemaker's tools show it
    prim = etree.fromstring(cib.query().encode()).xpath("//primitive[@id='fence-virsh']")[0]
    assert prim.get("class") == "stonith"
    assert prim.xpath("instance_attributes/nvpair[@name='password']/@value") == [SECRET]
    assert prim.xpath("operations/op[@name='monitor']/@interval") == ["60s"]
    assert "Start      fence-virsh" in cib.transition()

    written = cib.query()
    for check_mode in (True, False):
        again = module_runner(cluster_config, ARGS, check_mode=check_mode, diff=True)
        assert again["changed"] is False, again["diff"]
        assert again["diff"]["before"] == again["diff"]["after"]
    assert c14n(cib.query()) == c14n(written)


def test_a_changed_secret_is_a_change_shown_masked(cib, module_runner):
    module_runner(cluster_config, ARGS)
    args = {**ARGS, "stonith_devices": [virsh_device(secret_params={"password": NEW_SECRET})]}
    changed = module_runner(cluster_config, args, diff=True)
    assert changed["changed"] is True
    dev = [d for d in changed["diff"]["after"]["stonith_devices"] if d["name"] == "fence-virsh"]
    assert dev[0]["params"]["password"] == "******** (changed)"
    assert SECRET not in json.dumps(changed) and NEW_SECRET not in json.dumps(changed)


def test_exclusive_devices_and_monitor_interval(cib, module_runner):
    args = {
        "stonith_devices": [virsh_device(monitor_interval=30, params={"ip": "198.18.0.10"})],
        "exclusive_stonith_devices": True,
    }
    result = module_runner(cluster_config, args, diff=True)
    assert result.get("changed") is True, result
    assert [d["name"] for d in result["stonith_devices"]] == ["fence-virsh"]
    assert result["stonith_devices"][0]["monitor_interval"] == 30
    assert result["stonith_devices"][0]["params"] == {"ip": "198.18.0.10", "password": "********"}
    assert not etree.fromstring(cib.query().encode()).xpath("configuration//*[@id='fence-lab']")
    assert "Stop       fence-lab" in cib.transition()


def test_property_removed_with_null(cib, module_runner):
    module_runner(cluster_config, {"properties": {"placement-strategy": "utilization"}})
    result = module_runner(cluster_config, {"properties": {"placement-strategy": None}})
    assert result["changed"] is True
    assert "placement-strategy" not in result["properties"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ({"properties": {"stonith-enabled": False}}, "stonith-enabled is false"),
        (
            {"stonith_devices": [], "exclusive_stonith_devices": True},
            "no stonith device is configured",
        ),
    ],
)
def test_no_fencing_is_refused_unless_allowed(cib, module_runner, monkeypatch, args, words):
    warned: list[str] = []  # caught here: Ansible may send them to its display (test_snapshot)
    monkeypatch.setattr(KvmModule, "warn", lambda _self, msg: warned.append(msg))
    before = cib.query()
    refused = module_runner(cluster_config, args)
    assert refused["failed"] is True
    assert words in refused["msg"]
    assert "allow_without_fencing" in refused["msg"] and "nothing was changed" in refused["msg"]
    assert c14n(cib.query()) == c14n(before)
    allowed = module_runner(cluster_config, {**args, "allow_without_fencing": True})
    assert allowed["changed"] is True
    assert len(warned) == 1 and words in warned[0]


@pytest.mark.parametrize(
    ("device", "words"),
    [
        (virsh_device(params={"password": SECRET}), "give secrets in secret_params"),
        (virsh_device(agent="fence_no_such_agent"), "fence_no_such_agent is not usable"),
        (virsh_device(name="bad id"), "is not a valid Pacemaker id"),
        (virsh_device(name="n1"), "not a top-level stonith device"),
    ],
)
def test_bad_devices_fail_before_any_change(cib, module_runner, device, words):
    cib.create("resources", '<primitive id="n1x" class="ocf" provider="heartbeat" type="Dummy"/>')
    if device["name"] == "n1":
        device["name"] = "n1x"
    before = cib.query()
    refused = module_runner(cluster_config, {"stonith_devices": [device]})
    assert refused["failed"] is True
    assert words in refused["msg"]
    assert SECRET not in json.dumps(refused)
    assert c14n(cib.query()) == c14n(before)


def test_parameters_the_agent_does_not_know_are_named_in_a_warning(cib, module_runner, monkeypatch):
    warned: list[str] = []
    monkeypatch.setattr(KvmModule, "warn", lambda _self, msg: warned.append(msg))
    dev = virsh_device(params={"ip": "198.18.0.9", "no_such_knob": "x"})
    dev["secret_params"] = {"secret_knob": SECRET}
    result = module_runner(cluster_config, {"stonith_devices": [dev]})
    assert result["changed"] is True
    assert warned == [
        "stonith device fence-virsh: the agent fence_virsh does not list the parameters "
        "no_such_knob, secret_knob in its metadata"
    ]
