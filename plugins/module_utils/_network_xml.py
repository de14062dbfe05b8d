# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""The network module's ``xml`` option: a fragment merged over what the options produce.

The merged definition is read back into the typed model, so the settings the fragment
touches that the collection models (a DNS host, the MTU) are compared, updated live and
reported like the options; the rest (DNS forwarders and TXT records, port groups, QoS...)
is compared element by element with ``contains`` and needs a restart of a running network.
"""

from __future__ import annotations

import copy
from typing import Any

from . import _xml, _xml_merge
from ._errors import KvmValidationError
from ._network_model import NetworkSpec, build_xml, parse_network

RULES = _xml_merge.Rules(
    root="network",
    identity={
        "ip": (("address",),),
        "host": (("mac",), ("name",), ("ip",)),  # DHCP hosts by MAC or name, DNS hosts by IP
        "range": (("start",),),
        "forwarder": (("addr",), ("domain",)),
        "txt": (("name",),),
        "srv": (("service", "protocol"),),
        "route": (("address",),),
        "portgroup": (("name",),),
        "interface": (("dev",),),
        "pf": (("dev",),),
    },
    repeated=frozenset({"hostname"}),
)

# The option that sets each compared setting (the fragment may not contradict a set one).
_OPTION_OF = {
    "mode": "mode",
    "bridge": "bridge",
    "forward_dev": "forward_dev",
    "mtu": "mtu",
    "domain": "domain",
    "addresses": "addresses",
    "dhcp_ranges": "addresses",
    "dhcp_hosts": "addresses",
    "dns_hosts": "dns_hosts",
}
# What libvirt changes on a running network (and the module does with update calls).
_LIVE_PATHS = ("ip/dhcp/range", "ip/dhcp/host", "dns/host")


def parse(params: dict[str, Any]):
    """The ``xml`` option as a ``<network>`` element, or None."""
    if not params.get("xml"):
        return None
    fragment = _xml_merge.parse_fragment(params["xml"], RULES)
    _xml_merge.check_name(fragment, params["name"], "network")
    return fragment


def compose(spec: NetworkSpec, base_xml: str | None, fragment) -> str:
    """The definition to write: ``spec`` over ``base_xml``, then the fragment merged."""
    xml = build_xml(spec, base_xml)
    if fragment is None:
        return xml
    return _xml.to_string(_xml_merge.merged(_xml.parse(xml, "network XML"), fragment, RULES))


def with_fragment(
    desired: NetworkSpec, base_xml: str | None, fragment, params: dict[str, Any], values
) -> tuple[NetworkSpec, Any]:
    """The desired spec once the fragment is merged, and the merged definition.

    ``values`` turns a spec into the compared settings; those the options set must read back
    from the merged definition as the options say.
    """
    new_root = _xml.parse(compose(desired, base_xml, fragment), "network XML")
    got = parse_network(_xml.to_string(new_root))
    want, have = values(desired), values(got)
    conflicts = [
        f"{name}: {want[name]!r}, the definition would have {have[name]!r}"
        for name, option in _OPTION_OF.items()
        if params.get(option) is not None and want[name] != have[name]
    ]
    if conflicts:
        raise KvmValidationError(
            "Conflicting settings (the xml option sets them too): " + "; ".join(conflicts)
        )
    return got, new_root


def restart_part(fragment):
    """The part of the fragment a running network only takes when restarted."""
    rest = copy.deepcopy(fragment)
    for path in _LIVE_PATHS:
        for elem in rest.findall(path):
            elem.getparent().remove(elem)
    return rest


def contained(xml: str | None, fragment) -> bool:
    return xml is not None and _xml_merge.contains(_xml.parse(xml, "network XML"), fragment)


def diff(actual_xml: str | None, new_root, fragment) -> tuple[str | None, str]:
    actual = _xml.parse(actual_xml, "network XML") if actual_xml else None
    return _xml_merge.diff_parts(actual, new_root, fragment, RULES)
