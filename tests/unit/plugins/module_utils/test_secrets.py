"""Console secrets: compared by keyed digest, kept unless given, redacted from every output."""

from __future__ import annotations

import json

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_model as model
from ansible_collections.virtops.kvm.plugins.module_utils import _xml
from ansible_collections.virtops.kvm.plugins.module_utils._domain import DomainManager
from ansible_collections.virtops.kvm.plugins.module_utils._errors import (
    KvmLibvirtError,
    KvmValidationError,
)
from ansible_collections.virtops.kvm.plugins.module_utils._secrets import (
    MASK,
    Redactor,
    fingerprint,
    forms,
    secret_values,
    strip_secrets,
)

from .domain_fakes import FakeKvm

PW = 'N&ew<"p'  # needs escaping in XML and in JSON


def graphics_root(passwd: str | None = PW, gtype: str = "vnc"):
    attr = f" passwd='{_xml_attr(passwd)}'" if passwd is not None else ""
    return _xml.parse(
        f"<domain type='qemu'><name>g</name><devices>"
        f"<graphics type='{gtype}' autoport='yes' listen='127.0.0.1'{attr}>"
        "<listen type='address' address='127.0.0.1'/></graphics></devices></domain>",
        "domain XML",
    )


def _xml_attr(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace("'", "&apos;")


# ---------------------------------------------------------------- digest compare
def test_fingerprint_is_keyed_stable_within_a_run_and_hides_the_value():
    assert fingerprint(PW) == fingerprint(PW)
    assert fingerprint(PW) != fingerprint(PW + "x")
    assert fingerprint(PW, key=b"k1") != fingerprint(PW, key=b"k2")
    assert fingerprint("") is None and fingerprint(None) is None
    assert all(form not in fingerprint(PW) for form in forms(PW))


def test_graphics_compare_uses_digests_never_the_password():
    root = graphics_root()
    [(_n, before, after)] = model.compare(root, {"graphics": {"type": "vnc", "password": PW}})
    assert before == after == {"type": "vnc", "password": fingerprint(PW)}
    [(_n, before, after)] = model.compare(root, {"graphics": {"type": "vnc", "password": "other"}})
    assert before != after
    assert PW not in json.dumps([before, after])


def test_graphics_change_keeps_the_password_unless_given():
    root = graphics_root()
    model.write(root, {"graphics": {"type": "vnc", "listen": "0.0.0.0"}}, ["graphics"])
    assert root.find("devices/graphics").get("passwd") == PW
    assert root.find("devices/graphics").get("listen") == "0.0.0.0"


def test_empty_password_removes_it_and_counts_as_none():
    root = graphics_root()
    want = {"graphics": {"type": "vnc", "password": ""}}
    [(_n, before, after)] = model.compare(root, want)
    assert before["password"] is not None and after["password"] is None
    model.write(root, want, ["graphics"])
    assert root.find("devices/graphics").get("passwd") is None
    [(_n, before, after)] = model.compare(root, want)
    assert before == after


# ---------------------------------------------------------------- redaction
def test_forms_cover_raw_xml_and_json_escapes():
    got = forms(PW)
    for form in (PW, "N&amp;ew&lt;&quot;p", 'N&amp;ew&lt;"p', 'N&ew<\\"p', 'N&amp;ew&lt;\\"p'):
        assert form in got, form


def test_redactor_masks_every_form_in_text_and_nested_data():
    r = Redactor()
    r.add(PW)
    escaped_xml = _xml.to_string(graphics_root())
    assert "N&amp;ew&lt;" in escaped_xml  # the form Ansible's no_log misses
    data = {
        "xml": escaped_xml,
        "warn": [f"raw {PW}", json.dumps({"p": PW})],
        "tuple": ("key", 1, None, PW),
    }
    out = json.dumps(r.data(data))
    for form in forms(PW):
        assert form not in out
    assert MASK in out and "listen" in out


def test_redactor_keeps_result_keys_even_for_a_password_like_them():
    r = Redactor()
    r.add("changed")
    assert r.data({"changed": True, "msg": "changed it"}) == {"changed": True, "msg": f"{MASK} it"}


def test_redactor_xml_strips_secret_attributes_structurally():
    root = graphics_root("abc")
    r = Redactor()  # even a secret it was not told about
    text = r.xml(root)
    assert "passwd" not in text and "abc" not in text
    assert root.find("devices/graphics").get("passwd") == "abc"  # the input is untouched
    assert secret_values(root) == ["abc"]
    assert strip_secrets(root).find("devices/graphics").get("passwd") is None


def test_redactor_masks_exceptions_and_their_causes():
    r = Redactor()
    r.add(PW)
    cause = ValueError(f"bad {PW}")
    exc = KvmLibvirtError(f"Failed: {PW}", libvirt_message=f"m {PW}", detail=f"d {PW}")
    exc.__cause__ = cause
    r.exception(exc)
    assert PW not in exc.msg + str(exc) + exc.libvirt_message + exc.details["detail"]
    assert PW not in str(cause)


# ---------------------------------------------------------------- the reconciler
@pytest.fixture
def conn():
    c = libvirt.open("test:///default")
    yield c
    c.close()


def run(conn, *, check=False, diff=True, **params):
    kvm = FakeKvm(conn, params, check_mode=check, diff_mode=diff)
    return DomainManager(kvm).run(), kvm


BASE = {"name": "sec1", "virt_type": "qemu", "memory": 256, "vcpus": 1}


def stored_password(conn, name="sec1"):
    xml = conn.lookupByName(name).XMLDesc(
        libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
    )
    return _xml.parse(xml, "domain XML").find("devices/graphics").get("passwd")


def test_reconciler_keeps_and_never_returns_the_password(conn):
    run(conn, **BASE, graphics={"type": "vnc", "password": PW})
    assert stored_password(conn) == PW
    outputs = []
    for params, check in (
        ({}, True),  # a memory change
        ({}, False),
        ({"graphics": {"type": "vnc", "listen": "0.0.0.0"}}, True),
        ({"graphics": {"type": "vnc", "listen": "0.0.0.0"}}, False),
        ({"graphics": {"type": "vnc", "password": PW}}, False),
    ):
        result, kvm = run(conn, check=check, **dict(BASE, memory=300, **params))
        outputs.append(json.dumps([result, kvm.warnings]))
        assert stored_password(conn) == PW
    for out in outputs:
        for form in forms(PW):
            assert form not in out
    last = json.loads(outputs[-1])[0]
    assert last["changed"] is False  # the same password, compared by digest
    listen_run = json.loads(outputs[3])[0]
    assert listen_run["changes"] == ["graphics"]
    assert "passwd" not in listen_run["xml"]


def test_reconciler_removes_the_password_with_empty_string(conn):
    run(conn, **BASE, graphics={"type": "vnc", "password": "abc"})
    result = run(conn, **BASE, graphics={"type": "vnc", "password": ""})[0]
    assert result["changes"] == ["graphics"]
    assert stored_password(conn) is None


@pytest.mark.parametrize("gtype,ok", [("vnc", False), ("spice", True)])
def test_vnc_password_length_is_checked_before_anything(conn, gtype, ok):
    params = dict(BASE, graphics={"type": gtype, "password": "123456789"})
    if ok:
        run(conn, **params)
        assert stored_password(conn) == "123456789"
        return
    with pytest.raises(KvmValidationError, match=r"graphics\.password.*at most 8") as err:
        run(conn, **params)
    assert "123456789" not in str(err.value)
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByName("sec1")


def test_spice_password_too_long_for_vnc_is_refused_when_kept(conn):
    run(conn, **BASE, graphics={"type": "spice", "password": "123456789"})
    with pytest.raises(KvmValidationError, match=r"graphics\.password") as err:
        run(conn, **BASE, graphics={"type": "vnc"})
    assert "123456789" not in str(err.value)
    assert stored_password(conn) == "123456789"


def test_a_concurrent_change_of_the_password_alone_is_not_undone(conn):
    """The lost-update guard reads securely, so it sees a password-only change."""
    run(conn, **BASE, graphics={"type": "vnc", "password": "old"})
    secure = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
    raced = []

    class Racing(DomainManager):
        def _read_guard(self, name, dom):
            guard = super()._read_guard(name, dom)
            reread = guard.reread

            def racing_reread():
                if not raced:  # someone sets a new password between our read and our write
                    raced.append(True)
                    root = _xml.parse(dom.XMLDesc(secure), "domain XML")
                    root.find("devices/graphics").set("passwd", "n3wPw")
                    conn.defineXML(_xml.to_string(root))
                return reread()

            guard.reread = racing_reread
            return guard

    result = Racing(FakeKvm(conn, dict(BASE, memory=200))).run()
    assert raced and result["changes"] == ["memory"]
    assert stored_password(conn) == "n3wPw"
    assert "n3wPw" not in json.dumps(result)
