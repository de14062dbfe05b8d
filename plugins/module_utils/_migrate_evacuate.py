# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""Moving every running guest off a host (``all_running``), or only enough of them to even
out memory (``balance_threshold_mib``): a sequence of single-guest ``Migrator`` runs.

Guests go largest first, each to the candidate with the most room at that moment, one at a
time or ``parallel`` at once (the placement lock of ``Migrator`` keeps parallel choices
honest). The first guest that cannot move stops the evacuation: guests already moved stay
where they went, the others stay on the source, and the module fails saying which is where.
In check mode the plan is made the same way, with each planned move's memory reserved on its
destination, and nothing moves.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from ._client import open_connection
from ._errors import KvmError, KvmValidationError
from ._libvirt import libvirt
from ._migrate import Migrator
from ._migrate_options import validate
from ._migrate_place import host_memory


@dataclass
class Guest:
    name: str
    memory_mib: int


def running_guests(conn) -> list[Guest]:
    """The host's active guests, largest first (then by name, for a stable order)."""
    guests = []
    for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
        try:
            guests.append(Guest(dom.name(), (int(dom.info()[2]) + 1023) // 1024))
        except libvirt.libvirtError:
            continue  # gone while we looked
    return sorted(guests, key=lambda g: (-g.memory_mib, g.name))


def balance_pick(guests: list[Guest], gap_mib: int) -> Guest | None:
    """The guest whose move best halves ``gap_mib`` (and makes it smaller), or None."""
    fitting = [g for g in guests if 0 < g.memory_mib < gap_mib]
    if not fitting:
        return None
    return min(fitting, key=lambda g: (abs(gap_mib / 2 - g.memory_mib), g.name))


@dataclass
class Report:
    moved: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    stopped: str | None = None


class Evacuator:
    def __init__(self, kvm, *, opener: Callable[..., Any] = open_connection) -> None:
        self.kvm = kvm
        self.p = kvm.params
        self.opener = opener
        self.report = Report()
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def run(self) -> dict[str, Any]:
        validate(self.p)
        if self.p["name"]:
            raise KvmValidationError("name and all_running=true are mutually exclusive")
        if not self.p["dest_candidates"] and not self.p["dest_uri"]:
            raise KvmValidationError("all_running=true needs dest_candidates or dest_uri")
        if self.p["parallel"] < 1:
            raise KvmValidationError("parallel must be 1 or more")
        if self.p["balance_threshold_mib"] is not None:
            if self.p["balance_threshold_mib"] < 0:
                raise KvmValidationError("balance_threshold_mib cannot be negative")
            self._balance()
        elif self.kvm.check_mode or self.p["parallel"] == 1:
            self._serial(self._movable())
        else:
            self._parallel(self._movable())
        return self._result()

    def _movable(self) -> list[Guest]:
        """The source's active guests, largest first, without those named in ``exclude``."""
        exclude = set(self.p.get("exclude") or ())
        return [g for g in running_guests(self.kvm.conn) if g.name not in exclude]

    # -- one guest --------------------------------------------------------------------
    def _move(self, guest: Guest, reservations=None, **overrides) -> dict[str, Any] | None:
        overrides = dict(overrides, name=guest.name)
        migrator = Migrator(
            self.kvm, opener=self.opener, overrides=overrides, reservations=reservations
        )
        try:
            result = migrator.run()
        except KvmError as exc:
            with self._lock:
                self.report.failed.append(
                    {"name": guest.name, "msg": exc.msg, "details": _plain(exc.details)}
                )
                self.report.stopped = self.report.stopped or (
                    f"guest {guest.name} could not move: {exc.msg}"
                )
            self._stop.set()
            return None
        entry = {
            "name": guest.name,
            "memory_mib": guest.memory_mib,
            "changed": result["changed"],
            "dest_uri": result["dest_uri"],
            "location": result["location"],
            "stats": result.get("stats"),
        }
        with self._lock:
            if result["changed"]:
                self.report.moved.append(entry)
        return entry

    # -- evacuation -------------------------------------------------------------------
    def _serial(self, guests: list[Guest]) -> None:
        planned: dict[str, int] = {}
        for guest in guests:
            if self._stop.is_set():
                return
            entry = self._move(guest, reservations=planned if self.kvm.check_mode else None)
            if entry and self.kvm.check_mode:
                planned[entry["dest_uri"]] = planned.get(entry["dest_uri"], 0) + guest.memory_mib

    def _parallel(self, guests: list[Guest]) -> None:
        def work(guest: Guest) -> None:
            if not self._stop.is_set():
                self._move(guest)

        with ThreadPoolExecutor(max_workers=self.p["parallel"]) as pool:
            list(pool.map(work, guests))

    # -- balancing --------------------------------------------------------------------
    def _balance(self) -> None:
        """Move guests off this host while some candidate has more than the threshold more
        memory not committed to guests; each time the guest that best halves the gap."""
        src = self.kvm.conn
        threshold = self.p["balance_threshold_mib"]
        uris = self.p["dest_candidates"] or [self.p["dest_uri"]]
        conns = {}
        try:
            for uri in dict.fromkeys(uris):
                if uri == self.p["uri"]:
                    continue  # the same list serves every host
                try:
                    conn = self.opener(uri, timeout=self.p["connect_timeout"])
                except KvmError:
                    continue  # an unreachable candidate takes nothing
                conns[uri] = conn
            guests = self._movable()
            src_free = host_memory(src).uncommitted_mib
            planned = {uri: 0 for uri in conns}
            while guests and conns and not self._stop.is_set():
                room = {
                    uri: host_memory(conn).uncommitted_mib - planned[uri]
                    for uri, conn in conns.items()
                }
                best = max(room, key=lambda u: (room[u], -list(conns).index(u)))
                gap = room[best] - src_free
                if gap <= threshold:
                    return
                guest = balance_pick(guests, gap)
                if guest is None:
                    return
                guests.remove(guest)
                entry = self._move(guest, dest_uri=best, dest_candidates=None)
                if entry is None:
                    return
                if self.kvm.check_mode:
                    planned[best] += guest.memory_mib
                    src_free += guest.memory_mib
                else:
                    src_free = host_memory(src).uncommitted_mib
        finally:
            for conn in conns.values():
                try:
                    conn.close()
                except libvirt.libvirtError:
                    pass

    def _result(self) -> dict[str, Any]:
        rep = self.report
        remaining = [g.name for g in running_guests(self.kvm.conn)]
        result = {
            "changed": bool(rep.moved),
            "moved": rep.moved,
            "remaining": remaining,
            "source_uri": self.p["uri"],
        }
        if rep.failed:
            moved = ", ".join(f"{m['name']} -> {m['dest_uri']}" for m in rep.moved) or "none"
            raise KvmError(
                f"Evacuation of {self.p['uri']} stopped: {rep.stopped}. Moved: {moved}. "
                f"Still on the source: {', '.join(remaining) or 'none'}",
                moved=rep.moved,
                failed=rep.failed,
                remaining=remaining,
            )
        return result


def _plain(details: dict[str, Any]) -> dict[str, Any]:
    """The JSON-friendly part of an error's details."""
    keep = (
        "placement",
        "location",
        "state",
        "source_state",
        "dest_state",
        "events",
        "leftovers",
        "stats",
    )
    return {k: v for k, v in details.items() if k in keep}
