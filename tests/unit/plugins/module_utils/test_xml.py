"""The lxml helpers: safe parsing, building, comparing."""

from __future__ import annotations

import pytest
from lxml import etree

from ansible_collections.virtops.kvm.plugins.module_utils import _xml
from ansible_collections.virtops.kvm.plugins.module_utils._errors import KvmValidationError


def test_parse_str_and_bytes():
    assert _xml.parse("<domain type='qemu'/>").get("type") == "qemu"
    assert _xml.parse(b"<domain type='kvm'/>").get("type") == "kvm"


def test_malformed_xml_is_a_validation_error_naming_what():
    with pytest.raises(KvmValidationError, match=r"^Malformed guest XML: "):
        _xml.parse("<domain><name>x</domain>", "guest XML")


def test_external_entities_are_not_resolved(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("top-secret")
    doc = f'<!DOCTYPE d [<!ENTITY e SYSTEM "file://{secret}">]><domain><name>&e;</name></domain>'
    root = _xml.parse(doc)
    assert "top-secret" not in etree.tostring(root, encoding="unicode")


def test_comments_and_blank_text_are_dropped():
    root = _xml.parse("<a>\n  <!-- note -->\n  <b>1</b>\n</a>")
    assert _xml.to_string(root, pretty=False) == "<a><b>1</b></a>"


def test_sub_leaves_out_none_and_spells_booleans():
    root = etree.Element("disk")
    child = _xml.sub(root, "driver", name="qemu", cache=None, discard=True, io=False)
    assert dict(child.attrib) == {"name": "qemu", "discard": "yes", "io": "no"}
    assert _xml.sub(root, "serial", 42).text == "42"
    assert _xml.to_string(root, pretty=False) == (
        '<disk><driver name="qemu" discard="yes" io="no"/><serial>42</serial></disk>'
    )


def test_ensure_creates_once_and_remove():
    root = etree.Element("domain")
    first = _xml.ensure(root, "devices")
    assert _xml.ensure(root, "devices") is first
    assert len(root.findall("devices")) == 1
    _xml.remove(first)
    assert root.find("devices") is None
    _xml.remove(None)  # no-op
    _xml.remove(root)  # the root has no parent: no-op


def test_text_and_attr_with_defaults():
    root = _xml.parse("<d><name> g1 </name><empty/><os><type arch='x86_64'>hvm</type></os></d>")
    assert _xml.text(root, "name") == "g1"
    assert _xml.text(root, "empty", "dflt") == "dflt"
    assert _xml.text(root, "missing") is None
    assert _xml.text(None, "name", "x") == "x"
    assert _xml.attr(root, "os/type", "arch") == "x86_64"
    assert _xml.attr(root, "os/type", "machine", "pc") == "pc"
    assert _xml.attr(root, "os/boot", "dev") is None


def test_canonical_ignores_attribute_order_and_whitespace_but_not_child_order():
    a = _xml.parse("<x b='2' a='1'><y> t </y><z/></x>")
    b = _xml.parse("<x a='1' b='2'><y>t</y><z/></x>")
    c = _xml.parse("<x a='1' b='2'><z/><y>t</y></x>")
    assert _xml.canonical(a) == _xml.canonical(b)
    assert _xml.canonical(a) != _xml.canonical(c)
    assert _xml.canonical(a) != _xml.canonical(_xml.parse("<x a='1' b='3'><y>t</y><z/></x>"))


@pytest.mark.parametrize(
    ("value", "found"),
    [
        ("plain", None),
        ("tab\tnewline\ncr\r del\x7f é 😀", None),
        ("a\x01b", (1, "U+0001")),
        ("\x00", (0, "U+0000")),
        ("ok\x1f", (2, "U+001F")),
        ("x\ud800", (1, "U+D800")),
        ("\ufffe", (0, "U+FFFE")),
    ],
)
def test_invalid_char_matches_what_lxml_refuses(value, found):
    assert _xml.invalid_char(value) == found
    elem = etree.Element("title")
    if found is None:
        elem.text = value
    else:
        with pytest.raises(ValueError):
            elem.text = value
