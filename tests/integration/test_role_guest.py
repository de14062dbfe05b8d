"""The guest role against the real libvirtd.

Most guests are defined with ``state: present`` (nothing starts): a cloud-image guest with its
cached base, overlay, extra disk and cloud-init seed; an ISO install, a network install from
an install tree (a ``file://`` tree here) and an imported disk. Every change runs four times:
check, apply, check (unchanged), apply (unchanged). One test (marker lab) boots the lab's
Debian image to check the SSH host key the guest serves against the one the role pinned; the
rest of booting and reaching a guest is the job of the Molecule scenario
(test_role_guest_molecule.py).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import shutil
import stat
import subprocess
from functools import partial
from pathlib import Path

import libvirt
import pytest
import yaml
from lxml import etree

from devtools.libvirt_cleanup import (
    domains_with_prefix,
    remove_domain,
    remove_domain_named,
    remove_network,
    remove_pool,
)
from tests.helpers import four_times, run_playbook
from tests.lab import guests as lab_guests
from tests.lab import images as lab_images

pytestmark = pytest.mark.integration

SECRET = "S3cret-never-logged"


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
            "known_hosts": tmp_path / "controller" / "known_hosts",
            "tmp": tmp_path,
        }
    finally:
        for dom in domains_with_prefix(conn, name_prefix):
            remove_domain(dom)
        remove_pool(conn, pool.name())
        remove_network(conn, net.name())


def role_play(lab, guests, **role_vars):
    variables = {
        "guest_pool": lab["pool"],
        "guest_seed_dir": str(lab["seed_dir"]),
        "guest_boot_dir": str(lab["boot_dir"]),
        "guest_interfaces": [{"network": lab["network"]}],
        "guest_ssh_public_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTestsOnly test"],
        "guest_wait": False,
        "guest_known_hosts_file": str(lab["known_hosts"]),
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


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def seed_password_hash(seed_dir: Path, name: str) -> str:
    lines = (seed_dir / name / "user-data").read_text().splitlines()
    hashes = [ln.split(":", 1)[1].strip() for ln in lines if ln.strip().startswith("passwd:")]
    assert len(hashes) == 1, lines
    return hashes[0]


def published(run) -> dict:
    """The role's ``guest_results`` fact of a run."""
    return run.task("virtops.kvm.guest : Publish the guests")["ansible_facts"]["guest_results"]


def known_hosts_lines(lab) -> list[str]:
    return lab["known_hosts"].read_text().splitlines()


def host_key_checks(lab, name: str, user_data: str) -> str:
    """Assert the role's host key of ``name`` is private, seeded and pinned; return it."""
    key = lab["seed_dir"] / name / "ssh_host_ed25519_key"
    pub = key.with_name(key.name + ".pub")
    assert mode(key) == 0o600 and mode(pub) == 0o600 and mode(key.parent) == 0o700
    private = key.read_text()
    assert private.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    public = " ".join(pub.read_text().split()[:2])
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(key)], capture_output=True, text=True, check=True
    )
    assert " ".join(derived.stdout.split()[:2]) == public  # one pair
    assert public.startswith("ssh-ed25519 ")
    cloud_config = yaml.safe_load(user_data)
    assert cloud_config["ssh_keys"] == {"ed25519_private": private, "ed25519_public": public}
    assert cloud_config["ssh_deletekeys"] is True and cloud_config["ssh_genkeytypes"] == []
    assert f"localhost/{name.lower()} {public}" in known_hosts_lines(lab)
    assert mode(lab["known_hosts"]) == 0o600 and mode(lab["known_hosts"].parent) == 0o700
    return public


def assert_no_private_key(run, key: Path) -> None:
    """No line of the private key's body, nor the file as slurp reads it (base64), in the run's
    output or results."""
    body = [ln for ln in key.read_text().splitlines() if ln and not ln.startswith("-----")]
    assert len(body) >= 3
    seen = run.stdout + run.stderr + json.dumps(run.results)
    for line in [*body, base64.b64encode(key.read_bytes()).decode()[:60]]:
        assert line not in seen


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

    # domain: options of virtops.kvm.domain only, named in the error
    bad_option = {
        "name": f"{name_prefix}-d",
        "image": {"path": "/x.qcow2"},
        "domain": {"mashine": "q35"},
    }
    run = run_playbook(lab["tmp"], plays=role_play(lab, [bad_option]))
    assert run.rc != 0 and "only options of virtops.kvm.domain (not mashine)" in run.stdout

    # argument_specs: an image volume needs its pool; one image source only
    for image, says in (
        ({"volume": "base.qcow2"}, "missing parameter(s) required by 'volume': pool"),
        ({"url": "http://198.18.0.1/x.qcow2", "path": "/x.qcow2"}, "mutually exclusive: url|path"),
    ):
        run = run_playbook(
            lab["tmp"], plays=role_play(lab, [{"name": f"{name_prefix}-e", "image": image}])
        )
        assert run.rc != 0
        (failure,) = [e for e in run.results if e["status"] == "failed"]
        assert failure["task"].startswith("virtops.kvm.guest : Validating arguments")
        assert says in failure["result"]["msg"]

    assert not [d for d in conn.listAllDomains(0) if d.name().startswith(name_prefix)]
    assert conn.storagePoolLookupByName(lab["pool"]).numOfVolumes() == 0


@pytest.mark.timeout(600)  # ~100 s alone (role runs define, converge again and remove)
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
    runs = four_times(partial(run_playbook, lab["tmp"]), plays=plays)
    for run in runs:
        assert SECRET not in run.stdout + run.stderr
        assert "template for task args" not in run.stdout + run.stderr  # no templated argument set

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

    # The SSH host key: made on the KVM host (0600 in the 0700 seed directory), handed to
    # cloud-init in the seed, pinned on the controller under the guest's alias, in no output.
    public = host_key_checks(lab, name, user_data)
    assert published(runs[1])[name]["ssh_host_key"] == public
    for run in runs:
        assert_no_private_key(run, lab["seed_dir"] / name / "ssh_host_ed25519_key")

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
    assert known_hosts_lines(lab) == []  # the pinned key went with the guest


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
    runs = four_times(partial(run_playbook, tmp), plays=role_play(lab, guests))
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


@pytest.mark.timeout(600)  # ~2 min alone, over 4 beside booted guests (four role runs)
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
    keys = {n: host_key_checks(lab, n, (seeds / n / "user-data").read_text()) for n in names}
    assert keys[names[0]] != keys[names[1]] and len(known_hosts_lines(lab)) == 2

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
    for n in names:  # the keys are kept
        assert host_key_checks(lab, n, (seeds / n / "user-data").read_text()) == keys[n]

    # A guest that exists without a key the role made (made by an older version) is not given
    # one its disk would not serve: its key is left to trust on first use.
    old_guest = names[1]
    for item in ("ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"):
        (seeds / old_guest / item).unlink()
    lab["known_hosts"].write_text(f"localhost/{names[0]} {keys[names[0]]}\n")
    run = run_playbook(lab["tmp"], plays=role_play(lab, guests, guest_image_pool=lab["pool"]))
    assert run.rc == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert not (seeds / old_guest / "ssh_host_ed25519_key").exists()
    assert "ssh_keys" not in yaml.safe_load((seeds / old_guest / "user-data").read_text())
    assert known_hosts_lines(lab) == [f"localhost/{names[0]} {keys[names[0]]}"]
    assert published(run)[old_guest]["ssh_host_key"] is None
    assert published(run)[names[0]]["ssh_host_key"] == keys[names[0]]

    gone = [dict(g, state="absent") for g in guests]
    run = run_playbook(lab["tmp"], plays=role_play(lab, gone, guest_image_pool=lab["pool"]))
    assert run.rc == 0, run.stdout[-4000:]
    assert known_hosts_lines(lab) == []


@pytest.fixture
def boot_lab(conn, name_prefix, debian_image, default_network):
    """Like ``lab``, but QEMU can reach its files (under the lab directory, not the private
    tmp_path): a pool holding the lab's Debian image as a base volume, the image's own kernel
    and initrd, and libvirt's default NAT network. Removed after."""
    top = lab_images.lab_dir() / "guests" / f"{name_prefix}-role"
    pool_dir = top / "pool"
    pool_dir.mkdir(parents=True)
    for path in (top, pool_dir):
        path.chmod(0o755)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(debian_image.disk),
         str(pool_dir / "debian.qcow2")],
        check=True,
    )  # fmt: skip
    kernel, initrd = lab_guests.own_boot_files(top, debian_image)
    pool = conn.storagePoolDefineXML(
        f"<pool type='dir'><name>{name_prefix}-bpool</name>"
        f"<target><path>{pool_dir}</path></target></pool>"
    )
    pool.create()
    try:
        yield {
            "pool": f"{name_prefix}-bpool",
            "network": default_network,
            "seed_dir": top / "seeds",
            "boot_dir": top / "boot",
            "known_hosts": top / "controller" / "known_hosts",
            "image": {"pool": f"{name_prefix}-bpool", "volume": "debian.qcow2",
                      "kernel": str(kernel), "initrd": str(initrd),
                      "cmdline": debian_image.cmdline},
            "tmp": top,
        }  # fmt: skip
    finally:
        for dom in domains_with_prefix(conn, name_prefix):
            remove_domain_named([conn], dom.name())
        remove_pool(conn, pool.name())
        shutil.rmtree(top)


def ssh_to(address: str, key: Path, known_hosts: Path, alias: str, command: str):
    return subprocess.run(
        ["ssh", "-i", str(key), "-o", "BatchMode=yes", "-o", "ConnectTimeout=60",
         "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
         "-o", "GlobalKnownHostsFile=/dev/null", "-o", f"HostKeyAlias={alias}",
         f"virtops@{address}", command],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip


@pytest.mark.lab  # boots a guest
@pytest.mark.timeout(900)  # ~3 min alone; far longer beside other booted guests
def test_booted_guest_serves_the_host_key_the_role_pinned(boot_lab, name_prefix, ssh_keypair):
    name = f"{name_prefix}-hk"
    alias = f"localhost/{name.lower()}"
    plays = role_play(
        boot_lab,
        [{"name": name, "memory": 1024, "vcpus": 2, "disk_size": "6GiB",
          "image": boot_lab["image"]}],
        guest_wait=True,
        guest_wait_timeout=900,
        guest_ssh_public_keys=[ssh_keypair.public],
        guest_inventory_vars={"ansible_ssh_private_key_file": str(ssh_keypair.private),
                              "ansible_python_interpreter": "/usr/bin/python3"},
    )  # fmt: skip
    # Then Ansible logs into the guest through the inventory the role filled (its checking;
    # run_playbook's -c local is for the KVM host).
    wait = {"name": "wait for the login", "ansible.builtin.wait_for_connection": {"timeout": 300}}
    read = {
        "name": "read the host key",
        "ansible.builtin.command": "cat /etc/ssh/ssh_host_ed25519_key.pub",
        "changed_when": False,
        "become": True,  # cloud-init writes it 0600
    }
    plays.append(
        {"name": "use the guest", "hosts": "virtops_guests", "gather_facts": False,
         "connection": "ssh", "tasks": [wait, read]}
    )  # fmt: skip
    run = run_playbook(boot_lab["tmp"], plays=plays, env={"ANSIBLE_VERBOSITY": "1"}, timeout=1800)
    assert run.rc == 0, run.stdout[-6000:] + run.stderr[-3000:]
    seed = boot_lab["seed_dir"] / name
    public = host_key_checks(boot_lab, name, (seed / "user-data").read_text())
    assert known_hosts_lines(boot_lab) == [f"{alias} {public}"]
    assert published(run)[name]["ssh_host_key"] == public
    assert published(run)[name]["ssh_host_key_alias"] == alias
    address = published(run)[name]["address"]
    ssh_args = run.task(f"virtops.kvm.guest : Add the guest to the inventory: {name}")["add_host"][
        "host_vars"
    ]["ansible_ssh_common_args"]
    assert "-o StrictHostKeyChecking=yes" in ssh_args, ssh_args
    assert f"-o UserKnownHostsFile={boot_lab['known_hosts']}" in ssh_args
    assert f"-o HostKeyAlias={alias}" in ssh_args
    assert run.task("read the host key")["stdout"].split()[:2] == public.split()
    assert_no_private_key(run, seed / "ssh_host_ed25519_key")

    # The key the guest serves is the pinned one (the image's own keys were replaced).
    scan = subprocess.run(
        ["ssh-keyscan", "-T", "30", "-t", "ed25519", address],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    served = [ln.split(None, 1)[1] for ln in scan.stdout.splitlines() if ln and ln[0] != "#"]
    assert served == [public], scan.stdout + scan.stderr

    # ssh with strict checking against the pinned file logs in; a wrong pinned key is refused.
    ok = ssh_to(address, ssh_keypair.private, boot_lab["known_hosts"], alias, "true")
    assert ok.returncode == 0, ok.stderr
    other = boot_lab["tmp"] / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    wrong = boot_lab["tmp"] / "wrong_known_hosts"
    wrong_key = " ".join(Path(f"{other}.pub").read_text().split()[:2])
    wrong.write_text(f"{alias} {wrong_key}\n")
    refused = ssh_to(address, ssh_keypair.private, wrong, alias, "true")
    assert refused.returncode == 255, refused.stdout + refused.stderr
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in refused.stderr, refused.stderr


@pytest.mark.lab  # starts a guest (an empty disk: it boots nothing)
@pytest.mark.timeout(600)
def test_host_key_checking_of_a_guest_whose_key_the_role_cannot_know(boot_lab, name_prefix, conn):
    """An imported disk, added to the inventory in each mode: trust on first use (pinned), no
    trust on first use (strict), the old insecure options (none), no options (ssh); the
    deprecated variable only says so."""
    pool = conn.storagePoolLookupByName(boot_lab["pool"])
    pool.createXML(
        "<volume><name>empty.qcow2</name><capacity>16777216</capacity>"
        "<target><format type='qcow2'/></target></volume>",
        0,
    )
    name = f"{name_prefix}-imp"
    guest = {"name": name, "memory": 128, "import": {"pool": boot_lab["pool"],
             "volume": "empty.qcow2"}, "address": "198.18.0.9", "wait": False}  # fmt: skip
    plays = []
    for mode_name in ("pinned", "strict", "none", "ssh"):
        extra = {"guest_ssh_strict_host_keys": True} if mode_name == "ssh" else {}
        play = role_play(boot_lab, [guest], guest_ssh_host_key_checking=mode_name, **extra)
        plays.append(play[0])
    run = run_playbook(boot_lab["tmp"], plays=plays)
    assert run.rc == 0, run.stdout[-6000:] + run.stderr[-3000:]
    added = [
        e["result"]["add_host"]["host_vars"].get("ansible_ssh_common_args", "")
        for e in run.results
        if e["task"] == f"virtops.kvm.guest : Add the guest to the inventory: {name}"
    ]
    alias = f"localhost/{name.lower()}"
    pinned = (
        f"-o UserKnownHostsFile={boot_lab['known_hosts']} -o HostKeyAlias={alias} "
        "-o StrictHostKeyChecking="
    )
    assert added == [
        pinned + "accept-new",
        pinned + "yes",
        "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
        "",
    ]
    assert published(run)[name]["ssh_host_key"] is None
    assert not (boot_lab["seed_dir"] / name).exists()  # no key made for it
    assert known_hosts_lines(boot_lab) == []  # nothing pinned: ssh adds it on first use
    notes = [
        e for e in run.results if e["task"].endswith("guest_ssh_strict_host_keys is deprecated")
    ]
    assert [e["status"] for e in notes] == ["skipped", "skipped", "skipped", "ok"]
    assert "has no effect" in notes[-1]["result"]["msg"]
