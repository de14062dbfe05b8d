"""The debian guest: cloud-init seed, DHCP lease on the default network, SSH, Ansible ping."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import wait_for
from tests.lab.guests import wait_ssh

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
SSH_OPTS = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=10"


def ansible_ping(address: str, key: Path, user: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_HOST_KEY_CHECKING="False",
        ANSIBLE_NOCOLOR="1",
    )
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible"),
            "all",
            "-i",
            f"{address},",
            "-u",
            user,
            "--private-key",
            str(key),
            f"--ssh-common-args={SSH_OPTS}",  # one word: the value starts with "-"
            "-e",
            "ansible_python_interpreter=/usr/bin/python3",
            "-m",
            "ping",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_debian_guest_answers_ansible_ping(shared_debian_guest, ssh_keypair, record_property):
    guest = shared_debian_guest  # booted once for this test and test_qemu_ga.py
    address = guest.address(timeout=900)
    lease_s = time.monotonic() - guest.started_at
    wait_ssh(address, timeout=900)
    ssh_s = time.monotonic() - guest.started_at
    record_property("start_to_lease_s", round(lease_s, 1))
    record_property("start_to_ssh_s", round(ssh_s, 1))

    # sshd answers before cloud-init has installed the key: retry for a while
    pings = []

    def pong() -> bool:
        pings.append(ansible_ping(address, ssh_keypair.private, "virtops"))
        return pings[-1].returncode == 0

    with contextlib.suppress(AssertionError):  # the last try's output is asserted below
        wait_for(pong, 300, "an Ansible ping of the guest", interval=5)
    proc = pings[-1]
    record_property("start_to_ansible_ping_s", round(time.monotonic() - guest.started_at, 1))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert '"ping": "pong"' in proc.stdout
    root = ansible_ping(address, ssh_keypair.private, "root")
    assert '"ping": "pong"' in root.stdout, root.stdout + root.stderr
