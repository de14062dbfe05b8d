# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""What a migration is asked to do: the options checked against each other, and turned
into libvirt's migration flags and parameters (with the defaults this collection chooses for
the migration URI, TLS and the timeout).
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from . import _xml
from ._errors import KvmValidationError
from ._libvirt import libvirt
from ._migrate_place import Disk, GuestNeeds

_LIVE_ONLY = (
    "max_downtime",
    "postcopy_after_iterations",
    "postcopy_after_seconds",
    "postcopy_bandwidth",
    "auto_converge_initial",
    "auto_converge_increment",
    "compression",
    "parallel_connections",
)

# Default migration timeout: a base for setting up and converging, plus the data to send at
# a conservative rate (or at the bandwidth asked for, when lower).
TIMEOUT_BASE_S = 600
TIMEOUT_RATE_MIB_S = 16


def validate(params: dict[str, Any]) -> None:
    """Refuse contradictory options before anything is looked at or changed."""
    p = params
    errors = []
    live = p["mode"] == "live"
    if p["tunnelled"] and not p["peer2peer"]:
        errors.append("tunnelled=true needs peer2peer=true")
    if p["tunnelled"] and p["migrate_uri"]:
        errors.append("migrate_uri cannot be used with tunnelled=true (data goes over libvirt)")
    if p["tunnelled"] and p["parallel_connections"]:
        errors.append("parallel_connections cannot be used with tunnelled=true")
    if not live:
        used = [k for k in _LIVE_ONLY if p[k] is not None]
        used += [k for k in ("auto_converge", "postcopy") if p[k]]
        if p["storage_copy"] != "none":
            used.append("storage_copy")
        if used:
            errors.append(
                f"mode=offline moves only the definition; {', '.join(used)} apply to live"
            )
        if not p["persistent"]:
            errors.append("mode=offline needs persistent=true (the definition is what moves)")
    for key in (
        "max_downtime",
        "bandwidth",
        "postcopy_bandwidth",
        "parallel_connections",
        "verify_agent_timeout",
        "postcopy_after_iterations",
        "postcopy_after_seconds",
    ):
        if p[key] is not None and p[key] <= 0:
            errors.append(f"{key} must be greater than 0")
    if p["timeout"] is not None and p["timeout"] < 0:
        errors.append("timeout cannot be negative (0 waits without a limit)")
    if p["verify_agent"] and not live:
        errors.append("verify_agent needs mode=live (an offline guest does not run)")
    for key in ("auto_converge_initial", "auto_converge_increment"):
        if p[key] is not None and not p["auto_converge"]:
            errors.append(f"{key} needs auto_converge=true")
        if p[key] is not None and not 0 < p[key] <= 100:
            errors.append(f"{key} is a percentage between 1 and 100")
    needs_postcopy = [
        k
        for k in ("postcopy_after_iterations", "postcopy_after_seconds", "postcopy_bandwidth")
        if p[k] is not None
    ]
    if p["timeout_action"] == "postcopy":
        needs_postcopy.append("timeout_action=postcopy")
        if not p["timeout"]:
            errors.append("timeout_action=postcopy needs a timeout")
    if needs_postcopy and not p["postcopy"] and live:
        errors.append(f"{', '.join(needs_postcopy)} need postcopy=true")
    if p["copy_disks"] and p["storage_copy"] == "none":
        errors.append("copy_disks needs storage_copy=all or storage_copy=incremental")
    if p["memory_reserve_mib"] < 0:
        errors.append("memory_reserve_mib cannot be negative")
    if p["poll_interval"] <= 0:
        errors.append("poll_interval must be greater than 0")
    if p["dest_candidates"] is not None and not p["dest_candidates"]:
        errors.append("dest_candidates is empty")
    if p["balance_threshold_mib"] is not None and not p["all_running"]:
        errors.append("balance_threshold_mib needs all_running=true")
    if p.get("exclude") and not p["all_running"]:
        errors.append("exclude needs all_running=true")
    if p["parallel"] != 1 and not p["all_running"]:
        errors.append("parallel needs all_running=true")
    if errors:
        raise KvmValidationError("Invalid options: " + "; ".join(errors), errors=errors)


def default_migrate_uri(dest_uri: str) -> str | None:
    """``tcp://HOST`` for a destination URI naming a host (None for local URIs).

    libvirt's own default is the destination's host name as the destination resolves it,
    which often points at a loopback address; the host the user named is a safer guess.
    """
    host = urlsplit(dest_uri).hostname
    if not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    return f"tcp://{host}"


def default_timeout(params: dict[str, Any], needs: GuestNeeds, disk_bytes: int = 0) -> int:
    """Seconds the migration may take when ``timeout`` is not set.

    ``TIMEOUT_BASE_S`` plus one second per ``TIMEOUT_RATE_MIB_S`` MiB to send (the guest's
    memory, and the disks copied), or per ``bandwidth`` MiB when that is lower.
    """
    data_mib = (needs.memory_mib if params["mode"] == "live" else 0) + disk_bytes // (1 << 20)
    rate = min(TIMEOUT_RATE_MIB_S, params["bandwidth"] or TIMEOUT_RATE_MIB_S)
    return TIMEOUT_BASE_S + -(-data_mib // rate)


QEMU_CONF = "/etc/libvirt/qemu.conf"


def _uri_uses_tls(uri: str | None) -> bool:
    """A URI whose transport is TLS: ``+tls``, or a remote URI without a transport."""
    if not uri:
        return False
    parts = urlsplit(uri)
    driver, _plus, transport = parts.scheme.partition("+")
    return transport == "tls" or (not transport and bool(parts.hostname) and bool(driver))


def _uri_is_local_qemu(uri: str | None) -> bool:
    parts = urlsplit(uri or "")
    driver, _plus, transport = parts.scheme.partition("+")
    return driver == "qemu" and not parts.hostname and transport in ("", "unix")


def qemu_conf_forces_tls(path: str = QEMU_CONF) -> bool:
    """``qemu.conf`` sets ``migrate_tls_force = 1`` or a ``migrate_tls_x509_cert_dir``.

    libvirt reads the first setting of a key. An unreadable file (not root) counts as no.
    """
    seen: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                key, sep, value = line.partition("=")
                key = key.strip()
                if sep and key and not key.startswith("#") and key not in seen:
                    seen[key] = value.split("#", 1)[0].strip()
    except OSError:
        return False
    return seen.get("migrate_tls_force") == "1" or bool(seen.get("migrate_tls_x509_cert_dir"))


def tls_wanted(params: dict[str, Any], dest_uri: str, qemu_conf: str = QEMU_CONF) -> bool:
    """Whether the migration uses QEMU's TLS (``VIR_MIGRATE_TLS``).

    ``tls`` when set; unset (auto): a live, not tunnelled migration uses TLS when the source
    or destination URI uses the TLS transport, or the source URI is local and its
    ``qemu.conf`` forces or configures migration TLS (see ``qemu_conf_forces_tls``).
    """
    if params["tls"] is not None:
        return params["tls"]
    if params["mode"] != "live" or params["tunnelled"]:
        return False
    if _uri_uses_tls(params["uri"]) or _uri_uses_tls(dest_uri):
        return True
    return _uri_is_local_qemu(params["uri"]) and qemu_conf_forces_tls(qemu_conf)


def build_call(params: dict[str, Any], dest_uri: str) -> tuple[int, dict[str, Any]]:
    """libvirt migration flags and typed parameters for the options."""
    p = params
    live = p["mode"] == "live"
    flags = libvirt.VIR_MIGRATE_LIVE if live else libvirt.VIR_MIGRATE_OFFLINE
    mig: dict[str, Any] = {}
    toggles = (
        (p["peer2peer"], "VIR_MIGRATE_PEER2PEER"),
        (p["tunnelled"], "VIR_MIGRATE_TUNNELLED"),
        (tls_wanted(p, dest_uri), "VIR_MIGRATE_TLS"),
        (p["persistent"], "VIR_MIGRATE_PERSIST_DEST"),
        (p["undefine_source"], "VIR_MIGRATE_UNDEFINE_SOURCE"),
        (p["storage_copy"] == "all", "VIR_MIGRATE_NON_SHARED_DISK"),
        (p["storage_copy"] == "incremental", "VIR_MIGRATE_NON_SHARED_INC"),
        (p["auto_converge"], "VIR_MIGRATE_AUTO_CONVERGE"),
        (p["postcopy"], "VIR_MIGRATE_POSTCOPY"),
        (bool(p["compression"]), "VIR_MIGRATE_COMPRESSED"),
        (bool(p["parallel_connections"]), "VIR_MIGRATE_PARALLEL"),
        (p["unsafe"], "VIR_MIGRATE_UNSAFE"),
    )
    for wanted, name in toggles:
        if wanted:
            flags |= getattr(libvirt, name)
    if live and not p["tunnelled"]:
        uri = p["migrate_uri"] or default_migrate_uri(dest_uri)
        if uri:
            mig[libvirt.VIR_MIGRATE_PARAM_URI] = uri
    typed = (
        ("bandwidth", "VIR_MIGRATE_PARAM_BANDWIDTH"),
        ("postcopy_bandwidth", "VIR_MIGRATE_PARAM_BANDWIDTH_POSTCOPY"),
        ("copy_disks", "VIR_MIGRATE_PARAM_MIGRATE_DISKS"),
        ("compression", "VIR_MIGRATE_PARAM_COMPRESSION"),
        ("parallel_connections", "VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS"),
        ("auto_converge_initial", "VIR_MIGRATE_PARAM_AUTO_CONVERGE_INITIAL"),
        ("auto_converge_increment", "VIR_MIGRATE_PARAM_AUTO_CONVERGE_INCREMENT"),
    )
    for key, name in typed:
        if p[key]:
            mig[getattr(libvirt, name)] = p[key]
    return flags, mig


def volume_xml(disk: Disk, capacity: int, *, incremental: bool) -> str:
    """A storage volume like ``disk`` (same file name, format and size) for a destination pool."""
    root = _xml.etree.Element("volume")
    _xml.sub(root, "name", os.path.basename(disk.path))
    _xml.sub(root, "capacity", capacity, unit="bytes")
    target = _xml.sub(root, "target")
    fmt = disk.format or "raw"
    _xml.sub(target, "format", type=fmt)
    if incremental and disk.backing_path and fmt == "qcow2":
        backing = _xml.sub(root, "backingStore")
        _xml.sub(backing, "path", disk.backing_path)
        _xml.sub(backing, "format", type=disk.backing_format or "raw")
    return _xml.to_string(root)
