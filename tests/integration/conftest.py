"""Fixtures for integration tests: run real playbooks against the real local libvirtd."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
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


@pytest.fixture
def playbook(tmp_path):
    """``playbook(tasks, check=..., diff=...)`` runs tasks on localhost."""

    def _run(tasks=None, **kwargs):
        return run_playbook(tmp_path, tasks, **kwargs)

    return _run


@pytest.fixture
def name_prefix():
    """A unique prefix for libvirt objects a test creates (guests, networks, pools...)."""
    return f"vt-{secrets.token_hex(3)}"
