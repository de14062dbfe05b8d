# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""What a guest tells about itself: the QEMU guest agent's report (``virDomainGetGuestInfo``:
OS, hostname, time zone, file systems with usage, users, interfaces), and the disk and
network I/O counters of the bulk statistics (``block.*`` and ``net.*`` records).

libvirt returns both as flat typed parameters (``fs.0.mountpoint``, ``block.1.rd.bytes``);
they are turned into nested lists here, by pure functions that tests feed recorded replies.
"""

from __future__ import annotations

from typing import Any

from ._libvirt import libvirt

BLOCK_COUNTERS = {
    "rd.reqs": "read_requests",
    "rd.bytes": "read_bytes",
    "rd.times": "read_time_ns",
    "wr.reqs": "write_requests",
    "wr.bytes": "write_bytes",
    "wr.times": "write_time_ns",
    "fl.reqs": "flush_requests",
    "fl.times": "flush_time_ns",
    "allocation": "allocation",
    "capacity": "capacity",
    "physical": "physical",
}
NET_COUNTERS = {
    f"{way}.{what}": f"{way}_{name}"
    for way in ("rx", "tx")
    for what, name in (
        ("bytes", "bytes"),
        ("pkts", "packets"),
        ("errs", "errors"),
        ("drop", "drops"),
    )
}


def _items(params: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    """``prefix.N.rest`` parameters as one {rest: value} per N below ``prefix.count``."""
    count = params.get(f"{prefix}.count") or 0
    items: list[dict[str, Any]] = [{} for index in range(count)]
    for key, value in params.items():
        head, _sep, rest = key[len(prefix) + 1 :].partition(".")
        if key.startswith(f"{prefix}.") and head.isdigit() and int(head) < count and rest:
            items[int(head)][rest] = value
    return items


def io_counters(record: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Per-disk and per-NIC counters of one guest's bulk statistics record."""
    disks = []
    for item in _items(record, "block"):
        disk = {"name": item.get("name"), "path": item.get("path")}
        disk.update({name: item.get(key) for key, name in BLOCK_COUNTERS.items()})
        disks.append(disk)
    nics = []
    for item in _items(record, "net"):
        nic = {"name": item.get("name")}
        nic.update({name: item.get(key) for key, name in NET_COUNTERS.items()})
        nics.append(nic)
    return {"disks": disks, "interfaces": nics}


def parse_guest_info(params: dict[str, Any]) -> dict[str, Any]:
    """``virDomainGetGuestInfo``'s typed parameters as a report (what the agent left out is
    None or an empty list). ``disks`` are the guest's block devices with the alias of the
    guest disk (``vda``) each one is."""
    os_info = {
        key.replace("-", "_"): params.get(f"os.{key}")
        for key in (
            "id",
            "name",
            "pretty-name",
            "version",
            "version-id",
            "kernel-release",
            "kernel-version",
            "machine",
            "variant",
            "variant-id",
        )
    }
    filesystems = []
    for fs in _items(params, "fs"):
        total, used = fs.get("total-bytes"), fs.get("used-bytes")
        percent = round(100 * used / total, 1) if total and used is not None else None
        disks = _fs_disks(fs)
        filesystems.append(
            {
                "mountpoint": fs.get("mountpoint"),
                "name": fs.get("name"),
                "fstype": fs.get("fstype"),
                "total_bytes": total,
                "used_bytes": used,
                "used_percent": percent,
                "disks": disks,
            }
        )
    users = [
        {
            "name": u.get("name"),
            "domain": u.get("domain"),
            "login_time_ms": u.get("login-time"),
        }
        for u in _items(params, "user")
    ]
    interfaces = []
    for nic in _items(params, "if"):
        addrs = [
            {"type": a.get("type"), "address": a.get("addr"), "prefix": a.get("prefix")}
            for a in _items(nic, "addr")
        ]
        interfaces.append({"name": nic.get("name"), "mac": nic.get("hwaddr"), "addresses": addrs})
    timezone = None
    if "timezone.name" in params or "timezone.offset" in params:
        timezone = {"name": params.get("timezone.name"), "offset": params.get("timezone.offset")}
    disks = [
        {"name": d.get("name"), "alias": d.get("alias"), "partition": d.get("partition")}
        for d in _items(params, "disk")
    ]
    return {
        "answering": True,
        "os": os_info if any(v is not None for v in os_info.values()) else None,
        "hostname": params.get("hostname"),
        "timezone": timezone,
        "filesystems": filesystems,
        "users": users,
        "interfaces": interfaces,
        "disks": disks,
    }


def _fs_disks(fs: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"alias": d.get("alias"), "serial": d.get("serial"), "device": d.get("device")}
        for d in _items(fs, "disk")
    ]


def not_answering(reason: str) -> dict[str, Any]:
    return {"answering": False, "reason": reason}


def agent_report(dom, *, running: bool, has_channel: bool) -> dict[str, Any]:
    """What the guest agent of ``dom`` reports, or why it does not answer (never raises:
    one guest's agent does not fail a listing)."""
    if not running:
        return not_answering("the guest is not running")
    if not has_channel:
        return not_answering(
            "the guest has no guest agent channel (virtops.kvm.domain guest_agent=true adds it)"
        )
    try:
        return parse_guest_info(dom.guestInfo(0, 0) or {})
    except libvirt.libvirtError as exc:
        return not_answering(f"agent not answering: {exc.get_error_message()}")
