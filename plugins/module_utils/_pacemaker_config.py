# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""Cluster properties and stonith devices in the CIB (cluster_config).

``ConfigWish`` is what the module asks for; ``apply_config`` edits a copy of the CIB that
:func:`._pacemaker.write_with_retry` writes back in one version-checked replace;
``summary`` is the properties and devices as plain data, with the values of secret
parameters masked (``masked``) before anything leaves the module.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from . import _pacemaker as pcmk
from ._errors import KvmValidationError
from ._pacemaker_resource import BOOTSTRAP, KEEP_ORPHANS_PREFIX

try:
    from lxml import etree
except ImportError:  # reported by the module wrapper
    etree = None

HOST_LIST = "pcmk_host_list"
MASK = "********"
MASK_CHANGED = "******** (changed)"
# Fence agents' secret parameters: password, passwd, password_script, snmp_priv_passwd, ...
_SECRET_PARTS = ("passw", "secret", "token")


def is_secret(name: str) -> bool:
    return any(part in name.lower() for part in _SECRET_PARTS)


@dataclass
class DeviceWish:
    name: str
    agent: str
    params: dict[str, str]
    hosts: list[str] | None
    monitor_interval: int


@dataclass
class ConfigWish:
    properties: dict[str, str | None] = field(default_factory=dict)
    devices: list[DeviceWish] | None = None
    exclusive: bool = False


def _value(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def wish_from_params(params: dict[str, Any]) -> ConfigWish:
    props = {}
    for name, value in (params["properties"] or {}).items():
        pcmk.check_id(name, "properties")
        props[name] = _value(value)
    devices = None
    if params["stonith_devices"] is not None:
        devices, seen = [], set()
        for dev in params["stonith_devices"]:
            name = dev["name"]
            pcmk.check_id(name, "stonith_devices.name")
            if name in seen:
                raise KvmValidationError(
                    f"stonith_devices names {name} twice; nothing was changed", option="name"
                )
            seen.add(name)
            plain = {k: _value(v) for k, v in (dev["params"] or {}).items()}
            secret = {k: _value(v) for k, v in (dev["secret_params"] or {}).items()}
            shown = sorted(k for k in plain if is_secret(k))
            if shown:
                raise KvmValidationError(
                    f"stonith device {name}: {', '.join(shown)} in params would be shown and "
                    "logged; give secrets in secret_params (no_log); nothing was changed",
                    option="params",
                )
            both = sorted(set(plain) & set(secret))
            if both or HOST_LIST in plain or HOST_LIST in secret:
                raise KvmValidationError(
                    f"stonith device {name}: {', '.join(both) or HOST_LIST} given twice "
                    "(params, secret_params, hosts); nothing was changed",
                    option="params",
                )
            for key, value in {**plain, **secret}.items():
                pcmk.check_id(key, "stonith_devices.params")
                if value is None:
                    raise KvmValidationError(
                        f"stonith device {name}: parameter {key} has no value; nothing was changed",
                        option="params",
                    )
            if dev["monitor_interval"] < 1:
                raise KvmValidationError(
                    f"stonith device {name}: monitor_interval must be at least 1 second",
                    option="monitor_interval",
                )
            for host in dev["hosts"] or []:
                pcmk.check_id(host, "stonith_devices.hosts")
            devices.append(
                DeviceWish(
                    name=name,
                    agent=dev["agent"],
                    params={**plain, **secret},
                    hosts=dev["hosts"],
                    monitor_interval=dev["monitor_interval"],
                )
            )
    return ConfigWish(props, devices, params["exclusive_stonith_devices"])


# --- reading ---------------------------------------------------------------------------------


def _bootstrap(cib, create: bool = False):
    config = pcmk.configuration(cib, "crm_config")
    found = config.xpath("cluster_property_set[@id=$id]", id=BOOTSTRAP)
    if found:
        return found[0]
    if not create:
        return None
    return etree.SubElement(config, "cluster_property_set", id=BOOTSTRAP)


def _own_pairs(prop_set, name: str | None = None) -> list:
    """The set's pairs, without cluster_guest's temporary stop-orphan-resources pairs."""
    pairs = prop_set.findall("nvpair")
    return [
        p
        for p in pairs
        if not (p.get("id") or "").startswith(KEEP_ORPHANS_PREFIX)
        and (name is None or p.get("name") == name)
    ]


def properties(cib) -> dict[str, str]:
    found = _bootstrap(cib)
    if found is None:
        return {}
    props: dict[str, str] = {}
    for pair in _own_pairs(found):
        props.setdefault(pair.get("name"), pair.get("value"))
    return props


def _top_stonith(cib) -> list:
    section = cib.find("configuration/resources")
    if section is None:
        return []
    return [p for p in section.findall("primitive") if p.get("class") == "stonith"]


def device_summary(prim) -> dict[str, Any]:
    params = pcmk.nvpairs(prim, "instance_attributes")
    hosts = params.pop(HOST_LIST, None)
    interval = None
    for op in prim.findall("operations/op"):
        if op.get("name") == "monitor" and not op.get("role"):
            interval = pcmk.seconds(op.get("interval"))
            break
    return {
        "name": prim.get("id"),
        "agent": prim.get("type"),
        "params": params,
        "hosts": hosts.replace(",", " ").split() if hosts else [],
        "monitor_interval": interval,
    }


def summary(cib) -> dict[str, Any]:
    """Bootstrap properties and every stonith device (nested ones too), secrets unmasked."""
    devices = [
        device_summary(p) for p in cib.xpath("configuration/resources//primitive[@class='stonith']")
    ]
    return {"properties": properties(cib), "stonith_devices": devices}


def masked(state: dict[str, Any], before: dict[str, Any] | None = None) -> dict[str, Any]:
    """``state`` with secret values masked; one that differs from ``before`` says so."""
    old = {d["name"]: d["params"] for d in (before or {}).get("stonith_devices", [])}
    devices = []
    for dev in state["stonith_devices"]:
        params = {}
        for key, value in dev["params"].items():
            if not is_secret(key):
                params[key] = value
            elif before is not None and old.get(dev["name"], {}).get(key) != value:
                params[key] = MASK_CHANGED
            else:
                params[key] = MASK
        devices.append({**dev, "params": params})
    return {"properties": dict(state["properties"]), "stonith_devices": devices}


# --- the edits of a CIB copy -----------------------------------------------------------------


def _set_property(cib, name: str, value: str | None) -> None:
    prop_set = _bootstrap(cib, create=value is not None)
    if prop_set is None:
        return
    pcmk.put_pair(cib, prop_set, _own_pairs(prop_set, name), name, value)


def _set_device(cib, dev: DeviceWish) -> None:
    found = pcmk.find_id(cib, dev.name)
    if found is not None and not (
        found.tag == "primitive"
        and found.get("class") == "stonith"
        and found.getparent() is cib.find("configuration/resources")
    ):
        raise KvmValidationError(
            f"stonith device {dev.name}: the id is taken by a {found.tag} that is not a "
            "top-level stonith device; nothing was changed"
        )
    prim = found
    if prim is None:
        prim = etree.SubElement(
            pcmk.configuration(cib, "resources"),
            "primitive",
            id=dev.name,
            **{"class": "stonith", "type": dev.agent},
        )
    if prim.get("type") != dev.agent:
        prim.set("type", dev.agent)
    wanted = dict(dev.params)
    if dev.hosts is not None:
        wanted[HOST_LIST] = " ".join(dev.hosts)
    have = pcmk.nvpairs(prim, "instance_attributes")
    if dev.hosts is None and HOST_LIST in have:
        wanted[HOST_LIST] = have[HOST_LIST]
    for name in have:
        if name not in wanted:
            pcmk.set_nvpair(cib, prim, "instance_attributes", name, None)
    for name, value in wanted.items():
        if have.get(name) != value:
            pcmk.set_nvpair(cib, prim, "instance_attributes", name, value)
    ops = prim.find("operations")
    if ops is None:
        ops = etree.SubElement(prim, "operations")
    monitors = [o for o in ops.findall("op") if o.get("name") == "monitor" and not o.get("role")]
    if not monitors:
        etree.SubElement(
            ops,
            "op",
            id=pcmk.unique_id(cib, f"{dev.name}-monitor-interval-{dev.monitor_interval}s"),
            name="monitor",
            interval=f"{dev.monitor_interval}s",
        )
    elif pcmk.seconds(monitors[0].get("interval")) != dev.monitor_interval:
        monitors[0].set("interval", f"{dev.monitor_interval}s")


def apply_config(cib, wish: ConfigWish) -> None:
    """Make the CIB copy say what ``wish`` asks."""
    for name, value in wish.properties.items():
        _set_property(cib, name, value)
    if wish.devices is None:
        return
    for dev in wish.devices:
        _set_device(cib, dev)
    if wish.exclusive:
        listed = {d.name for d in wish.devices}
        for prim in _top_stonith(cib):
            if prim.get("id") not in listed:
                _remove_device(cib, prim)


def _remove_device(cib, prim) -> None:
    """The device and its constraints (a resource set loses the entry, and goes when empty)."""
    rid = prim.get("id")
    for ref in cib.xpath("configuration/constraints//resource_ref[@id=$id]", id=rid):
        rset = ref.getparent()
        rset.remove(ref)
        if len(rset) == 0:
            constraint = rset.getparent()
            constraint.remove(rset)
            if constraint.find("resource_set") is None:
                constraint.getparent().remove(constraint)
    for constraint in cib.xpath(
        "configuration/constraints/*[@rsc=$id or @with-rsc=$id or @first=$id or @then=$id]",
        id=rid,
    ):
        constraint.getparent().remove(constraint)
    prim.getparent().remove(prim)


def fencing_refusal(cib, guests: list[str]) -> str:
    """The refusal (cluster_guest's words) when ``cib`` leaves the cluster without fencing."""
    problem = pcmk.fencing_problem(cib)
    held = f" (highly available guests: {', '.join(guests)})" if guests else ""
    return (
        f"Refusing to leave the cluster without fencing: {problem}{held}. Without fencing a "
        "node that stops answering may still run a guest while another node starts it, and "
        "both write its disks. Configure a stonith device, or set allow_without_fencing=true "
        "to accept that risk; nothing was changed"
    )


def agent_parameters(metadata: str) -> set[str]:
    root = pcmk.parse(metadata, "the fence agent's metadata")
    return {p.get("name") for p in root.iter("parameter")}


# --- the run ---------------------------------------------------------------------------------


@dataclass
class ConfigResult:
    changed: bool = False
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def check_agents(tools: pcmk.Tools, wish: ConfigWish) -> list[str]:
    """Every device's agent must be installed here; warnings name parameters it does not
    know (names only, never values)."""
    warnings = []
    agents = {d.agent for d in wish.devices or []}
    known: dict[str, set[str]] = {}
    for agent in sorted(agents):
        rc, out, err = tools.run(
            [pcmk.installed("stonith_admin"), "--metadata", "--agent", agent], None
        )
        if rc != 0:
            raise KvmValidationError(
                f"The fence agent {agent} is not usable on this node (stonith_admin "
                f"--metadata exited {rc}: {(err or out).strip()}); install it on every node; "
                "nothing was changed",
                option="agent",
            )
        known[agent] = agent_parameters(out)
    for dev in wish.devices or []:
        unknown = sorted(
            k for k in dev.params if k not in known[dev.agent] and not k.startswith("pcmk_")
        )
        if unknown:
            warnings.append(
                f"stonith device {dev.name}: the agent {dev.agent} does not list the "
                f"parameters {', '.join(unknown)} in its metadata"
            )
    return warnings


def configure(
    tools: pcmk.Tools, wish: ConfigWish, *, check_mode: bool, allow_without_fencing: bool
) -> ConfigResult:
    result = ConfigResult(warnings=check_agents(tools, wish))

    def change(work):
        before = summary(work)
        apply_config(work, wish)
        problem = pcmk.fencing_problem(work)
        if problem and not allow_without_fencing:
            guests = sorted(
                p.get("id")
                for p in work.xpath("configuration/resources//primitive")
                if pcmk.is_virtual_domain(p)
            )
            raise KvmValidationError(fencing_refusal(work, guests), fencing=problem)
        return before, summary(work), problem

    written = False
    if check_mode:
        raw_before, raw_after, problem = change(copy.deepcopy(tools.query()))
    else:
        (raw_before, raw_after, problem), written = pcmk.write_with_retry(tools, change)
    if problem:
        result.warnings.append(
            f"The cluster has no working fencing ({problem}): a node that stops answering "
            "may run a guest twice and corrupt its disks"
        )
    result.changed = written or raw_before != raw_after
    result.before = masked(raw_before)
    result.after = masked(raw_after, raw_before)
    result.state = masked(raw_after)
    return result
