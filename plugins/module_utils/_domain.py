# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""The reconciler behind ``virtops.kvm.domain``.

One shape: read the actual definition -> compute the differences of the wished settings ->
if any and not in check mode, write the whole new definition at once (``defineXML`` with
libvirt's schema validation), bring a running guest along live, make the run-state
transition and wait for it -> report ``changed``, ``diff``, ``restart_required`` and the
final state. Every check of the input happens before the first write.
"""

from __future__ import annotations

import copy
from typing import Any

from . import _xml
from ._concurrency import Guard, reconcile
from ._diff import DifferenceTracker
from ._domain_checks import HostChecks
from ._domain_consoles import consoles_of
from ._domain_devices import read_disks
from ._domain_lifecycle import Lifecycle, plan
from ._domain_live import LiveUpdater, pending_restart
from ._domain_merge import contains, merge, xml_parts
from ._domain_model import FIELDS_BY_NAME, compare, skeleton, write
from ._domain_spec import Wish, desired_from_params
from ._domain_xml import domain_xml
from ._errors import KvmValidationError, from_libvirt, is_error
from ._host_kvm import resolve_virt_type
from ._libvirt import ACTIVE_STATES, domain_state, libvirt, lookup_domain
from ._secrets import Redactor
from ._storage_users import StorageUsers, describe_users

# The most characters a VNC password may have (QEMU's VNC authentication is DES-based).
VNC_PASSWORD_MAX = 8


def inactive_xml(dom, *, secure: bool = False) -> str:
    """The stored definition; ``secure`` includes console passwords (never return that text)."""
    return domain_xml(dom, inactive=True, secure=secure)


def live_xml(dom) -> str:
    return domain_xml(dom, what="the live definition")


def check_console_password(graphics: dict[str, Any] | None) -> None:
    """A VNC password longer than QEMU takes fails before anything is read or changed."""
    if not graphics or graphics.get("type") != "vnc":
        return
    password = graphics.get("password") or ""
    if len(password) > VNC_PASSWORD_MAX:
        raise KvmValidationError(
            f"graphics.password: a VNC console password has at most {VNC_PASSWORD_MAX} "
            f"characters, the one given has {len(password)} (SPICE has no such limit)"
        )


def _flags(*names: str) -> int:
    flags = 0
    for name in names:
        flags |= getattr(libvirt, name, 0)
    return flags


def undefine(dom) -> None:
    """Remove a definition with its NVRAM, managed save, snapshot and checkpoint metadata."""
    basic = _flags("VIR_DOMAIN_UNDEFINE_MANAGED_SAVE", "VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA")
    full = basic | _flags("VIR_DOMAIN_UNDEFINE_NVRAM", "VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA")
    try:
        dom.undefineFlags(full)
    except libvirt.libvirtError as exc:
        # drivers without NVRAM or checkpoints (the test driver) refuse those flags
        if not is_error(exc, libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT):
            raise
        dom.undefineFlags(basic)


class DomainManager:
    def __init__(self, kvm) -> None:
        self.kvm = kvm
        self.params = kvm.params
        self.check_mode = kvm.check_mode
        self.tracker = DifferenceTracker()
        self.warnings: list[str] = []
        self.redactor = Redactor()
        self.redactor.add((self.params.get("graphics") or {}).get("password"))

    @property
    def conn(self):
        return self.kvm.conn

    # ------------------------------------------------------------------ entry point
    def run(self) -> dict[str, Any]:
        try:
            if self.params["state"] == "absent":
                return self.absent()
            return reconcile(self._present, f"guest {self.params['name']}")
        except Exception as exc:
            self.redactor.exception(exc)  # errors reach the user through the wrapper
            raise

    def _present(self) -> dict[str, Any]:
        self.tracker = DifferenceTracker()  # a second attempt starts from the new state
        self.warnings.clear()
        wish = desired_from_params(self.params)  # pure checks first, before connecting
        check_console_password(wish.fields.get("graphics"))
        dom = lookup_domain(self.conn, wish.name)
        self._guard = self._read_guard(wish.name, dom)
        # read with the console passwords: the new definition is written from it and must
        # keep them; it is never returned as it is (see _result)
        actual_root = _xml.parse(self._guard.seen, "domain XML") if dom else None
        self.redactor.add_from_xml(actual_root)
        current = domain_state(dom) if dom else "absent"
        host = HostChecks(
            self.conn, self.params["uri"], check_mode=self.check_mode, warn=self.warnings.append
        )
        creating = dom is None
        if creating:
            self._creation_defaults(wish)
            virt_type = wish.fields.get("virt_type") or resolve_virt_type(self.conn, wish.virt_type)
            wish.fields["virt_type"] = virt_type
            base = skeleton(wish.name, virt_type)
        else:
            base = actual_root
        host.complete(wish, actual_root)
        self._secure_boot_machine(wish, actual_root, host, creating)
        host.check_exists(wish, actual_root)

        new_root = copy.deepcopy(base)
        comparisons = compare(actual_root, wish.fields)
        changed_fields = []
        for name, before, after in comparisons:
            restart = FIELDS_BY_NAME[name].needs_restart
            if self.tracker.add(name, before, after, restart_required=restart) or creating:
                changed_fields.append(name)
        write(new_root, wish.fields, changed_fields)
        self._merge_fragment(wish, actual_root, new_root, creating)
        self.redactor.add_from_xml(new_root)
        self._verify(wish, new_root)
        if "graphics" in changed_fields:
            self._check_kept_password(new_root)
        config_changed = bool(self.tracker) or creating

        autostart_before = bool(dom.autostart()) if dom else False
        if wish.autostart is not None:
            self.tracker.add("autostart", autostart_before, wish.autostart)

        run_state = "shutoff" if creating else current
        transition = plan(run_state, self.params["state"])
        starting = any(s in ("start", "start_paused") for s in transition.steps)
        host.check_networks_active(wish, actual_root, starting)
        if self.params["memory_guard"]:
            max_memory = FIELDS_BY_NAME["max_memory"].read(new_root)
            host.check_memory(max_memory, starting=starting)
        final = transition.final
        self.tracker.add("state", "absent" if creating else current, final)

        # a running guest that stays up: live changes, and what waits for a restart
        stays_up = (
            not creating
            and current in ACTIVE_STATES
            and final in ACTIVE_STATES
            and not any(s in ("shutdown", "destroy") for s in transition.steps)
        )
        restart_required: list[str] = []
        live_applied: list[str] = []
        restarted = forced = False
        changed_now = [n for n in changed_fields if n not in ("state",)]
        already_pending: list[str] = []
        if stays_up:
            # changes written earlier that the running guest has not got yet
            live_root = _xml.parse(live_xml(dom), "live domain XML")
            already_pending = pending_restart(live_root, actual_root)
            # predicted as the apply below does it: devices from the same hotplug plan
            restart_required = sorted(
                set(already_pending)
                | {
                    n
                    for n in changed_now
                    if FIELDS_BY_NAME[n].restart_predicted(live_root, new_root, wish.fields[n])
                }
            )

        if self.check_mode:
            will_restart = bool(restart_required) and self.params["restart_if_required"]
            changed = bool(self.tracker) or will_restart
            shown = new_root if config_changed else actual_root
            pending = [] if will_restart else restart_required
            return self._result(
                changed,
                wish.name,
                final,
                shown,
                pending,
                restarted=will_restart,
                consoles=consoles_of(dom, shown, active=current in ACTIVE_STATES),
            )

        # ---- apply: one definition write, then live, then the run state
        if config_changed:
            dom = self._define(new_root, creating)
        done = False
        try:
            if wish.autostart is not None and autostart_before != wish.autostart:
                self._call(lambda: dom.setAutostart(1 if wish.autostart else 0), "set autostart")
            if stays_up and changed_now:
                live = LiveUpdater(dom, host.host_cpus())
                outcome = live.apply(
                    changed_now,
                    wish.fields,
                    _xml.parse(live_xml(dom), "live domain XML"),
                    _xml.parse(inactive_xml(dom), "domain XML"),
                )
                live_applied = outcome.applied
                restart_required = sorted(
                    set(outcome.pending)
                    | set(already_pending)
                    | {n for n in changed_now if FIELDS_BY_NAME[n].needs_restart}
                )
                self.warnings += outcome.warnings
            lifecycle = self._lifecycle(dom)
            lifecycle.run(transition.steps)
            if restart_required and stays_up and self.params["restart_if_required"]:
                was = domain_state(dom)
                lifecycle.shutdown()
                lifecycle.start() if was != "paused" else lifecycle.start_paused()
                restarted, restart_required = True, []
            forced = lifecycle.forced
            done = True
        finally:
            if creating and not done:  # a failed run leaves no half-made guest behind
                self._undo_create(dom)
        final_state = domain_state(dom)
        changed = bool(self.tracker) or restarted
        result_root = _xml.parse(inactive_xml(dom), "domain XML")
        return self._result(
            changed,
            wish.name,
            final_state,
            result_root,
            restart_required,
            restarted=restarted,
            forced=forced,
            live_applied=live_applied,
            consoles=consoles_of(dom, result_root, active=final_state in ACTIVE_STATES),
        )

    # ------------------------------------------------------------------ helpers
    def _creation_defaults(self, wish: Wish) -> None:
        f = wish.fields
        if "memory" not in f and "max_memory" not in f:
            raise KvmValidationError(f"memory is required to create guest {wish.name}")
        f.setdefault("memory", f.get("max_memory"))
        f.setdefault("max_memory", f["memory"])
        f.setdefault("vcpus", f.get("max_vcpus") or 1)
        f.setdefault("max_vcpus", f["vcpus"])
        if "serials" not in f:
            f["serials"] = [{"port": 0, "type": "pty"}]

    def _secure_boot_machine(self, wish, actual_root, host, creating) -> None:
        f = wish.fields
        secure = f.get("secure_boot")
        if secure is None and actual_root is not None:
            secure = FIELDS_BY_NAME["secure_boot"].read(actual_root) and "firmware" not in f
        if not secure:
            return
        machine = f.get("machine")
        if machine is None and actual_root is not None:
            machine = FIELDS_BY_NAME["machine"].read(actual_root)
        if machine is None and creating:
            f["machine"] = machine = host.canonical_machine("q35")
        if machine and "q35" not in machine and host.capabilities().find(".//machine") is not None:
            raise KvmValidationError(
                f"secure_boot needs a q35 machine type, the guest has {machine}"
            )

    def _merge_fragment(self, wish: Wish, actual_root, new_root, creating: bool) -> None:
        fragment = wish.fragment
        if fragment is None:
            return
        if fragment.get("type") is not None or fragment.find("name") is not None:
            name = _xml.text(fragment, "name")
            if name is not None and name != wish.name:
                raise KvmValidationError(
                    f"The xml option names guest {name!r}, but name is {wish.name!r}"
                )
        before_ok = actual_root is not None and contains(actual_root, fragment)
        merge(new_root, fragment)
        if not contains(new_root, fragment):
            raise KvmValidationError("The xml option cannot be merged into the definition")
        after = xml_parts(new_root, fragment)
        before = xml_parts(actual_root, fragment) if actual_root is not None else None
        if before_ok:
            before = after
        elif before == after:
            before = None
        self.tracker.add("xml", before, after)

    def _verify(self, wish: Wish, new_root) -> None:
        """Every wished field reads back as wished (catches ``xml`` overriding options)."""
        for name, before, after in compare(new_root, wish.fields):
            if before != after:
                culprit = " (the xml option sets it too)" if wish.fragment is not None else ""
                raise KvmValidationError(
                    f"Conflicting settings for {name}{culprit}: wished {after!r}, "
                    f"the definition would have {before!r}"
                )

    def _check_kept_password(self, new_root) -> None:
        """A password kept from a SPICE console may be too long for the VNC one it becomes."""
        elem = new_root.find("devices/graphics")
        if elem is None or elem.get("type") != "vnc":
            return
        if len(elem.get("passwd") or "") > VNC_PASSWORD_MAX:
            raise KvmValidationError(
                "graphics.password: the console would keep its password, which is longer "
                f"than the {VNC_PASSWORD_MAX} characters a VNC console takes; give a new "
                'graphics.password (or "" to remove it)'
            )

    def _read_guard(self, name: str, dom) -> Guard:
        """The definition as read now (None: no guest yet), and how to read it again."""

        # both reads secure: the new definition is built from this one and must keep the
        # console passwords, and a concurrent change of a password alone is then seen too
        def reread() -> str | None:
            found = dom or lookup_domain(self.conn, name)
            return inactive_xml(found, secure=True) if found else None

        seen = inactive_xml(dom, secure=True) if dom else None
        return Guard(f"guest {name}", seen, reread)

    def _define(self, new_root, creating: bool):
        text = _xml.to_string(new_root)
        flags = getattr(libvirt, "VIR_DOMAIN_DEFINE_VALIDATE", 0)
        self._guard.check()  # never write over a change made since this run read the guest
        try:
            return self.conn.defineXMLFlags(text, flags)
        except libvirt.libvirtError as exc:
            action = "define" if creating else "update the definition of"
            raise from_libvirt(exc, f"{action} guest {_xml.text(new_root, 'name')}") from exc

    def _undo_create(self, dom) -> None:
        try:
            if dom.isActive():
                dom.destroy()
            undefine(dom)
        except libvirt.libvirtError as exc:
            self.warnings.append(f"Could not remove the half-made guest: {exc}")

    def _lifecycle(self, dom) -> Lifecycle:
        return Lifecycle(
            dom,
            timeout=self.params["timeout"],
            force=self.params["force"],
            shutdown_mode=self.params["shutdown_mode"],
        )

    def _call(self, func, action: str):
        try:
            return func()
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, action) from exc

    def _result(
        self,
        changed: bool,
        name: str,
        state: str,
        root,
        restart_required: list[str] | None = None,
        *,
        restarted: bool = False,
        forced: bool = False,
        live_applied: list[str] | None = None,
        gone: bool = False,
        consoles: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        for warning in self.warnings:
            self.kvm.warn(self.redactor.text(warning))
        result: dict[str, Any] = {
            "changed": changed,
            "name": name,
            "uuid": _xml.text(root, "uuid") if root is not None else None,
            "state": state,
            "changes": [n for n in self.tracker.changed_names() if n != "state"],
            "restart_required": restart_required or [],
            "restarted": restarted,
            "forced": forced,
            "live_applied": live_applied or [],
            "xml": self.redactor.xml(root) if root is not None and not gone else None,
            "consoles": consoles or [],
        }
        if self.kvm.diff_mode:
            result["diff"] = self.tracker.diff()
        return self.redactor.data(result)

    # ------------------------------------------------------------------ absent
    def absent(self) -> dict[str, Any]:
        name = self.params["name"]
        dom = lookup_domain(self.conn, name)
        if dom is None:
            self.tracker.add("state", "absent", "absent")
            return self._result(False, name, "absent", None)
        current = domain_state(dom)
        root = _xml.parse(inactive_xml(dom), "domain XML")
        kept: list[dict[str, str]] = []
        volumes = self._volumes(root, name, kept) if self.params["remove_storage"] else []
        self.tracker.add("state", current, "absent")
        if volumes:
            self.tracker.add("volumes", [v[0] for v in volumes], [])
        if not self.check_mode:
            if current in ACTIVE_STATES:
                self._lifecycle(dom).destroy()
            self._call(lambda: undefine(dom), f"remove the definition of {name}")
            for path, vol in volumes:
                self._call(lambda v=vol: v.delete(0), f"delete volume {path}")
        result = self._result(True, name, "absent", root, gone=True)
        result["removed_volumes"] = [v[0] for v in volumes]
        result["kept_volumes"] = kept
        return result

    def _volumes(self, root, name: str, kept: list[dict[str, str]]) -> list[tuple[str, Any]]:
        """The storage volumes of the guest's disks (not CD-ROMs) that may go with it.

        A volume that another guest uses (directly or in a backing chain), or that another
        volume of its pool backs onto, is kept, and so is a disk outside storage pools:
        each lands in ``kept`` with its reason, and in a warning.
        """
        users = StorageUsers(self.conn)
        found: dict[str, Any] = {}

        def keep(path: str, reason: str) -> None:
            if all(k["path"] != path for k in kept):
                kept.append({"path": path, "reason": reason})
                self.warnings.append(f"Volume {path} is kept: {reason}")

        for disk in read_disks(root):
            if disk.device != "disk" or not (disk.path or disk.volume):
                continue
            try:
                if disk.volume is not None:
                    pool = self.conn.storagePoolLookupByName(disk.pool)
                    vol = pool.storageVolLookupByName(disk.volume)
                else:
                    vol = self.conn.storageVolLookupByPath(disk.path)
            except libvirt.libvirtError:
                where = disk.path or f"{disk.pool}/{disk.volume}"
                keep(where, f"disk {disk.target} is not a volume of a running storage pool")
                continue
            path = vol.path()
            if path in found:
                continue
            others = users.of_volume(vol, exclude_guest=name)
            if others:
                keep(path, f"in use: {describe_users(others)}")
                continue
            found[path] = vol
        return list(found.items())
