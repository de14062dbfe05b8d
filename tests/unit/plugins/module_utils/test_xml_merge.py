"""The shared merge of the ``xml`` option (domain, pool, network): rules, containment, diff."""

from __future__ import annotations

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _network_xml, _xml, _xml_merge
from ansible_collections.virtops.kvm.plugins.module_utils._errors import KvmValidationError
from ansible_collections.virtops.kvm.plugins.module_utils._network_model import (
    NetworkSpec,
    parse_network,
)
from ansible_collections.virtops.kvm.plugins.module_utils._pool import POOL_RULES

NET = """<network><name>n</name><forward mode='nat'/>
  <dns><host ip='198.18.1.5'><hostname>five</hostname></host></dns>
  <ip address='198.18.1.1' prefix='24'>
    <dhcp><host mac='52:54:00:00:00:01' ip='198.18.1.10'/></dhcp>
  </ip>
</network>"""


def frag(text: str, rules=_network_xml.RULES):
    return _xml_merge.parse_fragment(text, rules)


def test_identity_picks_the_element_by_its_attributes():
    root = _xml.parse(NET)
    new = _xml_merge.merged(
        root,
        frag(
            "<dns><host ip='198.18.1.6'><hostname>six</hostname></host>"
            "<host ip='198.18.1.5'><hostname>cinq</hostname></host></dns>"
        ),
        _network_xml.RULES,
    )
    hosts = {h.get("ip"): [n.text for n in h] for h in new.findall("dns/host")}
    # a new IP is a new host; a known one gains the name (hostnames are repeated, by text)
    assert hosts == {"198.18.1.5": ["five", "cinq"], "198.18.1.6": ["six"]}
    assert root.find("dns/host[@ip='198.18.1.6']") is None  # merged() works on a copy


def test_dhcp_host_by_mac_and_ip_by_address():
    new = _xml_merge.merged(
        _xml.parse(NET),
        frag(
            "<ip address='198.18.1.1'><dhcp><host mac='52:54:00:00:00:01' name='one'/></dhcp></ip>"
        ),
        _network_xml.RULES,
    )
    [ip] = new.findall("ip")
    [host] = ip.findall("dhcp/host")
    assert host.attrib == {"mac": "52:54:00:00:00:01", "ip": "198.18.1.10", "name": "one"}


def test_contains_is_semantic_not_textual():
    root = _xml.parse(NET)
    same = frag('<dns>\n  <host ip="198.18.1.5" ><hostname> five </hostname></host></dns>')
    assert _xml_merge.contains(root, same)
    assert not _xml_merge.contains(
        root, frag("<dns><host ip='198.18.1.5'><hostname>x</hostname></host></dns>")
    )
    before, after = _xml_merge.diff_parts(root, root, same, _network_xml.RULES)
    assert before == after and "five" in after


def test_diff_parts_show_the_touched_element_before_and_after():
    root = _xml.parse("<pool type='dir'><name>p</name><target><path>/p</path></target></pool>")
    fragment = frag("<target><permissions><mode>0750</mode></permissions></target>", POOL_RULES)
    new = _xml_merge.merged(root, fragment, POOL_RULES)
    before, after = _xml_merge.diff_parts(root, new, fragment, POOL_RULES)
    assert "<mode>" not in before and "<mode>0750</mode>" in after and "/p" in after
    assert _xml_merge.diff_parts(None, new, fragment, POOL_RULES)[0] is None


def test_a_fragment_for_another_document_or_name_is_refused():
    with pytest.raises(KvmValidationError, match="names network 'x'"):
        _xml_merge.check_name(frag("<network><name>x</name></network>"), "n", "network")
    with pytest.raises(KvmValidationError, match="Malformed xml option"):
        frag("<dns>")
    with pytest.raises(KvmValidationError, match="is a <network> definition"):
        frag("<network><name>n</name></network>", POOL_RULES)


def test_network_fragment_over_the_options():
    params = {"name": "n", "mtu": None, "addresses": None, "dns_hosts": None}
    base = parse_network(NET)
    got, _root = _network_xml.with_fragment(
        base, NET, frag("<mtu size='9000'/>"), params, lambda s: s.normalized().__dict__
    )
    assert got.mtu == 9000  # what the fragment sets that is modelled reads back typed
    with pytest.raises(KvmValidationError, match="mtu: 1400, the definition would have 9000"):
        _network_xml.with_fragment(
            NetworkSpec(name="n", mtu=1400),
            None,
            frag("<mtu size='9000'/>"),
            {**params, "mtu": 1400},
            lambda s: s.normalized().__dict__,
        )


def test_restart_part_leaves_out_what_is_updated_live():
    fragment = frag(
        "<network><dns><txt name='a' value='b'/><host ip='198.18.1.9'><hostname>n</hostname>"
        "</host></dns><ip address='198.18.1.1'><dhcp><range start='198.18.1.50' "
        "end='198.18.1.60'/></dhcp></ip></network>"
    )
    rest = _network_xml.restart_part(fragment)
    assert rest.find("dns/host") is None and rest.find("ip/dhcp/range") is None
    assert rest.find("dns/txt") is not None
    assert fragment.find("dns/host") is not None  # the fragment itself is untouched
