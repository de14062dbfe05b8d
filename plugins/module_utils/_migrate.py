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

The options and the libvirt call they make are in ``_migrate_options``, choosing a destination
in ``_migrate_place``, the watched job in ``_migrate_job``, what follows it in
``_migrate_result``.
"""

from __future__ import annotations

from typing import Any, Callable

from ._client import open_connection
from ._diff import DifferenceTracker
from ._errors import KvmError, KvmValidationError, from_libvirt
from ._libvirt import libvirt, lookup_domain
from ._migrate_job import JobPolicy, MigrationJob
from ._migrate_options import build_call, default_timeout, tls_wanted, validate, volume_xml
from ._migrate_place import (
    Candidate,
    CheckRequest,
    GuestNeeds,
    PlacementLock,
    check_destination,
    choose,
    host_uuid,
)
from ._migrate_result import (
    Aftermath,
    Attempt,
    Destination,
    Progress,
    safe_lookup,
    state_name,
)

try:
    import libvirt_qemu
except ImportError:  # shipped with libvirt-python; only verify_agent needs it
    libvirt_qemu = None


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
        agent = agent or (libvirt_qemu.qemuAgentCommand if libvirt_qemu else None)
        self.after = Aftermath(self.p, self.progress, self.warnings, self._open, agent)

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
        fresh = self.after.fresh
        for conn in fresh:
            try:
                conn.close()
            except libvirt.libvirtError:
                pass
        for dest in self.dests:
            if dest.conn is not None and all(dest.conn is not c for c in fresh):
                try:
                    dest.conn.close()
                except libvirt.libvirtError:
                    pass
                dest.conn = None
        fresh.clear()
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
            cleanup = self.after.cleanup(att)
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

        src, dest = self.after.look_after(att)
        if self.after.arrived(dest, was_running) and src.reachable and not src.active:
            if outcome.error is not None:
                self.warnings.append(
                    f"The migration call reported an error ({outcome.error}) but guest {name} "
                    f"is {dest.describe()} on {uri} and the source confirms it is no longer "
                    "running there"
                )
            self.after.drop_source_leftover(att, src)
            result = self.after.succeeded(att, src.dom, dest.dom)
            result["stats"]["requested"]["timeout_s"] = timeout or None
            if self.p["verify_agent"]:
                result.update(self.after.verify_agent(att, dest, result))
            return result
        self.after.fail(att, src, dest, was_running, timeout)

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

    def _release_lock(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _tick(self, att: Attempt):
        def tick(elapsed: float, stats: dict[str, Any]) -> None:
            if self.lock is None:
                return
            # Let the next placement decision happen once the destination counts this guest.
            if elapsed > 30 or safe_lookup(att.dest.conn, att.needs.uuid) is not None:
                self._release_lock()

        return tick


def _same_host(conn_a, conn_b) -> bool:
    """Whether two connections reach the same host (same host UUID in the capabilities)."""
    if conn_a is None or conn_b is None:
        return False
    try:
        return host_uuid(conn_a) == host_uuid(conn_b)
    except libvirt.libvirtError:
        return False


__all__ = ["Migrator"]
