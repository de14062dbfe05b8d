# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""Reconcile a libvirt virtual network with its spec; read networks for ``network_info``.

One shape: read the persistent config and, when the network runs, its live config ->
compute the differences -> validate -> (not in check mode) apply -> report.
Changes libvirt can make on a running network are made live and persisted; the rest are
written to the persistent config and reported as ``restart_required`` until the network
is restarted (``restart: true`` does it and names the guests whose link it cut).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

from . import _network_xml, _xml
from ._concurrency import Guard, reconcile
from ._diff import DifferenceTracker
from ._errors import KvmLibvirtError, from_libvirt, is_error
from ._libvirt import libvirt, lookup_or_none
from ._network_host import host_for
from ._network_live import (
    SECTION_DHCP_HOST,
    SECTION_DHCP_RANGE,
    SECTION_DNS_HOST,
    LiveOp,
    LivePlan,
    plan_live,
)
from ._network_model import (
    LIBVIRT_BRIDGE_MODES,
    NetworkSpec,
    OtherNetwork,
    parse_network,
    spec_from_params,
    validate_against_host,
    validate_spec,
)

# Managed settings that only take effect when the network is (re)started.
RESTART_FIELDS = ("mode", "bridge", "forward_dev", "mtu", "domain", "addresses")
LIVE_FIELDS = ("dhcp_ranges", "dhcp_hosts", "dns_hosts")


def _field_values(spec: NetworkSpec | None) -> dict[str, Any]:
    """The managed settings as plain, order-insensitive values (what the diff shows)."""
    if spec is None:
        return dict.fromkeys(RESTART_FIELDS + LIVE_FIELDS)
    spec = spec.normalized()
    return {
        "mode": spec.mode,
        "bridge": spec.bridge,
        "forward_dev": spec.forward_dev,
        "mtu": spec.mtu,
        "domain": spec.domain,
        "addresses": [ip.address for ip in spec.addresses],
        "dhcp_ranges": {
            ip.address: [r.to_dict() for r in ip.dhcp_ranges]
            for ip in spec.addresses
            if ip.dhcp_ranges
        },
        "dhcp_hosts": {
            ip.address: [h.to_dict() for h in ip.dhcp_hosts]
            for ip in spec.addresses
            if ip.dhcp_hosts
        },
        "dns_hosts": [h.to_dict() for h in spec.dns_hosts],
    }


def differing_fields(a: NetworkSpec, b: NetworkSpec) -> list[str]:
    va, vb = _field_values(a), _field_values(b)
    return [name for name in RESTART_FIELDS + LIVE_FIELDS if va[name] != vb[name]]


# --------------------------------------------------------------------------------------
# Reading


def lookup(conn, name: str):
    return lookup_or_none(
        lambda: conn.networkLookupByName(name),
        libvirt.VIR_ERR_NO_NETWORK,
        f"look up network {name}",
    )


def read_xml(net, *, inactive: bool) -> str:
    flags = libvirt.VIR_NETWORK_XML_INACTIVE if inactive else 0
    try:
        return net.XMLDesc(flags)
    except libvirt.libvirtError as exc:
        if flags and is_error(exc, libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT):
            # Drivers without a live/config split (the test driver) have only one XML.
            return read_xml(net, inactive=False)
        raise from_libvirt(exc, f"read the XML of network {net.name()}") from exc


def attached_guests(conn, network: str) -> list[dict[str, Any]]:
    """Running guests with an interface on ``network``: name, MAC and host tap device."""
    guests = []
    try:
        domains = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
    except libvirt.libvirtError as exc:
        raise from_libvirt(exc, "list the running guests") from exc
    for dom in domains:
        try:
            root = _xml.parse(dom.XMLDesc(0), "domain XML")
        except libvirt.libvirtError:
            continue  # the guest stopped meanwhile
        for iface in root.findall("devices/interface"):
            if iface.get("type") != "network" or _xml.attr(iface, "source", "network") != network:
                continue
            guests.append(
                {
                    "name": dom.name(),
                    "mac": _xml.attr(iface, "mac", "address"),
                    "tap": _xml.attr(iface, "target", "dev"),
                }
            )
    return guests


def leases(net) -> list[dict[str, Any]]:
    try:
        raw = net.DHCPLeases()
    except libvirt.libvirtError:
        return []  # inactive network, or a driver without lease support
    out = []
    for lease in raw or []:
        out.append(
            {
                "mac": lease.get("mac"),
                "ip": lease.get("ipaddr"),
                "prefix": lease.get("prefix"),
                "family": "ipv6" if lease.get("type") == 1 else "ipv4",
                "hostname": lease.get("hostname"),
                "client_id": lease.get("clientid"),
                "expiry_time": lease.get("expirytime"),
                "interface": lease.get("iface"),
            }
        )
    return sorted(out, key=lambda item: (item["family"], item["ip"] or ""))


def network_facts(conn, net, *, with_leases: bool = True) -> dict[str, Any]:
    """What ``network_info`` returns for one network (and ``network`` as its result)."""
    persistent_xml = read_xml(net, inactive=True)
    config = parse_network(persistent_xml)
    active = bool(net.isActive())
    pending: list[str] = []
    if active:
        pending = differing_fields(parse_network(read_xml(net, inactive=False)), config)
    try:
        autostart = bool(net.autostart())
    except libvirt.libvirtError:
        autostart = False
    facts = {
        "name": net.name(),
        "uuid": net.UUIDString(),
        "state": "active" if active else "inactive",
        "active": active,
        "persistent": bool(net.isPersistent()),
        "autostart": autostart,
    }
    facts.update(config.to_dict())
    facts.update(
        restart_pending=bool(pending),
        pending_changes=pending,
        leases=leases(net) if active and with_leases else [],
        attached_guests=attached_guests(conn, net.name()) if active else [],
    )
    return facts


def other_networks(conn, name: str) -> list[OtherNetwork]:
    out = []
    try:
        nets = conn.listAllNetworks()
    except libvirt.libvirtError as exc:
        raise from_libvirt(exc, "list the networks") from exc
    for net in nets:
        if net.name() == name:
            continue
        try:
            spec = parse_network(net.XMLDesc(0))
            active = bool(net.isActive())
        except libvirt.libvirtError:
            continue  # removed meanwhile
        out.append(
            OtherNetwork(
                name=spec.name,
                mode=spec.mode,
                bridge=spec.bridge,
                subnets=tuple(ip.interface.network for ip in spec.addresses),
                active=active,
            )
        )
    return out


# --------------------------------------------------------------------------------------
# Reconciling


_SECTIONS = {
    SECTION_DHCP_HOST: "VIR_NETWORK_SECTION_IP_DHCP_HOST",
    SECTION_DHCP_RANGE: "VIR_NETWORK_SECTION_IP_DHCP_RANGE",
    SECTION_DNS_HOST: "VIR_NETWORK_SECTION_DNS_HOST",
}
_COMMANDS = {
    "add": "VIR_NETWORK_UPDATE_COMMAND_ADD_LAST",
    "modify": "VIR_NETWORK_UPDATE_COMMAND_MODIFY",
    "delete": "VIR_NETWORK_UPDATE_COMMAND_DELETE",
}


@dataclass
class Plan:
    """What a run does, decided before anything changes."""

    create: bool = False
    define: bool = False
    live: LivePlan = field(default_factory=LivePlan)
    live_and_config: bool = False  # live updates also persist (no define needed)
    start: bool = False
    stop: bool = False
    restart_fields: list[str] = field(default_factory=list)
    restart: bool = False
    autostart: bool | None = None


class NetworkManager:
    def __init__(
        self,
        conn,
        params: dict[str, Any],
        *,
        check_mode: bool = False,
        host=None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.conn = conn
        self.params = params
        self.check_mode = check_mode
        self.host = host if host is not None else host_for(params.get("uri") or "", conn)
        self.warn = warn or (lambda msg: None)
        self.name: str = params["name"]
        self.fragment = None  # the parsed xml option

    # -- entry point -------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        if self.params["state"] == "absent":
            return self._absent(lookup(self.conn, self.name))
        return reconcile(
            lambda: self._present(lookup(self.conn, self.name)), f"network {self.name}"
        )

    def _absent(self, net) -> dict[str, Any]:
        result: dict[str, Any] = {"changed": False, "network": None}
        if net is None:
            result["diff"] = {"before": {"state": "absent"}, "after": {"state": "absent"}}
            return result
        before = network_facts(self.conn, net, with_leases=False)
        result.update(changed=True, guests_disconnected=before["attached_guests"])
        result["diff"] = {"before": _diff_view(before), "after": {"state": "absent"}}
        if self.check_mode:
            return result
        try:
            if net.isActive():
                net.destroy()
            if net.isPersistent():
                net.undefine()
        except libvirt.libvirtError as exc:
            if not is_error(exc, libvirt.VIR_ERR_NO_NETWORK):
                raise from_libvirt(exc, f"remove network {self.name}") from exc
        return result

    def _present(self, net) -> dict[str, Any]:
        state = self.params["state"]
        persistent_xml = read_xml(net, inactive=True) if net is not None else None
        guard = Guard(f"network {self.name}", persistent_xml, lambda: self._reread(net))
        current = parse_network(persistent_xml) if persistent_xml else None
        active = bool(net.isActive()) if net is not None else False
        live_xml = read_xml(net, inactive=False) if active else None
        live = parse_network(live_xml) if active else None

        self.fragment = _network_xml.parse(self.params)
        desired = spec_from_params(self.params, current)
        new_root = None
        if self.fragment is not None:
            desired, new_root = _network_xml.with_fragment(
                desired, persistent_xml, self.fragment, self.params, _field_values
            )
        validate_spec(desired)
        host_relevant = current is None or any(
            f in differing_fields(current, desired)
            for f in ("mode", "bridge", "forward_dev", "addresses")
        )
        if host_relevant:
            own_bridge = live.bridge if live and live.mode in LIBVIRT_BRIDGE_MODES else None
            checked = desired
            if self.params.get("bridge") is None and desired.mode != "bridge":
                checked = replace(desired, bridge=None)  # libvirt's own choice: no conflict
            for msg in validate_against_host(
                checked,
                others=other_networks(self.conn, self.name),
                own_bridge=own_bridge,
                interface_kind=self.host.interface_kind,
                routes=self.host.routes(),
                check_mode=self.check_mode,
            ):
                self.warn(msg)

        xml_config = self.fragment is not None and not _network_xml.contained(
            persistent_xml, self.fragment
        )
        xml_restart = (
            self.fragment is not None
            and active
            and not _network_xml.contained(live_xml, _network_xml.restart_part(self.fragment))
        )
        plan = self._plan(
            net, current, live, desired, active, xml_config=xml_config, xml_restart=xml_restart
        )
        tracker = DifferenceTracker()
        before_values = _field_values(current)
        after_values = _field_values(desired)
        for name in RESTART_FIELDS + LIVE_FIELDS:
            tracker.add(
                name,
                before_values[name],
                after_values[name],
                restart_required=name in plan.restart_fields,
            )
        if self.fragment is not None:
            tracker.add(
                "xml",
                *_network_xml.diff(persistent_xml, new_root, self.fragment),
                restart_required="xml" in plan.restart_fields,
            )
        will_be_active = state == "active" or (state == "present" and active)
        tracker.add(
            "state",
            "absent" if net is None else ("active" if active else "inactive"),
            "active" if will_be_active else "inactive",
        )
        before_autostart = bool(net.autostart()) if net is not None else False
        if self.params.get("autostart") is not None:
            tracker.add("autostart", before_autostart, self.params["autostart"])
            if self.params["autostart"] != before_autostart:
                plan.autostart = self.params["autostart"]

        guests: list[dict[str, Any]] = []
        if active and (plan.restart_fields or plan.stop):
            guests = attached_guests(self.conn, self.name)
        changed = bool(tracker) or bool(plan.live.ops) or plan.restart

        if changed and not self.check_mode:
            guard.check()  # never write over a change made since this run read the network
            net = self._apply(net, plan, desired, persistent_xml)

        restart_pending = bool(plan.restart_fields) and will_be_active and not plan.restart
        result: dict[str, Any] = {
            "changed": changed,
            "restart_required": restart_pending,
            "restart_fields": plan.restart_fields if will_be_active else [],
            "restarted": plan.restart,
            "live_updates": [op.to_dict() for op in plan.live.ops],
            "attached_guests": guests,
            "guests_disconnected": guests if (plan.restart or plan.stop) else [],
            "diff": tracker.diff(),
        }
        if self.check_mode or net is None:
            predicted = {"name": self.name, "state": tracker.diff()["after"]["state"]}
            predicted.update(desired.to_dict())
            result["network"] = predicted
        else:
            result["network"] = network_facts(self.conn, net)
        return result

    # -- planning ----------------------------------------------------------------------

    def _plan(self, net, current, live, desired, active, *, xml_config, xml_restart) -> Plan:
        state = self.params["state"]
        plan = Plan()
        if net is None:
            plan.create = True
            plan.start = state == "active"
            return plan
        config_diff = differing_fields(current, desired)
        plan.define = bool(config_diff) or xml_config
        if state == "inactive":
            plan.stop = active
            return plan
        if not active:
            plan.start = state == "active"
            return plan
        # A running network: what it runs against what it should run.
        running_diff = differing_fields(live, desired)
        restart = [f for f in running_diff if f in RESTART_FIELDS]
        if xml_restart:
            restart.append("xml")  # what the fragment sets beyond the update calls
        live_fields = [f for f in running_diff if f in LIVE_FIELDS]
        if live_fields:
            plan.live = plan_live(live, desired)
            restart += [f for f in plan.live.not_live if f not in restart]
        plan.restart_fields = [f for f in (*RESTART_FIELDS, *LIVE_FIELDS, "xml") if f in restart]
        plan.restart = bool(plan.restart_fields) and bool(self.params.get("restart"))
        # The update calls can also persist the change when the config and the running
        # network agreed before, and the update calls are all that differs.
        plan.live_and_config = (
            bool(plan.live.ops)
            and not plan.live.not_live
            and not restart
            and not differing_fields(current, live)
            and set(config_diff) <= set(LIVE_FIELDS)
            and not xml_config
        )
        if plan.live_and_config:
            plan.define = False
        return plan

    # -- applying ----------------------------------------------------------------------

    def _apply(self, net, plan: Plan, desired: NetworkSpec, persistent_xml: str | None):
        if plan.create:
            return self._create(plan, desired)
        if plan.stop:
            self._call(net.destroy, f"stop network {self.name}")
        if plan.live.ops:
            self._update_live(net, plan)
        if plan.define:
            new_xml = _network_xml.compose(desired, persistent_xml, self.fragment)
            net = self._define(new_xml)
        try:
            if plan.start:
                self._call(net.create, f"start network {self.name}")
            if plan.restart:
                self._call(net.destroy, f"stop network {self.name} to restart it")
                self._call(net.create, f"start network {self.name} again")
        except KvmLibvirtError:
            if plan.define and persistent_xml:
                self._rollback(persistent_xml, restart=plan.restart)
            raise
        if plan.autostart is not None:
            self._call(lambda: net.setAutostart(int(plan.autostart)), "set autostart")
        return net

    def _create(self, plan: Plan, desired: NetworkSpec):
        net = self._define(_network_xml.compose(desired, None, self.fragment))
        try:
            if plan.start:
                self._call(net.create, f"start network {self.name}")
            if plan.autostart:
                self._call(lambda: net.setAutostart(1), "set autostart")
        except KvmLibvirtError:
            # Leave nothing half-made behind.
            try:
                if net.isActive():
                    net.destroy()
                net.undefine()
            except libvirt.libvirtError:
                pass
            raise
        return net

    def _reread(self, net) -> str | None:
        found = net or lookup(self.conn, self.name)
        return read_xml(found, inactive=True) if found is not None else None

    def _define(self, xml: str):
        try:
            return self.conn.networkDefineXML(xml)
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, f"define network {self.name}", xml=xml) from exc

    def _rollback(self, old_xml: str, *, restart: bool) -> None:
        """Put the previous config back after a start failed (best effort)."""
        try:
            net = self.conn.networkDefineXML(old_xml)
            if restart and not net.isActive():
                net.create()
        except libvirt.libvirtError as exc:
            self.warn(f"Could not restore the previous config of network {self.name}: {exc}")

    def _update_live(self, net, plan: Plan) -> None:
        flags = libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE
        if plan.live_and_config:
            flags |= libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG
        for op in plan.live.ops:
            self._update(net, op, flags)

    def _update(self, net, op: LiveOp, flags: int) -> None:
        try:
            net.update(
                getattr(libvirt, _COMMANDS[op.command]),
                getattr(libvirt, _SECTIONS[op.section]),
                op.parent_index,
                op.xml,
                flags,
            )
        except libvirt.libvirtError as exc:
            raise from_libvirt(
                exc, f"{op.command} {op.section} {op.xml} on network {self.name}"
            ) from exc

    def _call(self, func: Callable[[], Any], action: str) -> Any:
        try:
            return func()
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, action) from exc


def _diff_view(facts: dict[str, Any]) -> dict[str, Any]:
    spec = NetworkSpec(name=facts["name"])
    values = dict(_field_values(spec))
    keys = ("mode", "bridge", "forward_dev", "mtu", "domain")
    values.update({k: facts[k] for k in keys})
    values["state"] = facts["state"]
    values["autostart"] = facts["autostart"]
    values["addresses"] = [ip["address"] for ip in facts["addresses"]]
    values["dhcp_ranges"] = {
        ip["address"]: ip["dhcp_ranges"] for ip in facts["addresses"] if ip["dhcp_ranges"]
    }
    values["dhcp_hosts"] = {
        ip["address"]: ip["dhcp_hosts"] for ip in facts["addresses"] if ip["dhcp_hosts"]
    }
    values["dns_hosts"] = facts["dns_hosts"]
    return values


def info(conn, name: str | None) -> list[dict[str, Any]]:
    """``network_info``: one network by name (an empty list when missing), or all."""
    if name:
        net = lookup(conn, name)
        return [network_facts(conn, net)] if net is not None else []
    try:
        nets = conn.listAllNetworks()
    except libvirt.libvirtError as exc:
        raise from_libvirt(exc, "list the networks") from exc
    out = []
    for net in sorted(nets, key=lambda n: n.name()):
        try:
            out.append(network_facts(conn, net))
        except KvmLibvirtError as exc:
            if exc.code != libvirt.VIR_ERR_NO_NETWORK:
                raise  # anything but "removed meanwhile"
    return out
