# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""Pacemaker's CIB and status through Pacemaker's own tools.

Every read and write goes through ``cibadmin``, ``crm_mon`` and ``crm_resource``, run as argv
lists (no shell) by a runner such as ``AnsibleModule.run_command``. The XML is parsed and
compared with lxml. ``CIB_file`` in the environment makes the same tools work on a CIB file.

Writes replace the whole CIB with the copy read and changed (``cibadmin --replace`` of the
``<cib>`` element). Pacemaker refuses such a replace when its version (admin_epoch, epoch,
num_updates) is older than the live CIB's, so a change made by anyone between this run's
read and its write is never overwritten: the write fails with ``StaleCib``, and the caller
reads again and recomputes. A ``--modify`` of single elements would merge silently into
whatever changed meanwhile; a section replace (``--scope``) is not version-checked at all.
The status section written back is the one read at that same version, and the nodes section
is left alone, so the controller (2.1's ``cib_change_section``) does not restart the join.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
from dataclasses import dataclass
from typing import Any, Callable

from ._errors import KvmConcurrencyError, KvmError, KvmValidationError

try:
    from lxml import etree
except ImportError:  # reported by the module wrapper
    etree = None

# (argv, stdin) -> (rc, stdout, stderr)
Runner = Callable[[list[str], "str | None"], "tuple[int, str, str]"]

# cibadmin's exit code for "Update was older than existing configuration" (pcmk_err_old_data).
RC_OLD_DATA = 103
# crm_mon / cibadmin when no cluster answers (ENOTCONN and pacemaker's "not connected").
RC_NOT_CONNECTED = (102, 107)

VIRTUAL_DOMAIN = ("ocf", "heartbeat", "VirtualDomain")
RESOURCE_TAGS = ("primitive", "group", "clone", "master", "bundle")

_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_INTERVAL = re.compile(r"^\s*(\d+)\s*([a-z]*)\s*$")
_UNITS = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}


class PacemakerError(KvmError):
    """A Pacemaker tool failed."""


class StaleCib(KvmConcurrencyError):
    """The CIB changed between this run's read and its write; nothing was written."""


def _parser():
    return etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=True)


def parse(text: str, what: str):
    try:
        return etree.fromstring(text.encode(), _parser())
    except etree.XMLSyntaxError as exc:
        raise PacemakerError(f"{what} is not XML: {exc}") from exc


def check_id(value: str, option: str) -> None:
    """Pacemaker ids are XML IDs: a letter or underscore, then letters, digits, '.', '-', '_'."""
    if not _ID.match(value):
        raise KvmValidationError(
            f"{option}={value!r} is not a valid Pacemaker id (a letter or '_' first, then "
            "letters, digits, '.', '-' or '_'); nothing was changed",
            option=option,
        )


def seconds(value: str | None) -> int | None:
    """A Pacemaker interval or timeout ("10", "10s", "2min", "1h", "500ms") in whole seconds."""
    if value is None:
        return None
    found = _INTERVAL.match(value.lower())
    if found is None:
        return None  # ISO 8601 and other forms: never equal to a wish, so it is rewritten
    number, unit = int(found.group(1)), found.group(2)
    if unit in ("ms", "msec"):
        return number // 1000
    factor = _UNITS.get(unit)
    return None if factor is None else number * factor


@dataclass
class Tools:
    """Pacemaker's command line tools, run through ``run``."""

    run: Runner

    @classmethod
    def for_module(cls, module) -> Tools:
        """The tools run by an ``AnsibleModule``'s ``run_command`` (argv lists, no shell)."""
        return cls(lambda argv, data: module.run_command(argv, data=data, binary_data=False))

    def call(self, argv: list[str], what: str, data: str | None = None) -> str:
        rc, out, err = self.run([installed(argv[0]), *argv[1:]], data)
        if rc != 0:
            raise PacemakerError(
                f"Failed to {what}: {' '.join(argv[:2])} exited {rc}: {(err or out).strip()}",
                rc=rc,
                command=argv[:2],
            )
        return out

    def query(self):
        """The whole CIB (configuration and status) as an lxml element."""
        return parse(self.call(["cibadmin", "--query"], "read the CIB"), "The CIB")

    def replace(self, cib) -> None:
        """Replace the whole CIB with ``cib``; ``StaleCib`` if the live CIB moved on."""
        text = etree.tostring(cib, encoding="unicode")
        rc, out, err = self.run([installed("cibadmin"), "--replace", "--xml-pipe"], text)
        if rc == RC_OLD_DATA:
            raise StaleCib(
                "The CIB changed while this run was writing it (its epoch moved on); "
                "nothing was written",
                epoch=version(cib),
            )
        if rc != 0:
            raise PacemakerError(
                f"Failed to write the CIB: cibadmin exited {rc}: {(err or out).strip()}", rc=rc
            )

    def status(self):
        """``crm_mon``'s XML: summary, nodes, resources, failures and fail counts."""
        argv = [
            "crm_mon",
            "--output-as=xml",
            "--inactive",
            "--include=none,summary,nodes,resources,failures,failcounts,options",
        ]
        return parse(self.call(argv, "read the cluster status"), "crm_mon's output")

    def refresh(self, resource_id: str) -> None:
        """Forget a resource's operation history on every node (and so re-probe it)."""
        self.call(
            ["crm_resource", "--refresh", "--resource", resource_id],
            f"refresh the history of resource {resource_id}",
        )

    def quorum_votes(self) -> dict[str, int] | None:
        """Expected and total votes from ``corosync-quorumtool``, None where it cannot tell."""
        try:
            tool = installed("corosync-quorumtool")
        except PacemakerError:
            return None
        rc, out, _err = self.run([tool, "-s"], None)
        if rc not in (0, 2):  # 2: not quorate, the numbers are still there
            return None
        votes = {}
        for line in out.splitlines():
            key, _sep, value = line.partition(":")
            name = {"expected votes": "expected_votes", "total votes": "total_votes"}.get(
                key.strip().lower()
            )
            if name and value.split() and value.split()[0].isdigit():
                votes[name] = int(value.split()[0])
        return votes or None


def installed(tool: str) -> str:
    """The tool's full path (also in /usr/sbin, which a non-login PATH may lack)."""
    path = os.environ.get("PATH", os.defpath) + os.pathsep + "/usr/sbin:/sbin"
    found = shutil.which(tool, path=path)
    if found is None:
        raise PacemakerError(
            f"{tool} is not installed here: Pacemaker's command line tools are needed "
            "(Debian: pacemaker-cli-utils)",
            tool=tool,
        )
    return found


def version(cib) -> dict[str, int]:
    return {key: int(cib.get(key, "0")) for key in ("admin_epoch", "epoch", "num_updates")}


def write_with_retry(tools: Tools, change: Callable[[Any], Any], *, attempts: int = 5) -> Any:
    """Read the CIB, let ``change(cib)`` edit a copy, write it; again on a concurrent change.

    ``change`` returns its result and leaves the copy alone when nothing needs writing; it
    is called on a fresh copy each time, so its decisions are always made on the CIB it
    writes over. Returns ``(result, written)``.
    """
    for _attempt in range(attempts):
        cib = tools.query()
        work = copy.deepcopy(cib)
        result = change(work)
        if etree.tostring(work, method="c14n") == etree.tostring(cib, method="c14n"):
            return result, False
        try:
            tools.replace(work)
        except StaleCib:
            continue
        return result, True
    raise KvmConcurrencyError(
        f"The CIB kept changing while this run wrote it ({attempts} attempts); nothing was written"
    )


# --- reading configuration -------------------------------------------------------------


def configuration(cib, section: str):
    found = cib.find(f"configuration/{section}")
    if found is None:
        found = etree.SubElement(cib.find("configuration"), section)
    return found


def find_id(cib, element_id: str):
    found = cib.xpath("//*[@id=$id]", id=element_id)
    return found[0] if found else None


def unique_id(cib, wanted: str) -> str:
    candidate, number = wanted, 0
    while find_id(cib, candidate) is not None:
        number += 1
        candidate = f"{wanted}-{number}"
    return candidate


def resources(cib) -> list:
    """Every resource element (primitives, groups, clones, bundles) at any depth."""
    section = cib.find("configuration/resources")
    if section is None:
        return []
    return list(section.iter(*RESOURCE_TAGS))


def primitive(cib, resource_id: str):
    found = cib.xpath("configuration/resources//primitive[@id=$id]", id=resource_id)
    return found[0] if found else None


def is_virtual_domain(elem) -> bool:
    return (elem.get("class"), elem.get("provider"), elem.get("type")) == VIRTUAL_DOMAIN


def nvpairs(elem, set_tag: str) -> dict[str, str]:
    """The name/value pairs of an element's first ``set_tag`` set (rules are not evaluated)."""
    found = elem.find(set_tag)
    if found is None:
        return {}
    return {p.get("name"): p.get("value") for p in found.findall("nvpair")}


def set_nvpair(cib, elem, set_tag: str, name: str, value: str | None) -> None:
    """Set (or with None remove) one pair in the element's first ``set_tag`` set."""
    holder = elem.find(set_tag)
    if holder is None:
        if value is None:
            return
        holder = etree.SubElement(elem, set_tag, id=unique_id(cib, f"{elem.get('id')}-{set_tag}"))
    put_pair(cib, holder, holder.xpath("nvpair[@name=$name]", name=name), name, value)
    if value is None and len(holder) == 0:
        elem.remove(holder)


def put_pair(cib, holder, pairs: list, name: str, value: str | None) -> None:
    """Leave ``pairs`` (``holder``'s pairs called ``name``) as one pair of ``value``, or
    none with None."""
    if value is None:
        for pair in pairs:
            holder.remove(pair)
        return
    if pairs:
        pairs[0].set("value", value)
        for extra in pairs[1:]:
            holder.remove(extra)
        return
    etree.SubElement(
        holder,
        "nvpair",
        id=unique_id(cib, f"{holder.get('id')}-{name}"),
        name=name,
        value=value,
    )


def cluster_properties(cib) -> dict[str, str]:
    """Cluster properties as set in the CIB; the bootstrap set first, and the first pair wins."""
    section = cib.find("configuration/crm_config")
    props: dict[str, str] = {}
    if section is None:
        return props
    sets = sorted(
        section.findall("cluster_property_set"),
        key=lambda s: s.get("id") != "cib-bootstrap-options",
    )
    for prop_set in sets:
        for pair in prop_set.findall("nvpair"):
            props.setdefault(pair.get("name"), pair.get("value"))
    return props


def stonith_devices(cib) -> list[dict[str, str]]:
    return [
        {"id": p.get("id"), "agent": p.get("type")}
        for p in cib.xpath("configuration/resources//primitive[@class='stonith']")
    ]


def stonith_enabled(properties: dict[str, str]) -> bool:
    return properties.get("stonith-enabled", "true").lower() in ("true", "yes", "on", "1", "y")


def fencing_problem(cib) -> str | None:
    """Why guests in this cluster would not be fenced, or None when fencing is set up."""
    if not stonith_enabled(cluster_properties(cib)):
        return "the cluster property stonith-enabled is false"
    if not stonith_devices(cib):
        return "no stonith device is configured"
    return None


# --- reading status --------------------------------------------------------------------


def _bool(value: str | None) -> bool:
    return value == "true"


def status_nodes(status) -> list[dict[str, Any]]:
    nodes = []
    for node in status.findall("nodes/node"):
        nodes.append(
            {
                "name": node.get("name"),
                "id": node.get("id"),
                "online": _bool(node.get("online")),
                "standby": _bool(node.get("standby")),
                "standby_onfail": _bool(node.get("standby_onfail")),
                "maintenance": _bool(node.get("maintenance")),
                "pending": _bool(node.get("pending")),
                "unclean": _bool(node.get("unclean")),
                "shutdown": _bool(node.get("shutdown")),
                "dc": _bool(node.get("is_dc")),
                "type": node.get("type"),
                "resources_running": int(node.get("resources_running") or 0),
            }
        )
    return nodes


def status_resource(status, resource_id: str):
    found = status.xpath("resources//resource[@id=$id]", id=resource_id)
    return found[0] if found else None


def running_on(resource) -> list[str]:
    if resource is None:
        return []
    return [n.get("name") for n in resource.findall("node")]


def failures(status, resource_id: str) -> list[dict[str, Any]]:
    """Failed operations of a resource, each with its node's fail count for the resource."""
    counts = {
        (history.getparent().get("name")): int(history.get("fail-count") or 0)
        for history in status.xpath("node_history/node/resource_history[@id=$id]", id=resource_id)
    }
    found = []
    prefix = f"{resource_id}_"
    for failure in status.findall("failures/failure"):
        if not (failure.get("op_key") or "").startswith(prefix):
            continue
        node = failure.get("node")
        found.append(
            {
                "operation": failure.get("task"),
                "interval_ms": int(failure.get("interval") or 0),
                "node": node,
                "status": failure.get("status"),
                "exit_status": failure.get("exitstatus"),
                "exit_reason": failure.get("exitreason"),
                "last_rc_change": failure.get("last-rc-change"),
                "fail_count": counts.get(node, 0),
            }
        )
    return found


def has_history(cib, resource_id: str) -> list[str]:
    """The nodes whose status section still holds operation history of ``resource_id``."""
    return [
        state.get("uname")
        for state in cib.xpath(
            "status/node_state[lrm/lrm_resources/lrm_resource[@id=$id]]", id=resource_id
        )
    ]


# --- the cluster as a whole (cluster_info) -----------------------------------------------


def guest_name(config: str | None) -> str | None:
    """The ``<name>`` in a guest definition file, None when it cannot be read."""
    if not config:
        return None
    try:
        with open(config, "rb") as handle:
            root = etree.fromstring(handle.read(), _parser())
    except (OSError, etree.XMLSyntaxError):
        return None
    return root.findtext("name")


def _settled(resource, target_role: str | None) -> bool:
    if resource is None:
        return False
    if _bool(resource.get("failed")) or _bool(resource.get("blocked")):
        return False
    if not _bool(resource.get("managed")):
        return True
    want = "Stopped" if (target_role or "Started").lower() == "stopped" else "Started"
    return resource.get("role") == want and len(running_on(resource)) == (want == "Started")


def guest_resources(cib, status) -> list[dict[str, Any]]:
    """Every ocf:heartbeat:VirtualDomain resource, its place and its failures."""
    found = []
    for prim in cib.xpath("configuration/resources//primitive"):
        if not is_virtual_domain(prim):
            continue
        rid = prim.get("id")
        params = nvpairs(prim, "instance_attributes")
        meta = nvpairs(prim, "meta_attributes")
        res = status_resource(status, rid)
        nodes = running_on(res)
        found.append(
            {
                "resource": rid,
                "guest": guest_name(params.get("config")),
                "config": params.get("config"),
                "hypervisor": params.get("hypervisor"),
                "role": res.get("role") if res is not None else None,
                "target_role": meta.get("target-role"),
                "nodes": nodes,
                "node": nodes[0] if len(nodes) == 1 else None,
                "managed": _bool(res.get("managed")) if res is not None else None,
                "failed": _bool(res.get("failed")) if res is not None else None,
                "allow_migrate": meta.get("allow-migrate", "false").lower() == "true",
                "failures": failures(status, rid),
                "settled": _settled(res, meta.get("target-role")),
            }
        )
    return sorted(found, key=lambda g: g["resource"])


def quorate(status, cib) -> bool:
    """Whether this partition has quorum: its DC's word; on a CIB file (``CIB_file``), where
    there is no DC, the quorum its last DC recorded."""
    dc = status.find("summary/current_dc")
    if dc is not None and _bool(dc.get("present")):
        return _bool(dc.get("with_quorum"))
    return "CIB_file" in os.environ and cib.get("have-quorum") in ("true", "1")


def cluster_info(tools: Tools) -> dict[str, Any]:
    cib = tools.query()
    status = tools.status()
    dc = status.find("summary/current_dc")
    present = dc is not None and _bool(dc.get("present"))
    nodes = status_nodes(status)
    properties = cluster_properties(cib)
    guests = guest_resources(cib, status)
    info: dict[str, Any] = {
        "dc": dc.get("name") if present else None,
        "quorate": quorate(status, cib),
        "expected_votes": None,
        "total_votes": None,
        "nodes": nodes,
        "stonith": {"enabled": stonith_enabled(properties), "devices": stonith_devices(cib)},
        "properties": properties,
        "guests": guests,
    }
    info.update(tools.quorum_votes() or {})
    info["settled"] = (
        info["quorate"]
        and all(not (n["pending"] or n["unclean"]) for n in nodes if n["online"])
        and all(g["settled"] for g in guests)
    )
    return info
