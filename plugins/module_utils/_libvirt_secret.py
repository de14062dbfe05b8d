# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""libvirt secrets: the one way the collection finds, plans, writes and removes them.

Used by the ``secret`` and ``secret_info`` modules and by ``pool`` for its Ceph key. A
secret is found by its UUID and/or its usage (type and usage id); the two must agree. A
secret's value is write-only here: it is compared only when libvirt gives it back (a secret
that is not private) and never returned, logged or put in a diff.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import uuid as uuidlib
from dataclasses import dataclass, fields, replace
from typing import Any

from . import _xml
from ._diff import DifferenceTracker
from ._errors import KvmLibvirtError, KvmValidationError, from_libvirt, is_error
from ._libvirt import libvirt

# usage type -> (libvirt-python constant, the element of <usage> holding the usage id)
USAGE_TYPES = {
    "volume": ("VIR_SECRET_USAGE_TYPE_VOLUME", "volume"),
    "ceph": ("VIR_SECRET_USAGE_TYPE_CEPH", "name"),
    "iscsi": ("VIR_SECRET_USAGE_TYPE_ISCSI", "target"),
    "tls": ("VIR_SECRET_USAGE_TYPE_TLS", "name"),
    "vtpm": ("VIR_SECRET_USAGE_TYPE_VTPM", "name"),
}
# What the diff shows for a value: never the value, nor a digest of it.
HIDDEN = "(hidden)"
HIDDEN_NEW = "(hidden, new value)"
# read_value's answer for a private secret: libvirt does not give its value back.
UNREADABLE = object()


@dataclass
class SecretSpec:
    """A secret's settings; ``None`` is "not managed" (libvirt's or the current value)."""

    usage_type: str | None = None
    usage_id: str | None = None
    uuid: str | None = None
    description: str | None = None
    ephemeral: bool | None = None
    private: bool | None = None

    @classmethod
    def from_xml(cls, text: str | bytes) -> SecretSpec:
        root = _xml.parse(text, "secret XML")
        usage = root.find("usage")
        usage_type = usage.get("type") if usage is not None else None
        tag = USAGE_TYPES.get(usage_type or "", (None, None))[1]
        return cls(
            usage_type=usage_type,
            usage_id=_xml.text(usage, tag) if tag else None,
            uuid=(_xml.text(root, "uuid") or "").lower() or None,
            description=_xml.text(root, "description"),
            ephemeral=root.get("ephemeral", "no") == "yes",
            private=root.get("private", "no") == "yes",
        )

    def to_xml(self) -> str:
        """The definition; a new secret is persistent and private unless told otherwise."""
        root = _xml.etree.Element(
            "secret",
            ephemeral="yes" if self.ephemeral else "no",
            private="no" if self.private is False else "yes",
        )
        if self.uuid:
            _xml.sub(root, "uuid", self.uuid)
        if self.description:
            _xml.sub(root, "description", self.description)
        if self.usage_type:
            usage = _xml.sub(root, "usage", type=self.usage_type)
            _xml.sub(usage, USAGE_TYPES[self.usage_type][1], self.usage_id)
        return _xml.to_string(root)

    def label(self) -> str:
        if self.usage_type and self.usage_id:
            usage = f"{self.usage_type} secret '{self.usage_id}'"
            return f"{usage} ({self.uuid})" if self.uuid else usage
        return f"secret {self.uuid}"

    def view(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def validate_spec(spec: SecretSpec) -> SecretSpec:
    """Check the identity options (before any change); returns the spec, UUID lowercased."""
    if spec.uuid is not None:
        try:
            spec = replace(spec, uuid=str(uuidlib.UUID(spec.uuid)))
        except ValueError as exc:
            raise KvmValidationError(f"'{spec.uuid}' is not a UUID") from exc
    if (spec.usage_type is None) != (spec.usage_id is None):
        raise KvmValidationError("usage_type and usage_id go together: set both or neither")
    if spec.usage_type is None and spec.uuid is None:
        raise KvmValidationError("A secret is identified by uuid, or usage_type and usage_id")
    if spec.usage_type is not None and spec.usage_type not in USAGE_TYPES:
        raise KvmValidationError(
            f"usage_type must be one of {', '.join(USAGE_TYPES)}, not '{spec.usage_type}'"
        )
    if spec.usage_id is not None and not spec.usage_id.strip():
        raise KvmValidationError("usage_id must not be empty")
    if spec.usage_type == "volume" and not spec.usage_id.startswith("/"):
        raise KvmValidationError(
            f"The usage id of a volume secret is the volume's absolute path, not '{spec.usage_id}'"
        )
    return spec


def decode_value(value: str | None, encoding: str, what: str = "value") -> bytes | None:
    """The bytes libvirt stores: the text itself, or the base64 text decoded (Ceph keys)."""
    if value is None:
        return None
    if encoding == "base64":
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise KvmValidationError(f"{what} is not valid base64") from exc
    return value.encode("utf-8")


# --------------------------------------------------------------------------- reading


def _usage_code(usage_type: str) -> int:
    return getattr(libvirt, USAGE_TYPES[usage_type][0])


def _lookup(call, label: str):
    try:
        return call()
    except libvirt.libvirtError as exc:
        if is_error(exc, libvirt.VIR_ERR_NO_SECRET):
            return None
        raise from_libvirt(exc, f"look up {label}") from exc


def read_spec(secret) -> SecretSpec:
    try:
        return SecretSpec.from_xml(secret.XMLDesc(0))
    except libvirt.libvirtError as exc:
        raise from_libvirt(exc, f"read secret {secret.UUIDString()}") from exc


def find_secret(conn, spec: SecretSpec):
    """The secret with ``spec``'s UUID and/or usage, or None; refuses a contradiction."""
    by_uuid = by_usage = None
    if spec.uuid:
        by_uuid = _lookup(lambda: conn.secretLookupByUUIDString(spec.uuid), spec.label())
    if spec.usage_type and spec.usage_id:
        code = _usage_code(spec.usage_type)
        by_usage = _lookup(lambda: conn.secretLookupByUsage(code, spec.usage_id), spec.label())
    if by_uuid is not None and spec.usage_type:
        have = read_spec(by_uuid)
        if have.usage_type != spec.usage_type or spec.usage_id not in (None, have.usage_id):
            raise KvmValidationError(
                f"Secret {spec.uuid} exists for {have.usage_type} usage '{have.usage_id}', not "
                f"{spec.usage_type} '{spec.usage_id}': the usage of a secret cannot change. "
                "Nothing was changed."
            )
    if by_usage is not None and spec.uuid and by_usage.UUIDString().lower() != spec.uuid:
        raise KvmValidationError(
            f"The {spec.usage_type} usage '{spec.usage_id}' belongs to secret "
            f"{by_usage.UUIDString()}, not {spec.uuid}: libvirt allows one secret per usage. "
            "Nothing was changed."
        )
    return by_uuid if by_uuid is not None else by_usage


def read_value(secret) -> bytes | object | None:
    """The value, None when it has none, or UNREADABLE for a private secret."""
    try:
        return secret.value(0)
    except libvirt.libvirtError as exc:
        if is_error(exc, libvirt.VIR_ERR_INVALID_SECRET):
            return UNREADABLE  # "secret is private"
        if is_error(exc, libvirt.VIR_ERR_NO_SECRET):
            return None  # "does not have a value"
        raise from_libvirt(exc, f"read the value of secret {secret.UUIDString()}") from exc


def secret_view(secret) -> dict[str, Any]:
    """What modules return about a secret: its settings, never its value."""
    return read_spec(secret).view()


def secrets_info(conn, filters: SecretSpec | None = None) -> list[dict[str, Any]]:
    """The secrets of a host (matching the set fields of ``filters``), sorted by usage."""
    try:
        found = conn.listAllSecrets(0)
    except libvirt.libvirtError as exc:
        raise from_libvirt(exc, "list the secrets") from exc
    views = []
    for secret in found:
        try:
            view = secret_view(secret)
        except KvmLibvirtError as exc:
            if exc.code == libvirt.VIR_ERR_NO_SECRET:
                continue  # removed while listed
            raise
        if filters is not None and any(
            want is not None and view[key] != want for key, want in filters.view().items()
        ):
            continue
        views.append(view)
    return sorted(views, key=lambda v: (v["usage_type"] or "", v["usage_id"] or "", v["uuid"]))


# --------------------------------------------------------------------------- users


def secret_users(conn, spec: SecretSpec) -> list[str]:
    """Guests and pools whose definitions name the secret (by UUID or usage)."""
    uuid = (spec.uuid or "").lower()

    def names_it(root) -> bool:
        for elem in root.iter("secret"):
            if (uuid and (elem.get("uuid") or "").lower() == uuid) or (
                spec.usage_id and elem.get("usage") == spec.usage_id
            ):
                return True
        encrypted = root.iter("encryption")  # a vTPM's state: <encryption secret='UUID'/>
        return any(uuid and (e.get("secret") or "").lower() == uuid for e in encrypted)

    users = []
    try:
        for dom in conn.listAllDomains(0):
            docs = [dom.XMLDesc(0)]
            if dom.isActive() and dom.isPersistent():
                docs.append(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            if any(names_it(_xml.parse(d, "domain XML")) for d in docs):
                users.append(f"guest '{dom.name()}'")
        for pool in conn.listAllStoragePools(0):
            if names_it(_xml.parse(pool.XMLDesc(0), "storage pool XML")):
                users.append(f"storage pool '{pool.name()}'")
    except libvirt.libvirtError as exc:
        if not is_error(exc, libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_NO_STORAGE_POOL):
            raise from_libvirt(exc, f"find the users of {spec.label()}") from exc
    return users


# --------------------------------------------------------------------------- changing


@dataclass
class SecretPlan:
    """What writing a secret takes, decided before anything changes."""

    desired: SecretSpec  # the definition to write (the existing one's UUID kept)
    before: SecretSpec | None  # None: the secret does not exist yet
    existing: Any = None
    define: bool = False
    set_value: bool = False
    value: bytes | None = None

    @property
    def changed(self) -> bool:
        return self.define or self.set_value

    def value_diff(self) -> tuple[str | None, str | None]:
        """(before, after) of the value for the diff: whether it is written, never what."""
        before = None if self.before is None else HIDDEN
        return before, (HIDDEN_NEW if self.set_value else before)


def plan_secret(conn, wanted: SecretSpec, value: bytes | None, update: str) -> SecretPlan:
    """How to reach ``wanted`` (and ``value``): ``update`` is ``compare`` or ``always``.

    With ``compare`` the value is written when the secret is new, and, for a secret libvirt
    gives the value of (not private), when it has none or another one. A private secret's
    value is never read back, so only ``always`` writes a new one over it.
    """
    existing = find_secret(conn, wanted)
    if existing is None:
        if not wanted.usage_type:
            raise KvmValidationError(
                f"Secret {wanted.uuid} does not exist: usage_type and usage_id are needed to "
                "create it"
            )
        desired = replace(
            wanted, ephemeral=bool(wanted.ephemeral), private=wanted.private is not False
        )
        return SecretPlan(desired, None, define=True, set_value=value is not None, value=value)
    before = read_spec(existing)
    managed = {k: v for k, v in wanted.view().items() if v is not None and k != "uuid"}
    desired = replace(before, **managed)
    if before.private and desired.private is False:
        raise KvmValidationError(
            f"{before.label()} is private: libvirt cannot make it readable. Remove it "
            "(state=absent) and create it again with private=false. Nothing was changed."
        )
    plan = SecretPlan(desired, before, existing, define=desired != before, value=value)
    if value is not None:
        if update == "always":
            plan.set_value = True
        else:
            current = read_value(existing)
            if current is not UNREADABLE:
                plan.set_value = current is None or not hmac.compare_digest(current, value)
    return plan


def apply_secret(conn, plan: SecretPlan):
    """Write the plan; a secret this call created is removed again when its value fails."""
    secret = plan.existing
    created = secret is None
    if plan.define:
        try:
            secret = conn.secretDefineXML(plan.desired.to_xml(), 0)
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, f"define {plan.desired.label()}") from exc
    if plan.set_value:
        try:
            secret.setValue(plan.value, 0)
        except libvirt.libvirtError as exc:
            if created:
                try:
                    secret.undefine()
                except libvirt.libvirtError:
                    pass
            raise from_libvirt(exc, f"set the value of {plan.desired.label()}") from exc
    return secret


def remove_secret(secret) -> None:
    try:
        secret.undefine()
    except libvirt.libvirtError as exc:
        if not is_error(exc, libvirt.VIR_ERR_NO_SECRET):
            raise from_libvirt(exc, f"remove secret {secret.UUIDString()}") from exc


# --------------------------------------------------------------------------- the module


class SecretManager:
    """Reconcile one secret (module ``virtops.kvm.secret``)."""

    def __init__(self, kvm) -> None:
        self.kvm = kvm
        self.params = kvm.params
        self.conn = kvm.conn
        self.check = kvm.check_mode
        self.diff = DifferenceTracker()
        self.result: dict[str, Any] = {"changed": False, "actions": []}

    def run(self) -> dict[str, Any]:
        p = self.params
        wanted = validate_spec(
            SecretSpec(
                usage_type=p["usage_type"],
                usage_id=p["usage_id"],
                uuid=p["uuid"],
                description=p["description"],
                ephemeral=p["ephemeral"],
                private=p["private"],
            )
        )
        if p["state"] == "absent":
            self.absent(wanted)
        else:
            self.present(wanted, decode_value(p["value"], p["value_encoding"]))
        self.result["changed"] = bool(self.diff) or bool(self.result["actions"])
        if self.kvm.diff_mode:
            self.result["diff"] = self.diff.diff()
        return self.result

    def present(self, wanted: SecretSpec, value: bytes | None) -> None:
        plan = plan_secret(self.conn, wanted, value, self.params["value_update"])
        before = plan.before.view() if plan.before else dict.fromkeys(plan.desired.view())
        self.diff.add("state", "present" if plan.before else "absent", "present")
        for key, after in plan.desired.view().items():
            if key != "uuid" or after is not None:
                self.diff.add(key, before[key], after)
        self.diff.add("value", *plan.value_diff())
        if plan.define:
            self.result["actions"].append("define" if plan.before is None else "redefine")
        if plan.set_value:
            self.result["actions"].append("set value")
        secret = plan.existing
        if plan.changed and not self.check:
            secret = apply_secret(self.conn, plan)
        self.result["secret"] = secret_view(secret) if secret is not None else None

    def absent(self, wanted: SecretSpec) -> None:
        secret = find_secret(self.conn, wanted)
        if secret is None:
            self.diff.add("state", "absent", "absent")
            self.result["secret"] = None
            return
        have = read_spec(secret)
        users = secret_users(self.conn, have)
        if users:
            self.result["users"] = users
            if not self.params["force"]:
                raise KvmValidationError(
                    f"{have.label()} is used by {', '.join(users)}: without it they cannot "
                    "open their storage or start. Nothing was changed. Remove it from them "
                    "first, or set force=true to remove it anyway.",
                    users=users,
                )
            self.kvm.warn(f"Removing {have.label()} used by {', '.join(users)} (force=true)")
        self.diff.add("state", "present", "absent")
        self.result["actions"].append("undefine")
        if not self.check:
            remove_secret(secret)
        self.result["secret"] = None
