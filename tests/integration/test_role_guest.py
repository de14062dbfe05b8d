"""The guest role against the real libvirtd, without booting a guest.

Guests are defined with ``state: present`` (nothing starts): a cloud-image guest with its
cached base, overlay, extra disk and cloud-init seed; an ISO install, a network install from
an install tree (a ``file://`` tree here) and an imported disk. Every change runs four times:
check, apply, check (unchanged), apply (unchanged). Booting a guest and reaching it over SSH is
the job of the Molecule scenario (test_role_guest_molecule.py).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import libvirt
import pytest
from lxml import etree

from .conftest import run_playbook

pytestmark = pytest.mark.integration

URI = "qemu:///system"
SECRET = "S3cret-never-logged"


@pytest.fixture
def conn():
    c = libvirt.open(URI)
    yield c
    c.close()


@pytest.fixture
def lab(conn, name_prefix, tmp_path):
    """A pool and an isolated network (no addresses) named after the prefix; removed after."""
    pool_dir = tmp_path / "pool"
    pool_dir.mkdir()
    pool = conn.storagePoolDefineXML(
        f"<pool type='dir'><name>{name_prefix}-pool</name>"
        f"<target><path>{pool_dir}</path></target></pool>"
    )
    pool.create()
    net = conn.networkDefineXML(f"<network><name>{name_prefix}-net</name></network>")
    net.create()
    try:
        yield {
            "pool": f"{name_prefix}-pool",
            "network": f"{name_prefix}-net",
            "seed_dir": tmp_path / "seeds",
            "boot_dir": tmp_path / "boot",
            "tmp": tmp_path,
        }
    finally:
        for dom in conn.listAllDomains(0):
            if dom.name().startswith(name_prefix):
                if dom.isActive():
                    dom.destroy()
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        for vol in pool.listAllVolumes(0):
            vol.delete(0)
        pool.destroy()
        pool.undefine()
        net.destroy()
        net.undefine()


def role_play(lab, guests, **role_vars):
    variables = {
        "guest_pool": lab["pool"],
        "guest_seed_dir": str(lab["seed_dir"]),
        "guest_boot_dir": str(lab["boot_dir"]),
        "guest_interfaces": [{"network": lab["network"]}],
        "guest_ssh_public_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTestsOnly test"],
        "guest_wait": False,
        "guest_list": guests,
    }
    variables.update(role_vars)
    return [
        {
            "name": "guest role",
            "hosts": "localhost",
            "gather_facts": False,
            "tasks": [
                {
                    "name": "run the role",
                    "ansible.builtin.include_role": {"name": "virtops.kvm.guest"},
                    "vars": variables,
                }
            ],
        }
    ]


def four_times(tmp_path, plays):
    """check, apply, check, apply; returns the runs after asserting changed each time."""
    runs = []
    for check, expect in ((True, True), (False, True), (True, False), (False, False)):
        run = run_playbook(tmp_path, plays=plays, check=check, diff=True)
        assert run.rc == 0, run.stdout[-6000:] + run.stderr[-3000:]
        changed = [e["task"] for e in run.results if e["result"].get("changed")]
        assert bool(changed) is expect, (check, changed)
        runs.append(run)
    return runs


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def seed_password_hash(seed_dir: Path, name: str) -> str:
    lines = (seed_dir / name / "user-data").read_text().splitlines()
    hashes = [ln.split(":", 1)[1].strip() for ln in lines if ln.strip().startswith("passwd:")]
    assert len(hashes) == 1, lines
    return hashes[0]


def domain_xml(conn, name: str) -> etree._Element:
    return etree.fromstring(conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))


def test_bad_input_fails_before_anything_changes(conn, lab, name_prefix):
    two_sources = {
        "name": f"{name_prefix}-a",
        "image": {"path": "/nonexistent.qcow2"},
        "iso": "/x.iso",
    }
    run = run_playbook(lab["tmp"], plays=role_play(lab, [two_sources]))
    assert run.rc != 0
    failed = [e for e in run.results if e["status"] == "failed"]
    assert failed and failed[0]["task"] == "virtops.kvm.guest : Check each guest"
    assert "exactly one of image, iso, install_tree, import" in run.stdout

    url_without_checksum = {
        "name": f"{name_prefix}-b",
        "image": {"url": "http://198.18.0.1/x.qcow2"},
    }
    run = run_playbook(lab["tmp"], plays=role_play(lab, [url_without_checksum]))
    assert run.rc != 0 and "Check each guest" in run.stdout

    typo = {"name": f"{name_prefix}-c", "memroy": 512, "image": {"path": "/x.qcow2"}}
    run = run_playbook(lab["tmp"], plays=role_play(lab, [typo]))
    assert run.rc != 0 and "memroy" in run.stdout

    assert not [d for d in conn.listAllDomains(0) if d.name().startswith(name_prefix)]
    assert conn.storagePoolLookupByName(lab["pool"]).numOfVolumes() == 0


def test_cloud_image_guest_converges_and_is_removed(conn, lab, name_prefix):
    image = lab["tmp"] / "cloud.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "256M"], check=True)
    name = f"{name_prefix}-img"
    guest = {
        "name": name,
        "state": "present",
        "memory": 256,
        "vcpus": 1,
        "disk_size": "1GiB",
        "image": {"path": str(image)},
        "cloud_init": {"password": SECRET, "packages": ["htop"], "runcmd": ["touch /ok"]},
        "disks": [{"name": "data", "size": "64MiB"}],
        "tags": ["web"],
        "tuning": {"cpu_shares": 512},
    }
    plays = role_play(lab, [guest], guest_image_pool=lab["pool"])
    runs = four_times(lab["tmp"], plays)
    for run in runs:
        assert SECRET not in run.stdout + run.stderr

    pool = conn.storagePoolLookupByName(lab["pool"])
    volumes = sorted(pool.listVolumes())
    base = [v for v in volumes if v.startswith("base-") and v.endswith("-cloud.qcow2")]
    assert len(base) == 1
    assert f"{name}.qcow2" in volumes and f"{name}-data.qcow2" in volumes
    overlay = etree.fromstring(pool.storageVolLookupByName(f"{name}.qcow2").XMLDesc(0))
    assert overlay.findtext("backingStore/path") == str(
        Path(pool.storageVolLookupByName(base[0]).path())
    )
    assert int(overlay.findtext("capacity")) == 1024**3

    root = domain_xml(conn, name)
    assert conn.lookupByName(name).isActive() == 0  # present: defined, not started
    disks = root.findall("devices/disk")
    assert [d.find("target").get("dev") for d in disks] == ["vda", "vdb", "vdc"]
    assert disks[0].find("source").get("volume") == f"{name}.qcow2"
    seed_iso = lab["seed_dir"] / f"{name}.iso"
    assert disks[1].find("source").get("file") == str(seed_iso)
    assert disks[1].find("readonly") is not None
    mac = root.find("devices/interface/mac").get("address")
    assert mac.startswith("52:54:00:")

    # Seed: private files, the MAC in the network config, a hashed password, volume id cidata.
    seed = lab["seed_dir"] / name
    assert stat.S_IMODE(seed.stat().st_mode) == 0o700
    assert stat.S_IMODE(seed_iso.stat().st_mode) == 0o600
    user_data = (seed / "user-data").read_text()
    assert user_data.startswith("#cloud-config\n")
    assert SECRET not in user_data and "passwd: $6$" in user_data
    assert "htop" in user_data and "touch /ok" in user_data
    assert mac in (seed / "network-config").read_text()
    assert f"instance-id: {name}" in (seed / "meta-data").read_text()
    with open(seed_iso, "rb") as fh:
        fh.seek(32768 + 40)
        assert fh.read(6) == b"cidata"

    # A bigger disk grows the overlay; nothing else changes.
    guest["disk_size"] = "2GiB"
    run = run_playbook(lab["tmp"], plays=role_play(lab, [guest], guest_image_pool=lab["pool"]))
    assert run.rc == 0, run.stdout[-4000:]
    changed = [e["task"] for e in run.results if e["result"].get("changed")]
    assert changed == [f"virtops.kvm.guest : Create the root disk on its base image: {name}"]

    guest["state"] = "absent"
    absent = role_play(lab, [guest], guest_image_pool=lab["pool"])
    for check, expect in ((True, True), (False, True), (True, False), (False, False)):
        run = run_playbook(lab["tmp"], plays=absent, check=check)
        assert run.rc == 0, run.stdout[-4000:]
        assert any(e["result"].get("changed") for e in run.results) is expect
    assert name not in [d.name() for d in conn.listAllDomains(0)]
    pool.refresh(0)
    assert pool.listVolumes() == base  # the cached base image stays
    assert not seed.exists() and not seed_iso.exists()


def test_iso_tree_and_import_guests_are_defined(conn, lab, name_prefix):
    tmp = lab["tmp"]
    # An install ISO, an install tree (file://) and a disk to import.
    (tmp / "iso").mkdir()
    (tmp / "iso" / "README").write_text("installer\n")
    iso = tmp / "install.iso"
    subprocess.run(
        ["genisoimage", "-quiet", "-o", str(iso), "-V", "INSTALL", str(tmp / "iso")], check=True
    )
    tree = tmp / "tree"
    tree.mkdir()
    (tree / "linux").write_bytes(os.urandom(4096))
    (tree / "initrd.gz").write_bytes(gzip.compress(b"original initrd"))
    preseed = tmp / "preseed.cfg"
    preseed.write_text(f"d-i passwd/root-password password {SECRET}\n")
    pool = conn.storagePoolLookupByName(lab["pool"])
    pool.createXML(
        "<volume><name>existing.qcow2</name><capacity>67108864</capacity>"
        "<target><format type='qcow2'/></target></volume>",
        0,
    )
    # extra disks attached as they are: a raw volume (the pool's format, not qcow2) and a file
    # outside every pool with its format
    pool.createXML(
        "<volume><name>data.img</name><capacity>16777216</capacity>"
        "<target><format type='raw'/></target></volume>",
        0,
    )
    outside = tmp / "outside.img"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(outside), "16M"], check=True)
    guests = [
        {"name": f"{name_prefix}-iso", "state": "present", "iso": str(iso), "disk_size": "1GiB",
         "memory": 256},
        {"name": f"{name_prefix}-tree", "state": "present", "memory": 256, "disk_size": "1GiB",
         "install_tree": {"url": f"file://{tree}", "preseed": str(preseed)}},
        {"name": f"{name_prefix}-imp", "state": "present", "memory": 256,
         "import": {"pool": lab["pool"], "volume": "existing.qcow2"},
         "disks": [{"volume": "data.img"}, {"path": str(outside), "format": "raw"}]},
    ]  # fmt: skip
    runs = four_times(tmp, role_play(lab, guests))
    for run in runs:
        assert SECRET not in run.stdout + run.stderr

    iso_xml = domain_xml(conn, f"{name_prefix}-iso")
    cdrom = iso_xml.find("devices/disk[@device='cdrom']/source")
    assert cdrom is not None and cdrom.get("file") == str(iso)
    assert [b.get("dev") for b in iso_xml.findall("os/boot")] == ["cdrom", "hd"]
    assert "virtops-installing" in etree.tostring(iso_xml.find("metadata")).decode()

    tree_xml = domain_xml(conn, f"{name_prefix}-tree")
    boot = lab["boot_dir"] / f"{name_prefix}-tree"
    assert tree_xml.findtext("os/kernel") == str(boot / "kernel")
    assert tree_xml.findtext("os/initrd") == str(boot / "initrd")
    assert "auto=true" in tree_xml.findtext("os/cmdline")
    # The initrd is the tree's, then a gzip'd cpio archive holding /preseed.cfg.
    original = (tree / "initrd.gz").read_bytes()
    injected = (boot / "initrd").read_bytes()
    assert injected.startswith(original)
    archive = gzip.decompress(injected[len(original) :])
    assert b"preseed.cfg" in archive and SECRET.encode() in archive
    # Private: the answers and the initrd holding them 0600, directories QEMU only searches.
    assert mode(boot / "inject" / "preseed.cfg") == 0o600
    assert mode(boot / "inject") == 0o700
    assert mode(boot / "initrd") == 0o600
    assert mode(boot) == 0o711 and mode(lab["boot_dir"]) == 0o711
    assert sorted(p.name for p in boot.iterdir()) == ["initrd", "initrd.orig", "inject", "kernel"]

    imp_xml = domain_xml(conn, f"{name_prefix}-imp")
    assert imp_xml.find("devices/disk/source").get("volume") == "existing.qcow2"
    formats = [d.find("driver").get("type") for d in imp_xml.findall("devices/disk")]
    assert formats == ["qcow2", "raw", "raw"]  # the pool's, the pool's, the user's
    assert imp_xml.find("os/kernel") is None

    # Removing them deletes the disks the role made, never an imported one.
    gone = [dict(g, state="absent") for g in guests]
    run = run_playbook(tmp, plays=role_play(lab, gone))
    assert run.rc == 0, run.stdout[-4000:]
    assert not [d for d in conn.listAllDomains(0) if d.name().startswith(name_prefix)]
    assert not boot.exists()
    pool.refresh(0)
    assert sorted(pool.listVolumes()) == ["data.img", "existing.qcow2"]
    shutil.rmtree(tmp / "iso")


def test_seed_password_hash_has_a_random_salt_and_is_kept(conn, lab, name_prefix):
    image = lab["tmp"] / "cloud.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    names = [f"{name_prefix}-s1", f"{name_prefix}-s2"]
    guests = [
        {"name": n, "state": "present", "memory": 256, "disk_size": "1GiB",
         "image": {"path": str(image)}, "cloud_init": {"password": SECRET}}
        for n in names
    ]  # fmt: skip
    plays = role_play(lab, guests, guest_image_pool=lab["pool"])
    run = run_playbook(lab["tmp"], plays=plays)
    assert run.rc == 0, run.stdout[-6000:] + run.stderr[-3000:]
    seeds = lab["seed_dir"]
    hashes = {n: seed_password_hash(seeds, n) for n in names}
    salts = {n: h.split("$")[2] for n, h in hashes.items()}
    assert salts[names[0]] != salts[names[1]]
    for name, salt in salts.items():
        assert salt != hashlib.sha256((name + SECRET).encode()).hexdigest()[:16]  # the old salt
        again = subprocess.run(
            ["openssl", "passwd", "-6", "-salt", salt, "-stdin"],
            input=SECRET + "\n", capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert again.stdout.strip() == hashes[name]
        assert mode(seeds / name) == 0o700 and mode(seeds / f"{name}.iso") == 0o600
        for item in ("user-data", "meta-data", "network-config"):
            assert mode(seeds / name / item) == 0o600
    assert mode(seeds) == 0o711
    isos = {n: (seeds / f"{n}.iso").read_bytes() for n in names}

    # Again: the hashes verify, so the seeds are kept as they are.
    run = run_playbook(lab["tmp"], plays=plays, diff=True)
    assert run.rc == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert [e["task"] for e in run.results if e["result"].get("changed")] == []
    assert {n: seed_password_hash(seeds, n) for n in names} == hashes
    assert {n: (seeds / f"{n}.iso").read_bytes() for n in names} == isos
    assert SECRET not in run.stdout + run.stderr
    for h in hashes.values():
        assert h not in run.stdout + run.stderr and h.split("$")[3] not in run.stdout

    # A new password gives that guest a new hash; the other keeps its own.
    guests[0]["cloud_init"]["password"] = SECRET + "-2"
    run = run_playbook(lab["tmp"], plays=role_play(lab, guests, guest_image_pool=lab["pool"]))
    assert run.rc == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert seed_password_hash(seeds, names[0]) != hashes[names[0]]
    assert seed_password_hash(seeds, names[1]) == hashes[names[1]]
    assert (seeds / f"{names[0]}.iso").read_bytes() != isos[names[0]]
    assert (seeds / f"{names[1]}.iso").read_bytes() == isos[names[1]]

    gone = [dict(g, state="absent") for g in guests]
    run = run_playbook(lab["tmp"], plays=role_play(lab, gone, guest_image_pool=lab["pool"]))
    assert run.rc == 0, run.stdout[-4000:]
