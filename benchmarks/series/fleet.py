"""Fleet: reading many hypervisors with the inventory plugin, ours against the peer's.

The lab (tests/lab/fleet.py) is started for the series: the largest count of namespaced
libvirt hosts (20 by default), each with 50 defined, never started guests, reached over
``qemu+tcp`` from this machine. Each figure is the wall time of ``ansible-inventory --list``
(the whole command: Python start, plugin load, the reads, the JSON), median of ``reps``:

- ours: one ``.libvirt.yml`` source with N URIs, read concurrently (``max_workers`` 10,
  the default) and, as a reference in the same run, one after another (``max_workers: 1``);
- peer: ``community.libvirt.libvirt`` takes one URI per source, so N source files in one
  directory (``-i DIR``), which ansible-inventory parses one after another;
- floor: ``ansible-inventory -i localhost, --list`` with our virtualenv: the command's own
  cost without any hypervisor.

Beside the command's time, the plugin's own time (``plugin_seconds``: its ``parse()`` of
every source in one process, benchmarks/inventory_parse.py: reading the hypervisors and
filling the inventory, without Python's start and ansible-inventory's JSON output).

No figures with network latency: this machine's kernel has no ``netem`` qdisc, so lab
hypervisors answer within microseconds and the reads are bound by CPU (one Python process),
not by waiting; concurrency pays where hypervisors are milliseconds away (over SSH).

Then the same N=20 with a 21st URI at ``tests.lab.hosts.BLACKHOLE_ADDRESS``, an address on
the lab bridge that drops every packet (a hypervisor gone silent): ours skips it
(``skip_unreachable``, ``connect_timeout`` 5 s); the peer's ``libvirt.open`` waits for the
kernel's TCP connect to give up, so that case runs once.

Every run's listing is checked: the host count must be N x guests, or the run fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import yaml

from ..common import (
    BENCH,
    OUR_COLLECTIONS,
    OUR_VENV,
    PEER_VENV,
    ROOT,
    NotReady,
    Results,
    loadavg,
    log,
)

SILENT_TIMEOUT = 5
PEER_SILENT_LIMIT = 400  # seconds: the peer's one run against the silent host


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(OUR_COLLECTIONS),
        ANSIBLE_NOCOLOR="1",
    )
    return env


def _listing(venv: Path, sources: list[str], timeout: float) -> tuple[float, int, str]:
    cmd = [str(venv / "bin/ansible-inventory"), "--list"]
    for source in sources:
        cmd += ["-i", source]
    started = time.monotonic()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=_env(), timeout=timeout, check=False, cwd=ROOT
    )
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}")
    data = json.loads(proc.stdout)
    hosts = set(data.get("_meta", {}).get("hostvars", {}))
    for name, group in data.items():
        if name != "_meta":
            hosts.update(group.get("hosts", []))
    return seconds, len(hosts), proc.stderr


def _plugin_seconds(venv: Path, plugin: str, sources: list[str]) -> tuple[float, int]:
    proc = subprocess.run(
        [str(venv / "bin/python"), str(BENCH / "inventory_parse.py"), plugin, *sources],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
        check=False,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"inventory_parse.py {plugin} failed: {proc.stderr[-2000:]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return data["seconds"], data["hosts"]


def _ours_source(workdir: Path, uris: list[str], **options) -> str:
    tag = "-".join(f"{k}{v}" for k, v in sorted(options.items())) or "default"
    path = workdir / f"ours-{len(uris)}-{tag}.libvirt.yml"
    path.write_text(yaml.safe_dump({"plugin": "virtops.kvm.libvirt", "uris": uris, **options}))
    return str(path)


def _peer_sources(workdir: Path, uris: list[str]) -> str:
    folder = workdir / f"peer-{len(uris)}"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.yml"):
        old.unlink()
    for i, uri in enumerate(uris):
        (folder / f"h{i:02d}.libvirt.yml").write_text(
            yaml.safe_dump({"plugin": "community.libvirt.libvirt", "uri": uri})
        )
    return str(folder)


def run(results: Results, *, counts: list[int], guests: int, reps: int, workdir: Path) -> None:
    try:
        from tests.lab import fleet  # noqa: PLC0415
        from tests.lab import hosts as lab  # noqa: PLC0415
    except ImportError as exc:
        raise NotReady(f"tests/lab cannot be imported ({exc})") from exc
    workdir = workdir / "fleet"
    workdir.mkdir(parents=True, exist_ok=True)
    size = max(counts)
    with lab.lab_lock(timeout=900):
        log(f"fleet: starting {size} lab hosts with {guests} guests each")
        started = time.monotonic()
        hosts = fleet.up(size, guests, owner="bench")
        results.note(
            "fleet",
            f"{size} lab hosts with {guests} defined guests each started in "
            f"{time.monotonic() - started:.0f} s",
        )
        try:
            _measure(
                results,
                hosts.uris,
                counts=counts,
                guests=guests,
                reps=reps,
                workdir=workdir,
                blackhole=lab.BLACKHOLE_ADDRESS,
            )
        finally:
            lab.down(hosts)
            log("fleet: lab hosts stopped")


def _record(results, *, case, side, n, seconds, listed, expected, load, rep, note=""):
    if listed != expected:
        raise RuntimeError(f"fleet/{case}/{side} n={n}: listed {listed} hosts, not {expected}")
    common = {"series": "fleet", "case": case, "side": side, "n": n, "rep": rep, "load": load}
    results.add(**common, metric="seconds", value=seconds, unit="s", note=note)
    results.add(**common, metric="hosts_listed", value=listed, unit="hosts")


def _measure(results, uris, *, counts, guests, reps, workdir, blackhole) -> None:
    for rep in range(reps):
        load = loadavg()
        seconds, listed, _stderr = _listing(OUR_VENV, ["localhost,"], 120)
        _record(
            results, case="list", side="floor", n=0, seconds=seconds, listed=listed,
            expected=1, load=load, rep=rep,
        )  # fmt: skip
    for n in sorted(counts):
        sources = {
            "ours": (OUR_VENV, _ours_source(workdir, uris[:n])),
            "ours_sequential": (OUR_VENV, _ours_source(workdir, uris[:n], max_workers=1)),
            "peer": (PEER_VENV, _peer_sources(workdir, uris[:n])),
        }
        for rep in range(reps):
            for side, (venv, source) in sources.items():
                load = loadavg()
                seconds, listed, _stderr = _listing(venv, [source], 600)
                _record(
                    results, case="list", side=side, n=n, seconds=seconds, listed=listed,
                    expected=n * guests, load=load, rep=rep,
                )  # fmt: skip
                if side == "peer":
                    plugin, files = "community.libvirt.libvirt", sorted(Path(source).glob("*.yml"))
                else:
                    plugin, files = "virtops.kvm.libvirt", [Path(source)]
                seconds, made = _plugin_seconds(venv, plugin, [str(f) for f in files])
                if made != n * guests:
                    raise RuntimeError(f"fleet: {side} plugin made {made} hosts at n={n}")
                results.add(
                    series="fleet", case="list", side=side, n=n, rep=rep, load=loadavg(),
                    metric="plugin_seconds", value=seconds, unit="s",
                )  # fmt: skip

    n = max(counts)
    silent = f"qemu+tcp://{blackhole}/system"
    with_silent = [*uris[:n], silent]
    ours = _ours_source(workdir, with_silent, skip_unreachable=True, connect_timeout=SILENT_TIMEOUT)
    for rep in range(reps):
        load = loadavg()
        seconds, listed, stderr = _listing(OUR_VENV, [ours], 600)
        if f"skipping {silent}" not in stderr:
            raise RuntimeError(f"fleet: ours did not report the silent hypervisor: {stderr}")
        _record(
            results, case="silent", side="ours", n=n, seconds=seconds, listed=listed,
            expected=n * guests, load=load, rep=rep,
            note=f"+1 silent hypervisor, connect_timeout {SILENT_TIMEOUT} s",
        )  # fmt: skip
    load = loadavg()
    seconds, listed, _stderr = _listing(
        PEER_VENV, [_peer_sources(workdir, with_silent)], PEER_SILENT_LIMIT
    )
    _record(
        results, case="silent", side="peer", n=n, seconds=seconds, listed=listed,
        expected=n * guests, load=load, rep=0,
        note="+1 silent hypervisor; one run (libvirt.open waits for the TCP connect)",
    )  # fmt: skip
