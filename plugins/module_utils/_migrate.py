# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""Moving a guest to another host: the logic behind ``virtops.kvm.migrate``.

One shape: find where the guest is (source, destination, both, neither) -> if it is not
where it should be, check the destination(s) and choose one -> unless check mode, run the
migration watched by ``MigrationJob`` -> ask both hosts where the guest is now (reconnecting
when a connection broke) -> success only when the destination has it in the state asked for
and the source confirms it no longer runs there; otherwise clean up only what is safe and
say where the guest is.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, NoReturn
from urllib.parse import urlsplit

from . import _xml
from ._client import open_connection
from ._diff import DifferenceTracker
from ._errors import KvmError, KvmLibvirtError, KvmValidationError, from_libvirt, is_error
from ._libvirt import libvirt, lookup_domain, run_state
from ._migrate_job import JobOutcome, JobPolicy, MigrationJob, bounded, figures, job_active
from ._migrate_place import (
    Candidate,
    CheckRequest,
    Disk,
    GuestNeeds,
    PlacementLock,
    check_destination,
    choose,
    host_uuid,
)

try:
    import libvirt_qemu
except ImportError:  # shipped with libvirt-python; only verify_agent needs it
    libvirt_qemu = None


ARGUMENT_SPEC: dict[str, dict[str, Any]] = {
    "name": {"type": "str"},
    "all_running": {"type": "bool", "default": False},
    "parallel": {"type": "int", "default": 1},
    "balance_threshold_mib": {"type": "int"},
    "dest_uri": {"type": "str"},
    "dest_candidates": {"type": "list", "elements": "str"},
    "mode": {"type": "str", "default": "live", "choices": ["live", "offline"]},
    "peer2peer": {"type": "bool", "default": True},
    "tunnelled": {"type": "bool", "default": False},
    "tls": {"type": "bool"},
    "migrate_uri": {"type": "str"},
    "storage_copy": {"type": "str", "default": "none", "choices": ["none", "all", "incremental"]},
    "copy_disks": {"type": "list", "elements": "str"},
    "create_volumes": {"type": "bool", "default": True},
    "unsafe": {"type": "bool", "default": False},
    "max_downtime": {"type": "int"},
    "bandwidth": {"type": "int"},
    "postcopy_bandwidth": {"type": "int"},
    "auto_converge": {"type": "bool", "default": False},
    "auto_converge_initial": {"type": "int"},
    "auto_converge_increment": {"type": "int"},
    "postcopy": {"type": "bool", "default": False},
    "postcopy_after_iterations": {"type": "int"},
    "postcopy_after_seconds": {"type": "int"},
    "compression": {"type": "list", "elements": "str", "choices": ["xbzrle", "mt"]},
    "parallel_connections": {"type": "int"},
    "persistent": {"type": "bool", "default": True},
    "undefine_source": {"type": "bool", "default": True},
    "timeout": {"type": "int"},
    "verify_agent": {"type": "bool", "default": False},
    "verify_agent_timeout": {"type": "int", "default": 30},
    "timeout_action": {"type": "str", "default": "abort", "choices": ["abort", "postcopy"]},
    "memory_reserve_mib": {"type": "int", "default": 0},
    "check_cpu": {"type": "bool", "default": True},
    "progress_file": {"type": "path"},
    "poll_interval": {"type": "float", "default": 1.0},
}

MODULE_KWARGS: dict[str, Any] = {
    "mutually_exclusive": [("dest_uri", "dest_candidates")],
    "required_one_of": [("dest_uri", "dest_candidates")],
    "supports_check_mode": True,
}

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
# Seconds one look at a host after the job may take (a hung daemon must not hang the run).
PROBE_WAIT = 20.0


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


def state_name(dom) -> str:
    return run_state(dom.state()[0])


class Progress:
    """Progress of a running migration: a JSON line per sample in ``progress_file`` and the
    module log, and a bounded list of samples returned with the result."""

    MAX_SAMPLES = 60

    def __init__(self, guest: str, path: str | None, log: Callable[[str], None] | None) -> None:
        self.guest = guest
        self.path = path
        self.log = log
        self.samples: list[dict[str, Any]] = []

    def _write(self, record: dict[str, Any]) -> None:
        record = dict(record, time=datetime.datetime.now(datetime.timezone.utc).isoformat())
        if self.path:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record, sort_keys=True) + "\n")
        if self.log:
            self.log(f"virtops.kvm.migrate: {json.dumps(record, sort_keys=True)}")

    def event(self, event: str, **extra: Any) -> None:
        self._write(dict(extra, guest=self.guest, event=event))

    def sample(self, elapsed: float, stats: dict[str, Any]) -> None:
        figs = figures(stats)
        total = figs["data_total_bytes"] or 0
        done = figs["data_transferred_bytes"] or 0
        record = {
            "elapsed_s": round(elapsed, 1),
            "percent": round(100.0 * done / total, 1) if total else None,
            "data_transferred_bytes": done,
            "data_remaining_bytes": figs["data_remaining_bytes"],
            "memory_iterations": figs["memory_iterations"],
            "memory_bps": figs["memory_bps"],
            "disk_transferred_bytes": figs["disk_transferred_bytes"],
            "auto_converge_throttle": figs["auto_converge_throttle"],
        }
        self.samples.append(record)
        if len(self.samples) > self.MAX_SAMPLES:
            # keep the first and last, thin out the middle
            self.samples = self.samples[:1] + self.samples[1:-1:2] + self.samples[-1:]
        self._write(dict(record, guest=self.guest, event="progress"))


@dataclass
class Destination:
    uri: str
    conn: Any = None
    error: KvmError | None = None
    is_source: bool = False


@dataclass
class Attempt:
    """One migration attempt: where from, where to, and what it created on the way."""

    src: Any
    src_dom: Any
    dest: Destination
    chosen: Candidate
    needs: GuestNeeds
    had_before: bool = False  # the destination knew the guest (same UUID) before we started
    # Only volumes this run created are ever removed again: creating one fails when the
    # file exists, so they cannot be the guest's own disk on storage shared after all.
    created: list[str] = field(default_factory=list)
    outcome: JobOutcome = field(default_factory=JobOutcome)


@dataclass
class Seen:
    """What one host's libvirtd says about the guest after the job."""

    uri: str
    reachable: bool = False
    found: bool = False
    active: bool = False
    persistent: bool = False
    state: int | None = None
    dom: Any = None
    error: str | None = None

    def describe(self) -> str:
        if not self.reachable:
            return "unknown (host not reachable)"
        if not self.found:
            return "not there"
        state = run_state(self.state)
        return state if self.active else f"{state} (defined)"


_POSTCOPY_HINT = (
    "; it had switched to post-copy, so its memory may be split between the source and "
    "{dest}: recover it with libvirt's post-copy recovery (VIR_MIGRATE_POSTCOPY_RESUME)"
)


def _ask(conn, uri: str, uuid: str) -> Seen:
    """One bounded look at the guest through ``conn`` (unreachable when the call fails)."""

    def look() -> Seen:
        dom = lookup_domain(conn, uuid=uuid)
        if dom is None:
            return Seen(uri, reachable=True)
        state = dom.state()[0]
        return Seen(uri, True, True, bool(dom.isActive()), bool(dom.isPersistent()), state, dom)

    if conn is None:
        return Seen(uri, error="no connection")
    called = bounded(look, PROBE_WAIT, "virtops-probe")
    if not called.done:
        return Seen(uri, error=f"no answer within {PROBE_WAIT:g} s")
    if called.error is not None:
        if isinstance(called.error, KvmLibvirtError):
            return Seen(uri, error=called.error.libvirt_message or called.error.msg)
        if not isinstance(called.error, libvirt.libvirtError):
            raise called.error
        return Seen(uri, error=called.error.get_error_message() or str(called.error))
    return called.value


@dataclass
class Cleanup:
    notes: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)


class Migrator:
    """The ``migrate`` module's work for one guest."""

    # Seconds the job may take to end once aborted before the run stops waiting for it.
    abort_grace = 60.0

    def __init__(
        self,
        kvm,
        *,
        opener: Callable[..., Any] = open_connection,
        overrides: dict[str, Any] | None = None,
        reservations: dict[str, int] | None = None,
        agent: Callable[..., Any] | None = None,
    ) -> None:
        self.kvm = kvm
        # ``overrides``: the evacuation runs one Migrator per guest with its name.
        self.p = dict(kvm.params, **(overrides or {}))
        # MiB already promised to destinations by a plan being made (check mode evacuation).
        self.reservations = reservations or {}
        self.opener = opener
        self.live = self.p["mode"] == "live"
        log = getattr(getattr(kvm, "module", None), "log", None)
        self.progress = Progress(self.p["name"], self.p["progress_file"], log)
        self.dests: list[Destination] = []
        self.lock: PlacementLock | None = None
        self.warnings: list[str] = []
        # libvirt_qemu.qemuAgentCommand(dom, command, timeout, flags), or a test's fake
        self.agent = agent or (libvirt_qemu.qemuAgentCommand if libvirt_qemu else None)
        self.fresh: list[Any] = []  # connections opened again after the job

    # -- connections -------------------------------------------------------------------
    def _open(self, uri: str, timeout: float | None = None):
        return self.opener(uri, timeout=self.p["connect_timeout"] if timeout is None else timeout)

    def _connect_all(self, src) -> None:
        uris = [self.p["dest_uri"]] if self.p["dest_uri"] else list(self.p["dest_candidates"])
        for uri in dict.fromkeys(uris):  # keep order, drop repeats
            dest = Destination(uri)
            # The same candidate list serves every host: skip the source. (Comparing host
            # UUIDs would need the capabilities, which take seconds to build on some hosts;
            # libvirt itself refuses a live migration to the same host.)
            if uri == self.p["uri"]:
                dest.is_source = True
            else:
                try:
                    dest.conn = self._open(uri)
                except KvmError as exc:
                    dest.error = exc
            self.dests.append(dest)

    def close(self) -> None:
        for conn in self.fresh:
            try:
                conn.close()
            except libvirt.libvirtError:
                pass
        for dest in self.dests:
            if dest.conn is not None and all(dest.conn is not c for c in self.fresh):
                try:
                    dest.conn.close()
                except libvirt.libvirtError:
                    pass
                dest.conn = None
        self.fresh = []
        if self.lock is not None:
            self.lock.release()

    def run(self) -> dict[str, Any]:
        validate(self.p)
        if not self.p["name"]:
            raise KvmValidationError("One of name or all_running=true is required")
        try:
            return self._run()
        finally:
            self.close()

    # -- the one shape -----------------------------------------------------------------
    def _run(self) -> dict[str, Any]:
        name = self.p["name"]
        src = self.kvm.conn
        src_uri = self.p["uri"]
        src_dom = lookup_domain(src, name)
        self._connect_all(src)
        if self.p["dest_uri"] and self.dests[0].is_source:
            raise KvmValidationError(
                f"The destination {self.p['dest_uri']} is the source host itself, nothing was "
                "changed"
            )
        if self.p["dest_uri"] and self.dests[0].error is not None:
            err = self.dests[0].error
            raise KvmError(
                f"Destination {self.p['dest_uri']} is not reachable, nothing was changed: "
                f"{err.msg}",
                **err.details,
            )

        settled = self._settled(src, src_dom)
        if settled is not None:
            return settled
        if src_dom is None:
            raise KvmValidationError(
                f"Guest {name} is not defined on the source {src_uri} nor on {self._dest_list()}"
            )
        active = src_dom.isActive()
        if self.live and not active:
            raise KvmValidationError(
                f"Guest {name} is not running on {src_uri}: live migration needs a running "
                "guest (mode=offline moves a stopped guest's definition)"
            )
        if not self.live:
            if active:
                raise KvmValidationError(
                    f"Guest {name} is running on {src_uri}: mode=offline moves only a stopped "
                    "guest; use mode=live or shut it down first"
                )
            if not src_dom.isPersistent():
                raise KvmValidationError(f"Guest {name} is not persistent: nothing to move")

        xml_flags = 0 if self.live else libvirt.VIR_DOMAIN_XML_INACTIVE
        needs = GuestNeeds.from_xml(
            src_dom.XMLDesc(xml_flags), memory_kib=int(src_dom.info()[2]) if self.live else None
        )
        if self.p["dest_candidates"]:
            self.lock = PlacementLock([d.uri for d in self.dests])
            self.lock.acquire(f"migration of guest {name}")
        candidates = self._check_all(src, needs)
        chosen = choose(candidates)
        placement = [c.as_dict() for c in candidates]
        if chosen is None:
            reasons = "; ".join(f"{c.uri}: {', '.join(c.reasons)}" for c in candidates)
            what = "The destination cannot" if self.p["dest_uri"] else "No destination can"
            raise KvmValidationError(
                f"{what} take guest {name} ({needs.memory_mib} MiB), nothing was "
                f"changed: {reasons}",
                placement=placement,
            )
        dest = next(d for d in self.dests if d.uri == chosen.uri)
        diff = DifferenceTracker()
        diff.add("location", src_uri, chosen.uri)
        result: dict[str, Any] = {
            "changed": True,
            "name": name,
            "uuid": needs.uuid,
            "mode": self.p["mode"],
            "source_uri": src_uri,
            "dest_uri": chosen.uri,
            "tls": tls_wanted(self.p, chosen.uri),
            "placement": placement,
            "notes": list(chosen.notes),
        }
        if self.kvm.diff_mode:
            result["diff"] = diff.diff()
        if self.kvm.check_mode:
            result.update(
                location=src_uri,
                state=state_name(src_dom),
                volumes_created=[d.path for d, _volume in chosen.volumes_to_create],
            )
            return self._finish(result)
        result.update(self._migrate(Attempt(src, src_dom, dest, chosen, needs)))
        return self._finish(result)

    def _finish(self, result: dict[str, Any]) -> dict[str, Any]:
        if self.warnings:
            result["warnings"] = list(self.warnings)
        return result

    def _dest_list(self) -> str:
        return ", ".join(d.uri for d in self.dests)

    def _settled(self, src, src_dom) -> dict[str, Any] | None:
        """The result when the guest is already where it should be, else None."""
        name = self.p["name"]
        src_active = src_dom is not None and src_dom.isActive()
        found = []
        for dest in self.dests:
            if dest.conn is None:
                continue
            dom = lookup_domain(dest.conn, name)
            if dom is not None:
                found.append((dest, dom))
        running = [(d, dom) for d, dom in found if dom.isActive()]
        if src_active and running:
            same = [d.uri for d, dom in running if _same_host(src, d.conn)]
            if same:
                raise KvmValidationError(
                    f"The destination {same[0]} is the source host itself, nothing was changed"
                )
            raise KvmError(
                f"Guest {name} is running both on the source {self.p['uri']} and on "
                f"{', '.join(d.uri for d, _dom in running)}; refusing to touch it"
            )
        if self.live:
            arrived = running
        else:
            arrived = [(d, dom) for d, dom in found if dom.isPersistent() and not src_active]
        if not arrived:
            return None
        dest, dom = arrived[0]
        uuid = dom.UUIDString()
        if src_dom is not None and src_dom.UUIDString() != uuid:
            raise KvmError(
                f"Guest {name} on {dest.uri} has UUID {uuid} but the one on the source has "
                f"{src_dom.UUIDString()}; refusing to guess which is which"
            )
        if self.live and not dom.isActive():
            return None
        # Already there. Only a leftover stopped definition on the source may remain to go.
        changed = False
        diff = DifferenceTracker()
        leftover = src_dom is not None and not src_active and self.p["undefine_source"]
        if leftover and _same_host(src, dest.conn):
            # The "destination" is the source under another URI: the definition is the guest's.
            raise KvmValidationError(
                f"The destination {dest.uri} is the source host itself, nothing was changed"
            )
        if leftover:
            diff.add("source_definition", "defined", "undefined")
            if not self.kvm.check_mode:
                try:
                    src_dom.undefine()
                except libvirt.libvirtError as exc:
                    raise from_libvirt(exc, f"undefine the leftover definition of {name}") from exc
            changed = True
        result: dict[str, Any] = {
            "changed": changed,
            "name": name,
            "uuid": uuid,
            "mode": self.p["mode"],
            "source_uri": self.p["uri"],
            "dest_uri": dest.uri,
            "location": dest.uri,
            "state": state_name(dom),
            "placement": [],
            "notes": [f"guest {name} is already on {dest.uri}"],
        }
        if self.kvm.diff_mode:
            result["diff"] = diff.diff()
        return self._finish(result)

    def _check_all(self, src, needs: GuestNeeds) -> list[Candidate]:
        req = CheckRequest(
            live=self.live,
            storage_copy=self.p["storage_copy"] if self.live else "none",
            copy_disks=self.p["copy_disks"],
            memory_reserve_mib=self.p["memory_reserve_mib"],
            check_cpu=self.p["check_cpu"],
        )
        out = []
        for dest in self.dests:
            if dest.is_source:
                cand = Candidate(dest.uri)
                cand.refuse("it is the source host itself")
            elif dest.conn is None:
                cand = Candidate(dest.uri)
                cand.refuse(f"not reachable ({dest.error.msg if dest.error else 'unknown'})")
            else:
                try:
                    cand = check_destination(
                        src,
                        dest.conn,
                        dest.uri,
                        needs,
                        req,
                        reserved_mib=self.reservations.get(dest.uri, 0),
                    )
                except libvirt.libvirtError as exc:
                    cand = Candidate(dest.uri)
                    cand.refuse(f"could not be checked: {exc.get_error_message()}")
            out.append(cand)
        return out

    # -- the migration -----------------------------------------------------------------
    def _create_volumes(self, att: Attempt) -> None:
        if not self.p["create_volumes"]:
            return
        for disk, pool_name in att.chosen.volumes_to_create:
            capacity = int(att.src_dom.blockInfo(disk.target)[0])
            xml = volume_xml(disk, capacity, incremental=self.p["storage_copy"] == "incremental")
            try:
                pool = att.dest.conn.storagePoolLookupByName(pool_name)
                pool.createXML(xml, 0)
            except libvirt.libvirtError as exc:
                raise from_libvirt(
                    exc, f"create volume {disk.path} in pool {pool_name} on {att.chosen.uri}"
                ) from exc
            att.created.append(disk.path)

    def _migrate(self, att: Attempt) -> dict[str, Any]:
        name = self.p["name"]
        src_dom, dconn, uri = att.src_dom, att.dest.conn, att.chosen.uri
        att.had_before = lookup_domain(dconn, uuid=att.needs.uuid) is not None
        flags, mig = build_call(self.p, uri)
        self.progress.event(
            "start", dest_uri=uri, flags=flags, params=sorted(mig), mode=self.p["mode"]
        )
        was_running = src_dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        try:
            self._create_volumes(att)
        except KvmError as exc:
            cleanup = self._cleanup(att)
            self._release_lock()
            raise KvmError(
                f"{exc.msg}. Nothing was migrated; guest {name} stays on {self.p['uri']}. "
                + " ".join(cleanup.notes),
                leftovers=cleanup.leftovers,
            ) from exc

        if self.p["peer2peer"]:

            def start():
                return src_dom.migrateToURI3(uri, mig, flags)
        else:

            def start():
                return src_dom.migrate3(dconn, mig, flags)

        timeout = self._timeout(att)
        policy = JobPolicy(
            max_downtime_ms=self.p["max_downtime"],
            postcopy_after_iterations=self.p["postcopy_after_iterations"],
            postcopy_after_seconds=self.p["postcopy_after_seconds"],
            timeout=timeout or None,
            timeout_action=self.p["timeout_action"],
            poll_interval=self.p["poll_interval"],
            abort_grace=self.abort_grace,
        )
        job = MigrationJob(
            src_dom, start, policy, on_sample=self.progress.sample, on_tick=self._tick(att)
        )
        outcome = att.outcome = job.run()
        self._release_lock()
        self.warnings.extend(outcome.warnings)

        src, dest = self._look_after(att)
        if self._arrived(dest, was_running) and src.reachable and not src.active:
            if outcome.error is not None:
                self.warnings.append(
                    f"The migration call reported an error ({outcome.error}) but guest {name} "
                    f"is {dest.describe()} on {uri} and the source confirms it is no longer "
                    "running there"
                )
            self._drop_source_leftover(att, src)
            result = self._succeeded(att, src.dom, dest.dom)
            result["stats"]["requested"]["timeout_s"] = timeout or None
            if self.p["verify_agent"]:
                result.update(self._verify_agent(att, dest, result))
            return result
        self._fail(att, src, dest, was_running, timeout)

    def _timeout(self, att: Attempt) -> int:
        """The ``timeout`` asked for, else ``default_timeout`` for this guest (0: no limit)."""
        if self.p["timeout"] is not None:
            return self.p["timeout"]
        disk_bytes = 0
        if self.live and self.p["storage_copy"] != "none":
            for disk in att.needs.disks:
                if not disk.copyable or (
                    self.p["copy_disks"] and disk.target not in self.p["copy_disks"]
                ):
                    continue
                try:
                    disk_bytes += int(att.src_dom.blockInfo(disk.target)[1])
                except libvirt.libvirtError:
                    continue
        return default_timeout(self.p, att.needs, disk_bytes)

    # -- where the guest is after the job ----------------------------------------------
    def _look_after(self, att: Attempt) -> tuple[Seen, Seen]:
        src, att.src = self._look(att.src, self.p["uri"], att.needs.uuid)
        dest, conn = self._look(att.dest.conn, att.dest.uri, att.needs.uuid)
        if conn is not None:
            att.dest.conn = conn
        return src, dest

    def _look(self, conn, uri: str, uuid: str) -> tuple[Seen, Any]:
        """What the host at ``uri`` says about the guest, and the connection that said it.

        A connection that broke during the job is replaced by a fresh one (bounded by
        ``connect_timeout`` and ``PROBE_WAIT``); when that fails too, the host's answer is
        unknown, never "not there".
        """
        if conn is not None:
            seen = _ask(conn, uri, uuid)
            if seen.reachable:
                return seen, conn
        wait = min(float(self.p["connect_timeout"]), PROBE_WAIT)
        opened = bounded(lambda: self._open(uri, timeout=wait), wait + PROBE_WAIT, "virtops-open")
        if not opened.done:
            return Seen(
                uri, error=f"connecting did not answer within {wait + PROBE_WAIT:g} s"
            ), None
        if opened.error is not None:
            if not isinstance(opened.error, KvmError):
                raise opened.error
            return Seen(uri, error=opened.error.msg), None
        self.fresh.append(opened.value)
        seen = _ask(opened.value, uri, uuid)
        return seen, opened.value if seen.reachable else None

    def _arrived(self, dest: Seen, was_running: bool) -> bool:
        """Whether the destination has the guest in the state the migration should leave."""
        if not dest.found:
            return False
        if not self.live:
            return dest.persistent and not dest.active
        return dest.state == libvirt.VIR_DOMAIN_RUNNING if was_running else dest.active

    def _drop_source_leftover(self, att: Attempt, src: Seen) -> None:
        """Remove a stopped definition the job left on the source despite undefine_source.

        libvirt removes it at the very end of a job with VIR_MIGRATE_UNDEFINE_SOURCE, a step a
        job cut short (the source connection broke) never reaches.
        """
        if not (src.found and self.p["undefine_source"]):
            return
        name, uri = self.p["name"], att.chosen.uri
        try:
            src.dom.undefine()
        except libvirt.libvirtError as exc:
            raise from_libvirt(
                exc,
                f"remove the stopped definition of guest {name} from the source {self.p['uri']}"
                f" (the guest moved and runs on {uri}; do not start it on the source: running "
                "the module again removes that definition)",
                location=uri,
                changed=True,
            ) from exc
        self.warnings.append(
            f"The stopped definition of guest {name} that the migration left on the source "
            f"{self.p['uri']} was removed (undefine_source=true)"
        )

    def _fail(
        self, att: Attempt, src: Seen, dest: Seen, was_running: bool, timeout: int
    ) -> NoReturn:
        """Clean up what is safe to clean up, then raise saying where the guest is."""
        name, uri, src_uri = self.p["name"], att.chosen.uri, self.p["uri"]
        outcome = att.outcome
        notes: list[str] = []
        leftovers: list[str] = []
        location: str | None
        if dest.found and dest.state == libvirt.VIR_DOMAIN_RUNNING:
            # The guest runs on the destination: never destroy it there nor resume the source.
            location, state = uri, dest.describe()
            if not src.reachable:
                where = (
                    f"Guest {name} is running on {uri}, but the source {src_uri} cannot be "
                    f"reached to confirm it stopped there ({src.error}). Check the source "
                    "before anything starts the guest there again"
                )
            else:
                where = (
                    f"Guest {name} is running on {uri}, and the source {src_uri} still shows it "
                    f"{src.describe()}: the guest lives on {uri} now; do not resume it on the "
                    "source"
                )
        elif src.reachable and src.active:
            location, state = src_uri, src.describe()
            cleanup = self._cleanup(att)
            notes, leftovers = cleanup.notes, cleanup.leftovers
            if outcome.stuck:
                notes.insert(0, "The job had not ended, so the source was not resumed.")
            elif was_running and not outcome.postcopy_started:
                notes[:0] = self._resume_if_paused(src.dom)
                state = _ask(att.src, src_uri, att.needs.uuid).describe()
            where = f"Guest {name} is still {state} on the source {src_uri}"
            if outcome.postcopy_started:
                where += _POSTCOPY_HINT.format(dest=uri)
        elif not src.reachable:
            location, state = None, "unknown"
            where = (
                f"The source {src_uri} cannot be reached ({src.error}) and guest {name} is "
                f"{dest.describe()} on {uri}: where it runs is not confirmed. A guest's QEMU "
                "process does not need libvirtd, so it most likely still runs on the source; "
                "check there (libvirtd finds its guests again when it starts). The destination "
                "was left as it is"
            )
        else:
            location = uri if dest.found else (src_uri if src.found else None)
            state = dest.describe() if dest.found else src.describe()
            where = (
                f"Guest {name} is {dest.describe()} on {uri} and {src.describe()} on the source "
                f"{src_uri}; nothing was cleaned up"
            )
            if outcome.postcopy_started:
                where += _POSTCOPY_HINT.format(dest=uri)
        if outcome.error is not None:
            reason = str(outcome.error)
        else:
            wanted = "running" if self.live and was_running else "there"
            reason = f"the call returned, but the guest is not {wanted} on the destination alone"
        if "Postcopy is not supported" in reason:
            reason += (
                " (the destination's QEMU cannot use userfaultfd: the destination host needs "
                "vm.unprivileged_userfaultfd=1 or /dev/userfaultfd open to the QEMU user)"
            )
        if outcome.timed_out:
            events = "; ".join(outcome.events)
            reason = f"timed out after {timeout} s ({events}): {reason}"
        self.progress.event("failed", error=reason, location=where)
        code = outcome.error.get_error_code() if hasattr(outcome.error, "get_error_code") else None
        raise KvmLibvirtError(
            f"Migration of guest {name} to {uri} failed: {reason}. {where}. " + " ".join(notes),
            code=code,
            libvirt_message=str(outcome.error) if outcome.error is not None else None,
            location=location,
            state=state,
            source_state=src.describe(),
            dest_state=dest.describe(),
            changed=location == uri,
            stats=figures(outcome.last_stats),
            events=outcome.events,
            leftovers=leftovers,
            progress=self.progress.samples,
        )

    def _verify_agent(self, att: Attempt, dest: Seen, result: dict[str, Any]) -> dict[str, Any]:
        """Ping the guest agent on the destination until it answers or the time is up."""
        name, uri, wait = self.p["name"], att.chosen.uri, self.p["verify_agent_timeout"]
        if self.agent is None:
            raise KvmError(
                f"Guest {name} moved to {uri}, but verify_agent needs the libvirt_qemu module "
                "of libvirt-python, which is missing",
                location=uri,
                changed=True,
            )
        began = time.monotonic()
        deadline = began + wait
        last = "no answer"
        while True:
            left = deadline - time.monotonic()
            try:
                self.agent(dest.dom, '{"execute":"guest-ping"}', max(1, min(5, int(left))), 0)
            except libvirt.libvirtError as exc:
                last = exc.get_error_message() or str(exc)
                # No agent channel, or the guest is gone: waiting cannot help.
                if is_error(exc, libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED, libvirt.VIR_ERR_NO_DOMAIN):
                    break
            else:
                took = round(time.monotonic() - began, 3)
                self.progress.event("verified", location=uri, agent_s=took)
                return {"verified_agent_s": took}
            if time.monotonic() + 1 >= deadline:
                break
            time.sleep(1)
        now = _ask(att.dest.conn, uri, att.needs.uuid)
        self.progress.event("verify_failed", location=uri, error=last)
        raise KvmError(
            f"Guest {name} moved to {uri} and is {now.describe()} there, but its QEMU guest "
            f"agent did not answer a ping within {wait} s ({last}). The guest is on {uri}; "
            f"the source {self.p['uri']} no longer runs it",
            location=uri,
            state=now.describe(),
            changed=True,
            stats=result.get("stats"),
        )

    def _release_lock(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _tick(self, att: Attempt):
        def tick(elapsed: float, stats: dict[str, Any]) -> None:
            if self.lock is None:
                return
            # Let the next placement decision happen once the destination counts this guest.
            if elapsed > 30 or _safe_lookup(att.dest.conn, att.needs.uuid) is not None:
                self._release_lock()

        return tick

    def _succeeded(self, att: Attempt, src_now, dest_now) -> dict[str, Any]:
        outcome = att.outcome
        stats, source = {}, "none"
        for dom, label in ((dest_now, "destination"), (src_now, "source")):
            if dom is None or not self.live:
                continue
            try:
                found = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
            except libvirt.libvirtError:
                continue
            if found and found.get("type") == libvirt.VIR_DOMAIN_JOB_COMPLETED:
                stats, source = found, label
                break
        if not stats and outcome.last_stats:
            stats, source = outcome.last_stats, "last_sample"
        figs = figures(stats)
        if not figs["auto_converge_throttle"] and outcome.max_throttle:
            figs["auto_converge_throttle"] = outcome.max_throttle
        if not figs["disk_transferred_bytes"] and outcome.max_disk_processed:
            figs["disk_transferred_bytes"] = outcome.max_disk_processed
        figs.update(
            elapsed_s=round(outcome.elapsed, 3),
            stats_from=source,
            postcopy_started=outcome.postcopy_started,
            postcopy_reason=outcome.postcopy_reason,
            requested={
                "max_downtime_ms": self.p["max_downtime"],
                "bandwidth_mib_s": self.p["bandwidth"],
            },
        )
        state = state_name(dest_now) if dest_now is not None else "unknown"
        self.progress.event(
            "completed",
            location=att.chosen.uri,
            **{k: figs[k] for k in ("total_time_ms", "downtime_ms", "data_transferred_bytes")},
        )
        return {
            "location": att.chosen.uri,
            "state": state,
            "stats": figs,
            "events": outcome.events,
            "progress": self.progress.samples,
            "volumes_created": att.created,
        }

    def _resume_if_paused(self, dom) -> list[str]:
        if dom is None or dom.state()[0] != libvirt.VIR_DOMAIN_PAUSED:
            return []
        try:
            dom.resume()
        except libvirt.libvirtError as exc:
            return [f"The guest is paused on the source and could not be resumed: {exc}."]
        return ["The guest was paused on the source and has been resumed."]

    def _cleanup(self, att: Attempt) -> Cleanup:
        """Remove what this run left on the destination, only while the guest is on the source."""
        out = Cleanup()
        dest, needs = att.dest, att.needs
        src_now = _safe_lookup(att.src, needs.uuid)
        if src_now is None or att.outcome.postcopy_started:
            out.notes.append("The destination was left as it is (the guest may live there).")
            return out
        dconn = dest.conn
        if dconn is not None and not _alive(dconn):
            try:
                dconn.close()
            except libvirt.libvirtError:
                pass
            dconn = dest.conn = None
        if dconn is None:
            try:
                dconn = dest.conn = self._open(dest.uri, timeout=5)
            except KvmError:
                dconn = None
        paths = list(att.created)
        if dconn is None:
            out.leftovers = paths
            out.notes.append(
                f"The destination {dest.uri} is not reachable, so it could not be cleaned up: "
                "its libvirtd discards an unfinished incoming guest when it starts again"
                + (f"; volumes to remove there: {', '.join(paths)}" if paths else "")
                + "."
            )
            return out
        dom = _safe_lookup(dconn, needs.uuid)
        if dom is not None and not att.had_before:
            try:
                if dom.isActive():
                    dom.destroy()
                    out.notes.append("The unfinished guest on the destination was destroyed.")
                if lookup_domain(dconn, uuid=needs.uuid) is not None and dom.isPersistent():
                    dom.undefine()
                    out.notes.append("The partial definition on the destination was removed.")
            except (libvirt.libvirtError, KvmLibvirtError) as exc:
                out.notes.append(f"Could not remove the guest from the destination: {exc}.")
                out.leftovers.append(f"domain {needs.name} on {dest.uri}")
        removed = []
        for path in paths:
            try:
                vol = dconn.storageVolLookupByPath(path)
            except libvirt.libvirtError:
                continue
            try:
                vol.delete(0)
                removed.append(path)
            except libvirt.libvirtError as exc:
                out.leftovers.append(path)
                out.notes.append(f"Could not remove volume {path} on the destination: {exc}.")
        if removed:
            out.notes.append(f"Removed from the destination: {', '.join(removed)}.")
        if not out.notes:
            out.notes.append("Nothing was left on the destination.")
        return out


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


def _same_host(conn_a, conn_b) -> bool:
    """Whether two connections reach the same host (same host UUID in the capabilities)."""
    if conn_a is None or conn_b is None:
        return False
    try:
        return host_uuid(conn_a) == host_uuid(conn_b)
    except libvirt.libvirtError:
        return False


def _alive(conn) -> bool:
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False


def _safe_lookup(conn, uuid: str):
    """Lookup by UUID that treats a broken connection like 'not found'."""
    if conn is None:
        return None
    try:
        return lookup_domain(conn, uuid=uuid)
    except KvmLibvirtError:
        return None


__all__ = ["ARGUMENT_SPEC", "MODULE_KWARGS", "Migrator", "build_call", "job_active", "validate"]
