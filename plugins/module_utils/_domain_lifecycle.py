# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module_utils of virtops.kvm: not a public API, may change without notice.
"""Run states of a guest and the transitions between them, each waited for until done.

A graceful shutdown asks the guest (ACPI power button or guest agent), asks again every few
seconds (a guest still booting may miss the first request), and waits until libvirt says the
guest is shut off. Only when the caller allows it does a guest that did not stop in time get
a hard stop; otherwise the run fails with a timeout naming the state last seen.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ._errors import KvmTimeoutError, from_libvirt, is_error
from ._libvirt import ACTIVE_STATES, domain_state, libvirt
from ._wait import wait_until

RESEND_SHUTDOWN_EVERY = 5.0


@dataclass
class Transition:
    """What to do to get from ``current`` to the wished ``state`` (steps in order)."""

    steps: list[str]
    final: str


def plan(current: str, wanted: str) -> Transition:
    """Steps from run state ``current`` (``shutoff`` for a guest just defined) to ``wanted``.

    ``wanted`` is one of the module's states except ``absent``.
    """
    if wanted == "present":
        return Transition([], current)
    if wanted == "running":
        steps = {
            "running": [],
            "paused": ["resume"],
            "pmsuspended": ["wakeup"],
            "shutdown": ["wait_shutoff", "start"],
        }.get(current, ["start"])
        return Transition(steps, "running")
    if wanted == "paused":
        steps = {
            "paused": [],
            "running": ["suspend"],
            "pmsuspended": ["wakeup", "suspend"],
            "shutdown": ["wait_shutoff", "start_paused"],
        }.get(current, ["start_paused"])
        return Transition(steps, "paused")
    if wanted == "shutdown":
        steps = {
            "running": ["shutdown"],
            "paused": ["resume", "shutdown"],
            "pmsuspended": ["wakeup", "shutdown"],
            "shutdown": ["wait_shutoff"],
        }.get(current, [])
        return Transition(steps, "shutoff")
    if wanted == "destroyed":
        return Transition(["destroy"] if current in ACTIVE_STATES else [], "shutoff")
    raise ValueError(f"unknown state {wanted}")


@dataclass
class Lifecycle:
    """Performs transitions on one domain, waiting for each to finish."""

    dom: Any
    timeout: float
    force: bool = False
    shutdown_mode: str = "default"
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    interval: float = 0.25
    forced: bool = field(default=False, init=False)  # a hard stop followed a graceful one

    @property
    def name(self) -> str:
        return self.dom.name()

    def run(self, steps: list[str]) -> None:
        for step in steps:
            getattr(self, step)()

    # -- steps
    def start(self) -> None:
        self._call(self.dom.create, "start guest")
        self._wait_for(("running",), "the guest to run")

    def start_paused(self) -> None:
        self._call(
            lambda: self.dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED), "start guest paused"
        )
        self._wait_for(("paused",), "the guest to start paused")

    def resume(self) -> None:
        self._call(self.dom.resume, "resume guest")
        self._wait_for(("running",), "the guest to resume")

    def suspend(self) -> None:
        self._call(self.dom.suspend, "pause guest")
        self._wait_for(("paused",), "the guest to pause")

    def wakeup(self) -> None:
        self._call(lambda: self.dom.pMWakeup(0), "wake up guest")
        self._wait_for(("running",), "the guest to wake up")

    def destroy(self) -> None:
        try:
            self.dom.destroy()
        except libvirt.libvirtError as exc:
            if not is_error(exc, libvirt.VIR_ERR_OPERATION_INVALID):  # already stopped
                raise from_libvirt(exc, f"stop guest {self.name}") from exc
        self._wait_for(("shutoff", "crashed"), "the guest to stop")

    def wait_shutoff(self) -> None:
        self._wait_for(("shutoff", "crashed"), "the guest to finish shutting down")

    def shutdown(self) -> None:
        """Ask the guest to shut down; wait; hard stop after ``timeout`` only if forced."""
        flags = {
            "default": 0,
            "acpi": libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN,
            "agent": libvirt.VIR_DOMAIN_SHUTDOWN_GUEST_AGENT,
        }[self.shutdown_mode]
        last_request = [None]

        def probe():
            state = domain_state(self.dom)
            if state in ("shutoff", "crashed"):
                return state
            now = self.clock()
            if last_request[0] is None or now - last_request[0] >= RESEND_SHUTDOWN_EVERY:
                last_request[0] = now
                try:
                    self.dom.shutdownFlags(flags)
                except libvirt.libvirtError as exc:
                    if is_error(exc, libvirt.VIR_ERR_OPERATION_INVALID):
                        return None  # stopped meanwhile; the next probe sees it
                    raise from_libvirt(exc, f"ask guest {self.name} to shut down") from exc
            return None

        try:
            wait_until(
                probe,
                timeout=self.timeout,
                what=f"guest {self.name} to shut down",
                interval=self.interval,
                clock=self.clock,
                sleep=self.sleep,
                describe=lambda: domain_state(self.dom),
            )
        except KvmTimeoutError as exc:
            if not self.force:
                raise KvmTimeoutError(
                    f"{exc.msg}. The guest did not react to the shutdown request; set force "
                    "true to stop it hard after the timeout",
                    **exc.details,
                ) from exc
            self.forced = True
            self.destroy()

    # -- helpers
    def _call(self, func, action: str) -> None:
        try:
            func()
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, f"{action} {self.name}") from exc

    def _wait_for(self, states: tuple[str, ...], what: str) -> str:
        def probe():
            state = domain_state(self.dom)
            return state if state in states else None

        return wait_until(
            probe,
            timeout=self.timeout,
            what=what,
            interval=self.interval,
            clock=self.clock,
            sleep=self.sleep,
            describe=lambda: domain_state(self.dom),
        )
