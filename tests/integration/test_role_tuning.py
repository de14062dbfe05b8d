"""Role virtops.kvm.tuning against the real libvirtd: pinning in the live XML and in the CPU
affinity of QEMU's threads, idempotence and check mode, refused plans, the resctrl message
and huge pages (a page or two reserved for the test and released after).

This machine: 2 CPUs in one NUMA cell, no resctrl. CPU 0 is reserved for the host, so a
dedicated 1-vCPU guest gets CPU 1 and its emulator threads run on CPU 0.
"""

from __future__ import annotations

import re
from pathlib import Path

import libvirt
import pytest
from lxml import etree

from tests.helpers import PlaybookRun, wait_for

HUGEPAGES_2M = Path("/sys/kernel/mm/hugepages/hugepages-2048kB")
APPLY = "Apply the plan to each guest"
PLAN = "Work out the pinning plan"


def role(tag: str, guests: list[dict], **extra) -> list[dict]:
    """Tasks including the role; each test uses its own dedicated tag so that guests of other
    engineers on this machine never count as dedicated."""
    return [
        {
            "name": "tune",
            "ansible.builtin.include_role": {"name": "virtops.kvm.tuning"},
            "vars": {
                "tuning_guests": guests,
                "tuning_host_reserved_cpus": "0",
                "tuning_dedicated_tag": tag,
                **extra,
            },
        }
    ]


def task(run: PlaybookRun, name: str) -> dict:
    for entry in reversed(run.results):
        if entry["task"] == name or entry["task"].endswith(f" : {name}"):
            return entry["result"]
    raise KeyError(f"no {name!r}; have {[e['task'] for e in run.results]}")


def applied(run: PlaybookRun) -> list[dict]:
    return task(run, APPLY)["results"]


def live_root(dom):
    return etree.fromstring(dom.XMLDesc(0))


def thread_affinity(dom_name: str) -> dict[str, list[str]]:
    """Thread name -> Cpus_allowed_list of each of the guest's QEMU threads."""
    pid = Path(f"/run/libvirt/qemu/{dom_name}.pid").read_text().strip()
    threads: dict[str, list[str]] = {}
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        text = status.read_text()
        name = re.search(r"^Name:\s*(.*)$", text, re.M).group(1)
        allowed = re.search(r"^Cpus_allowed_list:\s*(\S+)$", text, re.M).group(1)
        threads.setdefault(name, []).append(allowed)
    return threads


@pytest.mark.lab
def test_pins_a_running_guest_live(playbook, libvirt_conn, tiny_guest, name_prefix):
    guest = tiny_guest(f"{name_prefix}-t1")
    dom = libvirt_conn.lookupByName(guest.name)
    tag = f"{name_prefix}-dedicated"
    guests = [{"name": guest.name, "iotune": {"total_iops_sec": 500}}]

    check = playbook(role(tag, guests), check=True)
    assert check.rc == 0, check.stdout
    [result] = applied(check)
    assert result["changed"] is True
    assert live_root(dom).find("cputune/vcpupin") is None  # check mode changed nothing
    assert tag not in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)

    first = playbook(role(tag, guests))
    assert first.rc == 0, first.stdout
    [entry] = task(first, PLAN)["plan"]
    assert entry["cpus"] == "1" and entry["emulator_cpus"] == "0" and entry["cells"] == [0]
    [result] = applied(first)
    assert result["changed"] is True
    assert {"tuning.vcpu_pins", "tuning.emulator_pin", "disks", "tags"} <= set(
        result["live_applied"]
    )
    # the NUMA policy only reaches the guest at its next start
    assert result["restart_required"] == ["tuning.numa_memory"]
    assert "at the next start" in first.stdout

    # the live definition
    root = live_root(dom)
    pins = {e.get("vcpu"): e.get("cpuset") for e in root.findall("cputune/vcpupin")}
    assert pins == {"0": "1"}
    assert root.find("cputune/emulatorpin").get("cpuset") == "0"
    assert root.find("devices/disk/iotune/total_iops_sec").text == "500"
    assert dom.blockIoTune("vda", libvirt.VIR_DOMAIN_AFFECT_LIVE)["total_iops_sec"] == 500
    assert dom.vcpuPinInfo(libvirt.VIR_DOMAIN_AFFECT_LIVE)[0] == (False, True)
    assert dom.emulatorPinInfo(libvirt.VIR_DOMAIN_AFFECT_LIVE) == (True, False)

    # and the threads' CPU affinity: the vCPU thread on CPU 1, QEMU's main thread on CPU 0
    threads = thread_affinity(guest.name)
    assert threads["CPU 0/TCG"] == ["1"], threads
    assert "0" in threads["qemu-system-x86"], threads
    print(f"QEMU thread affinity after tuning: {threads}")

    # the guest still runs
    beat = guest.wait_heartbeat(timeout=300)
    assert guest.wait_heartbeat(after=beat, timeout=300) > beat

    # the same plan again: nothing to change, in check mode or not
    for check_mode in (True, False):
        again = playbook(role(tag, guests), check=check_mode)
        assert again.rc == 0, again.stdout
        [entry] = task(again, PLAN)["plan"]
        assert entry["cpus"] == "1"
        [result] = applied(again)
        assert result["changed"] is False, result
    assert thread_affinity(guest.name)["CPU 0/TCG"] == ["1"]


@pytest.mark.integration
def test_refuses_overlap_and_says_there_is_no_resctrl(
    playbook, libvirt_conn, tiny_guest, name_prefix
):
    a = tiny_guest(f"{name_prefix}-a", start=False)
    b = tiny_guest(f"{name_prefix}-b", start=False)
    tag = f"{name_prefix}-dedicated"

    # a gets CPU 1 (the only one not reserved); cache allocation is asked for but impossible
    first = playbook(role(tag, [{"name": a.name, "cachetune": {"size": "1MiB"}}]))
    assert first.rc == 0, first.stdout
    messages = task(first, PLAN)["messages"]
    assert len(messages) == 1
    assert "cannot allocate cache (no usable resctrl: resctrl is not mounted" in messages[0]
    assert "cannot allocate cache" in first.stdout  # shown to the user, not only returned
    inactive_a = libvirt_conn.lookupByName(a.name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert "<vcpupin vcpu='0' cpuset='1'/>" in inactive_a
    assert "cachetune" not in inactive_a
    assert tag in inactive_a

    # the same with cachetune required: refused, nothing changed
    strict = playbook(
        role(tag, [{"name": a.name, "cachetune": {"size": "1MiB"}}], tuning_cachetune_required=True)
    )
    assert strict.rc != 0
    assert "cannot allocate cache" in task(strict, PLAN)["msg"]

    # b asking for a's CPU is refused, naming a; b stays as it was
    before_b = libvirt_conn.lookupByName(b.name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    refused = playbook(role(tag, [{"name": b.name, "cpus": "1"}]))
    assert refused.rc != 0
    msg = task(refused, PLAN)["msg"]
    assert msg == (
        f"{b.name}: the plan overlaps CPUs dedicated to other guests ({a.name} holds 1); "
        "refusing it. Choose other CPUs or release them first."
    )
    # no free CPU left for b, dedicated or shared
    none_left = playbook(role(tag, [{"name": b.name}]))
    assert "needs 1 dedicated CPUs" in task(none_left, PLAN)["msg"]
    none_shared = playbook(role(tag, [{"name": b.name, "cpu_policy": "shared"}]))
    assert "no shared CPUs left" in task(none_shared, PLAN)["msg"]
    after_b = libvirt_conn.lookupByName(b.name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert after_b == before_b

    # a turned shared releases CPU 1 (and its tag); then b may have it
    playbook_a = playbook(role(tag, [{"name": a.name, "cpu_policy": "shared"}]))
    assert playbook_a.rc == 0, playbook_a.stdout
    assert tag not in libvirt_conn.lookupByName(a.name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    granted = playbook(role(tag, [{"name": b.name, "cpus": "1"}]))
    assert granted.rc == 0, granted.stdout
    assert [r["changed"] for r in applied(granted)] == [True]


def _set_pages(count: int) -> None:
    (HUGEPAGES_2M / "nr_hugepages").write_text(f"{count}\n")


@pytest.mark.integration
def test_hugepages_checked_against_free_pages(playbook, libvirt_conn, tiny_guest, name_prefix):
    """Needs free+1 pages of 2 MiB: refused; one page more reserved: planned and applied."""
    if not HUGEPAGES_2M.is_dir():
        pytest.skip(reason="this kernel has no 2 MiB huge page pool")
    tag = f"{name_prefix}-dedicated"
    guest = tiny_guest(f"{name_prefix}-hp", start=False)
    dom = libvirt_conn.lookupByName(guest.name)
    total_before = int((HUGEPAGES_2M / "nr_hugepages").read_text())
    free = int((HUGEPAGES_2M / "free_hugepages").read_text())
    need = free + 1
    if need > 4:
        pytest.skip(reason=f"{free} free 2 MiB pages already; this test reserves at most a few")
    # memory of exactly `need` pages (the guest is never started)
    root = etree.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    for tag_name in ("memory", "currentMemory"):
        root.find(tag_name).text = str(need * 2048)
        root.find(tag_name).set("unit", "KiB")
    libvirt_conn.defineXML(etree.tostring(root, encoding="unicode"))
    spec = [{"name": guest.name, "hugepages": True, "hugepage_size": "2M"}]

    refused = playbook(role(tag, spec))
    assert refused.rc != 0
    assert f"needs {need} pages of 2048 KiB" in task(refused, PLAN)["msg"]
    assert f"only {free} are free" in task(refused, PLAN)["msg"]
    assert "hugepages" not in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    try:
        _set_pages(total_before + 1)
        wait_for(
            lambda: int((HUGEPAGES_2M / "free_hugepages").read_text()) >= need,
            10,
            "the kernel giving the extra huge page",
        )
        granted = playbook(role(tag, spec))
        assert granted.rc == 0, granted.stdout
        backing = etree.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)).find(
            "memoryBacking/hugepages/page"
        )
        assert backing is not None
        assert (backing.get("size"), backing.get("unit")) == ("2048", "KiB")
    finally:
        _set_pages(total_before)
