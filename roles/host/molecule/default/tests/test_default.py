"""Verify the `default` scenario: an installed, secured KVM host (testinfra, over SSH)."""

from __future__ import annotations

import json
import re

import pytest

ROOT_URI = "qemu:///system"


def test_packages_installed(host):
    for name in (
        "qemu-system-x86",
        "qemu-utils",
        "libvirt-daemon-system",
        "libvirt-clients",
        "python3-libvirt",
        "python3-lxml",
        "virtinst",
        "apparmor",
    ):
        assert host.package(name).is_installed, name


def test_daemons_running_and_enabled(host):
    for unit in ("virtlogd.socket", "libvirtd.socket", "libvirtd-tls.socket"):
        assert host.service(unit).is_running, unit
        assert host.service(unit).is_enabled, unit
    # socket-activated: enabled, started by its sockets on demand, gone when idle
    assert host.service("libvirtd.service").is_enabled
    assert not host.service("libvirtd-tcp.socket").is_running


def test_libvirt_answers(host):
    out = host.check_output(f"virsh -c {ROOT_URI} version")
    assert "Running hypervisor: QEMU" in out


def test_python_bindings_for_modules(host):
    host.run_expect([0], "python3 -c 'import libvirt, lxml'")


def test_kernel_modules_configured(host):
    assert "vhost_net" in host.file("/etc/modules-load.d/virtops-kvm.conf").content_string
    assert host.file("/sys/module/vhost_net").exists


def test_socket_limited_to_group(host):
    sock = host.file("/run/libvirt/libvirt-sock")
    assert sock.is_socket
    assert sock.group == "libvirt"
    assert sock.mode == 0o770
    member = host.run(f"runuser -u virtops -- virsh -c {ROOT_URI} uri")
    assert member.rc == 0, member.stderr
    outsider = host.run(f"runuser -u nobody -- virsh -c {ROOT_URI} uri")
    assert outsider.rc != 0
    assert "Permission denied" in outsider.stderr


def test_no_plain_tcp_listener(host):
    assert not host.socket("tcp://0.0.0.0:16509").is_listening
    assert not host.socket("tcp://:::16509").is_listening


@pytest.fixture
def pki_dirs(host):
    """Client PKI directories for virsh's pkipath: one with a certificate, one without."""
    host.run_expect([0], "rm -rf /tmp/pki-with*; mkdir -p /tmp/pki-with /tmp/pki-without")
    host.run_expect(
        [0],
        "cp /etc/pki/CA/cacert.pem /tmp/pki-with/ && cp /etc/pki/CA/cacert.pem /tmp/pki-without/"
        " && cp /etc/pki/libvirt/clientcert.pem /tmp/pki-with/"
        " && cp /etc/pki/libvirt/private/clientkey.pem /tmp/pki-with/",
    )
    yield
    host.run("rm -rf /tmp/pki-with /tmp/pki-without")


def test_tls_listener(host):
    assert host.socket("tcp://16514").is_listening


TLS_PROBE = """
import socket, ssl, sys
ctx = ssl.create_default_context(cafile="/etc/pki/CA/cacert.pem")
if sys.argv[1] == "with":
    ctx.load_cert_chain("/etc/pki/libvirt/clientcert.pem",
                        "/etc/pki/libvirt/private/clientkey.pem")
raw = socket.create_connection(("127.0.0.1", 16514), timeout=10)
s = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
s.settimeout(4)
try:
    print("closed" if s.recv(1) == b"" else "data")
except socket.timeout:
    print("open")
except (ssl.SSLError, OSError) as exc:
    print("closed", exc)
"""


def tls_probe(host, mode: str) -> str:
    """After the TLS handshake, does libvirtd confirm the session (one byte) or drop it?"""
    host.run_expect([0], f"cat > /tmp/tls_probe.py <<'EOF'\n{TLS_PROBE}\nEOF")
    return host.check_output(f"python3 /tmp/tls_probe.py {mode}")


def test_tls_refuses_client_without_certificate(host, pki_dirs):
    assert tls_probe(host, "without").startswith("closed")
    res = host.run("virsh -c 'qemu+tls://127.0.0.1/system?pkipath=/tmp/pki-without' uri")
    assert res.rc != 0
    # libvirtd checks the client certificate after the handshake and hangs up instead of
    # sending its one-byte TLS confirmation
    assert "certificate" in res.stderr.lower() or "TLS confirmation" in res.stderr, res.stderr


def test_tls_accepts_client_with_certificate(host, pki_dirs):
    assert tls_probe(host, "with") == "data"  # the server's TLS confirmation byte
    res = host.run("virsh -c 'qemu+tls://127.0.0.1/system?pkipath=/tmp/pki-with' uri")
    assert res.rc == 0, res.stderr
    assert res.stdout.strip() == "qemu+tls://127.0.0.1/system?pkipath=/tmp/pki-with"


def test_tls_config(host):
    conf = host.file("/etc/libvirt/libvirtd.conf").content_string
    assert "tls_no_verify_certificate = 0" in conf
    assert 'auth_tcp = "sasl"' in conf
    qemu = host.file("/etc/libvirt/qemu.conf").content_string
    assert "migrate_tls_force = 1" in qemu
    assert 'default_tls_x509_cert_dir = "/etc/pki/qemu"' in qemu
    assert 'tls_allowed_dn_list = ["O=virtops.kvm,OU=hosts,CN=*"]' in conf
    host.run_expect(
        [0], "openssl verify -CAfile /etc/pki/qemu/ca-cert.pem /etc/pki/qemu/server-cert.pem"
    )


# Every key the role writes: (owner, group, mode). QEMU's one key is the only 0640 key.
TLS_KEYS = {
    "/etc/pki/libvirt/private/serverkey.pem": ("root", "root", 0o600),
    "/etc/pki/libvirt/private/clientkey.pem": ("root", "root", 0o600),
    "/etc/pki/qemu/server-key.pem": ("root", "libvirt-qemu", 0o640),
    "/etc/pki/qemu/client-key.pem": ("root", "libvirt-qemu", 0o640),
}


def test_tls_key_files(host):
    for path, (owner, group, mode) in TLS_KEYS.items():
        key = host.file(path)
        assert (key.user, key.group, key.mode) == (owner, group, mode), path
    assert host.file("/etc/pki/libvirt/private").mode == 0o700
    assert host.file("/etc/pki/qemu").mode == 0o750
    pubkeys = {
        host.check_output(f"openssl pkey -pubout -in {path}")
        for path in TLS_KEYS
        if "client-key" not in path
    }
    assert len(pubkeys) == 3  # server, host client and QEMU keys differ
    dns = {
        cert: host.check_output(f"virt-pki-query-dn {cert}")
        for cert in ("/etc/pki/libvirt/clientcert.pem", "/etc/pki/qemu/client-cert.pem")
    }
    assert dns["/etc/pki/libvirt/clientcert.pem"].startswith("O=virtops.kvm,OU=hosts,CN=")
    assert dns["/etc/pki/qemu/client-cert.pem"].startswith("O=virtops.kvm,OU=qemu,CN=")
    assert not host.file("/etc/pki/CA/cakey.pem").exists


def test_tls_refuses_qemu_certificate(host):
    """The key QEMU's user can read does not open libvirtd."""
    host.run_expect(
        [0],
        "rm -rf /tmp/pki-qemu && mkdir /tmp/pki-qemu && cp /etc/pki/CA/cacert.pem /tmp/pki-qemu/"
        " && cp /etc/pki/qemu/client-cert.pem /tmp/pki-qemu/clientcert.pem"
        " && cp /etc/pki/qemu/client-key.pem /tmp/pki-qemu/clientkey.pem",
    )
    try:
        res = host.run("virsh -c 'qemu+tls://127.0.0.1/system?pkipath=/tmp/pki-qemu' uri")
        assert res.rc != 0, res.stdout
    finally:
        host.run("rm -rf /tmp/pki-qemu")


def test_security_driver_reported(host):
    caps = host.check_output(f"virsh -c {ROOT_URI} capabilities")
    models = re.findall(r"<secmodel>\s*<model>([a-z]+)</model>", caps)
    assert "apparmor" in models, models
    qemu = host.file("/etc/libvirt/qemu.conf").content_string
    assert 'security_driver = "apparmor"' in qemu
    assert 'user = "libvirt-qemu"' in qemu
    assert "seccomp_sandbox = 1" in qemu


GUEST_XML = """<domain type='qemu'>
  <name>verify-confinement</name>
  <memory unit='MiB'>48</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices>
</domain>"""


def test_qemu_runs_unprivileged_confined_with_seccomp(host):
    """Start a small paused guest and look at its QEMU process."""
    host.run(f"virsh -c {ROOT_URI} destroy verify-confinement")
    host.run_expect([0], f"cat > /tmp/verify-confinement.xml <<'EOF'\n{GUEST_XML}\nEOF")
    try:
        host.run_expect([0], f"virsh -c {ROOT_URI} create /tmp/verify-confinement.xml --paused")
        pid = host.check_output("cat /run/libvirt/qemu/verify-confinement.pid").strip()
        status = host.file(f"/proc/{pid}/status").content_string
        uid = re.search(r"^Uid:\s+(\d+)", status, re.M).group(1)
        assert host.check_output("id -u libvirt-qemu").strip() == uid
        assert re.search(r"^Seccomp:\s+2", status, re.M), "QEMU runs without a seccomp filter"
        label = host.check_output(f"cat /proc/{pid}/attr/current")
        assert label.startswith("libvirt-"), label
        assert "(enforce)" in label, label
        seclabel = host.check_output(f"virsh -c {ROOT_URI} dumpxml verify-confinement")
        assert "model='apparmor'" in seclabel
    finally:
        host.run(f"virsh -c {ROOT_URI} destroy verify-confinement")


def test_hugepages_reserved_and_persistent(host):
    meminfo = host.file("/proc/meminfo").content_string
    assert re.search(r"^HugePages_Total:\s+64$", meminfo, re.M), meminfo
    tmpfiles = host.file("/etc/tmpfiles.d/virtops-kvm.conf").content_string
    assert "w /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages - - - - 64" in tmpfiles


def test_ksm_off(host):
    assert host.file("/sys/kernel/mm/ksm/run").content_string.strip() == "0"


def test_io_scheduler(host):
    assert "[mq-deadline]" in host.file("/sys/block/vda/queue/scheduler").content_string
    rule = host.file("/etc/udev/rules.d/60-virtops-kvm-io-scheduler.rules").content_string
    assert 'KERNEL=="vda"' in rule and 'ATTR{queue/scheduler}="mq-deadline"' in rule


def test_default_network_replaced(host):
    xml = host.check_output(f"virsh -c {ROOT_URI} net-dumpxml default")
    assert "198.19.249.1" in xml
    info = host.check_output(f"virsh -c {ROOT_URI} net-info default")
    assert re.search(r"Active:\s+yes", info)


def test_default_pool(host):
    xml = host.check_output(f"virsh -c {ROOT_URI} pool-dumpxml default")
    assert "<path>/srv/kvm/images</path>" in xml
    info = host.check_output(f"virsh -c {ROOT_URI} pool-info default")
    assert re.search(r"State:\s+running", info)
    assert re.search(r"Autostart:\s+yes", info)


def test_virt_type_published(host):
    """No VT-x in the test guest: the role publishes host_virt_type qemu, as host_info judges."""
    facts = json.loads(host.file("/var/tmp/molecule-host-facts.json").content_string)
    assert "vmx" not in host.file("/proc/cpuinfo").content_string
    assert facts["host_virt_type"] == "qemu"
    assert facts["host_kvm_status"]["usable"] is False
    assert facts["host_kvm_status"]["reasons"]
