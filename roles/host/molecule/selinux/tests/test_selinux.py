"""Verify the `selinux` scenario: QEMU confined by sVirt on a host with SELinux enforcing.

Two guests are started paused inside the host (nested TCG would be far too slow to boot
them): their QEMU processes must run as svirt_t with distinct MCS categories, their disks
carry svirt_image_t with the same categories, and guest A's QEMU, asked over QMP to open
guest B's disk, is refused by SELinux although DAC would let it (same user, readable file).
"""

from __future__ import annotations

import json
import re
import shlex

import pytest

ROOT_URI = "qemu:///system"
IMAGES = "/srv/kvm/images"
ISO = "/srv/kvm/iso"
GUESTS = ("svirt-a", "svirt-b")
DOMAIN_XML = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def virsh(host, *args: str):
    return host.run(" ".join(["virsh", "-c", ROOT_URI, *map(shlex.quote, args)]))


def label(host, path: str) -> str:
    return host.check_output(f"stat -c %C {shlex.quote(path)}")


def context_type(context: str) -> str:
    return context.split(":")[2]


def categories(context: str) -> set[str]:
    """MCS categories of a context's level (s0:c1,c2 -> {c1, c2}); ranges are not used here."""
    level = context.split(":", 3)[3]
    assert "-" not in level and "." not in level, context
    return set(level.split(":", 1)[1].split(",")) if ":" in level else set()


def qmp(host, name: str, command: dict):
    out = virsh(host, "qemu-monitor-command", name, json.dumps(command))
    assert out.rc == 0, out.stderr
    return json.loads(out.stdout)


def open_in_qemu(host, name: str, path: str, node: str):
    """Ask guest ``name``'s QEMU to open ``path`` read-only (a QMP blockdev-add)."""
    return qmp(
        host,
        name,
        {
            "execute": "blockdev-add",
            "arguments": {
                "driver": "file",
                "node-name": node,
                "filename": path,
                "read-only": True,
                "locking": "off",
            },
        },
    )


@pytest.fixture(scope="module")
def guests(host):
    """Start the two guests paused; yield {name: {pid, process, disk, disk_label, seclabel}}."""
    started = []
    try:
        for name in GUESTS:
            disk = f"{IMAGES}/{name}.qcow2"
            host.run_expect([0], f"qemu-img create -q -f qcow2 {disk} 16M")
            xml = f"/run/{name}.xml"
            host.run_expect(
                [0], f"printf '%s' {shlex.quote(DOMAIN_XML.format(name=name, disk=disk))} > {xml}"
            )
            out = virsh(host, "create", "--paused", xml)
            assert out.rc == 0, out.stderr
            started.append(name)
        info = {}
        for name in GUESTS:
            disk = f"{IMAGES}/{name}.qcow2"
            pid = host.file(f"/run/libvirt/qemu/{name}.pid").content_string.strip()
            dumpxml = virsh(host, "dumpxml", name).stdout
            info[name] = {
                "pid": pid,
                "process": host.check_output(f"ps -o label= -p {pid}"),
                "user": host.check_output(f"ps -o user= -p {pid}"),
                "disk": disk,
                "disk_label": label(host, disk),
                "disk_owner": host.check_output(f"stat -c %U:%a {disk}"),
                "seclabel": re.search(r"<label>([^<]+)</label>", dumpxml).group(1),
                "imagelabel": re.search(r"<imagelabel>([^<]+)</imagelabel>", dumpxml).group(1),
            }
        yield info
    finally:
        for name in started:
            virsh(host, "destroy", name)
        host.run(f"rm -f {IMAGES}/svirt-*.qcow2 /run/svirt-*.xml")


def test_selinux_enforcing(host):
    assert host.file("/sys/fs/selinux/enforce").content_string.strip() == "1"
    assert host.check_output("getenforce") == "Enforcing"
    assert "security=selinux" in host.file("/proc/cmdline").content_string


def test_qemu_uses_selinux_driver(host):
    conf = host.file("/etc/libvirt/qemu.conf").content_string
    assert 'security_driver = "selinux"' in conf
    assert "security_require_confined = 1" in conf
    caps = virsh(host, "capabilities").stdout
    assert re.search(r"<secmodel>\s*<model>selinux</model>", caps), caps
    assert re.search(r"<baselabel type='qemu'>[^<]*:svirt_t:", caps), caps


@pytest.mark.parametrize("boolean", ["virt_use_nfs", "virt_use_execmem"])
def test_boolean_set_persistently(host, boolean):
    assert host.check_output(f"getsebool {boolean}") == f"{boolean} --> on"
    local = host.check_output("semanage boolean --list --locallist")
    assert re.search(rf"^{boolean}\s+\(on\s*,\s*on\)", local, re.MULTILINE), local


@pytest.mark.parametrize("directory", [IMAGES, ISO])
def test_image_directory_labelled(host, directory):
    rules = host.check_output("semanage fcontext --list --locallist")
    assert re.search(
        rf"^{re.escape(directory)}\(/\.\*\)\?\s+all files\s+\S+:virt_image_t:", rules, re.MULTILINE
    ), rules
    assert context_type(label(host, directory)) == "virt_image_t"
    # what restorecon gives a file there: the rule, not the parent's inheritance
    probe = f"{directory}/probe.img"
    assert context_type(host.check_output(f"matchpathcon -n {probe}")) == "virt_image_t"


def test_libvirtd_confined(host, guests):
    # libvirtd runs (it started the guests) in its own domain, not unconfined
    ctx = host.check_output("ps -o label= -C libvirtd")
    assert context_type(ctx) == "virtd_t", ctx


def test_guests_run_as_svirt_with_distinct_categories(host, guests):
    a, b = (guests[name] for name in GUESTS)
    for guest in (a, b):
        assert context_type(guest["process"]) == "svirt_t", guest
        assert guest["process"] == guest["seclabel"], guest  # the label libvirt chose, applied
        assert len(categories(guest["process"])) == 2, guest
    cats_a, cats_b = categories(a["process"]), categories(b["process"])
    # MCS lets a subject at the object's categories or a superset through: neither may be
    assert not cats_a >= cats_b and not cats_b >= cats_a, (a, b)


def test_disks_carry_their_guests_categories(host, guests):
    for guest in guests.values():
        assert context_type(guest["disk_label"]) == "svirt_image_t", guest
        assert guest["disk_label"] == guest["imagelabel"], guest
        assert categories(guest["disk_label"]) == categories(guest["process"]), guest


def test_guest_qemu_cannot_read_another_guests_disk(host, guests):
    a, b = (guests[name] for name in GUESTS)
    # DAC alone would allow it: both QEMUs run as the same user, which owns both disks
    assert a["user"] == b["user"], (a, b)
    assert b["disk_owner"].split(":")[0] == a["user"], b
    # control: A's QEMU opens a file with its own label (its disk, read-only, no lock)
    own = open_in_qemu(host, GUESTS[0], a["disk"], "probe-own")
    assert "error" not in own, own
    qmp(host, GUESTS[0], {"execute": "blockdev-del", "arguments": {"node-name": "probe-own"}})
    # the real attempt: A's QEMU opens B's disk
    other = open_in_qemu(host, GUESTS[0], b["disk"], "probe-other")
    assert "error" in other, other
    assert "Permission denied" in other["error"]["desc"], other
    # and it was SELinux that said no
    denials = host.check_output("dmesg | grep -F 'avc:  denied' | grep -F 'svirt-b.qcow2' || true")
    assert "tcontext=" + b["disk_label"] in denials, denials
