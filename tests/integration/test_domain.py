"""Integration tests of virtops.kvm.domain and domain_info against the real libvirtd.

``integration`` tests define guests but boot none; ``lab`` tests boot the lab's tiny guest,
created through the domain module itself, and watch its heartbeat on the console log.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import libvirt
import pytest

from tests.helpers import (
    domain_exists,
    domain_task,
    failed,
    four_results,
    inactive_xml,
    validate_xml,
    wait_for,
)
from tests.lab.guests import TinyGuest, prepare_tiny_files


def rich_spec(name: str, files: Path) -> dict:
    return {
        "name": name,
        "memory": "256MiB",
        "max_memory": "512MiB",
        "vcpus": 1,
        "max_vcpus": 2,
        "machine": "q35",
        "cpu": {"mode": "custom", "model": "qemu64", "sockets": 1, "cores": 2, "threads": 1},
        "boot": ["hd", "cdrom"],
        "cdrom": str(files / "install.iso"),
        "disks": [
            {
                "path": str(files / "a.img"),
                "format": "raw",
                "cache": "none",
                "io": "native",
                "discard": "unmap",
                "serial": "disk-a",
                "iotune": {"total_iops_sec": 500},
            },
            {"path": str(files / "b.qcow2"), "format": "qcow2", "bus": "scsi", "readonly": True},
        ],
        "interfaces": [{"network": "default"}, {"network": "default", "mtu": 1400}],
        "graphics": {"type": "vnc", "listen": "127.0.0.1"},
        "serials": [{"type": "pty"}],
        "guest_agent": True,
        "rng": True,
        "watchdog": {"model": "i6300esb", "action": "reset"},
        "title": "rich guest",
        "description": "made by test_domain",
        "tags": ["web", "test"],
        "tuning": {
            "vcpu_pins": [{"vcpu": 0, "cpuset": "0"}, {"vcpu": 1, "cpuset": "1"}],
            "emulator_pin": "0-1",
            "iothreads": 1,
            "cpu_shares": 512,
            "memory_hard_limit": "1GiB",
            "blkio_weight": 500,
        },
        "xml": "<features><acpi/><apic/><pae/></features>",
    }


# --------------------------------------------------------------------------- no boot
@pytest.mark.integration
def test_define_rich_guest_converges(playbook, conn, name_prefix, files, tmp_path):
    name = f"{name_prefix}-rich"
    steps = four_results(playbook, domain_task("guest", rich_spec(name, files)))
    first = steps[1]
    assert first["state"] == "shutoff"
    assert set(first["diff"]["after"]) >= {"memory", "disks", "interfaces", "tuning"}
    xml = inactive_xml(conn, name)
    validate_xml(xml, "domain", tmp_path)
    assert "<pae/>" in xml
    assert xml.count("<interface ") == 2
    # libvirt generated the MACs; the second run kept them and reported nothing
    assert steps[3]["changes"] == []


@pytest.mark.integration
def test_check_mode_predicts_and_leaves_xml_identical(playbook, conn, name_prefix, files, tmp_path):
    name = f"{name_prefix}-chk"
    spec = rich_spec(name, files)
    assert playbook([domain_task("create", spec)]).rc == 0
    before = inactive_xml(conn, name)
    edited = dict(
        spec,
        memory=384,
        tags=["web"],
        cdrom=str(files / "install2.iso"),
        tuning=dict(spec["tuning"], vcpu_pins=[{"vcpu": 0, "cpuset": "1"}]),
    )
    run = playbook([domain_task("predict", edited, check=True)], diff=True)
    assert run.rc == 0, run.stdout
    predicted = run.task("predict")
    assert predicted["changed"] is True
    assert sorted(predicted["changes"]) == ["disks", "memory", "tags", "tuning.vcpu_pins"]
    assert inactive_xml(conn, name) == before  # byte-identical
    diff = predicted["diff"]
    assert (diff["before"]["memory"], diff["after"]["memory"]) == (256, 384)
    assert diff["before"]["tuning"]["vcpu_pins"] == {"0": "0", "1": "1"}
    assert diff["after"]["tuning"]["vcpu_pins"] == {"0": "1"}
    # the real run changes exactly what was predicted, then nothing
    steps = four_results(playbook, domain_task("guest", edited))
    assert steps[0]["changes"] == predicted["changes"]
    validate_xml(inactive_xml(conn, name), "domain", tmp_path)


@pytest.mark.integration
def test_xml_fragment_and_conflict(playbook, conn, name_prefix, files):
    name = f"{name_prefix}-xml"
    base = {"name": name, "memory": 128, "disks": [{"path": str(files / "a.img"), "format": "raw"}]}
    four_results(playbook, domain_task("guest", dict(base, xml="<clock offset='localtime'/>")))
    assert "offset='localtime'" in inactive_xml(conn, name)
    before = inactive_xml(conn, name)
    run = playbook(
        [
            domain_task(
                "conflict",
                dict(base, xml="<currentMemory unit='KiB'>262144</currentMemory>"),
                ignore_errors=True,
            )
        ]
    )
    result = failed(run, "conflict")
    assert "Conflicting settings for memory" in result["msg"]
    assert inactive_xml(conn, name) == before


BAD_INPUTS = [
    ("memory: not a size", {"memory": "lots"}, "cannot read 'lots' as a size"),
    ("memory: zero", {"memory": 0}, "memory must be at least 1 MiB"),
    ("max below current", {"memory": 512, "max_memory": 256}, "max_memory (256 MiB) is below"),
    ("vcpus zero", {"vcpus": 0}, "vcpus must be at least 1"),
    ("max vcpus below", {"vcpus": 4, "max_vcpus": 2}, "max_vcpus (2) is below vcpus (4)"),
    ("topology", {"vcpus": 3, "cpu": {"sockets": 1, "cores": 2}}, "cpu topology gives 2"),
    ("unknown network", {"interfaces": [{"network": "nonet-xyz"}]}, "Unknown libvirt network"),
    ("inactive network", {"interfaces": [{"network": "NET"}]}, "is not active"),
    ("unknown bridge", {"interfaces": [{"bridge": "nobr-xyz"}]}, "Unknown bridge"),
    ("not a bridge", {"interfaces": [{"bridge": "lo"}]}, "is not a bridge"),
    ("unknown pool", {"disks": [{"pool": "nopool-xyz", "volume": "v"}]}, "Unknown storage pool"),
    ("missing iso", {"cdrom": "/nonexistent/install.iso"}, "install ISO (cdrom) file"),
    ("missing kernel", {"kernel": "/nonexistent/vmlinuz"}, "kernel file /nonexistent"),
    (
        "conflict: secure boot bios",
        {"firmware": "bios", "secure_boot": True},
        "secure_boot needs firmware uefi",
    ),
    (
        "conflict: model and mode",
        {"cpu": {"mode": "host-model", "model": "qemu64"}},
        "conflicts with cpu.mode",
    ),
    (
        "conflict: two sources",
        {"interfaces": [{"network": "default", "bridge": "virbr0"}]},
        "exactly one of network, bridge or dev",
    ),
    ("memory beyond host", {"memory": "64TiB"}, "more than the host has"),
    ("malformed xml", {"xml": "<features><pae></features>"}, "Malformed xml option"),
    (
        "pin beyond host",
        {"tuning": {"vcpu_pins": [{"vcpu": 0, "cpuset": "4096"}]}},
        "names CPUs the host does not have",
    ),
    ("unknown machine", {"machine": "pc-nonsense-1"}, "Unknown machine type"),
]


@pytest.mark.integration
def test_bad_input_fails_before_anything_changes(playbook, conn, name_prefix, files):
    stopped = conn.networkDefineXML(f"<network><name>{name_prefix}-off</name></network>")
    assert not stopped.isActive()
    existing = f"{name_prefix}-ok"
    base = {
        "name": existing,
        "memory": 128,
        "disks": [{"path": str(files / "a.img"), "format": "raw"}],
    }
    assert playbook([domain_task("create", base)]).rc == 0
    before = inactive_xml(conn, existing)
    tasks = []
    for i, (label, given, _message) in enumerate(BAD_INPUTS):
        extra = given
        if label == "inactive network":
            extra = {"interfaces": [{"network": f"{name_prefix}-off"}]}
        # on a new guest (must not be created) and on an existing one (must not change)
        tasks.append(
            domain_task(
                f"new {label}",
                dict({"name": f"{name_prefix}-bad{i}", "memory": 128, "state": "running"}, **extra),
                ignore_errors=True,
            )
        )
        tasks.append(
            domain_task(
                f"existing {label}", dict(base, state="running", **extra), ignore_errors=True
            )
        )
    run = playbook(tasks)
    for i, (label, _given, message) in enumerate(BAD_INPUTS):
        for which in ("new", "existing"):
            result = failed(run, f"{which} {label}")
            assert message in result["msg"], (label, which, result["msg"])
        assert not domain_exists(conn, f"{name_prefix}-bad{i}"), label
    assert inactive_xml(conn, existing) == before
    assert conn.lookupByName(existing).isActive() == 0


@pytest.mark.integration
def test_absent_removes_guest_nvram_and_volumes(playbook, conn, name_prefix, files):
    pool_name = f"{name_prefix}-pool"
    pool_dir = files / "pool"
    pool_dir.mkdir()
    pool = conn.storagePoolDefineXML(
        f"<pool type='dir'><name>{pool_name}</name><target><path>{pool_dir}</path></target></pool>"
    )
    pool.create()
    pool.createXML(
        "<volume><name>root.qcow2</name><capacity unit='MiB'>16</capacity>"
        "<target><format type='qcow2'/></target></volume>"
    )
    name = f"{name_prefix}-gone"
    spec = {
        "name": name,
        "memory": 128,
        "firmware": "uefi",
        "disks": [{"pool": pool_name, "volume": "root.qcow2"}],
        "cdrom": str(files / "install.iso"),
    }
    run = playbook([domain_task("create", spec)])
    assert run.rc == 0, run.stdout
    assert run.task("create")["changed"]
    assert "type='volume'" in inactive_xml(conn, name)
    absent = {"name": name, "state": "absent", "remove_storage": True}
    steps = four_results(playbook, domain_task("guest", absent))
    assert steps[1]["removed_volumes"] == [str(pool_dir / "root.qcow2")]
    assert not domain_exists(conn, name)
    pool.refresh()
    assert pool.listVolumes() == []
    assert (files / "install.iso").exists()  # CD-ROMs are never removed


@pytest.mark.integration
def test_domain_info_filters_by_tag_and_state(playbook, conn, name_prefix, files):
    for suffix, tags in (("a", ["blue", "x"]), ("b", ["red"])):
        spec = {
            "name": f"{name_prefix}-{suffix}",
            "memory": 128,
            "tags": tags,
            "interfaces": [{"network": "default"}],
        }
        assert playbook([domain_task("create", spec)]).rc == 0
    run = playbook(
        [
            {"name": "tag", "virtops.kvm.domain_info": {"tags": ["blue"]}},
            {
                "name": "one",
                "virtops.kvm.domain_info": {"name": f"{name_prefix}-b", "include_xml": True},
            },
            {"name": "state", "virtops.kvm.domain_info": {"states": ["paused"]}},
            {"name": "none", "virtops.kvm.domain_info": {"name": f"{name_prefix}-nope"}},
        ]
    )
    assert run.rc == 0, run.stdout
    tagged = [g for g in run.task("tag")["guests"] if g["name"].startswith(name_prefix)]
    assert [g["name"] for g in tagged] == [f"{name_prefix}-a"]
    [one] = run.task("one")["guests"]
    assert one["state"] == "shutoff" and one["config"]["tags"] == ["red"]
    assert one["interfaces"][0]["mac"].startswith("52:54:00")
    assert "<domain" in one["xml"]
    assert all(g["state"] == "paused" for g in run.task("state")["guests"])
    assert run.task("none")["guests"] == []


# --------------------------------------------------------------------------- lab (boots)
@pytest.fixture
def tiny(tiny_image, name_prefix, cleanup):
    """Files of a tiny guest (marker disk, console log, command socket) and its spec."""
    name = f"{name_prefix}-tiny"
    gfiles = prepare_tiny_files(name, tiny_image)
    cleanup.append(gfiles.dir)
    # Private copies of kernel and initrd: libvirt refuses to relabel a file that a guest of
    # another libvirtd (lab hosts) holds with other remembered owner labels.
    kernel, initrd = gfiles.dir / "vmlinuz", gfiles.dir / "initrd.img"
    shutil.copyfile(tiny_image.kernel, kernel)
    shutil.copyfile(tiny_image.initrd, initrd)
    spec = {
        "name": name,
        "state": "running",
        "virt_type": "auto",
        "memory": 192,
        "max_memory": 256,
        "vcpus": 1,
        "max_vcpus": 2,
        "machine": "pc",
        "kernel": str(kernel),
        "initrd": str(initrd),
        "cmdline": tiny_image.cmdline,
        "disks": [{"path": str(gfiles.marker_disk), "format": "qcow2", "cache": "none"}],
        "serials": [
            {"type": "file", "path": str(gfiles.console_log)},
            {"type": "unix", "path": str(gfiles.command_socket), "port": 1},
        ],
        "timeout": 300,
    }
    return spec, TinyGuest(name, gfiles)


@pytest.fixture
def lab_network(conn, name_prefix, cleanup):
    """An isolated libvirt network in 198.18.0.0/15 (removed by ``cleanup``)."""
    octet = int(name_prefix[-2:], 16) % 250 + 1
    net = conn.networkDefineXML(
        f"<network><name>{name_prefix}-net</name><bridge name='vt{name_prefix[3:]}'/>"
        f"<ip address='198.18.{octet}.1' netmask='255.255.255.0'>"
        f"<dhcp><range start='198.18.{octet}.10' end='198.18.{octet}.50'/></dhcp></ip>"
        "</network>"
    )
    net.create()
    return net.name()


@pytest.mark.lab
def test_tiny_playbook_twice_then_check_diff_shows_the_edit(
    playbook, conn, tiny, *, lab_network, files, tmp_path
):
    """The issue's bar: disks, NICs and pinning; changed=0 the second time; --check --diff."""
    spec, guest = tiny
    spec = dict(
        spec,
        disks=[*spec["disks"], {"path": str(files / "a.img"), "format": "raw", "cache": "none"}],
        interfaces=[{"network": lab_network}],
        tuning={"vcpu_pins": [{"vcpu": 0, "cpuset": "0"}, {"vcpu": 1, "cpuset": "1"}]},
        tags=["lab"],
    )
    first = playbook([domain_task("guest", spec)])
    assert first.rc == 0, first.stdout
    assert first.task("guest")["changed"] is True
    assert first.task("guest")["state"] == "running"
    validate_xml(inactive_xml(conn, spec["name"]), "domain", tmp_path)
    started = time.monotonic()
    second = playbook([domain_task("guest", spec)])
    print(f"no-change playbook run: {time.monotonic() - started:.2f} s")
    assert second.rc == 0 and second.task("guest")["changed"] is False
    assert "changed=0" in second.stdout
    guest.conn = conn
    beat = guest.wait_heartbeat(timeout=300)
    assert guest.wait_heartbeat(after=beat, timeout=120) > beat
    # domain_info shows the address the guest got by DHCP (from the network's leases)
    address = guest.dhcp_address(timeout=300)
    info = playbook([{"name": "info", "virtops.kvm.domain_info": {"name": spec["name"]}}])
    [found] = info.task("info")["guests"]
    assert found["config"]["tags"] == ["lab"]
    assert address in found["interfaces"][0]["ip_addresses"]
    assert found["stats"]["vcpus_current"] == 1
    # an edited copy in --check --diff: exactly the edit, and libvirt's XML untouched
    before_xml = inactive_xml(conn, spec["name"])
    edited = dict(spec, cmdline=spec["cmdline"] + " edited=1", tags=["lab", "edited"])
    run = playbook([domain_task("guest", edited)], check=True, diff=True)
    result = run.task("guest")
    assert result["changed"] is True
    assert result["changes"] == ["tags", "cmdline"]
    diff = result["diff"]
    differing = sorted(k for k in diff["after"] if diff["before"].get(k) != diff["after"][k])
    assert differing == ["cmdline", "tags"]
    assert inactive_xml(conn, spec["name"]) == before_xml
    assert "edited=1" in run.stdout  # the diff Ansible printed


@pytest.mark.lab
def test_tiny_live_memory_and_vcpus(playbook, conn, tiny):
    spec, guest = tiny
    assert playbook([domain_task("create", spec)]).rc == 0
    guest.wait_heartbeat(timeout=300)
    dom = conn.lookupByName(spec["name"])
    live = dict(
        spec, memory=160, vcpus=2, tags=["live"], tuning={"vcpu_pins": [{"vcpu": 0, "cpuset": "1"}]}
    )
    steps = four_results(playbook, domain_task("guest", live))
    applied = steps[1]
    assert sorted(applied["live_applied"]) == ["memory", "tags", "tuning.vcpu_pins", "vcpus"]
    assert applied["restart_required"] == []
    assert dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE) == 2
    assert dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_CONFIG) == 2
    assert dom.vcpuPinInfo(libvirt.VIR_DOMAIN_AFFECT_LIVE)[0][:2] == (False, True)
    assert "live" in dom.metadata(
        libvirt.VIR_DOMAIN_METADATA_ELEMENT,
        "https://virtops.dev/xmlns/kvm/1.0",
        libvirt.VIR_DOMAIN_AFFECT_LIVE,
    )
    # the balloon target reached the guest's driver
    wait_for(lambda: dom.info()[2] == 160 * 1024, 60, "the balloon at 160 MiB", interval=0.5)
    assert dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).count("163840") == 1
    # the guest kept running the whole time (no reboot: the heartbeat counter went on)
    before = guest.last_heartbeat()
    assert guest.wait_heartbeat(after=before, timeout=120) > before


@pytest.mark.lab
def test_tiny_memory_limit_set_and_lifted_live(playbook, conn, tiny):
    spec, guest = tiny
    limited = dict(spec, tuning={"memory_soft_limit": 1024})
    created = playbook([domain_task("create", limited)])
    assert created.rc == 0, created.stdout[-3000:]
    guest.wait_heartbeat(timeout=300)
    dom = conn.lookupByName(spec["name"])
    assert dom.memoryParameters(libvirt.VIR_DOMAIN_AFFECT_LIVE)["soft_limit"] == 1024 * 1024
    # 0 removes the limit: lifted on the running guest too (libvirt's "unlimited")
    steps = four_results(
        playbook, domain_task("guest", dict(spec, tuning={"memory_soft_limit": 0}))
    )
    assert "tuning.memory_soft_limit" in steps[1]["live_applied"]
    assert dom.memoryParameters(libvirt.VIR_DOMAIN_AFFECT_LIVE)["soft_limit"] == 2**53 - 1
    assert "<soft_limit" not in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert guest.wait_heartbeat(after=guest.last_heartbeat(), timeout=120)


@pytest.mark.lab
def test_tiny_restart_required_then_restart(playbook, conn, tiny):
    spec, guest = tiny
    assert playbook([domain_task("create", spec)]).rc == 0
    guest.wait_heartbeat(timeout=300)
    first_id = conn.lookupByName(spec["name"]).ID()
    bigger = dict(spec, max_memory=320)
    steps = four_results(playbook, domain_task("guest", bigger))
    assert steps[1]["restart_required"] == ["max_memory"]
    # the running guest still differs: later runs keep saying so, without a change
    assert steps[3]["restart_required"] == ["max_memory"]
    assert conn.lookupByName(spec["name"]).maxMemory() == 256 * 1024
    restart = dict(bigger, restart_if_required=True)
    # QEMU truncates the console file (a file serial without append) when the guest boots
    # again; with append the new boot's output follows what was there
    before = guest.console()

    def new_boot_output() -> bytes:
        log = guest.console()
        return log[len(before) :] if log.startswith(before) else log

    steps = four_results(playbook, domain_task("guest", restart))
    assert steps[0]["restarted"] is True
    assert steps[1]["restarted"] is True
    assert steps[3]["restart_required"] == []
    assert conn.lookupByName(spec["name"]).maxMemory() == 320 * 1024
    # a new boot (a new QEMU process), and the guest comes alive again
    assert conn.lookupByName(spec["name"]).ID() != first_id
    wait_for(
        lambda: b"HEARTBEAT 1\r\n" in new_boot_output(),
        300,
        "the first heartbeat of the new boot",
        interval=0.5,
        detail=lambda: f"; console tail {guest.console()[-600:]!r}",
    )


@pytest.mark.lab
def test_tiny_shutdown_waits_then_absent(playbook, conn, tiny, tmp_path):
    spec, guest = tiny
    assert playbook([domain_task("create", spec)]).rc == 0
    guest.wait_heartbeat(timeout=300)
    stop = dict(spec, state="shutdown", timeout=300)
    started = time.monotonic()
    steps = four_results(playbook, domain_task("guest", stop))
    result = steps[1]
    assert result["state"] == "shutoff" and result["forced"] is False
    print(f"graceful shutdown run: {time.monotonic() - started:.2f} s")
    assert conn.lookupByName(spec["name"]).state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
    four_results(playbook, domain_task("guest", {"name": spec["name"], "state": "absent"}))
    assert not domain_exists(conn, spec["name"])
    assert Path(spec["disks"][0]["path"]).exists()  # not a pool volume: left in place
