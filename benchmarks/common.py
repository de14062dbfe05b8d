"""Shared pieces of the benchmarks: virtualenvs, playbook runs with per-task timing, load
average samples, result records, and clean-up of the guests a series made.

Not part of the collection and not part of ``make test``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devtools.libvirt_cleanup import domains_with_prefix, remove_domain

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PLAYBOOKS = BENCH / "playbooks"
OUR_VENV = ROOT / ".venv"
# Where the playbooks find virtops.kvm: this checkout, or another commit (run.py --collection).
OUR_COLLECTIONS = OUR_VENV / "collections"
PEER_VENV = BENCH / ".venv-peer"
PLOT_VENV = BENCH / ".venv-plot"
SYSTEM_URI = "qemu:///system"

# Only these libvirt-python methods answer without a round trip to libvirtd: the object
# caches its name and UUID (and a domain its ID) when it is made.
LOCAL_CALLS = frozenset({"name", "UUID", "UUIDString", "ID", "connect", "getName"})


class NotReady(RuntimeError):
    """A series whose prerequisite (a role, the multi-host lab) is not there yet."""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def loadavg() -> tuple[float, float, float]:
    one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
    return float(one), float(five), float(fifteen)


def new_prefix(series: str) -> str:
    """A unique name prefix for the libvirt objects of one series (``vtb-<series>-<hex>``)."""
    return f"vtb-{series}-{secrets.token_hex(3)}"


# ----------------------------------------------------------------------------------------
# virtualenvs


def ensure_venv(path: Path, requirements: Path) -> Path:
    """Make ``path`` from the pinned ``requirements`` (again when the file changed)."""
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    stamp = path / ".requirements.sha256"
    if stamp.exists() and stamp.read_text().strip() == digest:
        return path
    log(f"making {path.relative_to(ROOT)} from {requirements.relative_to(ROOT)}")
    if path.exists():
        shutil.rmtree(path)
    # the interpreter behind the project's .venv, so every side runs the same Python
    base = subprocess.run(
        [str(OUR_VENV / "bin/python"), "-c", "import sys; print(sys._base_executable)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    subprocess.run([base, "-m", "venv", str(path)], check=True)
    subprocess.run(
        [
            str(path / "bin/pip"),
            "install",
            "-q",
            "--disable-pip-version-check",
            "-r",
            str(requirements),
        ],
        check=True,
    )
    stamp.write_text(digest + "\n")
    return path


def pip_version(venv: Path, package: str) -> str:
    if not (venv / "bin/python").exists():  # not made: no series of this run needed it
        return "?"
    proc = subprocess.run(
        [
            str(venv / "bin/python"),
            "-c",
            f"import importlib.metadata as m; print(m.version({package!r}))",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() or "?"


# ----------------------------------------------------------------------------------------
# playbook runs


@dataclass
class TaskTime:
    task: str
    seconds: float
    items: int
    changed: int
    failed: int
    results: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class PlayRun:
    side: str
    rc: int
    wall_s: float
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    tasks: list[TaskTime]
    output_tail: str

    def task(self, name: str) -> TaskTime:
        for entry in reversed(self.tasks):
            if entry.task == name:
                return entry
        raise KeyError(f"no task {name!r} in {[t.task for t in self.tasks]}: {self.output_tail}")

    def check(self) -> PlayRun:
        failed = [t for t in self.tasks if t.failed]
        if self.rc != 0 or failed:
            detail = "; ".join(f"{t.task}: {t.results[:1]}" for t in failed)
            raise RuntimeError(
                f"{self.side} playbook failed (rc {self.rc}) {detail}\n{self.output_tail}"
            )
        return self


def side_venv(side: str) -> Path:
    return PEER_VENV if side == "peer" else OUR_VENV


def run_playbook(
    side: str,
    playbook: Path | list[dict[str, Any]],
    extra_vars: dict[str, Any] | None = None,
    *,
    timeout: float = 3600,
    keep_results: bool = False,
    check: bool = True,
) -> PlayRun:
    """Run a playbook with the ``ours`` (.venv) or ``peer`` (.venv-peer) ansible-playbook.

    Both sides get the same ansible.cfg, inventory (localhost, local connection, the side's
    own Python as interpreter) and the timing callback; the stdout callback's output is kept
    only for error messages.
    """
    venv = side_venv(side)
    with tempfile.TemporaryDirectory(prefix="vtb-play-") as tmp_s:
        tmp = Path(tmp_s)
        if isinstance(playbook, list):
            path = tmp / "playbook.yml"
            path.write_text(yaml.safe_dump(playbook, sort_keys=False))
            playbook = path
        times = tmp / "times.json"
        cmd = [str(venv / "bin/ansible-playbook"), "-i", "localhost,", "-c", "local", str(playbook)]
        if extra_vars:
            cmd += ["-e", json.dumps(extra_vars)]
        env = dict(os.environ)
        env.update(
            ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
            ANSIBLE_COLLECTIONS_PATH=str(OUR_COLLECTIONS),
            ANSIBLE_CALLBACK_PLUGINS=str(BENCH / "callback_plugins"),
            ANSIBLE_CALLBACKS_ENABLED="bench_timer",
            ANSIBLE_PYTHON_INTERPRETER=str(venv / "bin/python"),
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_LOCAL_TEMP=str(tmp / "local"),
            ANSIBLE_REMOTE_TEMP=str(tmp / "remote"),
            VIRTOPS_BENCH_TIMES=str(times),
        )
        env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
        if keep_results:
            env["VIRTOPS_BENCH_KEEP_RESULTS"] = "1"
        before = loadavg()
        started = time.monotonic()
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False, cwd=ROOT
        )
        wall = time.monotonic() - started
        after = loadavg()
        tasks = [TaskTime(**t) for t in json.loads(times.read_text())] if times.exists() else []
    run = PlayRun(
        side, proc.returncode, wall, before, after, tasks, (proc.stdout + proc.stderr)[-3000:]
    )
    return run.check() if check else run


# ----------------------------------------------------------------------------------------
# results


@dataclass
class Record:
    """One measured figure. ``load1`` is the 1-minute load average when it was taken."""

    series: str
    case: str
    side: str
    n: float
    metric: str
    value: float | None
    unit: str
    rep: int = 0
    load1: float = 0.0
    load5: float = 0.0
    load15: float = 0.0
    note: str = ""

    @classmethod
    def now(cls, **kwargs: Any) -> Record:
        load = kwargs.pop("load", None) or loadavg()
        return cls(load1=load[0], load5=load[1], load15=load[2], **kwargs)


class Results:
    def __init__(self) -> None:
        self.records: list[Record] = []
        self.details: dict[str, Any] = {}
        self.notes: dict[str, list[str]] = {}

    def add(self, **kwargs: Any) -> Record:
        rec = Record.now(**kwargs)
        self.records.append(rec)
        value = "-" if rec.value is None else f"{rec.value:.4g}"
        log(
            f"{rec.series}/{rec.case}/{rec.side} n={rec.n:g} {rec.metric}={value} {rec.unit} "
            f"(load {rec.load1:.2f})"
        )
        return rec

    def note(self, series: str, text: str) -> None:
        self.notes.setdefault(series, []).append(text)
        log(f"{series}: {text}")

    def select(self, **match: Any) -> list[Record]:
        return [r for r in self.records if all(getattr(r, k) == v for k, v in match.items())]

    def median(self, **match: Any) -> float | None:
        values = [r.value for r in self.select(**match) if r.value is not None]
        return statistics.median(values) if values else None

    def load_range(self, **match: Any) -> str:
        loads = [r.load1 for r in self.select(**match)]
        if not loads:
            return "-"
        return (
            f"{min(loads):.1f}"
            if min(loads) == max(loads)
            else f"{min(loads):.1f}-{max(loads):.1f}"
        )

    def as_json(self, meta: dict[str, Any]) -> dict[str, Any]:
        return {
            "meta": meta,
            "notes": self.notes,
            "records": [asdict(r) for r in self.records],
            "details": self.details,
        }


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


# ----------------------------------------------------------------------------------------
# the machine


def machine_info() -> dict[str, Any]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    flags = Path("/proc/cpuinfo").read_text()
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "kernel": platform.release(),
        "os": _os_release(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "hardware_virtualization": bool(re.search(r"\b(vmx|svm)\b", flags)),
        "python": platform.python_version(),
    }
    with contextlib.suppress(Exception):
        import libvirt  # noqa: PLC0415

        conn = libvirt.open(SYSTEM_URI)
        try:
            info["libvirt"] = _version(conn.getLibVersion())
            info["qemu"] = _version(conn.getVersion())
        finally:
            conn.close()
    return info


def _version(number: int) -> str:
    return f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"


def _os_release() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return platform.platform()


# ----------------------------------------------------------------------------------------
# clean-up


def remove_domains(conn, prefix: str) -> int:
    """Destroy and undefine every guest whose name starts with ``prefix``; return how many."""
    import libvirt  # noqa: PLC0415

    removed = 0
    for dom in domains_with_prefix(conn, prefix):
        try:
            remove_domain(dom)
            removed += 1
        except libvirt.libvirtError as exc:
            log(f"could not remove {dom.name()}: {exc}")
    return removed


@contextlib.contextmanager
def guests_removed(conn, prefix: str, dirs: list[Path] | None = None) -> Iterator[None]:
    """Whatever happens inside, remove the ``prefix`` guests (and ``dirs``) at the end."""
    try:
        yield
    finally:
        count = remove_domains(conn, prefix)
        for path in dirs or []:
            shutil.rmtree(path, ignore_errors=True)
        log(f"removed {count} guest(s) named {prefix}*")
