"""The shared secret code and the secret modules, on a fake secret store that behaves as
libvirt 9 does on qemu:///system (libvirt's test driver has no secrets)."""

from __future__ import annotations

import uuid as uuidlib

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _client
from ansible_collections.virtops.kvm.plugins.module_utils._errors import KvmValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._libvirt_secret import (
    SecretSpec,
    decode_value,
    plan_secret,
    validate_spec,
)
from ansible_collections.virtops.kvm.plugins.modules import secret as secret_module
from ansible_collections.virtops.kvm.plugins.modules import secret_info


def libvirt_error(code: int, message: str) -> libvirt.libvirtError:
    exc = libvirt.libvirtError(message)
    exc.err = (
        code,
        libvirt.VIR_FROM_SECRET,
        message,
        libvirt.VIR_ERR_ERROR,
        None,
        None,
        None,
        0,
        0,
    )
    return exc


class FakeSecret:
    def __init__(self, store: FakeStore, spec: SecretSpec) -> None:
        self.store, self.spec, self.data = store, spec, None

    def UUIDString(self) -> str:
        return self.spec.uuid

    def usageID(self) -> str:
        return self.spec.usage_id

    def XMLDesc(self, flags: int = 0) -> str:
        return self.spec.to_xml()

    def value(self, flags: int = 0) -> bytes:
        if self.spec.private:
            raise libvirt_error(libvirt.VIR_ERR_INVALID_SECRET, "secret is private")
        if self.data is None:
            raise libvirt_error(libvirt.VIR_ERR_NO_SECRET, "does not have a value")
        return self.data

    def setValue(self, value: bytes, flags: int = 0) -> None:
        self.store.writes.append(("setValue", self.spec.uuid))
        self.data = value

    def undefine(self) -> None:
        self.store.writes.append(("undefine", self.spec.uuid))
        self.store.secrets.remove(self)


class FakePool:
    def __init__(self, name: str, xml: str) -> None:
        self._name, self._xml = name, xml

    def name(self) -> str:
        return self._name

    def XMLDesc(self, flags: int = 0) -> str:
        return self._xml


class FakeStore:
    """The connection: secrets, and pools that may name them."""

    def __init__(self) -> None:
        self.secrets: list[FakeSecret] = []
        self.pools: list[FakePool] = []
        self.writes: list[tuple[str, str]] = []

    def listAllSecrets(self, flags: int = 0):
        return list(self.secrets)

    def listAllDomains(self, flags: int = 0):
        return []

    def listAllStoragePools(self, flags: int = 0):
        return list(self.pools)

    def secretLookupByUUIDString(self, uuid: str):
        for s in self.secrets:
            if s.spec.uuid == uuid.lower():
                return s
        raise libvirt_error(libvirt.VIR_ERR_NO_SECRET, f"no secret with UUID {uuid}")

    def secretLookupByUsage(self, usage_type: int, usage_id: str):
        for s in self.secrets:
            code = getattr(libvirt, f"VIR_SECRET_USAGE_TYPE_{s.spec.usage_type.upper()}")
            if code == usage_type and s.spec.usage_id == usage_id:
                return s
        raise libvirt_error(libvirt.VIR_ERR_NO_SECRET, f"no secret with usage {usage_id}")

    def secretDefineXML(self, xml: str, flags: int = 0):
        spec = SecretSpec.from_xml(xml)
        self.writes.append(("define", spec.usage_id))
        for s in self.secrets:
            same_usage = (s.spec.usage_type, s.spec.usage_id) == (spec.usage_type, spec.usage_id)
            if s.spec.uuid == spec.uuid:
                if not same_usage:
                    raise libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR, "already defined for use")
                if s.spec.private and not spec.private:
                    raise libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR, "cannot change private")
                s.spec = spec
                return s
            if same_usage:
                raise libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR, "already defined for use")
        spec.uuid = spec.uuid or str(uuidlib.uuid4())
        made = FakeSecret(self, spec)
        self.secrets.append(made)
        return made

    def close(self) -> None:
        pass


@pytest.fixture
def store(monkeypatch):
    fake = FakeStore()
    monkeypatch.setattr(_client, "open_connection", lambda uri, **kw: fake)
    return fake


@pytest.mark.parametrize(
    ("usage_type", "tag"),
    [
        ("volume", "volume"),
        ("ceph", "name"),
        ("iscsi", "target"),
        ("tls", "name"),
        ("vtpm", "name"),
    ],
)
def test_spec_xml_round_trip(usage_type, tag):
    usage_id = "/var/lib/libvirt/images/a.img" if usage_type == "volume" else "an id"
    spec = SecretSpec(usage_type, usage_id, str(uuidlib.uuid4()), "d", False, True)
    xml = spec.to_xml()
    assert f"<{tag}>{usage_id}</{tag}>" in xml
    assert SecretSpec.from_xml(xml) == spec


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (SecretSpec(uuid="not-a-uuid"), "is not a UUID"),
        (SecretSpec(usage_type="ceph"), "go together"),
        (SecretSpec(), "identified by uuid"),
        (SecretSpec(usage_type="volume", usage_id="disk.img"), "absolute path"),
        (SecretSpec(usage_type="ceph", usage_id="  "), "must not be empty"),
    ],
)
def test_identity_validated(spec, message):
    with pytest.raises(KvmValidationError, match=message):
        validate_spec(spec)


def test_uuid_is_normalized_and_values_decoded():
    upper = "4A7B3C1E-3F2D-4C8A-9B1E-5D6F7A8B9C0D"
    assert validate_spec(SecretSpec(uuid=upper)).uuid == upper.lower()
    assert decode_value("a2V5", "base64") == b"key"
    assert decode_value("a2V5", "plain") == b"a2V5"
    with pytest.raises(KvmValidationError, match="not valid base64"):
        decode_value("not base64!", "base64")


def test_plan_compares_only_what_libvirt_gives_back(store):
    readable = SecretSpec("iscsi", "t", private=False)
    plan = plan_secret(store, readable, b"one", "compare")
    assert plan.define and plan.set_value and plan.before is None
    assert plan.desired.private is False and plan.desired.ephemeral is False
    store.secretDefineXML(plan.desired.to_xml()).setValue(b"one")
    assert not plan_secret(store, readable, b"one", "compare").changed
    assert plan_secret(store, readable, b"two", "compare").set_value
    assert plan_secret(store, readable, b"one", "always").set_value

    private = SecretSpec("ceph", "c")
    store.secretDefineXML(plan_secret(store, private, b"k", "compare").desired.to_xml())
    assert not plan_secret(store, private, b"other", "compare").changed  # cannot be read
    assert plan_secret(store, private, b"other", "always").set_value
    with pytest.raises(KvmValidationError, match="cannot make it readable"):
        plan_secret(store, SecretSpec("ceph", "c", private=False), None, "compare")


def test_conflicting_identities_refused(store):
    made = store.secretDefineXML(SecretSpec("tls", "a").to_xml())
    other = str(uuidlib.uuid4())
    with pytest.raises(KvmValidationError, match=f"belongs to secret {made.UUIDString()}"):
        plan_secret(store, SecretSpec("tls", "a", other), None, "compare")
    with pytest.raises(KvmValidationError, match="the usage of a secret cannot change"):
        plan_secret(store, SecretSpec("tls", "b", made.UUIDString()), None, "compare")
    with pytest.raises(KvmValidationError, match="usage_type and usage_id are needed"):
        plan_secret(store, SecretSpec(uuid=other), None, "compare")


def run(module_runner, module, args, **kw):
    return module_runner(module, {"uri": "test:///default", **args}, **kw)


def test_module_check_apply_check_apply_without_the_value(module_runner, store):
    args = {"usage_type": "iscsi", "usage_id": "iqn.x", "value": "hunter2-secret", "private": False}
    results = [
        run(module_runner, secret_module, args, check_mode=check, diff=True)
        for check in (True, False, True, False)
    ]
    assert [r["changed"] for r in results] == [True, True, False, False]
    assert results[0]["secret"] is None
    assert store.writes[:2] == [("define", "iqn.x"), ("setValue", store.secrets[0].spec.uuid)]
    assert len(store.writes) == 2  # check mode wrote nothing, the last run nothing either
    assert results[1]["diff"]["after"]["value"] == "(hidden, new value)"
    for result in results:
        assert "hunter2-secret" not in repr({k: v for k, v in result.items() if k != "invocation"})


def test_module_refuses_to_remove_a_secret_in_use(module_runner, store):
    made = store.secretDefineXML(SecretSpec("ceph", "client.a secret").to_xml())
    store.pools.append(
        FakePool(
            "rbd",
            "<pool type='rbd'><name>rbd</name><source><auth type='ceph' username='a'>"
            f"<secret uuid='{made.UUIDString().upper()}'/></auth></source></pool>",
        )
    )
    args = {"uuid": made.UUIDString(), "state": "absent"}
    refused = run(module_runner, secret_module, args)
    assert refused["failed"] and refused["users"] == ["storage pool 'rbd'"]
    assert store.secrets == [made]
    forced = run(module_runner, secret_module, {**args, "force": True})
    assert forced["changed"] and forced["actions"] == ["undefine"] and store.secrets == []
    again = run(module_runner, secret_module, args)
    assert again["changed"] is False


def test_secret_info_filters(module_runner, store):
    for kind, name in (("ceph", "c1"), ("ceph", "c2"), ("tls", "t")):
        store.secretDefineXML(SecretSpec(kind, name).to_xml())
    everything = run(module_runner, secret_info, {})["secrets"]
    assert [(s["usage_type"], s["usage_id"]) for s in everything] == [
        ("ceph", "c1"),
        ("ceph", "c2"),
        ("tls", "t"),
    ]
    ceph = run(module_runner, secret_info, {"usage_type": "ceph"})["secrets"]
    assert [s["usage_id"] for s in ceph] == ["c1", "c2"]
    one = run(module_runner, secret_info, {"uuid": everything[2]["uuid"].upper()})["secrets"]
    assert one == [everything[2]]
