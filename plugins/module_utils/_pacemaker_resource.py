# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""A VirtualDomain primitive and its constraints in a copy of the CIB (cluster_guest).

What the module asks for (``GuestWish``), the resource's settings as plain data (``summary``,
the diff and the result), and the edits of a CIB copy that :mod:`._pacemaker_guest` writes
back: ``apply_wish``, ``remove_resource`` and the per-resource ``stop-orphan-resources=false``
pair (``keep_orphan``, ``release_orphan``) that keeps a removed guest running.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

from . import _pacemaker as pcmk
from ._errors import KvmValidationError

try:
    from lxml import etree
except ImportError:  # reported by the module wrapper
    etree = None

KEEP_ORPHANS_PREFIX = "virtops-kvm-keep-orphans-"
BOOTSTRAP = "cib-bootstrap-options"


@dataclass
class GuestWish:
    resource_id: str
    name: str
    state: str
    config: str | None
    hypervisor: str
    allow_migrate: bool | None = None
    migration_transport: str | None = None
    migrate_options: str | None = None
    preferred_nodes: list[str] | None = None
    forbidden_nodes: list[str] | None = None
    order_after: list[str] | None = None
    priority: int | None = None
    stickiness: int | None = None
    utilization: dict[str, int] | None = None
    operations: dict[str, dict[str, int]] = field(default_factory=dict)
    meta: dict[str, str] | None = None


def wish_from_params(params: dict[str, Any]) -> GuestWish:
    name = params["name"]
    rid = params["resource_id"] or name
    pcmk.check_id(rid, "resource_id" if params["resource_id"] else "name")
    for option in ("preferred_nodes", "forbidden_nodes"):
        for node in params[option] or []:
            pcmk.check_id(node, option)
    both = set(params["preferred_nodes"] or []) & set(params["forbidden_nodes"] or [])
    if both:
        raise KvmValidationError(
            f"Nodes both preferred and forbidden: {', '.join(sorted(both))}; nothing was changed"
        )
    for first in params["order_after"] or []:
        pcmk.check_id(first, "order_after")
        if first == rid:
            raise KvmValidationError("order_after cannot name the resource itself")
    config = params["config"]
    if params["state"] != "absent":
        if not config:
            raise KvmValidationError(f"state={params['state']} needs config", option="config")
        if not os.path.isabs(config):
            raise KvmValidationError(f"config must be an absolute path, not {config!r}")
    operations: dict[str, dict[str, int]] = {
        "monitor": {"interval": params["monitor_interval"], "timeout": params["monitor_timeout"]},
        "start": {"timeout": params["start_timeout"]},
        "stop": {"timeout": params["stop_timeout"]},
    }
    if params["allow_migrate"]:
        operations["migrate_to"] = {"timeout": params["migrate_timeout"]}
        operations["migrate_from"] = {"timeout": params["migrate_timeout"]}
    for op, values in operations.items():
        for key, value in values.items():
            if value < 1:
                raise KvmValidationError(f"The {op} {key} must be at least 1 second")
    utilization = None
    if params["utilization"] is not None:
        utilization = {k: v for k, v in params["utilization"].items() if v is not None}
    meta = None
    if params["meta"] is not None:
        meta = {str(k): _meta_value(v) for k, v in params["meta"].items()}
        reserved = set(meta) & {"target-role", "allow-migrate", "priority", "resource-stickiness"}
        if reserved:
            raise KvmValidationError(
                f"meta cannot set {', '.join(sorted(reserved))}: use state, allow_migrate, "
                "priority and stickiness"
            )
    return GuestWish(
        resource_id=rid,
        name=name,
        state=params["state"],
        config=config,
        hypervisor=params["uri"],
        allow_migrate=params["allow_migrate"],
        migration_transport=params["migration_transport"],
        migrate_options=params["migrate_options"],
        preferred_nodes=params["preferred_nodes"],
        forbidden_nodes=params["forbidden_nodes"],
        order_after=params["order_after"],
        priority=params["priority"],
        stickiness=params["stickiness"],
        utilization=utilization,
        operations=operations,
        meta=meta,
    )


def _meta_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- the summary (diff and result) -------------------------------------------------------


def _constraints(cib, rid: str) -> list:
    """Every constraint that names ``rid``, directly or in a resource set."""
    section = cib.find("configuration/constraints")
    if section is None:
        return []
    return [
        c
        for c in section
        if rid in (c.get("rsc"), c.get("with-rsc"), c.get("first"), c.get("then"))
        or c.xpath("resource_set/resource_ref[@id=$id]", id=rid)
    ]


def _own(cib, rid: str, kind: str) -> list:
    prefix = f"{rid}-{kind}-"
    return [c for c in _constraints(cib, rid) if (c.get("id") or "").startswith(prefix)]


def summary(cib, rid: str) -> dict[str, Any] | None:
    prim = pcmk.primitive(cib, rid)
    if prim is None:
        return None
    ops: dict[str, dict[str, int | None]] = {}
    for op in prim.findall("operations/op"):
        name = op.get("name")
        if name in ops or op.get("role"):
            continue
        entry = {"timeout": pcmk.seconds(op.get("timeout"))}
        if name == "monitor":
            entry["interval"] = pcmk.seconds(op.get("interval"))
        ops[name] = entry
    return {
        "resource": rid,
        "agent": ":".join(
            filter(None, (prim.get("class"), prim.get("provider"), prim.get("type")))
        ),
        "params": pcmk.nvpairs(prim, "instance_attributes"),
        "meta": pcmk.nvpairs(prim, "meta_attributes"),
        "utilization": pcmk.nvpairs(prim, "utilization"),
        "operations": ops,
        "preferred_nodes": sorted(c.get("node") for c in _own(cib, rid, "prefer")),
        "forbidden_nodes": sorted(c.get("node") for c in _own(cib, rid, "avoid")),
        "order_after": sorted(c.get("first") for c in _own(cib, rid, "after")),
        "constraints": sorted(c.get("id") for c in _constraints(cib, rid)),
    }


# --- changing a copy of the CIB ------------------------------------------------------------


def where(cib, rid: str):
    """The existing primitive, after checking it is one this module may manage."""
    found = cib.xpath("configuration/resources//*[@id=$id]", id=rid)
    if not found:
        return None
    elem = found[0]
    if elem.tag != "primitive" or not pcmk.is_virtual_domain(elem):
        raise KvmValidationError(
            f"Resource {rid} exists but is not an ocf:heartbeat:VirtualDomain primitive; "
            "nothing was changed"
        )
    if elem.getparent().tag != "resources":
        raise KvmValidationError(
            f"Resource {rid} is inside {elem.getparent().tag} {elem.getparent().get('id')}; "
            "this module manages top-level guest resources only; nothing was changed"
        )
    return elem


def _set_op(cib, prim, name: str, values: dict[str, int]) -> None:
    ops = prim.find("operations")
    if ops is None:
        ops = etree.SubElement(prim, "operations")
    found = [o for o in ops.findall("op") if o.get("name") == name and not o.get("role")]
    if found:
        op = found[0]
    else:
        interval = values.get("interval", 0)
        op = etree.SubElement(
            ops,
            "op",
            id=pcmk.unique_id(cib, f"{prim.get('id')}-{name}-interval-{interval}s"),
            name=name,
            interval=f"{interval}s",
        )
    for key, value in values.items():
        if pcmk.seconds(op.get(key)) != value:
            op.set(key, f"{value}s")


def _set_constraints(cib, rid: str, kind: str, wanted: list[str], make: Callable) -> None:
    section = pcmk.configuration(cib, "constraints")
    have = {c.get("node") or c.get("first"): c for c in _own(cib, rid, kind)}
    for key, elem in have.items():
        if key not in wanted:
            section.remove(elem)
    for key in wanted:
        if key not in have:
            cid = f"{rid}-{kind}-{key}"
            pcmk.check_id(cid, "constraint id")
            section.append(make(pcmk.unique_id(cib, cid), key))


def apply_wish(cib, wish: GuestWish) -> None:
    """Make the CIB copy say what ``wish`` asks (state started or stopped)."""
    rid = wish.resource_id
    for first in wish.order_after or []:
        if not cib.xpath("configuration/resources//*[@id=$id]", id=first):
            raise KvmValidationError(
                f"order_after names {first}, which is not a resource of the cluster; "
                "nothing was changed"
            )
    prim = where(cib, rid)
    if prim is None:
        prim = etree.SubElement(
            pcmk.configuration(cib, "resources"),
            "primitive",
            {"id": rid, "class": "ocf", "provider": "heartbeat", "type": "VirtualDomain"},
        )
    ia = "instance_attributes"
    pcmk.set_nvpair(cib, prim, ia, "config", wish.config)
    pcmk.set_nvpair(cib, prim, ia, "hypervisor", wish.hypervisor)
    if wish.migration_transport is not None:
        pcmk.set_nvpair(cib, prim, ia, "migration_transport", wish.migration_transport)
    if wish.migrate_options is not None:
        pcmk.set_nvpair(cib, prim, ia, "migrate_options", wish.migrate_options)
    ma = "meta_attributes"
    pcmk.set_nvpair(
        cib, prim, ma, "target-role", "Started" if wish.state == "started" else "Stopped"
    )
    if wish.allow_migrate is not None:
        pcmk.set_nvpair(cib, prim, ma, "allow-migrate", _meta_value(wish.allow_migrate))
    if wish.priority is not None:
        pcmk.set_nvpair(cib, prim, ma, "priority", str(wish.priority))
    if wish.stickiness is not None:
        pcmk.set_nvpair(cib, prim, ma, "resource-stickiness", str(wish.stickiness))
    for key, value in (wish.meta or {}).items():
        pcmk.set_nvpair(cib, prim, ma, key, value)
    if wish.utilization is not None:
        # The agent's monitor would overwrite the user's numbers with the guest's own.
        names = {
            "memory": ("hv_memory", "autoset_utilization_hv_memory"),
            "vcpus": ("cpu", "autoset_utilization_cpu"),
        }
        for key, value in wish.utilization.items():
            attribute, autoset = names[key]
            pcmk.set_nvpair(cib, prim, "utilization", attribute, str(value))
            pcmk.set_nvpair(cib, prim, ia, autoset, "false")
    for name, values in wish.operations.items():
        _set_op(cib, prim, name, values)
    if wish.preferred_nodes is not None:
        _set_constraints(
            cib,
            rid,
            "prefer",
            wish.preferred_nodes,
            lambda cid, node: etree.Element(
                "rsc_location", id=cid, rsc=rid, node=node, score="100"
            ),
        )
    if wish.forbidden_nodes is not None:
        _set_constraints(
            cib,
            rid,
            "avoid",
            wish.forbidden_nodes,
            lambda cid, node: etree.Element(
                "rsc_location", id=cid, rsc=rid, node=node, score="-INFINITY"
            ),
        )
    if wish.order_after is not None:
        _set_constraints(
            cib,
            rid,
            "after",
            wish.order_after,
            lambda cid, first: etree.Element(
                "rsc_order", id=cid, first=first, then=rid, kind="Mandatory"
            ),
        )


def remove_resource(cib, rid: str) -> None:
    """Delete the primitive and every constraint naming it (resource sets lose the entry)."""
    prim = where(cib, rid)
    if prim is None:
        return
    for constraint in _constraints(cib, rid):
        refs = constraint.xpath("resource_set/resource_ref[@id=$id]", id=rid)
        if refs and rid not in (
            constraint.get("rsc"),
            constraint.get("with-rsc"),
            constraint.get("first"),
            constraint.get("then"),
        ):
            for ref in refs:
                rset = ref.getparent()
                rset.remove(ref)
                if len(rset) == 0:
                    constraint.remove(rset)
            if len(constraint.findall("resource_set")) > 0:
                continue
        constraint.getparent().remove(constraint)
    prim.getparent().remove(prim)


def keep_orphan(cib, rid: str) -> None:
    """Put this resource's ``stop-orphan-resources=false`` first in the bootstrap set."""
    marker = f"{KEEP_ORPHANS_PREFIX}{rid}"
    if pcmk.find_id(cib, marker) is not None:
        return
    config = pcmk.configuration(cib, "crm_config")
    found = config.xpath("cluster_property_set[@id=$id]", id=BOOTSTRAP)
    if found:
        bootstrap = found[0]
    else:
        bootstrap = etree.Element("cluster_property_set", id=BOOTSTRAP)
        config.insert(0, bootstrap)
    bootstrap.insert(
        0, etree.Element("nvpair", id=marker, name="stop-orphan-resources", value="false")
    )


def release_orphan(cib, rid: str) -> None:
    marker = pcmk.find_id(cib, f"{KEEP_ORPHANS_PREFIX}{rid}")
    if marker is not None:
        marker.getparent().remove(marker)
