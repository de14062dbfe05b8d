# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""After a migration job: where the guest is (asking both hosts, reconnecting when a
connection broke), the result when it arrived, and otherwise the clean-up of what is safe to
remove and the error saying where the guest is. Also the progress records of a run.
"""

from __future__ import annotations

import datetime
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, NoReturn

from ._errors import KvmError, KvmLibvirtError, from_libvirt, is_error
from ._libvirt import libvirt, lookup_domain, run_state
from ._migrate_job import JobOutcome, bounded, figures
from ._migrate_place import Candidate, GuestNeeds

# Seconds one look at a host after the job may take (a hung daemon must not hang the run).
PROBE_WAIT = 20.0


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


class Aftermath:
    """What a ``Migrator`` does once the job has ended (or failed to start)."""

    def __init__(
        self,
        params: dict[str, Any],
        progress: Progress,
        warnings: list[str],
        opener: Callable[..., Any],
        agent: Callable[..., Any] | None,
    ) -> None:
        self.p = params
        self.live = params["mode"] == "live"
        self.progress = progress
        self.warnings = warnings
        self._open = opener  # (uri, timeout=None) -> connection
        self.agent = agent
        self.fresh: list[Any] = []  # connections opened again after the job

    def look_after(self, att: Attempt) -> tuple[Seen, Seen]:
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

    def arrived(self, dest: Seen, was_running: bool) -> bool:
        """Whether the destination has the guest in the state the migration should leave."""
        if not dest.found:
            return False
        if not self.live:
            return dest.persistent and not dest.active
        return dest.state == libvirt.VIR_DOMAIN_RUNNING if was_running else dest.active

    def drop_source_leftover(self, att: Attempt, src: Seen) -> None:
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

    def fail(
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
            cleanup = self.cleanup(att)
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

    def verify_agent(self, att: Attempt, dest: Seen, result: dict[str, Any]) -> dict[str, Any]:
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

    def succeeded(self, att: Attempt, src_now, dest_now) -> dict[str, Any]:
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

    def cleanup(self, att: Attempt) -> Cleanup:
        """Remove what this run left on the destination, only while the guest is on the source."""
        out = Cleanup()
        dest, needs = att.dest, att.needs
        src_now = safe_lookup(att.src, needs.uuid)
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
        dom = safe_lookup(dconn, needs.uuid)
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


def _alive(conn) -> bool:
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False


def safe_lookup(conn, uuid: str):
    """Lookup by UUID that treats a broken connection like 'not found'."""
    if conn is None:
        return None
    try:
        return lookup_domain(conn, uuid=uuid)
    except KvmLibvirtError:
        return None
