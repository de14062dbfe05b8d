# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""One guest as a Pacemaker ``ocf:heartbeat:VirtualDomain`` resource (cluster_guest).

``GuestManager`` runs the module: the guest's definition file, the fencing check, the
edits of :mod:`._pacemaker_resource` on a copy of the CIB written back in one
version-checked replace (:func:`._pacemaker.write_with_retry`), and the wait.

Removing a resource must not stop its guest. Pacemaker stops a deleted resource that still
runs (an "orphan"), even one set ``is-managed=false`` first: the orphan is a new, managed
resource built from the status history. What leaves it alone is the cluster property
``stop-orphan-resources=false``. So removal is: in one write, delete the resource and its
constraints and put a ``stop-orphan-resources=false`` pair of this resource first in the
bootstrap set (the scheduler takes the first pair of a name); then forget the orphan's
history (``crm_resource --refresh``), wait until no node has any, and remove the pair.
"""

from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable

from . import _pacemaker as pcmk
from ._errors import KvmError, KvmValidationError
from ._pacemaker_resource import (
    KEEP_ORPHANS_PREFIX,
    GuestWish,
    apply_wish,
    keep_orphan,
    release_orphan,
    remove_resource,
    summary,
    where,
)
from ._wait import wait_until

try:
    from lxml import etree
except ImportError:  # reported by the module wrapper
    etree = None

# --- the run ---------------------------------------------------------------------------------


@dataclass
class GuestResult:
    changed: bool = False
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    config_written: bool = False
    warnings: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    role: str | None = None


class GuestManager:
    """Reconciles one guest resource. ``libvirt`` is a callable giving the connection."""

    def __init__(
        self,
        tools: pcmk.Tools,
        wish: GuestWish,
        *,
        check_mode: bool,
        allow_without_fencing: bool,
        write_config: bool,
        connection: Callable[[], Any],
        wait: bool,
        wait_timeout: float,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.tools = tools
        self.wish = wish
        self.check_mode = check_mode
        self.allow_without_fencing = allow_without_fencing
        self.write_config = write_config
        self.connection = connection
        self.wait = wait
        self.wait_timeout = wait_timeout
        self.sleep = sleep
        self.result = GuestResult()

    def run(self) -> GuestResult:
        if self.wish.state == "absent":
            self._absent()
        else:
            self._present()
        return self.result

    # state started / stopped

    def _present(self) -> None:
        wish, result = self.wish, self.result
        cib = self.tools.query()
        problem = pcmk.fencing_problem(cib)
        if problem:
            if not self.allow_without_fencing:
                raise KvmValidationError(
                    f"Refusing to make guest {wish.name} highly available: {problem}. Without "
                    "fencing a node that stops answering may still run the guest while "
                    "another node starts it, and both write its disks. Configure a stonith "
                    "device, or set allow_without_fencing=true to accept that risk; nothing "
                    "was changed",
                    fencing=problem,
                )
            result.warnings.append(
                f"Guest {wish.name} is highly available without fencing ({problem}): a node "
                "that stops answering may run it twice and corrupt its disks"
            )
        self._definition()
        before = summary(cib, wish.resource_id)
        if self.check_mode:
            work = _copy(cib)
            apply_wish(work, wish)
            after = summary(work, wish.resource_id)
        else:
            after, _written = pcmk.write_with_retry(
                self.tools,
                lambda c: (apply_wish(c, wish), summary(c, wish.resource_id))[1],
            )
        result.before, result.after = before, after
        result.changed = result.changed or before != after
        if not self.check_mode and self.wait:
            self._wait_for(wish.state)
        elif not self.check_mode:
            self._observe()

    def _definition(self) -> None:
        """The guest's definition file: written from libvirt when asked, else checked."""
        wish = self.wish
        if self.write_config:
            from ._libvirt import libvirt  # noqa: PLC0415

            conn = self.connection()
            try:
                dom = conn.lookupByName(wish.name)
            except libvirt.libvirtError as exc:
                raise KvmValidationError(
                    f"write_config: guest {wish.name} is not defined on {wish.hypervisor}: "
                    f"{exc.get_error_message()}; nothing was changed"
                ) from exc
            xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            new = pcmk.parse(xml, f"guest {wish.name}'s definition")
            old = _read_definition(wish.config)
            if old is not None and _c14n(old) == _c14n(new):
                return
            self.result.changed = True
            self.result.config_written = True
            if not self.check_mode:
                _write_atomically(wish.config, etree.tostring(new, pretty_print=True))
            return
        old = _read_definition(wish.config)
        if old is None:
            raise KvmValidationError(
                f"config {wish.config} cannot be read as a guest definition (set write_config "
                "to write it from this host's libvirt); nothing was changed",
                option="config",
            )
        if old.findtext("name") != wish.name:
            raise KvmValidationError(
                f"config {wish.config} defines guest {old.findtext('name')!r}, not "
                f"{wish.name!r}; nothing was changed",
                option="config",
            )

    # state absent

    def _absent(self) -> None:
        wish, result = self.wish, self.result
        rid = wish.resource_id
        cib = self.tools.query()
        before = summary(cib, rid)
        marker = pcmk.find_id(cib, f"{KEEP_ORPHANS_PREFIX}{rid}") is not None
        result.before, result.after = before, None
        if before is None and not marker:
            return
        result.changed = True
        status = self.tools.status()
        nodes = pcmk.running_on(pcmk.status_resource(status, rid))
        result.nodes = nodes
        if before is not None:
            where(cib, rid)  # refuses foreign resources before anything changes
            self._keep_defined(before, nodes)
        if self.check_mode:
            return
        if before is not None:
            pcmk.write_with_retry(
                self.tools, lambda c: (remove_resource(c, rid), keep_orphan(c, rid))
            )
        if pcmk.has_history(self.tools.query(), rid):
            self.tools.refresh(rid)
            wait_until(
                lambda: not pcmk.has_history(self.tools.query(), rid),
                timeout=self.wait_timeout,
                what=f"the cluster to forget resource {rid}",
                **({"sleep": self.sleep} if self.sleep else {}),
            )
        pcmk.write_with_retry(self.tools, lambda c: release_orphan(c, rid))

    def _keep_defined(self, before: dict[str, Any], nodes: list[str]) -> None:
        """Leave the guest defined where it runs (Pacemaker starts guests transient)."""
        from ._libvirt import libvirt  # noqa: PLC0415

        wish = self.wish
        name = pcmk.guest_name(before["params"].get("config")) or wish.name
        if not nodes:
            self.result.warnings.append(
                f"Resource {wish.resource_id} runs nowhere; guest {name} is left as it is "
                "(its definition stays in its config file)"
            )
            return
        conn = self.connection()
        elsewhere = KvmValidationError(
            f"Guest {name} runs on {', '.join(nodes)}, not on the libvirt at "
            f"{wish.hypervisor}: run this task on that node so the guest can be left "
            "defined there; nothing was changed",
            nodes=nodes,
        )
        try:
            dom = conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            raise elsewhere from exc
        if not dom.isActive():  # defined here, running on another node
            raise elsewhere
        if dom.isPersistent():
            return
        config = before["params"].get("config")
        definition = _read_definition(config)
        if definition is None:
            raise KvmValidationError(
                f"Guest {name} is transient and its config {config} cannot be read to define "
                "it; nothing was changed"
            )
        if not self.check_mode:
            conn.defineXML(etree.tostring(definition, encoding="unicode"))
        self.result.warnings.append(f"Guest {name} was transient; it is now defined")

    # waiting

    def _observe(self):
        status = self.tools.status()
        res = pcmk.status_resource(status, self.wish.resource_id)
        self.result.nodes = pcmk.running_on(res)
        self.result.role = res.get("role") if res is not None else None
        return status, res

    def _wait_for(self, state: str) -> None:
        rid = self.wish.resource_id
        want = "Started" if state == "started" else "Stopped"

        def probe() -> bool:
            status, res = self._observe()
            if res is None:
                return False
            failed = pcmk.failures(status, rid)
            if res.get("failed") == "true" or (
                failed and res.get("role") != want and res.get("blocked") == "true"
            ):
                raise KvmError(
                    f"Resource {rid} failed: {failed}", failures=failed, nodes=self.result.nodes
                )
            return res.get("role") == want and len(self.result.nodes) == (want == "Started")

        wait_until(
            probe,
            timeout=self.wait_timeout,
            what=f"resource {rid} to be {want}",
            describe=lambda: f"role {self.result.role} on {self.result.nodes}",
            **({"sleep": self.sleep} if self.sleep else {}),
        )


def _copy(cib):
    return copy.deepcopy(cib)


def _c14n(root) -> bytes:
    return etree.tostring(root, method="c14n")


def _read_definition(path: str | None):
    if not path:
        return None
    try:
        with open(path, "rb") as handle:
            return etree.fromstring(handle.read(), pcmk._parser())
    except (OSError, etree.XMLSyntaxError):
        return None


def _write_atomically(path: str, data: bytes) -> None:
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".virtops-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
