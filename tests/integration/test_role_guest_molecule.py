"""Runs the Molecule scenario of the guest role (roles/guest/molecule/default).

It boots one Debian guest (TCG) on this machine's libvirtd: converge, idempotence, testinfra
verify, destroy. About 6-10 minutes on a loaded 2-core machine.
"""

from __future__ import annotations

import pytest

from tests.integration.molecule_runner import molecule

pytestmark = pytest.mark.lab


# about 4 minutes alone (two guests booted under TCG, converged twice)
@pytest.mark.timeout(900)
def test_guest_role_molecule_default():
    proc = molecule("guest", "test", "-s", "default", timeout=840)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-10000:]
    assert "default > idempotence: Executed: Successful" in output, output[-4000:]
    assert "Verifier completed successfully" in output, output[-4000:]
    assert "molecule-not-logged" not in output
