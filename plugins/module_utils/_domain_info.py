# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""What ``virtops.kvm.domain_info`` reports, gathered with as few round trips as possible.

States and statistics of all guests come from one ``getAllDomainStats`` call; autostart,
persistence and "has snapshots" from filtered ``listAllDomains`` calls; DHCP leases from one
``DHCPLeases`` call per network. Per guest there is one ``XMLDesc`` (libvirt has no bulk
call for definitions), a ``snapshotNum`` only for guests that have snapshots, and an agent
query only for running guests whose agent channel is connected. An agent that fails does not
fail the listing: its error is reported on that guest. Disk and network I/O counters come
from the same bulk statistics call; consoles (with their live ports) from the definition
(the live one of a running guest). With ``guest_info`` one ``virDomainGetGuestInfo`` per
running guest with an agent channel adds what the agent reports, or why it does not answer.
"""

from __future__ import annotations

import os
from typing import Any

from . import _xml
from ._domain_agent import agent_report, io_counters
from ._domain_consoles import consoles
from ._domain_devices import AGENT_CHANNEL, Disk, Interface
from ._domain_model import summarize
from ._errors import from_libvirt, is_error
from ._libvirt import is_this_machine, libvirt, run_state
from ._secrets import strip_secrets

STATS = (
    "VIR_DOMAIN_STATS_STATE",
    "VIR_DOMAIN_STATS_BALLOON",
    "VIR_DOMAIN_STATS_VCPU",
    "VIR_DOMAIN_STATS_CPU_TOTAL",
)
# disk and network I/O counters (for a shut-off guest libvirt looks at its local disk files)
IO_STATS = ("VIR_DOMAIN_STATS_BLOCK", "VIR_DOMAIN_STATS_INTERFACE")


def _flag(*names: str) -> int:
    value = 0
    for name in names:
        value |= getattr(libvirt, name, 0)
    return value


class DomainInfo:
    def __init__(
        self,
        conn,
        *,
        include_xml: bool = False,
        ip_sources=("lease", "agent"),
        guest_info: bool = False,
        io_stats: bool = False,
    ):
        self.conn = conn
        self.include_xml = include_xml
        self.guest_info = guest_info
        self.stats_flags = _flag(*STATS, *(IO_STATS if io_stats else ()))
        self.ip_sources = tuple(ip_sources)
        self._started: dict[str, float] | None = None

    def _uptime(self, uuid: str, state: str) -> float | None:
        """Seconds since the QEMU process of a running guest started, read from /proc when the
        hypervisor is this machine (libvirt does not say when a guest started); else None."""
        if state not in ("running", "paused", "pmsuspended", "shutdown"):
            return None
        if self._started is None:
            try:
                local = is_this_machine(self.conn.getURI())
            except libvirt.libvirtError:
                local = False
            self._started = qemu_uptimes() if local else {}
        return self._started.get(uuid)

    def _call(self, func, action: str, *args):
        try:
            return func(*args)
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, action) from exc

    def _uuids(self, flags: int) -> set[str]:
        return {d.UUIDString() for d in self._call(self.conn.listAllDomains, "list guests", flags)}

    def collect(
        self,
        name: str | None = None,
        states: list[str] | None = None,
        tags: list[str] | None = None,
    ) -> list[dict[str, Any]]:
        if name is not None:
            try:
                doms = [self.conn.lookupByName(name)]
            except libvirt.libvirtError as exc:
                if is_error(exc, libvirt.VIR_ERR_NO_DOMAIN):
                    return []
                raise from_libvirt(exc, f"look up guest {name}") from exc
            stats = self._call(
                self.conn.domainListGetStats, "read guest statistics", doms, self.stats_flags, 0
            )
        else:
            stats = self._call(
                self.conn.getAllDomainStats, "read guest statistics", self.stats_flags, 0
            )
        autostart = self._uuids(_flag("VIR_CONNECT_LIST_DOMAINS_AUTOSTART"))
        persistent = self._uuids(_flag("VIR_CONNECT_LIST_DOMAINS_PERSISTENT"))
        with_snapshots = self._uuids(_flag("VIR_CONNECT_LIST_DOMAINS_HAS_SNAPSHOT"))
        leases = self._leases() if "lease" in self.ip_sources else {}
        guests = []
        for dom, record in stats:
            state = run_state(record.get("state.state", 0))
            if states and state not in states:
                continue
            try:
                root = _xml.parse(dom.XMLDesc(0), "domain XML")
            except libvirt.libvirtError as exc:
                if is_error(exc, libvirt.VIR_ERR_NO_DOMAIN):
                    continue  # removed while we were listing
                raise from_libvirt(exc, f"read the definition of guest {dom.name()}") from exc
            config = summarize(root)
            # read without VIR_DOMAIN_XML_SECURE: whether a console has a password is unknown
            (config.get("graphics") or {}).pop("password", None)
            if tags and not set(tags) <= set(config.get("tags") or []):
                continue
            uuid = dom.UUIDString()
            guests.append(
                self._guest(
                    dom,
                    root,
                    config=config,
                    record=record,
                    state=state,
                    uuid=uuid,
                    autostart=autostart,
                    persistent=persistent,
                    with_snapshots=with_snapshots,
                    leases=leases,
                )
            )
        return sorted(guests, key=lambda g: g["name"])

    def _guest(
        self,
        dom,
        root,
        *,
        config,
        record,
        state,
        uuid,
        autostart,
        persistent,
        with_snapshots,
        leases,
    ) -> dict[str, Any]:
        disks = [Disk.from_xml(e).as_dict() for e in root.findall("devices/disk")]
        nics = []
        for elem in root.findall("devices/interface"):
            nic = Interface.from_xml(elem).as_dict()
            nic["target"] = _xml.attr(elem, "target", "dev")
            nic["ip_addresses"] = sorted(set(leases.get(nic.get("mac"), [])))
            nics.append(nic)
        ip_errors = []
        if state == "running" and "agent" in self.ip_sources and _agent_connected(root):
            try:
                found = dom.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT)
            except libvirt.libvirtError as exc:
                ip_errors.append(f"guest agent: {exc.get_error_message()}")
                found = {}
            by_mac: dict[str, list[str]] = {}
            for data in found.values():
                mac = (data.get("hwaddr") or "").lower()
                for addr in data.get("addrs") or []:
                    by_mac.setdefault(mac, []).append(addr["addr"])
            for nic in nics:
                nic["ip_addresses"] = sorted(
                    set(nic["ip_addresses"]) | set(by_mac.get(nic.get("mac"), []))
                )
        snapshots = 0
        if uuid in with_snapshots:
            try:
                snapshots = dom.snapshotNum(0)
            except libvirt.libvirtError as exc:
                ip_errors.append(f"snapshots: {exc.get_error_message()}")
        for key in ("disks", "interfaces", "name", "uuid"):
            config.pop(key, None)
        guest = {
            "name": dom.name(),
            "uuid": uuid,
            "state": state,
            "active": state in ("running", "paused", "pmsuspended", "shutdown"),
            "persistent": uuid in persistent,
            "autostart": uuid in autostart,
            "snapshot_count": snapshots,
            "config": config,
            "disks": disks,
            "interfaces": nics,
            "stats": {
                "balloon_current_mib": _mib(record.get("balloon.current")),
                "balloon_maximum_mib": _mib(record.get("balloon.maximum")),
                "vcpus_current": record.get("vcpu.current"),
                "vcpus_maximum": record.get("vcpu.maximum"),
                "cpu_time_ns": record.get("cpu.time"),
                "uptime_seconds": self._uptime(uuid, state),
            },
            "consoles": consoles(root),
        }
        if self.stats_flags & _flag(*IO_STATS):
            guest["stats"].update(io_counters(record))
        if self.guest_info:
            guest["guest_agent"] = agent_report(
                dom,
                running=state == "running",
                has_channel=any(
                    _xml.attr(c, "target", "name") == AGENT_CHANNEL
                    for c in root.findall("devices/channel")
                ),
            )
        if ip_errors:
            guest["errors"] = ip_errors
        if self.include_xml:
            guest["xml"] = _xml.to_string(strip_secrets(root))  # never console passwords
        return guest

    def _leases(self) -> dict[str, list[str]]:
        """MAC -> addresses from the DHCP leases of every active libvirt network."""
        result: dict[str, list[str]] = {}
        flags = _flag("VIR_CONNECT_LIST_NETWORKS_ACTIVE")
        try:
            networks = self.conn.listAllNetworks(flags)
        except libvirt.libvirtError:
            return result  # a driver without networks
        for net in networks:
            try:
                leases = net.DHCPLeases()
            except libvirt.libvirtError:
                continue
            for lease in leases:
                mac = (lease.get("mac") or "").lower()
                if lease.get("ipaddr"):
                    result.setdefault(mac, []).append(lease["ipaddr"])
        return result


def _agent_connected(root) -> bool:
    for channel in root.findall("devices/channel"):
        target = channel.find("target")
        if target is not None and target.get("name") == AGENT_CHANNEL:
            return target.get("state") == "connected"
    return False


def _mib(kib: int | None) -> int | None:
    return None if kib is None else kib // 1024


def qemu_uptimes(proc: str = "/proc") -> dict[str, float]:
    """UUID -> seconds since its QEMU process started, for the QEMU processes of this machine
    (found by the C(-uuid) argument libvirt gives them; their start from /proc/PID/stat)."""
    try:
        with open(os.path.join(proc, "uptime"), encoding="ascii") as handle:
            now = float(handle.read().split()[0])
        ticks = os.sysconf("SC_CLK_TCK")
        pids = [e for e in os.listdir(proc) if e.isdigit()]
    except (OSError, ValueError):
        return {}
    found: dict[str, float] = {}
    for pid in pids:
        try:
            with open(os.path.join(proc, pid, "cmdline"), "rb") as handle:
                args = handle.read().split(b"\0")
            if b"-uuid" not in args or not any(b"qemu" in a for a in args[:1]):
                continue
            uuid = args[args.index(b"-uuid") + 1].decode("ascii", "replace").lower()
            with open(
                os.path.join(proc, pid, "stat"), encoding="ascii", errors="replace"
            ) as handle:
                # fields after the command name in parentheses; starttime is field 22
                fields = handle.read().rpartition(")")[2].split()
            found[uuid] = round(max(now - int(fields[19]) / ticks, 0.0), 1)
        except (OSError, ValueError, IndexError):
            continue
    return found
