"""virtops.kvm.backup with quiesce=required on the session's shared Debian guest (its QEMU
guest agent answers; no boot of its own): the backup is taken with the guest's file systems
frozen through the agent, and thawed again - the agent says so and the guest writes files.
The guest is left as it was (the backup's checkpoint deleted). The other side, a guest
without an agent failing quiesce=required, is in tests/integration/test_backup.py."""

from __future__ import annotations

import shutil
import time

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.modules import backup, backup_info
from tests.lab.images import lab_dir
from tests.module_runner import run_module

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]


def test_backup_quiesced_through_the_guest_agent_and_thawed(shared_debian_guest, record_property):
    guest = shared_debian_guest
    agent = guest.wait_agent()
    dest = lab_dir() / "backups" / f"quiesce-{guest.name}"
    dest.mkdir(parents=True)
    dest.chmod(0o755)  # QEMU writes the images
    try:
        started = time.monotonic()
        taken = run_module(
            backup, {"name": guest.name, "dest": str(dest), "quiesce": "required", "mode": "full"}
        )
        took = time.monotonic() - started
        assert not taken.get("failed"), taken
        assert taken["backup"]["quiesced"] is True, taken["backup"]
        assert taken["backup"]["quiesce_detail"] == "file systems frozen through the guest agent"
        assert [d["target"] for d in taken["backup"]["disks"]] == ["vda"]  # not the seed CD
        # thawed: the agent says so, and the guest writes and syncs a file
        assert agent.call("guest-fsfreeze-status") == "thawed"
        wrote = agent.run(
            "/bin/sh", ["-c", "date > /var/tmp/after-backup && sync && cat /var/tmp/after-backup"]
        )
        assert wrote.rc == 0 and wrote.stdout.strip(), wrote
        info = run_module(backup_info, {"dest": str(dest), "name": guest.name})
        [chain] = info["guests"][0]["chains"]
        assert chain["backups"] == [taken["backup"]["id"]] and chain["verified"], chain
        record_property("quiesced_full_backup_s", round(took, 1))
        print(f"quiesced full backup of {taken['backup']['size']} bytes in {took:.1f} s")
    finally:  # the shared guest keeps no checkpoint (bitmap) of this test
        for checkpoint in guest.dom.listAllCheckpoints(0):
            if checkpoint.getName().startswith("virtops-backup-"):
                try:
                    checkpoint.delete(0)
                except libvirt.libvirtError:
                    pass
        assert guest.dom.listAllCheckpoints(0) == []
        shutil.rmtree(dest, ignore_errors=True)
