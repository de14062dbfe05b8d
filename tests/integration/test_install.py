"""A real Debian network install by the guest role (``install_tree``): not in ``make test``.

The role gets Debian's own netboot kernel and initrd from the package
``debian-installer-12-netboot-amd64`` as a ``file://`` install tree and injects a preseed made
from the worked example ``roles/guest/files/examples/debian12-preseed.cfg`` (with a test user,
its SSH key, a random password hash and the package cache below). The installer fetches its
components and the packages from the Debian archive through libvirt's ``default`` NAT network
and a local apt-cacher-ng on the network's gateway (``192.168.122.1:3142``; the cache stays in
``/var/cache/virtops-kvm/apt-cacher-ng/install`` so a second run downloads less), powers the
guest off; the role boots the disk, waits for SSH and adds the guest to the inventory, and a
second play logs into it as the preseeded user. Check, apply, check, apply: the last two
change nothing. Then ``state: absent`` removes guest and volumes (the fixture cleans up on
failure too).

Marker ``install``: run with ``make test-install`` (tens of minutes under TCG, see
roles/guest/README.md); scripts/test.sh leaves it out. The netboot installer downloads its own
components (udebs) from the archive: the test first asks for them and fails in seconds, naming
the missing, where the archive does not serve them all (this project's test machines);
``VIRTOPS_INSTALL_MIRROR=HOST/DIRECTORY`` names another archive.
"""

from __future__ import annotations

import contextlib
import lzma
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from lxml import etree

from devtools.libvirt_cleanup import domains_with_prefix, remove_domain_named, remove_pool
from tests.helpers import four_times, run_playbook, wait_for
from tests.lab import images as lab_images

pytestmark = [pytest.mark.integration, pytest.mark.lab, pytest.mark.install]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "roles" / "guest" / "files" / "examples" / "debian12-preseed.cfg"
NETBOOT = Path("/usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64")
GATEWAY = "192.168.122.1"  # libvirt's default network
CACHE_PORT = 3142
CACHE_DIR = Path("/var/cache/virtops-kvm/apt-cacher-ng/install")
USER = "virtops"
# The archive the installer uses (HOST/DIRECTORY, over http through the cache); the example's
# deb.debian.org unless VIRTOPS_INSTALL_MIRROR names another.
MIRROR = os.environ.get("VIRTOPS_INSTALL_MIRROR", "deb.debian.org/debian").strip("/")


def make_preseed(ssh_public_key: str, password_hash: str) -> str:
    """The worked example with the test's answers: every line replaced must be there."""
    text = EXAMPLE.read_text()
    late = (
        f"in-target install -d -m 0700 -o {USER} -g {USER} /home/{USER}/.ssh;"
        f" echo '{ssh_public_key}' > /target/home/{USER}/.ssh/authorized_keys;"
        f" in-target chown {USER}:{USER} /home/{USER}/.ssh/authorized_keys;"
        f" in-target chmod 0600 /home/{USER}/.ssh/authorized_keys"
    )
    host, _slash, directory = MIRROR.partition("/")
    replacements = {
        "d-i mirror/http/hostname string deb.debian.org\n": (
            f"d-i mirror/http/hostname string {host}\n"
        ),
        "d-i mirror/http/directory string /debian\n": (
            f"d-i mirror/http/directory string /{directory}\n"
        ),
        "d-i mirror/http/proxy string\n": (
            f"d-i mirror/http/proxy string http://{GATEWAY}:{CACHE_PORT}/\n"
        ),
        "d-i passwd/username string admin\n": f"d-i passwd/username string {USER}\n",
        "d-i passwd/user-password-crypted password CHANGE-ME\n": (
            f"d-i passwd/user-password-crypted password {password_hash}\n"
        ),
        # minimal: no standard task, the SSH server only, no upgrade, no security/updates
        # sources (the test is about the role, not about the archive's latest packages)
        "tasksel tasksel/first multiselect standard, ssh-server\n": (
            "tasksel tasksel/first multiselect\nd-i apt-setup/services-select multiselect\n"
        ),
        "d-i pkgsel/include string qemu-guest-agent\n": (
            "d-i pkgsel/include string openssh-server\n"
        ),
        "d-i pkgsel/upgrade select safe-upgrade\n": "d-i pkgsel/upgrade select none\n",
        "d-i debian-installer/exit/poweroff boolean true\n": (
            "d-i debian-installer/exit/poweroff boolean true\n"
            f"d-i preseed/late_command string {late}\n"
        ),
    }
    for old, new in replacements.items():
        assert text.count(old) == 1, f"{EXAMPLE} no longer has the line {old!r}"
        text = text.replace(old, new)
    assert not [line for line in text.splitlines() if "CHANGE-ME" in line and line[:1] != "#"]
    return text


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=2):
        return True
    return False


@pytest.fixture
def package_cache(tmp_path, default_network):
    """apt-cacher-ng on the default network's gateway (started unless one answers there);
    stopped after, its cache kept."""
    if port_open(GATEWAY, CACHE_PORT):
        yield f"http://{GATEWAY}:{CACHE_PORT}/"
        return
    conf = tmp_path / "acng-conf"
    logs = tmp_path / "acng-log"
    for path in (conf, logs, CACHE_DIR):
        path.mkdir(parents=True, exist_ok=True)
    pidfile = tmp_path / "acng.pid"
    # No remaps: the distribution's send deb.debian.org to mirror lists that do not resolve here.
    (conf / "acng.conf").write_text(
        f"CacheDir: {CACHE_DIR}\nLogDir: {logs}\nSupportDir: /usr/lib/apt-cacher-ng\n"
        f"BindAddress: {GATEWAY}\nPort: {CACHE_PORT}\nPidFile: {pidfile}\n"
        f"SocketPath: {tmp_path / 'acng.socket'}\nExThreshold: 4\n"
    )
    subprocess.run(["apt-cacher-ng", "-c", str(conf), "ForeGround=0"], check=True)
    try:
        wait_for(lambda: port_open(GATEWAY, CACHE_PORT), 30, "apt-cacher-ng on the gateway")
        yield f"http://{GATEWAY}:{CACHE_PORT}/"
    finally:
        if pidfile.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)


def check_installer_components(proxy: str) -> None:
    """Fail in seconds, not after the install timeout, when the archive cannot serve the
    installer's components: the netboot installer downloads its udebs (partitioner, base
    installer, boot loader installer...) from the mirror and stops at "Download installer
    components" on the first one it cannot get. Asked for: every udeb of priority standard or
    higher but the kernel modules (those of the initrd's kernel only, a few of them), and
    apt-mirror-setup (optional, but the first one the installer fetched for this preseed)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy}))
    base = f"http://{MIRROR}"
    index = f"{base}/dists/bookworm/main/debian-installer/binary-amd64/Packages.xz"
    with opener.open(index, timeout=120) as resp:
        packages = lzma.decompress(resp.read()).decode()
    wanted = {}
    for stanza in packages.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " "
        )
        name = fields.get("Package", "")
        if name == "apt-mirror-setup" or (
            fields.get("Priority") in ("required", "important", "standard")
            and "-modules-" not in name
        ):
            wanted[name] = fields["Filename"]
    assert "apt-mirror-setup" in wanted, "the installer's index lists no apt-mirror-setup"
    missing = []
    for name, filename in sorted(wanted.items()):
        try:  # a GET, read no further than a byte: the cache answers HEAD slowly
            with opener.open(f"{base}/{filename}", timeout=60) as resp:
                resp.read(1)
        except urllib.error.HTTPError as err:
            missing.append(f"{name} (HTTP {err.code})")
    if missing:
        pytest.fail(
            f"the archive {base} lists the installer's components but does not serve"
            f" {len(missing)} of the {len(wanted)} it fetches ({', '.join(missing)}), so a"
            " netboot install cannot finish against it (the installer stops at 'Download"
            " installer components'). Give a complete mirror as"
            " VIRTOPS_INSTALL_MIRROR=HOST/DIRECTORY."
        )


@pytest.fixture
def install_lab(conn, name_prefix, default_network):
    """A pool, boot and seed directories QEMU can reach (under the lab directory); the guests
    named after the prefix, the pool and the directory removed after."""
    top = lab_images.lab_dir() / "guests" / f"{name_prefix}-install"
    pool_dir = top / "pool"
    pool_dir.mkdir(parents=True)
    for path in (top, pool_dir):
        path.chmod(0o755)
    pool = conn.storagePoolDefineXML(
        f"<pool type='dir'><name>{name_prefix}-ipool</name>"
        f"<target><path>{pool_dir}</path></target></pool>"
    )
    pool.create()
    try:
        yield {"pool": f"{name_prefix}-ipool", "network": default_network, "top": top}
    finally:
        for dom in domains_with_prefix(conn, name_prefix):
            remove_domain_named([conn], dom.name())
        remove_pool(conn, pool.name())
        shutil.rmtree(top, ignore_errors=True)


def plays(lab, guest, key: Path, state: str = "running") -> list[dict]:
    role_vars = {
        "guest_pool": lab["pool"],
        "guest_seed_dir": str(lab["top"] / "seeds"),
        "guest_boot_dir": str(lab["top"] / "boot"),
        "guest_known_hosts_file": str(lab["top"] / "controller" / "known_hosts"),
        "guest_user": USER,
        "guest_install_timeout": 5400,
        "guest_wait_timeout": 600,
        "guest_inventory_vars": {"ansible_ssh_private_key_file": str(key)},
        "guest_list": [dict(guest, state=state)],
    }
    return [
        {
            "name": "guest role",
            "hosts": "localhost",
            "gather_facts": False,
            "tasks": [
                {
                    "name": "run the role",
                    "ansible.builtin.include_role": {"name": "virtops.kvm.guest"},
                    "vars": role_vars,
                }
            ],
        },
        {
            # over SSH as the role added it (its user, address, known_hosts): no Python needed
            "name": "log into the installed guest",
            "hosts": "virtops_guests",
            "gather_facts": False,
            "connection": "ssh",
            "tasks": [
                {
                    "name": "who am I",
                    "ansible.builtin.raw": "id -un; hostname",
                    "register": "whoami",
                    "changed_when": False,
                }
            ],
        },
    ]


@pytest.mark.timeout(7200)  # one real install under TCG: see roles/guest/README.md
def test_debian_network_install_finishes_and_answers_ssh(
    conn, install_lab, package_cache, name_prefix, ssh_keypair
):
    assert (NETBOOT / "linux").is_file(), "install debian-installer-12-netboot-amd64 (make setup)"
    check_installer_components(package_cache)
    top = install_lab["top"]
    password = secrets.token_urlsafe(12)
    password_hash = subprocess.run(
        ["openssl", "passwd", "-6", "-stdin"],
        input=password, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    preseed = top / "preseed.cfg"
    preseed.write_text(make_preseed(ssh_keypair.public, password_hash))
    preseed.chmod(0o600)
    name = f"{name_prefix}-deb"
    guest = {
        "name": name,
        "vcpus": 2,
        "memory": 1536,
        "disk_size": "6GiB",
        "install_tree": {"url": f"file://{NETBOOT}", "preseed": str(preseed)},
        "interfaces": [{"network": install_lab["network"]}],
    }
    times = []

    def timed(*args, **kwargs):
        start = time.monotonic()
        run = run_playbook(top, *args, timeout=6000, **kwargs)
        times.append(round(time.monotonic() - start))
        print(f"role run {len(times)}: {times[-1]} s, rc {run.rc}", flush=True)
        return run

    runs = four_times(timed, plays=plays(install_lab, guest, ssh_keypair.private))
    print(f"install (role run 2, install and first boot to SSH): {times[1]} s")
    for run in runs:
        assert password not in run.stdout + run.stderr
        assert password_hash not in run.stdout + run.stderr

    # The role picked TCG here (no usable KVM), dropped the installer kernel and its tag.
    xml = etree.fromstring(conn.lookupByName(name).XMLDesc(0))
    assert xml.get("type") == "qemu"
    assert xml.find("os/kernel") is None
    assert "virtops-installing" not in etree.tostring(xml).decode()
    # The second play logged in (last apply) as the preseeded user, on the guest's host name.
    who = runs[3].task("who am I")
    assert who["stdout_lines"][:2] == [USER, name], who

    # And by hand, checked against the key the role recorded (trust on first use).
    known_hosts = top / "controller" / "known_hosts"
    assert f"localhost/{name}" in known_hosts.read_text()
    lease = [
        lease["ipaddr"]
        for lease in conn.networkLookupByName(install_lab["network"]).DHCPLeases()
        if lease["mac"] in etree.tostring(xml).decode()
    ]
    assert lease, "no DHCP lease of the installed guest"
    ssh = subprocess.run(
        ["ssh", "-i", str(ssh_keypair.private), "-o", "BatchMode=yes", "-o", "ConnectTimeout=60",
         "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
         "-o", "GlobalKnownHostsFile=/dev/null", "-o", f"HostKeyAlias=localhost/{name}",
         f"{USER}@{lease[-1]}", "id -un"],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert ssh.returncode == 0 and ssh.stdout.strip() == USER, ssh.stderr

    # Removal: guest, its disk volume and its installer files.
    gone = run_playbook(top, plays=plays(install_lab, guest, ssh_keypair.private, "absent")[:1])
    assert gone.rc == 0, gone.stdout[-4000:]
    assert not domains_with_prefix(conn, name_prefix)
    pool = conn.storagePoolLookupByName(install_lab["pool"])
    pool.refresh(0)
    assert pool.listVolumes() == []
    assert not (top / "boot" / name).exists()
