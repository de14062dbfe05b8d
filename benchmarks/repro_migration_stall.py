"""Reproduction of the migration stall (issue 13, item 12): run by hand, not by ``make test``.

    .venv/bin/python -m benchmarks.repro_migration_stall [--migrations N] [--variant SPEC ...]

A variant is ``TICKER:DOWNTIME:MECHANISM``:

- TICKER ``console``: the benchmark's ticker (``TICK n`` to ttyS0 every 20 ms, watched in the
  console file) plus the benchmark's dirtying loop; ``memory``: the same loop writing its
  counter to /tmp/tick only (read back over the command channel), plus the dirtying loop;
  ``idle``: the console ticker without the dirtying loop;
- DOWNTIME: a maximum downtime in ms set during every migration (``50``; ``300`` sets
  QEMU's default explicitly), ``default`` (nothing set) or ``bench`` (the benchmark's
  order: 4 migrations at the default, then 50 ms);
- MECHANISM ``virsh``: ``virsh migrate --live --p2p --persistent --undefinesource --unsafe
  NAME DEST --migrateuri tcp://DEST`` with ``virsh migrate-setmaxdowntime NAME MS`` once
  ``virsh domjobinfo`` shows the job (what the module does with the same flags); ``module``:
  ``virtops.kvm.migrate`` through ansible-playbook with the benchmark's arguments; ``save``:
  not live, ``virsh save`` then ``virsh restore`` on the same host (the same device state,
  but memory written once with the guest paused: no dirty-page tracking); ``none``: the
  control, no migration (the guest stays and is checked after as long a wait).

Each variant starts one tiny guest (192 MiB, 1 vCPU, as the benchmark) on lab host 1 and moves
it back and forth; after every migration it checks that the ticker goes on. When it does not,
it collects evidence (what the guest kernel printed on its console, heartbeats, vCPU time, the
guest's own view over the command channel on ttyS1 when that still answers, QEMU's view of
the local APIC, interrupt controllers and registers), migrates the guest once more and checks
again. ``--cmdline-extra loglevel=7`` makes the guest kernel print a whole oops. Two lab
hosts are started under the lab lock and stopped at the end; every guest made is removed.
``--budget`` bounds the whole run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from benchmarks.common import log, new_prefix
from benchmarks.series.migrate import DIRTIER, TICKER, TickWatch
from tests.lab import hosts as lab
from tests.lab.guests import GuestTimeout, TinyGuest, prepare_tiny_files, tiny_domain_xml
from tests.lab.images import build_tiny, lab_dir

MEMORY_TICKER = (
    "setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/tick; usleep 20000; done' "
    "</dev/null >/dev/null 2>&1 &"
)
BENCH_DEFAULT_RUNS = 4
NO_MIGRATION_SECONDS = 5
# What the guest says about itself when its ticker stops (over ttyS1).
GUEST_PROBE = r"""
echo "uptime $(cut -d' ' -f1 /proc/uptime)"
echo "tick $(cat /tmp/tick 2>/dev/null)"
for d in /proc/[0-9]*; do
    c=$(cat $d/cmdline 2>/dev/null | tr '\0' ' ')
    case "$c" in *TICK*|*usleep*|*dd*|*tmp/tick*|*HEARTBEAT*|*sleep*)
        echo "proc ${d#/proc/} state=$(cut -d' ' -f3 $d/stat) wchan=$(cat $d/wchan) $c";;
    esac
done
cat /proc/tty/driver/serial
grep -E 'ttyS|LOC|timer|NMI' /proc/interrupts
cat /sys/devices/system/clocksource/clocksource0/current_clocksource
grep -E 'Clock Event Device|event_handler|next_event' /proc/timer_list | head -12
"""
BASELINE_PROBE = r"""
cat /sys/devices/system/clocksource/clocksource0/current_clocksource
grep -E 'Clock Event Device|set_next_event' /proc/timer_list | head -6
grep -E 'LOC|ttyS' /proc/interrupts
"""
CONSOLE_TAIL = 256 * 1024
NOISE_RE = re.compile(r"^(TICK|HEARTBEAT) \d+\r?$|^\s*$")
HMP_PROBES = ("info lapic", "info pic", "info irq")


class Budget(Exception):
    """The run's time budget is used up."""


@dataclass
class Variant:
    ticker: str
    downtime: str
    mechanism: str

    @classmethod
    def parse(cls, spec: str) -> Variant:
        ticker, downtime, mechanism = spec.split(":")
        if ticker not in ("console", "memory", "idle"):
            raise ValueError(f"{spec}: ticker is console, memory or idle")
        if downtime not in ("default", "bench") and not downtime.isdigit():
            raise ValueError(f"{spec}: downtime is a number of ms, default or bench")
        if mechanism not in ("virsh", "module", "save", "none"):
            raise ValueError(f"{spec}: mechanism is virsh, module, save or none")
        return cls(ticker, downtime, mechanism)

    def __str__(self) -> str:
        return f"{self.ticker}:{self.downtime}:{self.mechanism}"

    def max_downtime(self, index: int) -> int | None:
        if self.downtime == "bench":
            return 50 if index >= BENCH_DEFAULT_RUNS else None
        return None if self.downtime == "default" else int(self.downtime)


@dataclass
class Move:
    index: int
    src: str
    dst: str
    max_downtime: int | None
    ok: bool = False
    seconds: float = 0.0
    downtime_ms: int | None = None
    iterations: int | None = None
    set_downtime_after_s: float | None = None
    ticking: bool | None = None
    max_gap_ms: float | None = None
    error: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)


def _virsh(uri: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["virsh", "-c", uri, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _jobinfo_field(text: str, key: str) -> str | None:
    m = re.search(rf"^{re.escape(key)}:\s+(.+)$", text, re.MULTILINE)
    return m.group(1).strip() if m else None


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.deadline = time.monotonic() + args.budget
        self.prefix = new_prefix("stall")
        self.hosts: list[lab.LabHost] = []
        self.made: list[tuple[str, Any]] = []
        self.report: list[dict[str, Any]] = []

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def check_budget(self, need: float) -> None:
        if self.left() < need:
            raise Budget(f"less than {need:g} s of the budget left")

    # -- migration ---------------------------------------------------------------------
    def migrate_virsh(self, name: str, src, dst, move: Move) -> None:
        cmd = [
            "virsh", "-c", src.uri, "migrate", "--live", "--p2p", "--persistent",
            "--undefinesource", "--unsafe", name, dst.uri, "--migrateuri", dst.migrate_uri,
        ]  # fmt: skip
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if move.max_downtime is not None:
            # as the module: once the job exists, polled every poll_interval
            while proc.poll() is None and time.monotonic() - started < self.args.timeout:
                info = _virsh(src.uri, "domjobinfo", name, timeout=10).stdout
                if _jobinfo_field(info, "Job type") not in (None, "None"):
                    _virsh(src.uri, "migrate-setmaxdowntime", name, str(move.max_downtime))
                    move.set_downtime_after_s = round(time.monotonic() - started, 2)
                    break
                time.sleep(self.args.poll)
        try:
            _out, err = proc.communicate(
                timeout=max(1, self.args.timeout - (time.monotonic() - started))
            )
        except subprocess.TimeoutExpired:
            _virsh(src.uri, "domjobabort", name)
            _out, err = proc.communicate(timeout=60)
            err = f"timed out, aborted: {err}"
        move.seconds = round(time.monotonic() - started, 2)
        move.ok = proc.returncode == 0
        move.error = err.strip()[-300:]
        info = _virsh(dst.uri, "domjobinfo", name, "--completed").stdout
        if _jobinfo_field(info, "Job type") != "Completed":
            info = _virsh(src.uri, "domjobinfo", name, "--completed").stdout
        with contextlib.suppress(TypeError, ValueError):
            move.downtime_ms = int(_jobinfo_field(info, "Total downtime").split()[0])
        with contextlib.suppress(TypeError, ValueError):
            move.iterations = int(_jobinfo_field(info, "Iteration"))

    def migrate_save(self, name: str, src, dst, move: Move) -> None:
        """Not live: ``virsh save`` (pauses, then writes memory and device state) and restore."""
        image = lab_dir() / "guests" / name / "saved.img"
        started = time.monotonic()
        try:
            for args in (("save", name, str(image)), ("restore", str(image))):
                res = _virsh(src.uri, *args, timeout=self.args.timeout)
                if res.returncode != 0:
                    move.error = res.stderr.strip()[-300:]
                    return
            move.ok = True
        finally:
            image.unlink(missing_ok=True)
            move.seconds = round(time.monotonic() - started, 2)

    def migrate_none(self, name: str, src, dst, move: Move) -> None:
        """The control: as long as a migration takes, without one."""
        time.sleep(NO_MIGRATION_SECONDS)
        move.ok, move.seconds = True, NO_MIGRATION_SECONDS

    def migrate_module(self, name: str, src, dst, move: Move) -> None:
        from benchmarks.common import run_playbook  # noqa: PLC0415

        margs: dict[str, Any] = {
            "uri": src.uri,
            "name": name,
            "dest_uri": dst.uri,
            "migrate_uri": dst.migrate_uri,
            "unsafe": True,
            "auto_converge": False,
            "timeout": int(self.args.timeout),
            "timeout_action": "abort",
            "poll_interval": self.args.poll,
        }
        if move.max_downtime is not None:
            margs["max_downtime"] = move.max_downtime
        book = [
            {
                "name": "migrate",
                "hosts": "localhost",
                "gather_facts": False,
                "tasks": [{"name": "migrate", "virtops.kvm.migrate": margs}],
            }
        ]
        started = time.monotonic()
        play = run_playbook(
            "ours", book, keep_results=True, check=False, timeout=self.args.timeout + 120
        )
        move.seconds = round(time.monotonic() - started, 2)
        task = play.tasks[-1] if play.tasks else None
        res = task.results[-1] if task and task.results else {}
        move.ok = play.rc == 0 and res.get("location") == dst.uri
        stats = res.get("stats") or {}
        move.downtime_ms = stats.get("downtime_ms")
        move.iterations = stats.get("memory_iterations")
        if not move.ok:
            move.error = str(res.get("msg", play.output_tail[-300:]))[:300]

    # -- checks ------------------------------------------------------------------------
    def ticking_memory(self, guest: TinyGuest) -> tuple[bool, str]:
        try:
            out = guest.check("cat /tmp/tick; usleep 1000000; cat /tmp/tick", timeout=15)
        except (GuestTimeout, AssertionError, OSError) as exc:
            return False, f"command channel: ...{str(exc)[-300:]}"
        nums = [int(x) for x in out.split() if x.isdigit()]
        return len(nums) == 2 and nums[1] > nums[0], f"/tmp/tick {nums}"

    def evidence(self, guest: TinyGuest, host) -> dict[str, Any]:
        ev: dict[str, Any] = {"host": host.uri}
        # what the guest kernel printed besides the tickers (an oops or panic shows here)
        lines = guest.console()[-CONSOLE_TAIL:].decode(errors="replace").splitlines()
        ev["console"] = [ln for ln in lines if not NOISE_RE.match(ln)][-200:]
        ev["domstate"] = _virsh(host.uri, "domstate", guest.name, "--reason").stdout.strip()
        cpu0 = guest.dom.info()[4]
        time.sleep(2)
        ev["vcpu_busy"] = f"+{(guest.dom.info()[4] - cpu0) / 1e9:.2f} s of CPU in 2 s"
        beats = guest.heartbeats()
        time.sleep(2.5)
        ev["heartbeats"] = f"{beats[-1:] or None} -> {guest.heartbeats()[-1:] or None} in 2.5 s"
        for probe in HMP_PROBES:
            res = _virsh(host.uri, "qemu-monitor-command", guest.name, "--hmp", probe)
            ev[probe] = (res.stdout or res.stderr).strip()[:1500]
        try:
            ev["guest"] = guest.check(GUEST_PROBE, timeout=20).strip()
        except (GuestTimeout, AssertionError, OSError) as exc:
            ev["guest"] = f"command channel failed: ...{str(exc)[-300:]}"
        for probe in ("info lapic", "info cpus", "info registers", "info registers"):
            res = _virsh(host.uri, "qemu-monitor-command", guest.name, "--hmp", probe)
            ev[f"{probe} (after)"] = (res.stdout or res.stderr).strip()[:1500]
            time.sleep(0.5)
        return ev

    def baseline(self, guest: TinyGuest) -> dict[str, str]:
        out = {}
        with contextlib.suppress(GuestTimeout, AssertionError, OSError):
            out["guest"] = guest.check(BASELINE_PROBE, timeout=20).strip()
        res = _virsh(self.hosts[0].uri, "qemu-monitor-command", guest.name, "--hmp", "info lapic")
        out["info lapic"] = res.stdout.strip()[:1500]
        return out

    # -- one variant -------------------------------------------------------------------
    def variant(self, variant: Variant, image) -> None:
        self.check_budget(120)
        name = f"{self.prefix}-{len(self.made)}"
        files = prepare_tiny_files(name, image)
        conns = [h.connect() for h in self.hosts]
        self.made.append((name, files))
        log(f"{variant}: guest {name}")
        try:
            dom = conns[0].defineXML(
                tiny_domain_xml(
                    name, image, files, memory_mib=192, cmdline_extra=self.args.cmdline_extra
                )
            )
            dom.create()
            guest = TinyGuest(name, files, conns[0])
            guest.wait_heartbeat(timeout=300)
            if variant.ticker == "memory":
                guest.check(MEMORY_TICKER, timeout=60)
            else:
                guest.check(TICKER, timeout=60)
            if variant.ticker != "idle":
                guest.check(DIRTIER, timeout=60)
            time.sleep(3)
            self.report.append({"variant": str(variant), "baseline": self.baseline(guest)})
            where, stalled_at = 0, None
            for index in range(self.args.migrations + 1):
                if stalled_at is not None and index > stalled_at + 1:
                    break
                if stalled_at is None and index == self.args.migrations:
                    break
                self.check_budget(self.args.timeout + 60)
                src = self.hosts[where]
                dst = src if variant.mechanism in ("save", "none") else self.hosts[1 - where]
                move = Move(index + 1, src.name, dst.name, variant.max_downtime(index))
                move.ticking, stalled = self.one_move(
                    variant,
                    guest,
                    src,
                    dst,
                    conns=conns,
                    move=move,
                    after_stall=stalled_at is not None,
                )
                if move.ok and dst is not src:
                    where = 1 - where
                self.report.append({"variant": str(variant), **move.__dict__})
                log(
                    f"{variant} #{move.index} {move.src}->{move.dst} "
                    f"max_downtime={move.max_downtime or 'default'} ok={move.ok} "
                    f"{move.seconds}s downtime={move.downtime_ms}ms iter={move.iterations} "
                    f"ticking={move.ticking} gap={move.max_gap_ms} {move.error}"
                )
                if stalled and stalled_at is None:
                    stalled_at = index
                    log(f"{variant}: STALL after migration #{move.index}; evidence:")
                    log(json.dumps(move.evidence, indent=1))
                elif stalled_at is not None:
                    log(f"{variant}: after one more migration, ticking={move.ticking}")
                if not move.ok:
                    break
        finally:
            self.remove(conns, name, files)
            for conn in conns:
                conn.close()

    def one_move(
        self, variant: Variant, guest: TinyGuest, src, dst, *, conns, move: Move, after_stall: bool
    ):
        migrate = {
            "virsh": self.migrate_virsh,
            "module": self.migrate_module,
            "save": self.migrate_save,
            "none": self.migrate_none,
        }[variant.mechanism]
        if variant.ticker == "memory":
            migrate(guest.name, src, dst, move)
            if not move.ok:
                return None, False
            guest.conn = conns[self.hosts.index(dst)]
            ticking, detail = self.ticking_memory(guest)
            move.evidence["check"] = detail
        else:
            with TickWatch(guest.files.console_log) as watch:
                if not after_stall:
                    watch.wait_ticks(10, timeout=60)
                    time.sleep(2)
                t0 = time.monotonic()
                migrate(guest.name, src, dst, move)
                if not move.ok:
                    return None, False
                try:
                    watch.wait_ticks(5, timeout=self.args.check_seconds)
                    ticking = True
                except RuntimeError:
                    ticking = False
                gap = watch.max_gap(t0, time.monotonic())
                move.max_gap_ms = None if gap is None else round(gap * 1000)
            guest.conn = conns[self.hosts.index(dst)]
        if not ticking and not after_stall:
            move.evidence.update(self.evidence(guest, dst))
        return ticking, not ticking

    def remove(self, conns, name: str, files) -> None:
        import libvirt  # noqa: PLC0415

        for conn in conns:
            with contextlib.suppress(libvirt.libvirtError):
                dom = conn.lookupByName(name)
                if dom.isActive():
                    dom.destroy()
                if dom.isPersistent():
                    dom.undefine()
        shutil.rmtree(files.dir, ignore_errors=True)
        sock = files.command_socket
        for path in [sock, *lab.hosts_dir().glob(f"h*/vtrun/{sock.name}")]:
            path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.repro_migration_stall")
    p.add_argument("--migrations", type=int, default=8, help="migrations per variant")
    p.add_argument(
        "--variant",
        action="append",
        type=Variant.parse,
        help="TICKER:DOWNTIME:MECHANISM (repeatable; default: console:bench:virsh, "
        "console:50:virsh, console:50:module)",
    )
    p.add_argument("--timeout", type=float, default=120, help="seconds per migration")
    p.add_argument("--check-seconds", type=float, default=20, help="wait for ticks after one")
    p.add_argument("--poll", type=float, default=0.5, help="job poll interval (the bench's)")
    p.add_argument("--budget", type=float, default=1500, help="seconds for the whole run")
    p.add_argument("--lock-timeout", type=float, default=600, help="seconds to wait for the lab")
    p.add_argument("--json", help="write the per-migration records here")
    p.add_argument(
        "--cmdline-extra", default="", help="added to the guest kernel's command line (loglevel=7)"
    )
    args = p.parse_args(argv)
    variants = args.variant or [
        Variant.parse(s) for s in ("console:bench:virsh", "console:50:virsh", "console:50:module")
    ]

    def on_term(signum, frame):  # run the clean-up of the finally blocks
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    import libvirt  # noqa: PLC0415

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors are raised anyway
    image = build_tiny()
    run = Run(args)
    owner = f"repro:{os.getpid()}"
    log(f"waiting for the lab lock (up to {args.lock_timeout:g} s)")
    with lab.lab_lock(timeout=args.lock_timeout):
        running = lab.Lab.load()
        if running is not None and running.owner == "cli" and lab.is_running(running):
            log("lab hosts started by `python -m tests.lab.hosts up` are running; stop them first")
            return 2
        run.deadline = time.monotonic() + args.budget  # the budget starts with the lab
        started = lab.up(2, owner=owner)
        run.hosts = started.hosts
        try:
            for variant in variants:
                try:
                    run.variant(variant, image)
                except Budget as exc:
                    log(f"{variant}: stopped: {exc}")
                    break
                except (GuestTimeout, RuntimeError, AssertionError) as exc:
                    log(f"{variant}: failed: {exc}")
        finally:
            lab.down(started)
            log("lab hosts stopped")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(run.report, fh, indent=1, default=str)
    summary: dict[str, list[str]] = {}
    for rec in run.report:
        if "baseline" in rec:
            continue
        summary.setdefault(rec["variant"], []).append(
            "ok" if rec["ticking"] else ("STALL" if rec["ok"] else "fail")
        )
    for key, marks in summary.items():
        print(f"{key}: {' '.join(marks)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
