"""tuning_plan run in-process against libvirt's test driver.

Its capabilities list 16 CPUs in 2 cells, but its CPU map has 8 with 0, 2 and 4 online: the
plan (like the domain module) uses the online ones only.
"""

from __future__ import annotations

import secrets

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.modules import domain, tuning_plan

TEST_URI = "test:///default"


@pytest.fixture
def conn():
    """Keeps the test driver's state alive; removes the guests a test defined."""
    libvirt.registerErrorHandler(lambda *_: None, None)
    conn = libvirt.open(TEST_URI)
    made = []

    def define(vcpus=2, memory_mib=512):
        name = f"tp-{secrets.token_hex(3)}"
        conn.defineXML(
            f"<domain type='test'><name>{name}</name><memory unit='MiB'>{memory_mib}</memory>"
            f"<vcpu>{vcpus}</vcpu><os><type>hvm</type></os><devices>"
            "<disk type='file' device='disk'><source file='/guest/d1'/>"
            "<target dev='vda' bus='virtio'/></disk></devices></domain>"
        )
        made.append(name)
        return name

    conn.define = define
    yield conn
    for name in made:
        try:
            dom = conn.lookupByName(name)
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        except libvirt.libvirtError:
            pass
    conn.close()


def plan(module_runner, guests, **kw):
    args = {"uri": TEST_URI, "guests": guests, "emulator_placement": "vcpus", **kw}
    return module_runner(tuning_plan, args)


def apply(module_runner, entry):
    args = {
        "uri": TEST_URI,
        "name": entry["name"],
        "tuning": entry["tuning"],
        "tags": entry["tags"],
    }
    if entry["disks"] is not None:
        args["disks"] = entry["disks"]
    return module_runner(domain, args)


def test_plan_apply_replan(module_runner, conn):
    a, b = conn.define(2), conn.define(1)
    result = plan(module_runner, [{"name": a}, {"name": b, "iotune": {"total_iops_sec": 300}}])
    assert result.get("failed") is not True, result
    assert result["changed"] is False
    assert result["host"]["cpus"] == "0,2,4"
    pa, pb = result["plan"]
    assert pa["cpus"] == "0,2" and pa["cells"] == [0]
    assert pb["cpus"] == "4" and pb["cells"] == [0]
    assert result["host"]["dedicated"] == {a: "0,2", b: "4"}
    assert result["host"]["shared_pool"] == ""
    for entry in (pa, pb):
        applied = apply(module_runner, entry)
        assert applied.get("failed") is not True, applied
        assert applied["changed"] is True
    xml = conn.lookupByName(a).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert "<vcpupin vcpu='1' cpuset='2'/>" in xml
    assert "<emulatorpin cpuset='0,2'/>" in xml
    assert "<memory mode='strict' nodeset='0'/>" in xml
    assert "cpu-dedicated" in xml
    xml = conn.lookupByName(b).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert "<total_iops_sec>300</total_iops_sec>" in xml
    # same input in another order, same plan; applying it again changes nothing
    again = plan(module_runner, [{"name": b, "iotune": {"total_iops_sec": 300}}, {"name": a}])
    assert {e["name"]: e["cpus"] for e in again["plan"]} == {a: "0,2", b: "4"}
    for entry in again["plan"]:
        assert apply(module_runner, entry)["changed"] is False


def test_refuses_cpus_of_a_dedicated_guest(module_runner, conn):
    a, c = conn.define(2), conn.define(2)
    first = plan(module_runner, [{"name": a}])
    assert apply(module_runner, first["plan"][0]).get("failed") is not True
    # a is outside this plan now, holding 0,2 with the tag
    refused = plan(module_runner, [{"name": c, "cpus": "2,4"}])
    assert refused["failed"] is True
    assert refused["msg"].startswith(f"{c}: the plan overlaps CPUs dedicated to other guests")
    assert f"{a} holds 2" in refused["msg"]
    shared = plan(module_runner, [{"name": c, "cpu_policy": "shared"}])
    assert shared.get("failed") is not True, shared
    assert shared["plan"][0]["tuning"]["vcpu_pins"] == [
        {"vcpu": 0, "cpuset": "4"},
        {"vcpu": 1, "cpuset": "4"},
    ]


def test_bad_input_fails_cleanly(module_runner, conn):
    a = conn.define(2)
    result = plan(
        module_runner, [{"name": a, "cachetune": {"size": "1M"}}], cachetune_required=True
    )
    assert result["failed"] is True
    assert "cannot allocate cache" in result["msg"]
    result = plan(module_runner, [{"name": "no-such-guest"}])
    assert result["failed"] is True and "no such guest" in result["msg"]
