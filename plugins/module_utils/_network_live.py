# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""Which differences a running network can take live, and the ``virNetworkUpdate`` calls.

libvirt changes three sections of a running network without restarting it: static DHCP
hosts and DNS host entries (dnsmasq re-reads its host files on SIGHUP) and DHCP ranges
(libvirt restarts dnsmasq only; the bridge and guest links stay). Each call is checked
against libvirt's own matching rules (``virNetworkDefUpdateSection``) on a simulated copy
first; if any step would be refused, that group of changes is left to a redefinition
and a restart instead of failing halfway.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from . import _xml
from ._network_model import DhcpHost, DhcpRange, DnsHost, NetworkSpec

SECTION_DHCP_HOST = "ip-dhcp-host"
SECTION_DHCP_RANGE = "ip-dhcp-range"
SECTION_DNS_HOST = "dns-host"


@dataclass(frozen=True)
class LiveOp:
    command: str  # add, modify, delete
    section: str  # ip-dhcp-host, ip-dhcp-range, dns-host
    parent_index: int  # index of the <ip> element in the running network (-1: not used)
    xml: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LivePlan:
    ops: list[LiveOp] = field(default_factory=list)
    # Managed settings that differ but cannot be changed on the running network.
    not_live: list[str] = field(default_factory=list)


class _Refused(Exception):
    """libvirt would refuse this step."""


def plan_live(live: NetworkSpec, desired: NetworkSpec) -> LivePlan:
    """The update calls that bring the running network ``live`` to ``desired``.

    ``live`` must keep libvirt's element order (its indexes address the ``<ip>`` elements).
    Addresses that are added or removed are not handled here: they need a restart.
    """
    plan = LivePlan()
    try:
        plan.ops.extend(_plan_dhcp(live, desired))
    except _Refused:
        plan.not_live.extend(_dhcp_fields_differing(live, desired))
    try:
        plan.ops.extend(_plan_dns(live, desired))
    except _Refused:
        plan.not_live.append("dns_hosts")
    return plan


def _dhcp_fields_differing(live: NetworkSpec, desired: NetworkSpec) -> list[str]:
    def by_address(spec: NetworkSpec, attr: str) -> dict[str, Any]:
        return {ip.address: set(getattr(ip, attr)) for ip in spec.addresses if getattr(ip, attr)}

    return [
        name
        for name in ("dhcp_ranges", "dhcp_hosts")
        if by_address(live, name) != by_address(desired, name)
    ]


class _DhcpSim:
    """The DHCP parts of a running network, changed the way libvirt changes them."""

    def __init__(self, live: NetworkSpec) -> None:
        self.family = [ip.family for ip in live.addresses]
        self.ranges = [list(ip.dhcp_ranges) for ip in live.addresses]
        self.hosts = [list(ip.dhcp_hosts) for ip in live.addresses]

    def _check_single_dhcp(self, idx: int) -> None:
        for j, fam in enumerate(self.family):
            if j != idx and fam == self.family[idx] and (self.ranges[j] or self.hosts[j]):
                raise _Refused("dhcp on two addresses of one family")

    @staticmethod
    def matches_any(entry: DhcpHost, host: DhcpHost) -> bool:
        return bool(
            (host.mac and entry.mac and host.mac == entry.mac)
            or entry.ip == host.ip
            or (host.name and entry.name == host.name)
        )

    def delete_host(self, idx: int, host: DhcpHost) -> None:
        for i, entry in enumerate(self.hosts[idx]):
            if (
                (not host.mac or not entry.mac or host.mac == entry.mac)
                and (not host.name or host.name == entry.name)
                and host.ip == entry.ip
            ):
                if entry != host:
                    raise _Refused("delete would hit another entry first")
                del self.hosts[idx][i]
                return
        raise _Refused("no entry to delete")

    def modify_host(self, idx: int, old: DhcpHost, new: DhcpHost) -> None:
        hits = [i for i, e in enumerate(self.hosts[idx]) if self.matches_any(e, new)]
        if len(hits) != 1 or self.hosts[idx][hits[0]] != old:
            raise _Refused("modify would not hit exactly the old entry")
        self.hosts[idx][hits[0]] = new

    def add_host(self, idx: int, host: DhcpHost) -> None:
        self._check_single_dhcp(idx)
        if any(self.matches_any(e, host) for e in self.hosts[idx]):
            raise _Refused("an entry with that mac, name or ip exists")
        self.hosts[idx].append(host)

    def delete_range(self, idx: int, r: DhcpRange) -> None:
        if r not in self.ranges[idx]:
            raise _Refused("no such range")
        self.ranges[idx].remove(r)

    def add_range(self, idx: int, r: DhcpRange) -> None:
        self._check_single_dhcp(idx)
        if r in self.ranges[idx]:
            raise _Refused("range exists")
        self.ranges[idx].append(r)


def _plan_dhcp(live: NetworkSpec, desired: NetworkSpec) -> list[LiveOp]:
    sim = _DhcpSim(live)  # the state after the deletes, to tell which edits are safe
    deletes: list[LiveOp] = []
    modifies: list[LiveOp] = []
    adds: list[LiveOp] = []
    for want in desired.addresses:
        found = live.ip_by_address(want.address)
        if found is None:
            if want.has_dhcp:
                raise _Refused("DHCP on an address the running network does not have")
            continue
        idx, have = found
        for r in have.dhcp_ranges:
            if r not in want.dhcp_ranges:
                sim.delete_range(idx, r)
                deletes.append(LiveOp("delete", SECTION_DHCP_RANGE, idx, r.xml()))
        have_by_key = {h.key: h for h in have.dhcp_hosts}
        want_by_key = {h.key: h for h in want.dhcp_hosts}
        for key, h in have_by_key.items():
            if key not in want_by_key:
                sim.delete_host(idx, h)
                deletes.append(LiveOp("delete", SECTION_DHCP_HOST, idx, h.xml()))
        changed = [
            (have_by_key[k], h)
            for k, h in want_by_key.items()
            if k in have_by_key and have_by_key[k] != h
        ]
        # An edited entry whose new ip or name another entry still holds cannot be
        # modified in place (libvirt would match that other entry): delete, add later.
        unsafe = [
            (old, new)
            for old, new in changed
            if any(e != old and sim.matches_any(e, new) for e in sim.hosts[idx])
        ]
        for old, _new in unsafe:
            sim.delete_host(idx, old)
            deletes.append(LiveOp("delete", SECTION_DHCP_HOST, idx, old.xml()))
        modifies.extend(
            LiveOp("modify", SECTION_DHCP_HOST, idx, new.xml())
            for old, new in changed
            if (old, new) not in unsafe
        )
        adds.extend(
            LiveOp("add", SECTION_DHCP_RANGE, idx, r.xml())
            for r in want.dhcp_ranges
            if r not in have.dhcp_ranges
        )
        adds.extend(LiveOp("add", SECTION_DHCP_HOST, idx, new.xml()) for _old, new in unsafe)
        adds.extend(
            LiveOp("add", SECTION_DHCP_HOST, idx, h.xml())
            for k, h in want_by_key.items()
            if k not in have_by_key
        )
    # Replay in the order the calls will run (deletes, modifies, adds) on a fresh copy, so
    # the one-DHCP-address-per-family check sees the state each call will really meet.
    replay = _DhcpSim(live)
    for op in deletes + modifies + adds:
        _replay_dhcp(replay, op)
    for idx, ip in enumerate(live.addresses):
        found = desired.ip_by_address(ip.address)
        want_ip = found[1] if found else ip
        if set(replay.ranges[idx]) != set(want_ip.dhcp_ranges) or set(replay.hosts[idx]) != set(
            want_ip.dhcp_hosts
        ):
            raise _Refused("simulation does not reach the desired state")
    return deletes + modifies + adds


def _replay_dhcp(sim: _DhcpSim, op: LiveOp) -> None:
    elem = _xml.parse(op.xml, "update XML")
    idx = op.parent_index
    if op.section == SECTION_DHCP_RANGE:
        r = DhcpRange(elem.get("start"), elem.get("end"))
        (sim.add_range if op.command == "add" else sim.delete_range)(idx, r)
        return
    host = DhcpHost(ip=elem.get("ip"), mac=elem.get("mac"), name=elem.get("name"))
    if op.command == "add":
        sim.add_host(idx, host)
    elif op.command == "delete":
        sim.delete_host(idx, host)
    else:
        old = next((e for e in sim.hosts[idx] if e.key == host.key), None)
        if old is None:
            raise _Refused("nothing to modify")
        sim.modify_host(idx, old, host)


def _dns_matches(entry: DnsHost, host: DnsHost) -> bool:
    return entry.ip == host.ip or bool(set(entry.hostnames) & set(host.hostnames))


def _plan_dns(live: NetworkSpec, desired: NetworkSpec) -> list[LiveOp]:
    have = {h.ip: h for h in live.dns_hosts}
    want = {h.ip: h for h in desired.dns_hosts}
    state = list(live.dns_hosts)
    ops: list[LiveOp] = []
    for ip, h in have.items():
        if want.get(ip) != h:
            hits = [e for e in state if _dns_matches(e, h)]
            if hits != [h]:
                raise _Refused("delete would match several DNS host entries")
            state.remove(h)
            ops.append(LiveOp("delete", SECTION_DNS_HOST, -1, h.xml()))
    for ip, h in want.items():
        if have.get(ip) != h:
            # Older libvirt refuses an entry sharing a hostname with another: stay safe.
            if any(_dns_matches(e, h) for e in state):
                raise _Refused("add would match an existing DNS host entry")
            state.append(h)
            ops.append(LiveOp("add", SECTION_DNS_HOST, -1, h.xml()))
    if sorted(state, key=lambda h: h.ip) != sorted(want.values(), key=lambda h: h.ip):
        raise _Refused("simulation does not reach the desired state")
    return ops
