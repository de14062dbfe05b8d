# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""Reconcile a libvirt storage pool (module ``virtops.kvm.pool``)."""

from __future__ import annotations

import os
import stat
from dataclasses import fields, replace
from typing import Any

from . import _xml, _xml_merge
from ._concurrency import Guard, reconcile
from ._diff import DifferenceTracker
from ._errors import KvmError, KvmValidationError, from_libvirt
from ._libvirt import is_this_machine, libvirt
from ._libvirt_secret import SecretPlan, SecretSpec, apply_secret, decode_value, plan_secret
from ._storage import (
    POOL_TYPES,
    PoolSource,
    PoolSpec,
    StorageManager,
    check_required,
    lookup_pool,
    pool_source_view,
    pool_spec_from_params,
    pool_view,
)
from ._storage_users import StorageUser, StorageUsers, describe_users


def _managed_source(desired: dict[str, Any], actual: dict[str, Any]) -> tuple[dict, dict]:
    """Only the source settings the user gave are compared; libvirt fills in the rest."""
    keys = [k for k in desired if k != "auth"]
    before = {k: actual.get(k) for k in keys}
    after = {k: desired[k] for k in keys}
    if "auth" in desired:
        before["auth"] = actual.get("auth")
        after["auth"] = desired["auth"]
    return before, after


def _libvirt_volume(path: str) -> bool:
    """Whether libvirt's refresh of a dir pool lists this entry (files, directories and
    block devices, through symlinks; not sockets, FIFOs or dangling links)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISBLK(mode)


def _norm_path(path: str | None) -> str | None:
    return path.rstrip("/") or "/" if path else path


def _inactive_xml(pool) -> str:
    """The persistent configuration of a pool (drivers without that flag: the live XML)."""
    try:
        return pool.XMLDesc(libvirt.VIR_STORAGE_XML_INACTIVE)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() not in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT):
            raise from_libvirt(exc, f"read storage pool '{pool.name()}'") from exc
        return pool.XMLDesc(0)


_POOL_FIGURES = ("capacity", "allocation", "available")

# The pool module's ``xml`` option: sources list their hosts and devices.
POOL_RULES = _xml_merge.Rules(root="pool", identity={"host": (("name",),), "device": (("path",),)})


def _without_figures(xml: str):
    root = _xml.parse(xml, "storage pool XML")
    for tag in _POOL_FIGURES:
        _xml.remove(root.find(tag))
    return root


def _with_source(actual_xml: str, actual: PoolSource, desired: PoolSource) -> str:
    """The stored definition with the given source settings over the actual ones.

    Everything else (permissions of the target, settings the module does not manage) stays.
    """
    given = {f.name: getattr(desired, f.name) for f in fields(PoolSource)}
    source = replace(actual, **{k: v for k, v in given.items() if v})
    root = _xml.parse(actual_xml, "storage pool XML")
    for tag in _POOL_FIGURES:
        _xml.remove(root.find(tag))
    built = PoolSpec(name="", type=root.get("type"), source=source).to_xml()
    new = _xml.parse(built, "storage pool XML").find("source")
    old = root.find("source")
    if old is None:
        root.insert(list(root).index(root.find("name")) + 1, new)
    else:
        old.addprevious(new)
        _xml.remove(old)
    return _xml.to_string(root)


class PoolManager(StorageManager):
    def run(self) -> dict[str, Any]:
        if self.params["state"] == "absent":
            self.absent()
        else:
            reconcile(self.present, f"storage pool '{self.params['name']}'")
        return self._finish()

    # ------------------------------------------------------------------ present

    def present(self) -> None:
        self.diff = DifferenceTracker()  # a second attempt starts from the new state
        self.result = {"changed": False, "actions": []}
        fragment, ptype = self._fragment()
        desired = pool_spec_from_params(self.params, ptype, complete=fragment is None)
        auth = (self.params.get("source") or {}).get("auth") or {}
        secret_value = decode_value(
            auth.get("secret_value"),
            "base64",
            "source.auth.secret_value (the Ceph key, as in a keyring)",
        )
        pool = lookup_pool(self.conn, desired.name, required=False)
        want_active = self.params["active"]
        autostart = self.params["autostart"]
        if pool is None:
            new_root = _xml.parse(desired.to_xml(), "storage pool XML")
            if fragment is not None:
                new_root = self._merge_fragment(desired, None, new_root, fragment, False)
            self.diff.add("state", "absent", "present")
            self._record_settings(
                PoolSpec.from_xml(_xml.to_string(new_root)), want_active, autostart
            )
            secret = self._plan_secret(desired, secret_value, auth)
            if self.check:
                self._act("define")
                if want_active:
                    self._act("start")
                self.result["pool"] = None
                return
            self._concurrency_guard(desired.name, None, None).check()
            pool = self._define_new(_xml.to_string(new_root), want_active, autostart, secret)
            self.result["pool"] = pool_view(pool)
            return

        actual_xml = _inactive_xml(pool)
        actual = PoolSpec.from_xml(actual_xml)
        self._check_immutable(desired, actual)
        is_active = bool(pool.isActive())
        self.diff.add("state", "present", "present")
        self.diff.add("type", actual.type, desired.type)
        self.diff.add("target", actual.target, desired.target or actual.target)
        src_before, src_after = _managed_source(
            pool_source_view(desired.source), pool_source_view(actual.source)
        )
        source_changed = self.diff.add("source", src_before, src_after, restart_required=is_active)
        new_root = None
        if source_changed:
            new_root = _xml.parse(
                _with_source(actual_xml, actual.source, desired.source), "storage pool XML"
            )
        xml_changed = False
        if fragment is not None:
            base = new_root if new_root is not None else _without_figures(actual_xml)
            actual_root = _xml.parse(actual_xml, "storage pool XML")
            new_root = self._merge_fragment(desired, actual_root, base, fragment, is_active)
            self._check_immutable(PoolSpec.from_xml(_xml.to_string(new_root)), actual)
            xml_changed = "xml" in self.diff.changed_names()
        secret = self._plan_secret(desired, secret_value, auth)
        self.diff.add("active", is_active, want_active)
        if autostart is not None:
            self.diff.add("autostart", bool(pool.autostart()), autostart)

        redefine = source_changed or xml_changed
        if self.check:
            if redefine:
                self._act("redefine")
            if is_active != want_active:
                self._act("start" if want_active else "stop")
            self.result["restart_required"] = self.diff.restart_required()
            self.result["pool"] = pool_view(pool)
            return

        if redefine:
            # the first write: never over a change made since this run read the pool
            self._concurrency_guard(desired.name, actual_xml, pool).check()
            new_xml = _xml.to_string(new_root)
            self._call(lambda: self.conn.storagePoolDefineXML(new_xml, 0), "redefine")
            self._act("redefine")
            if is_active:
                changed = ", ".join(self.diff.restart_required())
                self.kvm.warn(
                    f"The configuration of running storage pool '{desired.name}' changed "
                    f"({changed}) in its persistent definition only: stop and start the pool "
                    "to use it."
                )
        if secret is not None and secret.changed:
            self._write_secret(secret)
        if is_active and not want_active:
            self._call(pool.destroy, "stop")
            self._act("stop")
        elif want_active and not is_active:
            self._start(pool)
        if autostart is not None and bool(pool.autostart()) != autostart:
            self._call(lambda: pool.setAutostart(int(autostart)), "set autostart of")
        if self.params["refresh"] and pool.isActive():
            self._call(lambda: pool.refresh(0), "refresh")
            self.result["refreshed"] = True
        self.result["restart_required"] = self.diff.restart_required()
        self.result["pool"] = pool_view(pool)

    # ------------------------------------------------------------------ xml option

    def _fragment(self):
        """The parsed ``xml`` option (or None) and the pool type (the option's or its)."""
        ptype = self.params["type"]
        if not self.params.get("xml"):
            return None, ptype
        fragment = _xml_merge.parse_fragment(self.params["xml"], POOL_RULES)
        _xml_merge.check_name(fragment, self.params["name"], "storage pool")
        given = fragment.get("type")
        if given is not None and ptype is not None and given != ptype:
            raise KvmValidationError(
                f"The xml option gives storage pool type '{given}', but type is '{ptype}'"
            )
        ptype = ptype or given
        if ptype is None:
            raise KvmValidationError(
                "The pool type is needed: set type, or give the whole definition "
                "(<pool type=...>) in the xml option"
            )
        return fragment, ptype

    def _merge_fragment(self, typed: PoolSpec, actual_root, base, fragment, active: bool):
        """``base`` with the fragment merged; the options it sets must read back unchanged."""
        new_root = _xml_merge.merged(base, fragment, POOL_RULES)
        got = PoolSpec.from_xml(_xml.to_string(new_root))
        conflicts = []
        if got.type != typed.type:
            conflicts.append(f"type: {typed.type!r}, the definition would have {got.type!r}")
        if typed.target and _norm_path(got.target) != _norm_path(typed.target):
            conflicts.append(f"target: {typed.target!r}, the definition would have {got.target!r}")
        wanted, found = _managed_source(
            pool_source_view(typed.source), pool_source_view(got.source)
        )
        for key in wanted:
            if found[key] != wanted[key]:
                conflicts.append(
                    f"source.{key}: {wanted[key]!r}, the definition would have {found[key]!r}"
                )
        if conflicts:
            raise KvmValidationError(
                "Conflicting settings (the xml option sets them too): " + "; ".join(conflicts)
            )
        if got.type in POOL_TYPES:
            check_required(got)
        before, after = _xml_merge.diff_parts(actual_root, new_root, fragment, POOL_RULES)
        self.diff.add("xml", before, after, restart_required=active)
        return new_root

    def _concurrency_guard(self, name: str, seen: str | None, pool) -> Guard:
        def reread() -> str | None:
            found = pool or lookup_pool(self.conn, name, required=False)
            return _inactive_xml(found) if found is not None else None

        # libvirt updates the capacity figures of a running pool by itself
        return Guard(f"storage pool '{name}'", seen, reread, ignore=_POOL_FIGURES)

    def _record_settings(self, desired: PoolSpec, active: bool, autostart: bool | None) -> None:
        self.diff.add("type", None, desired.type)
        self.diff.add("target", None, desired.target)
        self.diff.add("source", None, pool_source_view(desired.source))
        self.diff.add("active", None, active)
        self.diff.add("autostart", None, bool(autostart))

    def _check_immutable(self, desired: PoolSpec, actual: PoolSpec) -> None:
        if desired.type != actual.type:
            raise KvmValidationError(
                f"Storage pool '{desired.name}' exists with type '{actual.type}', not "
                f"'{desired.type}': the type of a pool cannot change. Remove the pool "
                "(state=absent) and create it again, or use another name."
            )
        if desired.target and _norm_path(desired.target) != _norm_path(actual.target):
            raise KvmValidationError(
                f"Storage pool '{desired.name}' exists with target '{actual.target}', not "
                f"'{desired.target}': the target of a pool cannot change. Remove the pool "
                "(state=absent) and create it again, or use another name."
            )

    def _define_new(self, xml: str, active: bool, autostart, secret: SecretPlan | None):
        """Define (and start) a new pool; on failure remove what this run made."""
        made_secret = None
        pool = None
        try:
            if secret is not None and secret.changed:
                written = self._write_secret(secret)
                made_secret = written if secret.before is None else None
            pool = self._call(lambda: self.conn.storagePoolDefineXML(xml, 0), "define")
            self._act("define")
            if active:
                self._start(pool)
            if autostart:
                self._call(lambda: pool.setAutostart(1), "set autostart of")
        except (KvmError, libvirt.libvirtError):
            self._rollback(pool, made_secret)
            raise
        return pool

    def _rollback(self, pool, secret) -> None:
        for undo in (
            lambda: pool is not None and pool.isActive() and pool.destroy(),
            lambda: pool is not None and pool.undefine(),
            lambda: secret is not None and secret.undefine(),
        ):
            try:
                undo()
            except libvirt.libvirtError:
                pass

    def _start(self, pool) -> None:
        """Start a pool; when that fails and build is allowed, build it (never overwriting)."""
        try:
            pool.create(0)
            self._act("start")
            return
        except libvirt.libvirtError as exc:
            if not self.params["build"]:
                raise from_libvirt(exc, f"start storage pool '{pool.name()}'") from exc
            first = exc
        ptype = PoolSpec.from_xml(pool.XMLDesc(0)).type
        # Only fs and logical builds format anything; dir and netfs builds make a directory.
        flags = libvirt.VIR_STORAGE_POOL_BUILD_NO_OVERWRITE if ptype in ("fs", "logical") else 0
        try:
            pool.build(flags)
        except libvirt.libvirtError as exc:
            raise from_libvirt(
                exc,
                f"build storage pool '{pool.name()}' (starting it failed first: "
                f"{first.get_error_message()})",
            ) from exc
        self._act("build")
        self._call(lambda: pool.create(0), "start")
        self._act("start")

    def _call(self, func, action: str):
        try:
            return func()
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, f"{action} storage pool '{self.params['name']}'") from exc

    # ------------------------------------------------------------------ Ceph secret

    def _plan_secret(self, desired: PoolSpec, value: bytes | None, auth: dict):
        """The Ceph secret to create or update (the shared secret code), recorded in the
        diff; None without O(source.auth.secret_value)."""
        if value is None:
            return None
        if desired.type != "rbd":
            raise KvmValidationError("source.auth applies to rbd pools only")
        a = desired.source.auth
        wanted = SecretSpec(usage_type="ceph", usage_id=a.secret_usage, uuid=a.secret_uuid)
        update = "always" if auth.get("secret_update") == "always" else "compare"
        plan = plan_secret(self.conn, wanted, value, update)
        if plan.before is None:
            if plan.desired.usage_id is None:
                plan.desired.usage_id = f"client.{a.username} secret"
            plan.desired.description = f"Ceph key of storage pool '{desired.name}'"
            self.diff.add(
                "secret", None, {"usage": plan.desired.usage_id, "uuid": plan.desired.uuid}
            )
        elif plan.set_value:
            self.diff.add("secret_value", *plan.value_diff())
        return plan

    def _write_secret(self, plan: SecretPlan):
        secret = apply_secret(self.conn, plan)
        self.result["secret_uuid"] = secret.UUIDString()
        if plan.before is None:
            self._act("define secret")
        elif plan.set_value:
            self._act("set secret value")
        return secret

    # ------------------------------------------------------------------ absent

    def absent(self) -> None:
        name = self.params["name"]
        pool = lookup_pool(self.conn, name, required=False)
        if pool is None:
            self.diff.add("state", "absent", "absent")
            self.result["pool"] = None
            return
        self.diff.add("state", "present", "absent")
        delete = self.params["delete_storage"]
        was_active = bool(pool.isActive())
        volumes: list[str] | None = []
        if delete:
            # before any change; a stopped pool by what the guests' disks name in it
            self._refuse_in_use(StorageUsers(self.conn).of_pool(pool))
            if was_active:
                volumes = sorted(v.name() for v in pool.listAllVolumes(0))
            elif self.check:
                volumes = self._predict_volumes(pool)
            else:
                self._start(pool)  # the volumes of a stopped pool are there once it runs
                volumes = sorted(v.name() for v in pool.listAllVolumes(0))
            self.result["deleted_volumes"] = volumes
        if self.check:
            steps = []
            if delete and not was_active:
                steps.append("start")
            if was_active or delete:
                steps.append("stop")
            if delete:
                steps.append("delete storage")
            for action in steps:
                self._act(action)
            self._act("undefine")
            self.result["pool"] = None
            return
        if delete:
            for vol in pool.listAllVolumes(0):
                self._call(lambda v=vol: v.delete(0), f"delete volume '{vol.name()}' of")
        if pool.isActive():
            self._call(pool.destroy, "stop")
            self._act("stop")
        if delete:
            self._call(lambda: pool.delete(0), "delete the storage of")
            self._act("delete storage")
        if pool.isPersistent():
            self._call(pool.undefine, "undefine")
        self._act("undefine")
        self.result["pool"] = None

    def _refuse_in_use(self, users: list[StorageUser]) -> None:
        """Deleting the storage of a pool whose volumes guests use needs force=true."""
        if not users:
            return
        where = f"Storage pool '{self.params['name']}'"
        self.result["users"] = [u.as_dict() for u in users]
        if not self.params["force"]:
            raise KvmValidationError(
                f"{where} holds volumes in use: {describe_users(users)}. Nothing was changed. "
                "Remove those disks from the guests first, set delete_storage=false to keep "
                "the volumes, or set force=true to delete them anyway: the guests lose this "
                "data.",
                users=[u.as_dict() for u in users],
            )
        self.kvm.warn(
            f"{where} holds volumes in use, deleting them anyway (force=true): "
            f"{describe_users(users)}"
        )

    def _predict_volumes(self, pool) -> list[str] | None:
        """Check mode, stopped pool: the volumes the real run deletes once it started it.

        libvirt lists them only for a running pool. Those of a ``dir`` pool on this host are
        the files, directories and block devices in its directory (as libvirt's refresh
        finds them); for other pools, or over a remote connection, they are not known.
        """
        spec = PoolSpec.from_xml(pool.XMLDesc(0))
        if spec.type == "dir" and spec.target and is_this_machine(self.params["uri"]):
            try:
                entries = os.listdir(spec.target)
            except FileNotFoundError:
                return []  # starting builds an empty directory, or fails
            except OSError:
                entries = None
            if entries is not None:
                return sorted(e for e in entries if _libvirt_volume(os.path.join(spec.target, e)))
        self.kvm.warn(
            f"Storage pool '{spec.name}' is not running: check mode cannot list its volumes "
            "without starting it. The real run starts it and deletes every volume in it."
        )
        return None
