"""Runs the Molecule scenario of the guest role (roles/guest/molecule/default).

It boots one Debian guest (TCG) on this machine's libvirtd: converge, idempotence, testinfra
verify, destroy. About 6-10 minutes on a loaded 2-core machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]


def test_guest_role_molecule_default():
    venv_bin = Path(sys.executable).parent
    env = dict(os.environ)
    env.update(
        PATH=f"{venv_bin}:{env.get('PATH', '')}",
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".venv" / "collections"),
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        PY_COLORS="0",
    )
    proc = subprocess.run(
        [str(venv_bin / "molecule"), "test", "-s", "default"],
        cwd=ROOT / "roles" / "guest",
        env=env,
        capture_output=True,
        text=True,
        timeout=2400,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-10000:]
    assert "default > idempotence: Executed: Successful" in output, output[-4000:]
    assert "Verifier completed successfully" in output, output[-4000:]
    assert "molecule-not-logged" not in output
