"""Verify the guest role's default scenario: the host side, then a login into the guest."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import yaml

VARS = yaml.safe_load((Path(__file__).resolve().parents[1] / "vars" / "main.yml").read_text())
URI = "qemu:///system"
GUEST = VARS["guest_molecule_guest"]
SEEDS = Path(VARS["guest_molecule_dir"]) / "seeds"
KEY = VARS["guest_molecule_key"]
KNOWN_HOSTS = Path(VARS["guest_molecule_known_hosts"])
ALIAS = f"kvm-localhost/{GUEST}"  # the role's HostKeyAlias: KVM host / guest


def _virsh(host, *args: str) -> str:
    return host.check_output("virsh -c %s " + " ".join(["%s"] * len(args)), URI, *args)


def _address(host) -> str:
    leases = _virsh(host, "domifaddr", GUEST, "--source", "lease")
    return next(w.split("/")[0] for w in leases.split() if w.count(".") == 3 and "/" in w)


def _ssh(host, command: str):
    return host.run(
        "ssh -i %s -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile=%s "
        "-o HostKeyAlias=%s -o ConnectTimeout=60 virtops@%s %s",
        KEY,
        str(KNOWN_HOSTS),
        ALIAS,
        _address(host),
        command,
    )


def test_guest_runs_with_its_disks(host):
    assert _virsh(host, "domstate", GUEST).strip() == "running"
    blk = _virsh(host, "domblklist", GUEST, "--details")
    assert f"{GUEST}.qcow2" in blk and f"{GUEST}-data.qcow2" in blk
    assert str(SEEDS / f"{GUEST}.iso") in blk
    vol = json.loads(
        host.check_output(
            "qemu-img info --output=json -U %s", f"{VARS['guest_molecule_dir']}/pool/{GUEST}.qcow2"
        )
    )
    assert vol["virtual-size"] == 8 * 1024**3
    assert Path(vol["backing-filename"]).name.startswith("base-")


def test_seed_is_private(host):
    assert stat.S_IMODE((SEEDS / GUEST).stat().st_mode) == 0o700
    user_data = (SEEDS / GUEST / "user-data").read_text()
    assert "molecule-not-logged" not in user_data
    assert "passwd: $6$" in user_data
    for item in ("user-data", "meta-data", "network-config"):
        assert stat.S_IMODE((SEEDS / GUEST / item).stat().st_mode) == 0o600
    # 0600: libvirt gives the ISO to QEMU's user while the guest runs (dynamic_ownership).
    assert stat.S_IMODE((SEEDS / f"{GUEST}.iso").stat().st_mode) == 0o600
    assert stat.S_IMODE(SEEDS.stat().st_mode) == 0o711


def test_password_hash_has_a_random_salt(host):
    user_data = (SEEDS / GUEST / "user-data").read_text()
    seeded = next(ln.split(":", 1)[1].strip() for ln in user_data.splitlines()
                  if ln.strip().startswith("passwd:"))  # fmt: skip
    salt = seeded.split("$")[2]
    assert salt != hashlib.sha256(f"{GUEST}molecule-not-logged".encode()).hexdigest()[:16]
    result = _ssh(host, "sudo -n getent shadow virtops")
    assert result.rc == 0, result.stderr
    assert result.stdout.split(":")[1] == seeded  # the hash cloud-init set in the guest


def test_guest_configured_by_cloud_init(host):
    result = _ssh(
        host,
        "hostname; cat /var/tmp/virtops-runcmd; lsblk -dno NAME,SIZE; sudo -n true && echo sudo-ok",
    )
    assert result.rc == 0, result.stderr
    lines = result.stdout.split()
    assert lines[0] == GUEST
    assert "done" in lines
    assert "sudo-ok" in lines
    # The overlay was grown to 8 GiB and the extra disk is there.
    assert "8G" in result.stdout and "1G" in result.stdout


def test_host_key_is_pinned_and_served(host):
    key = SEEDS / GUEST / "ssh_host_ed25519_key"
    public = " ".join(Path(f"{key}.pub").read_text().split()[:2])
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert KNOWN_HOSTS.read_text().splitlines() == [f"{ALIAS} {public}"]
    assert stat.S_IMODE(KNOWN_HOSTS.stat().st_mode) == 0o600
    assert stat.S_IMODE(KNOWN_HOSTS.parent.stat().st_mode) == 0o700
    # _ssh checks the guest against the pinned key (StrictHostKeyChecking=yes).
    result = _ssh(host, "sudo -n cat /etc/ssh/ssh_host_ed25519_key.pub")
    assert result.rc == 0, result.stderr
    assert result.stdout.split()[:2] == public.split()
