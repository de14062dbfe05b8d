"""The KVM verdict and virt type resolution (_host_kvm) and the host summary pieces (_host)."""

from __future__ import annotations

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _host, _host_kvm
from ansible_collections.virtops.kvm.plugins.module_utils._errors import KvmValidationError

CPUINFO_VMX = (
    "processor\t: 0\nflags\t\t: fpu vme de pse vmx sse2\n\nprocessor\t: 1\nflags\t: fpu vmx\n"
)
CPUINFO_SVM = "processor\t: 0\nflags\t\t: fpu vme svm lm\n"
# Our machines: a nested guest whose CPU has neither flag although /dev/kvm exists.
CPUINFO_NONE = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr pae hypervisor lm\n"


def caps_xml(
    *,
    arch: str = "x86_64",
    features: tuple[str, ...] = ("vmx", "sse2"),
    domain_types: tuple[str, ...] = ("qemu", "kvm"),
    cache_control: bool = False,
) -> str:
    feats = "".join(f"<feature name='{f}'/>" for f in features)
    doms = "".join(f"<domain type='{t}'/>" for t in domain_types)
    control = "<control granularity='768' unit='KiB' type='both' maxAllocs='4'/>"
    return f"""<capabilities>
  <host>
    <uuid>11111111-2222-3333-4444-555555555555</uuid>
    <cpu>
      <arch>{arch}</arch><model>Skylake-Client</model><vendor>Intel</vendor>
      <topology sockets='1' dies='1' cores='4' threads='2'/>
      {feats}
      <pages unit='KiB' size='4'/><pages unit='KiB' size='2048'/>
      <pages unit='KiB' size='1048576'/>
    </cpu>
    <topology><cells num='2'>
      <cell id='0'><memory unit='KiB'>8388608</memory>
        <pages unit='KiB' size='4'>2097152</pages><pages unit='KiB' size='2048'>64</pages>
        <pages unit='KiB' size='1048576'>1</pages>
        <cpus num='2'><cpu id='0'/><cpu id='1'/></cpus></cell>
      <cell id='1'><memory unit='KiB'>8388608</memory>
        <pages unit='KiB' size='4'>2097152</pages><pages unit='KiB' size='2048'>32</pages>
        <pages unit='KiB' size='1048576'>0</pages>
        <cpus num='2'><cpu id='2'/><cpu id='3'/></cpus></cell>
    </cells></topology>
    <cache><bank id='0' level='3' type='both' size='8' unit='MiB' cpus='0-3'>
      {control if cache_control else ""}</bank></cache>
  </host>
  <guest>
    <os_type>hvm</os_type>
    <arch name='{arch}'>
      <emulator>/usr/bin/qemu-system-{arch}</emulator>
      <machine maxCpus='255'>pc-i440fx-7.2</machine>
      <machine canonical='pc-i440fx-7.2' maxCpus='255'>pc</machine>
      <machine maxCpus='288'>pc-q35-7.2</machine>
      <machine canonical='pc-q35-7.2' maxCpus='288'>q35</machine>
      <machine maxCpus='255' deprecated='yes'>pc-i440fx-1.5</machine>
      {doms}
    </arch>
  </guest>
</capabilities>"""


def domcaps_xml(machine: str, secure: bool) -> str:
    secure_values = "<value>yes</value><value>no</value>" if secure else "<value>no</value>"
    return f"""<domainCapabilities>
  <path>/usr/bin/qemu-system-x86_64</path><domain>qemu</domain>
  <machine>{machine}</machine><arch>x86_64</arch><vcpu max='255'/>
  <os supported='yes'>
    <enum name='firmware'><value>efi</value></enum>
    <loader supported='yes'>
      <value>/usr/share/OVMF/OVMF_CODE_4M.fd</value>
      <enum name='secure'>{secure_values}</enum>
    </loader>
  </os>
</domainCapabilities>"""


class FakeConn:
    """The few virConnect calls _host makes, answering from given XML."""

    def __init__(self, caps: str, uri: str = "qemu:///system") -> None:
        self.caps = caps
        self.uri = uri
        self.domcaps_calls: list[tuple] = []

    def getCapabilities(self) -> str:
        return self.caps

    def getURI(self) -> str:
        return self.uri

    def getDomainCapabilities(self, emulator, arch, machine, virttype, flags=0) -> str:
        self.domcaps_calls.append((arch, machine, virttype))
        if machine == "q35":
            return domcaps_xml("pc-q35-7.2", secure=True)
        return domcaps_xml("pc-i440fx-7.2", secure=False)

    def getFreePages(self, pages, start, count, flags=0):
        return {0: {2048: 60, 1048576: 1}, 1: {2048: 32, 1048576: 0}}

    def getCellsFreeMemory(self, start, count):
        return [4 * 1024**3, 5 * 1024**3][start : start + count]


def write_cpuinfo(tmp_path, text: str) -> str:
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return str(path)


@pytest.fixture
def kvm_host(tmp_path):
    """A local host with vmx in cpuinfo and a character device (/dev/null) as /dev/kvm."""
    return _host_kvm.LocalHost(
        cpuinfo_path=write_cpuinfo(tmp_path, CPUINFO_VMX),
        dev_kvm_path="/dev/null",
        hugepages_path=str(tmp_path / "none"),
        node_path=str(tmp_path / "none"),
        resctrl_path=str(tmp_path / "none"),
    )


# --- the verdict ----------------------------------------------------------------------------


def test_kvm_usable_host(kvm_host):
    verdict = _host_kvm.kvm_verdict(FakeConn(caps_xml()), local_host=kvm_host)
    assert verdict.usable is True
    assert verdict.checks == {
        "capabilities_kvm_domain": True,
        "cpu_virt_flag_capabilities": True,
        "cpu_virt_flag_cpuinfo": True,
        "dev_kvm": True,
    }
    assert any("/dev/kvm is a character device" in r for r in verdict.reasons)
    assert _host_kvm.resolve_virt_type(FakeConn(caps_xml()), "auto", local_host=kvm_host) == "kvm"
    assert _host_kvm.resolve_virt_type(FakeConn(caps_xml()), "kvm", local_host=kvm_host) == "kvm"


def test_amd_svm_counts_as_hardware_virtualization(tmp_path):
    host = _host_kvm.LocalHost(
        cpuinfo_path=write_cpuinfo(tmp_path, CPUINFO_SVM), dev_kvm_path="/dev/null"
    )
    conn = FakeConn(caps_xml(features=("svm",)))
    assert _host_kvm.kvm_verdict(conn, local_host=host).usable is True


def test_dev_kvm_present_but_no_vmx_svm_is_not_usable(tmp_path):
    """Our machines: /dev/kvm exists and libvirt offers kvm, but the CPU has no vmx/svm."""
    host = _host_kvm.LocalHost(
        cpuinfo_path=write_cpuinfo(tmp_path, CPUINFO_NONE), dev_kvm_path="/dev/null"
    )
    conn = FakeConn(caps_xml(features=("sse2", "hypervisor")))
    verdict = _host_kvm.kvm_verdict(conn, local_host=host)
    assert verdict.usable is False
    assert verdict.checks == {
        "capabilities_kvm_domain": True,
        "cpu_virt_flag_capabilities": False,
        "cpu_virt_flag_cpuinfo": False,
        "dev_kvm": True,
    }
    assert len(verdict.reasons) == 2
    assert "although /dev/kvm exists" in verdict.reasons[0]
    assert "/proc/cpuinfo" in verdict.reasons[1]
    assert _host_kvm.resolve_virt_type(conn, "auto", local_host=host) == "qemu"
    assert _host_kvm.resolve_virt_type(conn, "qemu", local_host=host) == "qemu"


def test_cpuinfo_disagreeing_with_capabilities_is_not_usable(tmp_path):
    host = _host_kvm.LocalHost(
        cpuinfo_path=write_cpuinfo(tmp_path, CPUINFO_NONE), dev_kvm_path="/dev/null"
    )
    verdict = _host_kvm.kvm_verdict(FakeConn(caps_xml()), local_host=host)
    assert verdict.usable is False
    assert verdict.checks["cpu_virt_flag_capabilities"] is True
    assert verdict.checks["cpu_virt_flag_cpuinfo"] is False


def test_no_kvm_in_capabilities(kvm_host):
    conn = FakeConn(caps_xml(domain_types=("qemu",)))
    verdict = _host_kvm.kvm_verdict(conn, local_host=kvm_host)
    assert verdict.usable is False
    assert verdict.checks["capabilities_kvm_domain"] is False
    assert verdict.reasons == ["libvirt does not advertise domain type 'kvm' for x86_64 guests"]
    assert _host_kvm.resolve_virt_type(conn, "auto", local_host=kvm_host) == "qemu"


def test_missing_dev_kvm(tmp_path):
    host = _host_kvm.LocalHost(
        cpuinfo_path=write_cpuinfo(tmp_path, CPUINFO_VMX),
        dev_kvm_path=str(tmp_path / "kvm"),
    )
    verdict = _host_kvm.kvm_verdict(FakeConn(caps_xml()), local_host=host)
    assert verdict.usable is False
    assert verdict.reasons == ["/dev/kvm is missing"]


def test_dev_kvm_not_a_character_device(tmp_path):
    (tmp_path / "kvm").write_text("")
    host = _host_kvm.LocalHost(
        cpuinfo_path=write_cpuinfo(tmp_path, CPUINFO_VMX),
        dev_kvm_path=str(tmp_path / "kvm"),
    )
    verdict = _host_kvm.kvm_verdict(FakeConn(caps_xml()), local_host=host)
    assert verdict.checks["dev_kvm"] is False
    assert verdict.reasons == ["/dev/kvm is not a character device"]


def test_remote_host_is_judged_from_capabilities_only():
    conn = FakeConn(caps_xml(), uri="qemu+ssh://root@kvm1.example.com/system")
    verdict = _host_kvm.kvm_verdict(conn)  # no local facts read for a remote host
    assert verdict.usable is True
    assert verdict.checks["cpu_virt_flag_cpuinfo"] is None
    assert verdict.checks["dev_kvm"] is None
    remote_without_flag = FakeConn(caps_xml(features=()), uri="qemu+tcp://10.0.0.1/system")
    assert _host_kvm.kvm_verdict(remote_without_flag).usable is False


def test_non_x86_skips_the_cpu_flag_check():
    conn = FakeConn(caps_xml(arch="aarch64", features=()), uri="qemu+ssh://arm1/system")
    verdict = _host_kvm.kvm_verdict(conn)
    assert verdict.usable is True
    assert verdict.checks["cpu_virt_flag_capabilities"] is None


def test_requested_kvm_on_unusable_host_raises(tmp_path):
    host = _host_kvm.LocalHost(
        cpuinfo_path=write_cpuinfo(tmp_path, CPUINFO_NONE), dev_kvm_path="/dev/null"
    )
    conn = FakeConn(caps_xml(features=()))
    with pytest.raises(KvmValidationError) as err:
        _host_kvm.resolve_virt_type(conn, "kvm", local_host=host)
    assert "KVM is not usable" in err.value.msg
    assert "vmx/svm" in err.value.msg
    assert err.value.details["kvm_reasons"] == _host_kvm.kvm_verdict(conn, local_host=host).reasons


def test_unknown_requested_virt_type_raises():
    with pytest.raises(KvmValidationError, match="Unknown virt type 'xen'"):
        _host_kvm.resolve_virt_type(FakeConn(caps_xml()), "xen")


def test_test_driver_is_not_kvm_usable():
    conn = libvirt.open("test:///default")
    try:
        verdict = _host_kvm.kvm_verdict(conn)
        assert verdict.usable is False
        assert verdict.checks["dev_kvm"] is None  # the test driver is never local
        assert _host_kvm.resolve_virt_type(conn, "auto") == "qemu"
    finally:
        conn.close()


# --- small pieces ---------------------------------------------------------------------------


def test_cpuinfo_flags():
    assert _host_kvm.cpuinfo_flags(CPUINFO_VMX) == {"fpu", "vme", "de", "pse", "vmx", "sse2"}
    assert _host_kvm.cpuinfo_flags("processor : 0\nFeatures : fp asimd\n") is None
    assert _host_kvm.cpuinfo_flags(None) is None


def test_version_string_and_units():
    assert _host.version_string(9000000) == "9.0.0"
    assert _host.version_string(7002022) == "7.2.22"
    assert _host.to_bytes("32", "MiB") == 32 * 1024**2
    assert _host.to_bytes("4", "KiB") == 4096
    assert _host.cpu_list("0-3,8,^2") == [0, 1, 3, 8]


def test_hugepage_pools_from_libvirt():
    conn = FakeConn(caps_xml(), uri="qemu+ssh://h/system")
    caps = _host_kvm.capabilities(conn)
    pools = _host.hugepage_pools(conn, caps)
    assert [p["size_kib"] for p in pools] == [2048, 1048576]  # the 4 KiB base page is no pool
    two_mib = pools[0]
    assert two_mib["total"] == 96 and two_mib["free"] == 92
    assert two_mib["cells"] == [
        {"id": 0, "total": 64, "free": 60},
        {"id": 1, "total": 32, "free": 32},
    ]
    assert two_mib["source"] == "libvirt"


def test_hugepage_pools_from_sysfs(tmp_path):
    def pool(base, size, total, free):
        d = base / f"hugepages-{size}kB"
        d.mkdir(parents=True)
        (d / "nr_hugepages").write_text(f"{total}\n")
        (d / "free_hugepages").write_text(f"{free}\n")

    pool(tmp_path / "mm", 2048, 10, 7)
    pool(tmp_path / "node" / "node0" / "hugepages", 2048, 6, 5)
    pool(tmp_path / "node" / "node1" / "hugepages", 2048, 4, 2)
    host = _host_kvm.LocalHost(
        hugepages_path=str(tmp_path / "mm"), node_path=str(tmp_path / "node")
    )
    conn = FakeConn(caps_xml())
    pools = {
        p["size_kib"]: p for p in _host.hugepage_pools(conn, _host_kvm.capabilities(conn), host)
    }
    assert pools[2048]["source"] == "sysfs"
    assert (pools[2048]["total"], pools[2048]["free"]) == (10, 7)
    assert pools[2048]["cells"] == [
        {"id": 0, "total": 6, "free": 5},
        {"id": 1, "total": 4, "free": 2},
    ]
    assert pools[1048576]["source"] == "libvirt"  # sysfs had no 1 GiB directory


def test_machine_types_and_firmware():
    conn = FakeConn(caps_xml())
    caps = _host_kvm.capabilities(conn)
    machines = _host.machine_types(conn, caps, "x86_64", "qemu")
    assert machines["default"] == "pc-i440fx-7.2"
    names = [m["name"] for m in machines["types"]]
    assert names == sorted(names) and "q35" in names
    q35 = next(m for m in machines["types"] if m["name"] == "q35")
    assert q35 == {"name": "q35", "canonical": "pc-q35-7.2", "max_cpus": 288, "deprecated": False}
    assert next(m for m in machines["types"] if m["name"] == "pc-i440fx-1.5")["deprecated"]

    wanted = _host.firmware_machines("x86_64", machines["types"])
    firmware = _host.firmware_info(conn, "x86_64", "qemu", wanted)
    assert firmware["uefi"] is True
    assert firmware["secure_boot"] is True
    assert firmware["secure_boot_machines"] == ["pc-q35-7.2"]
    assert firmware["machines_checked"] == ["pc-i440fx-7.2", "pc-q35-7.2"]
    assert ("x86_64", "q35", "qemu") in conn.domcaps_calls


def test_resctrl(tmp_path):
    conn = FakeConn(caps_xml())
    info = _host.resctrl_info(
        _host_kvm.capabilities(conn), _host_kvm.LocalHost(resctrl_path=str(tmp_path))
    )
    assert info["available"] is False and info["mounted"] is False
    assert info["cache_banks"][0]["size_bytes"] == 8 * 1024**2
    assert info["cache_banks"][0]["cpus"] == [0, 1, 2, 3]

    (tmp_path / "info").mkdir()
    conn = FakeConn(caps_xml(cache_control=True))
    info = _host.resctrl_info(
        _host_kvm.capabilities(conn), _host_kvm.LocalHost(resctrl_path=str(tmp_path))
    )
    assert info["available"] is True and info["mounted"] is True


def test_numa_cells():
    conn = FakeConn(caps_xml())
    cells = _host.numa_cells(conn, _host_kvm.capabilities(conn))
    assert cells == [
        {"id": 0, "cpus": [0, 1], "memory_bytes": 8 * 1024**3, "free_memory_bytes": 4 * 1024**3},
        {"id": 1, "cpus": [2, 3], "memory_bytes": 8 * 1024**3, "free_memory_bytes": 5 * 1024**3},
    ]


class CountingConn:
    """Wraps a real connection and counts calls, to prove guest counting is one bulk call."""

    def __init__(self, conn) -> None:
        self._conn = conn
        self.calls: list[str] = []

    def __getattr__(self, name):
        attr = getattr(self._conn, name)
        if callable(attr):

            def counted(*args, **kwargs):
                self.calls.append(name)
                return attr(*args, **kwargs)

            return counted
        return attr


def test_guest_counts_use_one_bulk_call():
    conn = libvirt.open("test:///default")
    try:
        xml = (
            "<domain type='test'><name>{}</name><memory>1024</memory>"
            "<os><type>hvm</type></os></domain>"
        )
        conn.defineXML(xml.format("off1"))
        conn.defineXML(xml.format("off2"))
        paused = conn.defineXML(xml.format("paused1"))
        paused.create()
        paused.suspend()
        counting = CountingConn(conn)
        counts = _host.guest_counts(counting)
        assert counting.calls == ["getAllDomainStats"]
        assert counts["total"] == 4  # the test driver's own running "test" guest, plus ours
        assert counts["by_state"]["running"] == 1
        assert counts["by_state"]["paused"] == 1
        assert counts["by_state"]["shutoff"] == 2
        assert (counts["active"], counts["inactive"]) == (2, 2)
        assert counts == _host._guest_counts_by_listing(conn)
    finally:
        conn.close()


def test_host_summary_gather_and_unknown_section():
    conn = libvirt.open("test:///default")
    try:
        summary = _host.host_summary(conn, gather=["kvm", "guests"])
        assert set(summary) == {
            "hostname",
            "uuid",
            "uri",
            "local",
            "kvm_usable",
            "kvm_reasons",
            "kvm_checks",
            "recommended_virt_type",
            "guests",
            "unavailable",
        }
        with pytest.raises(KvmValidationError, match="Unknown sections"):
            _host.host_summary(conn, gather=["bogus"])
    finally:
        conn.close()


class _Times:
    """A connection whose CPU times advance by ``steps`` (ns) between two readings."""

    def __init__(self, steps: dict[str, int]):
        self.steps = steps
        self.read = 0

    def getCPUStats(self, cpu, flags):
        assert cpu == libvirt.VIR_NODE_CPU_STATS_ALL_CPUS
        self.read += 1
        return {key: 10**12 + step * self.read for key, step in self.steps.items()}


def test_cpu_load_is_the_share_of_time_between_two_readings(tmp_path):
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("0.52 0.41 0.30 2/345 6789\n")
    conn = _Times({"user": 300, "kernel": 100, "iowait": 100, "idle": 500})
    load = _host.cpu_load(conn, _host_kvm.LocalHost(loadavg_path=str(loadavg)), sample=0)
    assert conn.read == 2
    assert load == {
        "sample_seconds": 0,
        "busy_percent": 50.0,
        "user_percent": 30.0,
        "kernel_percent": 10.0,
        "iowait_percent": 10.0,
        "idle_percent": 50.0,
        "loadavg": [0.52, 0.41, 0.3],
    }
    # a remote host: no load averages; times that did not move: no percentages
    still = _host.cpu_load(_Times({"user": 0, "idle": 0}), None, sample=0)
    assert still["loadavg"] is None
    assert still["busy_percent"] is None and still["idle_percent"] is None


def test_load_section_on_the_test_driver():
    conn = libvirt.open("test:///default")
    try:
        summary = _host.host_summary(conn, gather=["load"])
        assert set(summary["load"]) == {
            "sample_seconds",
            "busy_percent",
            "user_percent",
            "kernel_percent",
            "iowait_percent",
            "idle_percent",
            "loadavg",
        }
        assert summary["load"]["loadavg"] is None  # the test driver is no local host
    finally:
        conn.close()
