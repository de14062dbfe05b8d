"""host_info through ansible-playbook against the real local libvirtd (qemu:///system)."""

from __future__ import annotations

import os
import stat
from collections import Counter

import libvirt
import pytest
from lxml import etree

pytestmark = pytest.mark.integration

URI = "qemu:///system"
STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}


def dotted(number: int) -> str:
    major, rest = divmod(number, 1000000)
    return f"{major}.{rest // 1000}.{rest % 1000}"


def meminfo_total_bytes() -> int:
    with open("/proc/meminfo", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no MemTotal in /proc/meminfo")


def cpu_has_hw_virt() -> bool:
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
        for line in handle:
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return "vmx" in flags or "svm" in flags
    return False


def libvirt_objects(conn) -> dict:
    """What the module should report about guests, pools and networks, read directly."""
    guests = Counter(STATES[dom.state()[0]] for dom in conn.listAllDomains())
    return {
        "guests_total": sum(guests.values()),
        "guests": {state: guests.get(state, 0) for state in STATES.values()},
        "pools": sorted(
            (p.name(), bool(p.isActive()), bool(p.autostart())) for p in conn.listAllStoragePools()
        ),
        "networks": sorted(
            (n.name(), bool(n.isActive()), bool(n.autostart())) for n in conn.listAllNetworks()
        ),
    }


def reported_objects(host: dict) -> dict:
    return {
        "guests_total": host["guests"]["total"],
        "guests": host["guests"]["by_state"],
        "pools": sorted((p["name"], p["active"], p["autostart"]) for p in host["storage_pools"]),
        "networks": sorted((n["name"], n["active"], n["autostart"]) for n in host["networks"]),
    }


@pytest.fixture(scope="module")
def conn():
    conn = libvirt.open(URI)
    yield conn
    conn.close()


def run_host_info(playbook, gather: list[str] | None = None, **kwargs) -> dict:
    args = {"uri": URI, **({"gather": gather} if gather else {})}
    run = playbook([{"name": "host info", "virtops.kvm.host_info": args}], **kwargs)
    assert run.rc == 0, run.stdout + run.stderr
    result = run.task("host info")
    assert result["changed"] is False
    host = result["host"]
    wanted = set(gather or [])
    for section in ("cpu", "storage_pools", "guests"):
        assert (section in host) is (not wanted or section in wanted)
    return host


def test_guests_pools_networks_match_libvirt(playbook, conn):
    # Other tests create and remove guests, pools and networks on this daemon at the same
    # time: the report must equal what libvirt listed just before or just after the run.
    seen = []
    for _attempt in range(4):
        before = libvirt_objects(conn)
        host = run_host_info(playbook, gather=["guests", "storage_pools", "networks"])
        after = libvirt_objects(conn)
        reported = reported_objects(host)
        if reported in (before, after):
            return
        seen.append((before, reported, after))
    pytest.fail(f"host_info never matched libvirt's own listing: {seen}")


def test_host_info_reports_real_values(playbook, conn):
    host = run_host_info(playbook)
    assert host["uri"] == URI
    assert host["local"] is True
    assert host["unavailable"] == {}
    assert host["hostname"] == conn.getHostname()

    versions = host["versions"]
    assert versions["libvirt_library"] == dotted(libvirt.getVersion())
    assert versions["libvirt_daemon"] == dotted(conn.getLibVersion())
    assert versions["hypervisor_type"] == "QEMU"
    assert versions["hypervisor"] == dotted(conn.getVersion())

    caps = etree.fromstring(conn.getCapabilities().encode())
    assert host["uuid"] == caps.findtext("host/uuid").strip()
    assert host["cpu"]["arch"] == caps.findtext("host/cpu/arch").strip() == os.uname().machine
    assert host["cpu"]["count"] == conn.getInfo()[2]
    cell_cpus = sorted(c for cell in host["cpu"]["numa_cells"] for c in cell["cpus"])
    assert cell_cpus == sorted(int(c.get("id")) for c in caps.iter("cpu") if c.get("id"))

    total = host["memory"]["total_bytes"]
    assert abs(total - meminfo_total_bytes()) <= 0.02 * meminfo_total_bytes()
    assert 0 < host["memory"]["free_bytes"] <= total

    for pool in host["hugepages"]:
        sysfs = f"/sys/kernel/mm/hugepages/hugepages-{pool['size_kib']}kB/nr_hugepages"
        with open(sysfs, encoding="ascii") as handle:
            assert pool["total"] == int(handle.read())

    assert host["machines"]["domain_type"] == host["recommended_virt_type"]
    assert host["machines"]["default"] in {m["name"] for m in host["machines"]["types"]} | {
        m["canonical"] for m in host["machines"]["types"]
    }
    # OVMF is installed by scripts/setup.sh, with secure boot images for q35.
    assert host["firmware"]["uefi"] is True
    assert any(path.startswith("/usr/share/OVMF/") for path in host["firmware"]["loaders"])
    assert host["firmware"]["secure_boot"] is True
    assert host["resctrl"]["mounted"] is os.path.isdir("/sys/fs/resctrl/info")


def test_kvm_verdict_matches_the_machine(playbook, conn):
    host = run_host_info(playbook, check=True)
    dev_kvm = os.path.exists("/dev/kvm") and stat.S_ISCHR(os.stat("/dev/kvm").st_mode)
    caps_kvm = "<domain type='kvm'" in conn.getCapabilities()
    expected = dev_kvm and caps_kvm and cpu_has_hw_virt()
    assert host["kvm_usable"] is expected, host["kvm_reasons"]
    assert host["recommended_virt_type"] == ("kvm" if expected else "qemu")
    assert host["kvm_reasons"]
    if dev_kvm and caps_kvm and not cpu_has_hw_virt():
        # Our machines: everything looks like KVM except the CPU, and KVM guests hang.
        assert host["kvm_usable"] is False
        assert host["recommended_virt_type"] == "qemu"
        assert host["kvm_checks"]["dev_kvm"] is True
        assert host["kvm_checks"]["capabilities_kvm_domain"] is True
        assert host["kvm_checks"]["cpu_virt_flag_cpuinfo"] is False
        assert any("vmx/svm" in reason for reason in host["kvm_reasons"])
