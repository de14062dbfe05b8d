# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""A Pacemaker node in or out of standby (module cluster_node).

Standby is the node attribute ``standby`` (lifetime ``forever``) set and removed with
``crm_attribute``, Pacemaker's own tool for node attributes: the nodes section of the CIB is
the controller's, so it is not part of the whole-CIB replace of ``_pacemaker``. A node in
standby runs no resource: Pacemaker moves them (live-migrates guests that allow it) or, where
no node may take one, stops it. Waiting reads ``crm_mon`` until the node runs nothing and
``crm_resource --wait`` says the cluster has no action left to run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from . import _pacemaker as pcmk
from ._errors import KvmTimeoutError, KvmValidationError
from ._wait import wait_until

# crm_attribute's exit code when the attribute is not there (CRM_EX_NOSUCH)
RC_NO_SUCH = 105
# crm_resource --wait's exit code when the cluster has not settled in time (CRM_EX_TIMEOUT)
RC_TIMEOUT = 124


@dataclass
class NodeResult:
    changed: bool = False
    node: dict[str, Any] = field(default_factory=dict)
    resources: list[dict[str, Any]] = field(default_factory=list)
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def local_name(tools: pcmk.Tools) -> str:
    """This host's node name, as Pacemaker knows it."""
    return tools.call(["crm_node", "--name"], "read this node's name").strip()


def placed(status) -> dict[str, dict[str, Any]]:
    """Every active resource instance: id, agent and the nodes it runs on."""
    found: dict[str, dict[str, Any]] = {}
    for res in status.xpath("resources//resource"):
        nodes = pcmk.running_on(res)
        if not nodes:
            continue
        found[res.get("id")] = {
            "id": res.get("id"),
            "agent": res.get("resource_agent"),
            "nodes": nodes,
            "role": res.get("role"),
        }
    return found


def on_node(status, name: str) -> list[str]:
    return sorted(rid for rid, res in placed(status).items() if name in res["nodes"])


def set_standby(tools: pcmk.Tools, name: str, standby: bool) -> None:
    base = ["crm_attribute", "--node", name, "--name", "standby"]
    if standby:
        tools.call([*base, "--lifetime", "forever", "--update", "on"], f"put {name} in standby")
        return
    # out of standby: neither the permanent attribute nor one until the next reboot
    for lifetime in ("forever", "reboot"):
        argv = [pcmk.installed(base[0]), *base[1:], "--lifetime", lifetime, "--delete"]
        rc, out, err = tools.run(argv, None)
        if rc not in (0, RC_NO_SUCH):
            raise pcmk.PacemakerError(
                f"Failed to take {name} out of standby: crm_attribute exited {rc}: "
                f"{(err or out).strip()}",
                rc=rc,
            )


def settle(tools: pcmk.Tools, timeout: float) -> None:
    """``crm_resource --wait``: until the cluster has no action left to run."""
    argv = [pcmk.installed("crm_resource"), "--wait", "--timeout", f"{max(1, int(timeout))}s"]
    rc, out, err = tools.run(argv, None)
    if rc == RC_TIMEOUT:
        raise KvmTimeoutError(
            f"Timed out after {timeout:g} s waiting for the cluster to settle", timeout=timeout
        )
    if rc != 0:
        raise pcmk.PacemakerError(
            f"Failed to wait for the cluster: crm_resource exited {rc}: {(err or out).strip()}",
            rc=rc,
        )


def converge(
    tools: pcmk.Tools,
    *,
    name: str | None,
    state: str,
    wait: bool,
    wait_timeout: float,
    force: bool,
    check_mode: bool,
    sleep: Callable[[float], None] | None = None,
) -> NodeResult:
    status = tools.status()
    nodes = {n["name"]: n for n in pcmk.status_nodes(status)}
    name = name or local_name(tools)
    if name not in nodes:
        raise KvmValidationError(
            f"{name} is not a node of this cluster (its nodes: {', '.join(sorted(nodes))}); "
            "nothing was changed",
            nodes=sorted(nodes),
        )
    node = nodes[name]
    want = state == "standby"
    result = NodeResult(before={"standby": node["standby"]}, after={"standby": want})
    before = placed(status)
    result.changed = node["standby"] != want
    if result.changed:
        if not pcmk.quorate(status, tools.query()):
            raise KvmValidationError(
                "The cluster has no quorum here: Pacemaker would move nothing; nothing was changed"
            )
        others = [
            n for n in nodes.values() if n["name"] != name and n["online"] and not n["standby"]
        ]
        if want and not others and not force:
            running = on_node(status, name)
            raise KvmValidationError(
                f"{name} is the last online node out of standby: its resources "
                f"({', '.join(running) or 'none'}) would stop, not move. Set force=true to "
                "stop them; nothing was changed",
                resources=running,
            )
    if result.changed and not check_mode:
        set_standby(tools, name, want)
    if wait and not check_mode and (result.changed or (want and on_node(status, name))):
        _wait(tools, name, want, wait_timeout, sleep)
        status = tools.status()
    after = placed(status)
    for rid in sorted(r for r, res in before.items() if name in res["nodes"]):
        now = after.get(rid)
        result.resources.append(
            {
                "id": rid,
                "agent": before[rid]["agent"],
                "before": before[rid]["nodes"],
                "nodes": now["nodes"] if now else [],
            }
        )
        if want and wait and not check_mode and now is None:
            result.warnings.append(
                f"Resource {rid} was stopped, not moved: no other node may run it"
            )
    node = next(n for n in pcmk.status_nodes(status) if n["name"] == name)
    result.node = {
        "name": name,
        "online": node["online"],
        "standby": want if check_mode else node["standby"],
        "resources": on_node(status, name),
    }
    return result


def _wait(tools, name: str, want: bool, timeout: float, sleep) -> None:
    if want:
        wait_until(
            lambda: not on_node(tools.status(), name),
            timeout=timeout,
            what=f"node {name} to run no resource",
            describe=lambda: ", ".join(on_node(tools.status(), name)),
            **({"sleep": sleep} if sleep else {}),
        )
    settle(tools, timeout)
