"""Runs the Molecule scenarios of the host role (roles/host/molecule/{default,bridge}).

Each boots one Debian 12 guest (TCG) on this machine's libvirtd, converges the role over SSH
(the package install really runs, through a local apt-cacher-ng), checks that a second
converge changes nothing, verifies with testinfra and destroys the guest.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]


# default: 35-50 minutes on a 2-core machine (install, converge and idempotence over SSH to
# a TCG guest), above pytest.ini's per-test timeout; `make test` runs only bridge
# (scripts/test.sh), `make test-host-molecule` both
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("scenario", ["default", "bridge"])
def test_host_role_molecule(scenario):
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
        [str(venv_bin / "molecule"), "test", "-s", scenario],
        cwd=ROOT / "roles" / "host",
        env=env,
        capture_output=True,
        text=True,
        timeout=3300,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-12000:]
    # molecule writes "[s > idempotence] Executed: ..." or "s > idempotence: Executed: ..."
    assert re.search(rf"{scenario} > idempotence\]?:? Executed: Successful", output), output[-4000:]
    assert "Verifier completed successfully" in output, output[-4000:]
