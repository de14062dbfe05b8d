"""Guests of the test lab: domain XML for the tiny and debian images, and ``TinyGuest``.

Device layout of a tiny guest (the same fragments are exported for tests that pass them
through a module's options):

- ttyS0 (serial port 0) -> ``<serial type='file'>``: the console log (heartbeats, DHCP lines);
- ttyS1 (serial port 1) -> ``<serial type='unix'>`` socket: the command channel;
- vda -> the marker disk (qcow2 copy of a blank ext4 template), mounted at /mnt/marker;
- optional virtio NIC on a libvirt network.

Files of a guest live in ``$VIRTOPS_LAB_DIR/guests/<name>/`` (default /var/tmp/virtops-lab),
a directory QEMU (libvirt-qemu) can reach and every lab host sees. The command socket is the
exception: ``/run/virtops-lab/<name>.cmd.sock`` is private to each lab host (see hosts.py), so
that after a migration the source's cleanup does not unlink the destination's socket.
``TinyGuest.command_socket`` finds it from the root namespace for the host in ``guest.conn``.
"""

from __future__ import annotations

import base64
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lxml import etree

from tests.helpers import wait_for

from .hosts import COMMAND_SOCKET_DIR, path_on_host
from .images import DebianImage, TinyImage, lab_dir

if TYPE_CHECKING:
    import libvirt

HEARTBEAT_RE = re.compile(rb"^HEARTBEAT (\d+)\r?$", re.MULTILINE)
STALE_END_RE = re.compile(rb"\n@@END \w+ \d+@@\n")
DHCP_RE = re.compile(rb"^TINY DHCP (\S+) (\S+) (\S+)\r?$", re.MULTILINE)


def new_mac() -> str:
    """A random MAC in QEMU's 52:54:00 range."""
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))


def unique_name(prefix: str = "vt-lab") -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def _xml(element: etree._Element) -> str:
    return etree.tostring(element, encoding="unicode")


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrib: str):
    el = etree.SubElement(parent, tag, {k.rstrip("_"): v for k, v in attrib.items()})
    if text is not None:
        el.text = text
    return el


# ----------------------------------------------------------------------------------------
# Device fragments


def console_serial_xml(log_path: Path | str, port: int = 0) -> str:
    """``<serial type='file'>`` on ttyS<port>, appending to ``log_path`` (survives migration)."""
    serial = etree.Element("serial", type="file")
    _sub(serial, "source", path=str(log_path), append="on")
    _sub(serial, "target", port=str(port))
    return _xml(serial)


def command_serial_xml(socket_path: Path | str, port: int = 1) -> str:
    """``<serial type='unix'>`` on ttyS<port>: QEMU listens on ``socket_path``."""
    serial = etree.Element("serial", type="unix")
    _sub(serial, "source", mode="bind", path=str(socket_path))
    _sub(serial, "target", port=str(port))
    return _xml(serial)


def disk_xml(path: Path | str, target: str = "vda", fmt: str = "qcow2", *, readonly=False) -> str:
    """A virtio file disk; ``cache='none'`` so migration between lab hosts is allowed."""
    disk = etree.Element("disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type=fmt, cache="none")
    _sub(disk, "source", file=str(path))
    _sub(disk, "target", dev=target, bus="virtio")
    if readonly:
        _sub(disk, "readonly")
    return _xml(disk)


def interface_xml(network: str, mac: str | None = None) -> str:
    iface = etree.Element("interface", type="network")
    _sub(iface, "source", network=network)
    if mac:
        _sub(iface, "mac", address=mac)
    _sub(iface, "model", type="virtio")
    return _xml(iface)


def _domain(
    name: str,
    *,
    memory_mib: int,
    vcpus: int,
    kernel: Path,
    initrd: Path,
    cmdline: str,
    devices: list[str],
) -> str:
    dom = etree.Element("domain", type="qemu")
    _sub(dom, "name", name)
    _sub(dom, "memory", str(memory_mib), unit="MiB")
    _sub(dom, "vcpu", str(vcpus))
    os_el = _sub(dom, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine="pc")
    _sub(os_el, "kernel", str(kernel))
    _sub(os_el, "initrd", str(initrd))
    _sub(os_el, "cmdline", cmdline)
    features = _sub(dom, "features")
    _sub(features, "acpi")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")
    dev_el = _sub(dom, "devices")
    _sub(dev_el, "controller", type="usb", model="none")
    for fragment in devices:
        dev_el.append(etree.fromstring(fragment))
    _sub(dev_el, "memballoon", model="virtio")
    return etree.tostring(dom, encoding="unicode", pretty_print=True)


# ----------------------------------------------------------------------------------------
# tiny guests


@dataclass(frozen=True)
class TinyGuestFiles:
    dir: Path
    console_log: Path
    command_socket: Path
    marker_disk: Path | None
    kernel: Path
    initrd: Path


def prepare_tiny_files(
    name: str,
    image: TinyImage,
    *,
    base: Path | None = None,
    marker: bool = True,
    blank_marker: bool = False,
) -> TinyGuestFiles:
    """Make ``<base>/<name>/`` with a marker disk (ext4 copy, or blank when asked)."""
    gdir = (base or lab_dir() / "guests") / name
    gdir.mkdir(parents=True, exist_ok=False)
    gdir.chmod(0o755)  # QEMU (libvirt-qemu) opens files here, and creates the socket
    disk = None
    if marker:
        disk = gdir / "marker.qcow2"
        if blank_marker:
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "32M"], check=True
            )
        else:
            shutil.copyfile(image.marker_template, disk)
        disk.chmod(0o644)
    COMMAND_SOCKET_DIR.mkdir(mode=0o755, exist_ok=True)
    sock = COMMAND_SOCKET_DIR / f"{name}.cmd.sock"
    kernel, initrd = own_boot_files(gdir, image)
    return TinyGuestFiles(gdir, gdir / "console.log", sock, disk, kernel, initrd)


def own_boot_files(gdir: Path, image) -> tuple[Path, Path]:
    """Copies of the image's kernel and initrd in the guest's directory.

    libvirt's DAC driver relabels a guest's kernel and counts its users in extended
    attributes of the file (``remember_owner``). Guests sharing the cached kernel are refused
    ("Setting different DAC user or group on .../vmlinuz which is already in use") once that
    count goes stale, e.g. after a QEMU or libvirtd killed by a fault test. A copy per guest
    (plain copy: no extended attributes) costs ~10 MB and a few milliseconds.
    """
    copies = []
    for src in (image.kernel, image.initrd):
        dst = gdir / Path(src).name
        shutil.copyfile(src, dst)
        dst.chmod(0o644)
        copies.append(dst)
    return copies[0], copies[1]


class HeartbeatWatch:
    """Notes (host time, newest heartbeat) each time the console shows a new heartbeat."""

    def __init__(self, guest, interval: float = 0.02):
        self.guest = guest
        self.interval = interval
        self.seen: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last = None
        while not self._stop.is_set():
            beat = self.guest.last_heartbeat()
            if beat != last:
                self.seen.append((time.monotonic(), beat))
                last = beat
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def max_gap(self, start: float, end: float) -> float:
        """Longest time between two new heartbeats seen in [start, end]."""
        seen = [t for t, _beat in self.seen]
        times = [t for t in seen if start <= t <= end]
        before = [t for t in seen if t < start]
        after = [t for t in seen if t > end]
        points = before[-1:] + times + after[:1]
        return max(b - a for a, b in zip(points, points[1:]))


def defined_only_xml(name: str) -> str:
    """A guest that is only ever defined, never started (16 MiB, no disk): listing load."""
    return (
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>16</memory>"
        "<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os>"
        "<devices><controller type='usb' model='none'/><memballoon model='none'/></devices>"
        "</domain>"
    )


def tiny_domain_xml(
    name: str,
    image: TinyImage,
    files: TinyGuestFiles,
    *,
    memory_mib: int = 192,
    vcpus: int = 1,
    network: str | None = None,
    mac: str | None = None,
    extra_devices: list[str] | None = None,
    cmdline_extra: str = "",
) -> str:
    """Domain XML of a tiny guest (type ``qemu``, direct kernel boot)."""
    devices = [console_serial_xml(files.console_log), command_serial_xml(files.command_socket)]
    if files.marker_disk:
        devices.insert(0, disk_xml(files.marker_disk))
    if network:
        devices.append(interface_xml(network, mac or new_mac()))
    devices += extra_devices or []
    return _domain(
        name,
        memory_mib=memory_mib,
        vcpus=vcpus,
        kernel=files.kernel,
        initrd=files.initrd,
        cmdline=f"{image.cmdline} {cmdline_extra}".strip(),
        devices=devices,
    )


class GuestTimeout(AssertionError):
    """A lab guest did not do what was awaited in time (a test failure, not an error)."""


class TinyGuest:
    """A running tiny guest seen through its console log and command socket.

    ``conn`` is the libvirt connection of the host it runs on (updated by the caller after a
    migration); the helpers only need the files, which every lab host shares.
    """

    def __init__(self, name: str, files: TinyGuestFiles, conn: libvirt.virConnect | None = None):
        self.name = name
        self.files = files
        self.conn = conn
        self.mac: str | None = None  # of its NIC, when it has one
        self.boot_seconds: float | None = None  # start to first heartbeat, when measured

    @property
    def dom(self) -> libvirt.virDomain:
        if self.conn is None:
            raise RuntimeError("TinyGuest has no libvirt connection")
        return self.conn.lookupByName(self.name)

    @property
    def command_socket(self) -> Path:
        """The command socket as seen from here, for the host the guest runs on."""
        uri = self.conn.getURI() if self.conn is not None else None
        return path_on_host(uri, self.files.command_socket)

    # console --------------------------------------------------------------------------
    def console(self) -> bytes:
        try:
            return self.files.console_log.read_bytes()
        except FileNotFoundError:
            return b""

    def heartbeats(self) -> list[int]:
        """Every heartbeat number in the console log, in order."""
        return [int(m.group(1)) for m in HEARTBEAT_RE.finditer(self.console())]

    def last_heartbeat(self) -> int | None:
        beats = self.heartbeats()
        return beats[-1] if beats else None

    def wait_console(self, pattern: bytes | str, timeout: float = 60) -> re.Match:
        """Wait for a regex (multiline) to match the console log; return the last match."""
        regex = re.compile(pattern.encode() if isinstance(pattern, str) else pattern, re.M)
        return wait_for(
            lambda: ([None, *regex.finditer(self.console())])[-1],
            timeout,
            f"{self.name}: {regex.pattern!r} on the console",
            interval=0.1,
            error=GuestTimeout,
            detail=self._console_tail,
        )

    def _console_tail(self) -> str:
        return "; console tail:\n" + self.console()[-600:].decode(errors="replace")

    def wait_heartbeat(self, after: int = 0, timeout: float = 60) -> int:
        """Wait for a heartbeat greater than ``after``; return the newest one."""

        def newer() -> int | None:
            last = self.last_heartbeat()
            return last if last is not None and last > after else None

        return wait_for(
            newer,
            timeout,
            f"{self.name}: a heartbeat after {after} (last {self.last_heartbeat()} at the start)",
            interval=0.1,
            error=GuestTimeout,
            detail=self._console_tail,
        )

    def dhcp_address(self, mac: str | None = None, timeout: float = 60) -> str:
        """The IPv4 address the guest got by DHCP (on the NIC with ``mac``, if given)."""

        def address() -> str | None:
            for m in reversed(list(DHCP_RE.finditer(self.console()))):
                if mac is None or m.group(2).decode().lower() == mac.lower():
                    return m.group(3).decode()
            return None

        return wait_for(
            address, timeout, f"{self.name}: a DHCP address on the console", error=GuestTimeout
        )

    # command channel ------------------------------------------------------------------
    def run(self, cmd: str, timeout: float = 30) -> tuple[int, str]:
        """Run ``cmd`` with the guest's sh over ttyS1; return (exit status, output)."""
        # bytes sent before the guest set ttyS1 raw would be echoed and lost
        self.wait_console(rb"^TINY CMD READY\r?$", timeout=timeout)
        token = secrets.token_hex(6)
        payload = f"{token} {base64.b64encode(cmd.encode()).decode()}\n".encode()
        end = re.compile(rb"\n@@END " + token.encode() + rb" (\d+)@@\n")
        deadline = time.monotonic() + timeout
        buf = b""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            while True:  # the socket appears once QEMU runs
                try:
                    sock.connect(str(self.command_socket))
                    break
                except (FileNotFoundError, ConnectionRefusedError):
                    if time.monotonic() > deadline:
                        raise GuestTimeout(f"{self.name}: command socket not there") from None
                    time.sleep(0.1)
            sock.sendall(payload)
            while True:
                match = end.search(buf)
                if match:
                    output = buf[: match.start()]
                    # the end of an earlier, abandoned command may precede our output
                    stale = list(STALE_END_RE.finditer(output))
                    if stale:
                        output = output[stale[-1].end() :]
                    return int(match.group(1)), output.decode(errors="replace")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise GuestTimeout(
                        f"{self.name}: {cmd!r} did not finish in {timeout:g} s; got {buf!r}"
                    )
                sock.settimeout(remaining)
                try:
                    chunk = sock.recv(65536)
                except socket.timeout:
                    continue
                if not chunk:
                    raise GuestTimeout(f"{self.name}: command socket closed; got {buf!r}")
                buf += chunk

    def check(self, cmd: str, timeout: float = 30) -> str:
        """Like ``run`` but the command must exit 0; returns its output."""
        status, output = self.run(cmd, timeout)
        if status != 0:
            raise AssertionError(f"{self.name}: {cmd!r} exited {status}: {output}")
        return output

    def write_marker(self, name: str, text: str) -> None:
        """Write /mnt/marker/<name> in the guest and sync it to the disk."""
        data = base64.b64encode(text.encode()).decode()
        self.check(f"echo {data} | base64 -d > /mnt/marker/{name} && sync")

    def read_marker(self, name: str) -> str:
        """Read /mnt/marker/<name> from the guest (after a sync)."""
        return self.check(f"sync && cat /mnt/marker/{name}")


# ----------------------------------------------------------------------------------------
# debian guests


@dataclass(frozen=True)
class DebianGuestFiles:
    dir: Path
    disk: Path
    seed_iso: Path
    console_log: Path
    kernel: Path
    initrd: Path


def prepare_debian_files(
    name: str, image: DebianImage, *, base: Path | None = None
) -> DebianGuestFiles:
    """``<base>/<name>/`` with a qcow2 overlay on the cached image; the seed is made later."""
    gdir = (base or lab_dir() / "guests") / name
    gdir.mkdir(parents=True, exist_ok=False)
    gdir.chmod(0o755)
    disk = gdir / "root.qcow2"
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            str(image.disk),
            str(disk),
        ],
        check=True,
    )
    disk.chmod(0o644)
    kernel, initrd = own_boot_files(gdir, image)
    return DebianGuestFiles(gdir, disk, gdir / "seed.iso", gdir / "console.log", kernel, initrd)


def debian_domain_xml(
    name: str,
    image: DebianImage,
    files: DebianGuestFiles,
    *,
    mac: str,
    network: str | None = "default",
    memory_mib: int = 1024,
    vcpus: int = 2,
    extra_devices: list[str] | None = None,
) -> str:
    """Domain XML of a debian guest: root overlay vda, seed ISO vdb, console log, agent."""
    channel = etree.Element("channel", type="unix")
    _sub(channel, "target", type="virtio", name="org.qemu.guest_agent.0")
    devices = [
        disk_xml(files.disk, "vda"),
        disk_xml(files.seed_iso, "vdb", "raw", readonly=True),
        console_serial_xml(files.console_log),
        _xml(channel),
    ]
    if network:
        devices.append(interface_xml(network, mac))
    devices += extra_devices or []
    return _domain(
        name,
        memory_mib=memory_mib,
        vcpus=vcpus,
        kernel=files.kernel,
        initrd=files.initrd,
        cmdline=image.cmdline,
        devices=devices,
    )


def wait_lease(conn: libvirt.virConnect, network: str, mac: str, timeout: float = 180) -> str:
    """The IPv4 address libvirt's dnsmasq leased to ``mac`` on ``network``."""
    net = conn.networkLookupByName(network)

    def leased() -> str | None:
        for lease in net.DHCPLeases(mac):
            if lease.get("ipaddr") and lease.get("type", 0) == 0:  # VIR_IP_ADDR_TYPE_IPV4
                return lease["ipaddr"]
        return None

    return wait_for(
        leased,
        timeout,
        f"a DHCP lease for {mac} on network {network}",
        interval=0.5,
        error=GuestTimeout,
    )


def wait_ssh(address: str, port: int = 22, timeout: float = 180) -> float:
    """Wait until ``address:port`` answers with an SSH banner; return the seconds waited."""
    started = time.monotonic()

    def banner() -> bool:
        try:
            with socket.create_connection((address, port), timeout=5) as sock:
                sock.settimeout(10)
                return sock.recv(64).startswith(b"SSH-")
        except OSError:
            return False

    wait_for(banner, timeout, f"an SSH banner on {address}:{port}", interval=1, error=GuestTimeout)
    return time.monotonic() - started


@dataclass
class DebianGuest:
    """A debian guest started by the ``debian_guest`` fixture."""

    name: str
    files: DebianGuestFiles
    mac: str
    network: str | None
    conn: libvirt.virConnect
    started_at: float  # time.monotonic() just before the domain started

    @property
    def dom(self) -> libvirt.virDomain:
        return self.conn.lookupByName(self.name)

    def console(self) -> str:
        try:
            return self.files.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_agent(self, timeout: float = 600):
        """Waits until its QEMU guest agent answers a ping; returns the agent (5 s per call)."""
        from ansible_collections.virtops.kvm.plugins.module_utils._qemu_ga import (  # noqa: PLC0415
            AgentError,
            GuestAgent,
        )

        agent = GuestAgent(self.dom, timeout=5)

        def answers() -> bool:
            try:
                agent.ping()
            except AgentError:
                return False
            return True

        wait_for(
            answers, timeout, "the guest agent", interval=1, detail=lambda: self.console()[-1500:]
        )
        return agent

    def address(self, timeout: float = 600) -> str:
        """Its DHCP lease on its network (waits; the console tail is in the error)."""
        if not self.network:
            raise RuntimeError(f"{self.name} has no NIC")
        try:
            return wait_lease(self.conn, self.network, self.mac, timeout)
        except GuestTimeout as exc:
            raise GuestTimeout(f"{exc}; console tail:\n{self.console()[-1500:]}") from None
