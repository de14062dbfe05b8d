"""Helpers shared by the test modules, which import these and never each other (fixtures are
in the conftest.py files; libvirt clean-up shared with the benchmarks in devtools/).

``wait_for`` (the one wait loop); playbook runs (``run_playbook``, ``PlaybookRun``,
``four_times``: check, apply, check, apply); task builders; small libvirt and file helpers.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import yaml

T = TypeVar("T")


def wait_for(
    check: Callable[[], T],
    timeout: float,
    what: str,
    *,
    interval: float = 0.2,
    error: type[Exception] = AssertionError,
    detail: Optional[Callable[[], str]] = None,
) -> T:
    """Call ``check`` until it returns something true and return that; after ``timeout``
    seconds raise ``error`` saying ``what`` did not happen (with ``detail()`` appended, for
    example a console tail). ``check`` runs at least once, and once more at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = detail() if detail is not None else ""
            raise error(f"{what}: not within {timeout:g} s{extra}")
        time.sleep(interval)


# ----------------------------------------------------------------------------- playbooks
ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def checkout_env(**extra: str) -> dict[str, str]:
    """This process's environment for Ansible commands run from the checkout (its ansible.cfg and
    the venv's link to the collection, no colours), with ``extra`` on top."""
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".venv" / "collections"),
        ANSIBLE_NOCOLOR="1",
    )
    env.update(extra)
    return env


@dataclass
class PlaybookRun:
    rc: int
    stdout: str
    stderr: str
    results: list[dict[str, Any]] = field(default_factory=list)

    def task(self, name: str) -> dict[str, Any]:
        """The result of the (last) task called ``name``."""
        for entry in reversed(self.results):
            if entry["task"] == name:
                return entry["result"]
        raise KeyError(f"no result for task {name!r}; have {[e['task'] for e in self.results]}")

    @property
    def last(self) -> dict[str, Any]:
        return self.results[-1]["result"]

    @property
    def changed(self) -> bool:
        return any(e["result"].get("changed") for e in self.results)


def run_playbook(
    tmp_path: Path,
    tasks: list[dict[str, Any]] | None = None,
    *,
    plays: list[dict[str, Any]] | None = None,
    check: bool = False,
    diff: bool = False,
    extra_vars: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 900,
) -> PlaybookRun:
    """Run ``tasks`` on localhost (or whole ``plays``) with ansible-playbook; collect results."""
    if plays is None:
        plays = [
            {"name": "test", "hosts": "localhost", "gather_facts": False, "tasks": tasks or []}
        ]
    token = secrets.token_hex(4)
    book = tmp_path / f"playbook-{token}.yml"
    book.write_text(yaml.safe_dump(plays, sort_keys=False))
    results_file = tmp_path / f"results-{token}.json"
    cmd = [str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(book)]
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    if extra_vars:
        cmd += ["-e", json.dumps(extra_vars)]
    run_env = checkout_env(
        ANSIBLE_CALLBACK_PLUGINS=str(ROOT / "tests" / "integration" / "callback_plugins"),
        ANSIBLE_CALLBACKS_ENABLED="virtops_results",
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
        VIRTOPS_RESULTS_FILE=str(results_file),
    )
    run_env.update(env or {})
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=run_env, timeout=timeout, check=False
    )
    results = json.loads(results_file.read_text()) if results_file.exists() else []
    return PlaybookRun(proc.returncode, proc.stdout, proc.stderr, results)


# ``playbook`` below is the integration tests' fixture, or anything called like it:
# ``playbook(tasks, *, plays=None, check=False, diff=False)`` returning a ``PlaybookRun``.


def four_times(
    playbook: Callable[..., PlaybookRun],
    tasks: Optional[list[dict]] = None,
    *,
    plays: Optional[list[dict]] = None,
    first_changed: bool = True,
    diff: bool = True,
    after_each: Optional[Callable[[int, PlaybookRun], None]] = None,
) -> list[PlaybookRun]:
    """Check, apply, check, apply: the first two steps must report a change (none with
    ``first_changed=False``), the last two none; returns the four runs.

    ``tasks`` go into one ansible-playbook run (each task four times, with ``check_mode``), and
    each run returned holds its step's results. ``plays`` (with roles, whose facts must not
    carry over) or ``after_each(index, run)`` (to look at the host between the steps) make
    four ansible-playbook runs instead."""
    steps = [(True, first_changed), (False, first_changed), (True, False), (False, False)]
    if plays is None and after_each is None:
        assert tasks, "four_times needs tasks or plays"
        run = playbook(
            [dict(task, check_mode=check) for check, _want in steps for task in tasks], diff=diff
        )
        _assert_ran(run)
        size = len(tasks)
        names = [task["name"] for task in tasks] * len(steps)
        assert [e["task"] for e in run.results] == names, run.stdout[-6000:]
        runs = [
            replace(run, results=run.results[i * size : (i + 1) * size]) for i in range(len(steps))
        ]
    else:
        runs = []
    for index, (check, want) in enumerate(steps):
        if index == len(runs):
            runs.append(playbook(tasks, plays=plays, check=check, diff=diff))
            _assert_ran(runs[index])
        run = runs[index]
        changed = [e["task"] for e in run.results if e["result"].get("changed")]
        assert run.changed is want, (
            f"step {index} (check={check}) should report changed={want}; changed: {changed}\n"
            + json.dumps([e["result"] for e in run.results], default=str)[-4000:]
        )
        if after_each is not None:
            after_each(index, run)
    return runs


def four_results(playbook: Callable[..., PlaybookRun], task: dict, **kwargs: Any) -> list[dict]:
    """``four_times`` of one task: its four results."""
    return [run.last for run in four_times(playbook, [task], **kwargs)]


def _assert_ran(run: PlaybookRun) -> None:
    errors = [
        f"{e['task']}: {e['result'].get('msg')}" for e in run.results if e["status"] == "failed"
    ]
    assert run.rc == 0, "\n".join([*errors, run.stdout[-6000:], run.stderr[-3000:]])


def failed(run: PlaybookRun, name: str) -> dict:
    """The result of task ``name``, which must have failed (run it with ``ignore_errors``)."""
    [entry] = [e for e in run.results if e["task"] == name]
    assert entry["status"] == "failed", (name, entry["result"])
    return entry["result"]


def domain_task(name: str, args: dict, *, check: bool = False, ignore_errors: bool = False) -> dict:
    """A ``virtops.kvm.domain`` task."""
    entry: dict[str, Any] = {"name": name, "virtops.kvm.domain": args}
    if check:
        entry["check_mode"] = True
    if ignore_errors:
        entry["ignore_errors"] = True
    return entry


def network_task(args: dict, name: str = "net", module: str = "virtops.kvm.network") -> dict:
    """A ``virtops.kvm.network`` (or ``module``) task registering ``r``."""
    return {"name": name, module: args, "register": "r"}


# ----------------------------------------------------------------------------- libvirt
def inactive_xml(conn, name: str) -> str:
    """Guest ``name``'s persistent definition."""
    import libvirt  # noqa: PLC0415 - unit tests that never use it need not import it

    return conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)


def domain_exists(conn, name: str) -> bool:
    import libvirt  # noqa: PLC0415

    try:
        conn.lookupByName(name)
    except libvirt.libvirtError:
        return False
    return True


def free_subnet(conn, second: int = 18) -> int:
    """A third octet X with 198.<second>.X.0/24 used by no network and no host route."""
    used = [net.XMLDesc(0) for net in conn.listAllNetworks()]
    routes = Path("/proc/net/route").read_text()
    for _attempt in range(200):
        x = 20 + secrets.randbelow(230)
        text = f"198.{second}.{x}."
        hexnet = f"{x:02X}{second:02X}C6"  # little-endian 198.second.x.0
        if not any(text in xml for xml in used) and hexnet not in routes:
            return x
    raise RuntimeError("no free 198.18/15 subnet")


def dnsmasq_pid(network: str) -> int:
    """The PID of the dnsmasq libvirt runs for ``network``."""
    return int(Path(f"/run/libvirt/network/{network}.pid").read_text().strip())


def validate_xml(xml: str, kind: str, tmp_path: Path) -> None:
    """Assert that libvirt's schema for ``kind`` (domain, storagepool, secret...) takes ``xml``."""
    path = tmp_path / f"{kind}.xml"
    path.write_text(xml)
    proc = subprocess.run(
        ["virt-xml-validate", str(path), kind], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr + xml


# ----------------------------------------------------------------------------- files
def make_qcow2(path: Path, size: str = "32M") -> str:
    """An empty qcow2 image at ``path``; returns its ``sha256:`` checksum."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def http_gets(log: Path, name: str) -> int:
    """How many times the ``http_server`` fixture's log shows ``GET /name``."""
    return sum(1 for line in log.read_text().splitlines() if f"GET /{name} " in line)
