"""Non-root access to libvirt over SSH, as virt-manager and ``virsh -c qemu+ssh://`` use it,
on a real lab host: the host role's ``access`` entry point (``tasks_from: access``, run in the
lab host's namespaces through the ``virtops_lab_nsenter`` connection) makes a socket group and
adds an admin to it; the lab host's libvirtd gets the socket settings of the role's
libvirtd.conf; an sshd runs in the lab host's namespaces (so the far end of ``qemu+ssh://``
sees that host's private /run/libvirt), and two users of this machine connect through it: the
admin lists and starts a guest, a user outside the group is refused by the socket.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, PlaybookRun, wait_for
from tests.lab import hosts as lab_hosts_mod
from tests.lab.playbooks import conf_settings, run_on_lab_hosts

pytestmark = [pytest.mark.lab, pytest.mark.multihost, pytest.mark.timeout(300)]

ADMIN = "virtops-lab-admin"
OUTSIDER = "virtops-lab-outsider"
MISSING = "virtops-lab-nobody"  # never created: the role must refuse it
GROUP = "virtops-lab-libvirt"
# The settings of the role's libvirtd.conf that decide who may use the local sockets.
SOCKET_KEYS = (
    "unix_sock_group",
    "unix_sock_ro_perms",
    "unix_sock_rw_perms",
    "unix_sock_admin_perms",
    "auth_unix_rw",
)


def phases(run: PlaybookRun) -> dict[str, list[dict]]:
    """The task results of each play, split at its first task ``Phase NAME``."""
    found: dict[str, list[dict]] = {}
    current = None
    for entry in run.results:
        if entry["task"].startswith("Phase "):
            current = found.setdefault(entry["task"].removeprefix("Phase "), [])
        elif current is not None:
            current.append(entry)
    return found


def changed(results: list[dict]) -> list[str]:
    return [
        r["task"].removeprefix("virtops.kvm.host : ") for r in results if r["result"].get("changed")
    ]


def access_play(name: str, users: list[str], extra_tasks: list | None = None) -> dict:
    return {
        "name": name,
        "hosts": "all",
        "gather_facts": False,
        "vars": {"host_libvirt_socket_group": GROUP, "host_libvirt_users": users},
        "tasks": [
            {"name": f"Phase {name}", "ansible.builtin.debug": {"msg": name}},
            {
                "name": "Grant access",
                "ansible.builtin.include_role": {
                    "name": "virtops.kvm.host",
                    "tasks_from": "access",
                    "public": True,
                },
            },
            *(extra_tasks or []),
        ],
    }


GROUP_AFTER = {
    "name": "The socket group now",
    "ansible.builtin.getent": {"database": "group", "key": GROUP, "fail_key": False},
    "check_mode": False,
}


def refused_play() -> dict:
    """The role with a user that does not exist: it must fail before it makes the group."""
    play = access_play("refused", [ADMIN, MISSING])
    play["tasks"] = [
        play["tasks"][0],
        {"name": "Try", "block": [play["tasks"][1]], "rescue": [GROUP_AFTER]},
    ]
    return play


RENDER = {
    "name": "Render the role's libvirtd.conf",
    "ansible.builtin.template": {
        "src": str(ROOT / "roles" / "host" / "templates" / "daemon.conf.j2"),
        "dest": "{{ rendered }}",
        "mode": "0600",
    },
    "delegate_to": "localhost",
    "loop": ["libvirtd"],
    "vars": {"__host_remote_daemon_name": "libvirtd"},
}


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60, **kwargs)


def _exists(name: str, db=pwd.getpwnam) -> bool:
    try:
        db(name)
    except KeyError:
        return False
    return True


def _user_pids(uid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
    return pids


def _remove_user(name: str) -> None:
    """The test user, with its home and any process it left (killed by PID)."""
    if not _exists(name):
        return
    for pid in _user_pids(pwd.getpwnam(name).pw_uid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    subprocess.run(["userdel", "-r", name], capture_output=True, check=False)


def _remove_all() -> None:
    for user in (ADMIN, OUTSIDER, MISSING):
        _remove_user(user)
    if _exists(GROUP, grp.getgrnam):
        subprocess.run(["groupdel", GROUP], capture_output=True, check=False)


def _make_user(name: str, tmp: Path) -> Path:
    """A user of this machine (and of every lab host: /etc is shared) with an SSH key."""
    # "*": no password, but not locked ("!"), which sshd without PAM would refuse
    _run(["useradd", "--create-home", "--shell", "/bin/sh", "--password", "*", name])
    key = tmp / f"{name}.key"
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)])
    entry = pwd.getpwnam(name)
    ssh_dir = Path(entry.pw_dir) / ".ssh"
    ssh_dir.mkdir(mode=0o700)
    keys = ssh_dir / "authorized_keys"
    keys.write_text(Path(f"{key}.pub").read_text())
    keys.chmod(0o600)
    for path in (ssh_dir, keys):
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return key


@contextlib.contextmanager
def sshd_in(host, tmp: Path):
    """An sshd in ``host``'s namespaces on its lab address, port 22; killed by PID after."""
    host_key = tmp / "ssh_host_ed25519_key"
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)])
    config = tmp / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"ListenAddress {host.address}:22",
                f"HostKey {host_key}",
                f"PidFile {tmp / 'sshd.pid'}",
                "UsePAM no",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "AuthorizedKeysFile .ssh/authorized_keys",
                f"AllowUsers {ADMIN} {OUTSIDER}",
                "X11Forwarding no",
                "AllowTcpForwarding no",
                "",
            ]
        )
    )
    # sshd's privilege separation directory, on the lab host's own /run (a tmpfs)
    made_run_dir = not _ns_test(host, "/run/sshd")
    if made_run_dir:
        _run(host.nsenter(["install", "-d", "-m", "0755", "/run/sshd"]))
    log = (tmp / "sshd.log").open("w")
    # nsenter without a PID namespace execs sshd in place: this PID is sshd's
    proc = subprocess.Popen(
        host.nsenter(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)]),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:

        def listening() -> bool:
            assert proc.poll() is None, (tmp / "sshd.log").read_text()
            with contextlib.suppress(OSError), socket.create_connection((host.address, 22), 1):
                return True
            return False

        wait_for(listening, 20, f"sshd on {host.address}:22", interval=0.2)
        yield tmp / "sshd.log"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        if made_run_dir:
            subprocess.run(host.nsenter(["rmdir", "/run/sshd"]), capture_output=True, check=False)


def _ns_test(host, path: str) -> bool:
    return subprocess.run(host.nsenter(["test", "-e", path]), check=False).returncode == 0


@pytest.fixture(scope="module")
def access_site(lab_hosts, tmp_path_factory):
    """Lab host 1 with the role's socket group and settings, its sshd, and two users."""
    tmp = tmp_path_factory.mktemp("access")
    host = lab_hosts.hosts[0]
    started = time.monotonic()
    _remove_all()  # leftovers of an interrupted run
    try:
        keys = {user: _make_user(user, tmp) for user in (ADMIN, OUTSIDER)}
        check = run_on_lab_hosts(
            tmp, [host], [access_play("check", [ADMIN], [GROUP_AFTER])], "check", check=True
        )
        assert check.rc == 0, check.stdout[-6000:] + check.stderr[-3000:]
        rendered = tmp / "libvirtd.conf"
        plays = [
            refused_play(),
            access_play("apply", [ADMIN], [dict(RENDER, vars=dict(RENDER["vars"]))]),
            access_play("again", [ADMIN]),
        ]
        plays[1]["vars"]["rendered"] = str(rendered)
        run = run_on_lab_hosts(tmp, [host], plays, "apply")
        assert run.rc == 0, run.stdout[-6000:] + run.stderr[-3000:]
        role_s = time.monotonic() - started
        ssh_config = tmp / "ssh_config"
        ssh_config.write_text(
            "Host *\n  StrictHostKeyChecking no\n"
            f"  UserKnownHostsFile {tmp / 'known_hosts'}\n"
            "  BatchMode yes\n  IdentitiesOnly yes\n  ConnectTimeout 10\n"
        )
        ssh = tmp / "ssh"  # libvirt's ``command``: ssh with our options, not root's own
        ssh.write_text(f'#!/bin/sh\nexec ssh -F {ssh_config} "$@"\n')
        ssh.chmod(0o755)
        daemon = conf_settings(rendered.read_text(), SOCKET_KEYS)
        with (
            lab_hosts_mod.reconfigured(
                host, "virtops.kvm.host role's socket access (test_access_lab.py)", daemon, {}
            ),
            sshd_in(host, tmp) as sshd_log,
        ):
            yield {
                "host": host,
                "tmp": tmp,
                "keys": keys,
                "ssh": ssh,
                "sshd_log": sshd_log,
                "check": phases(check)["check"],
                "runs": phases(run),
                "rendered": rendered,
                "role_s": role_s,
                "setup_s": time.monotonic() - started,
            }
    finally:
        _remove_all()


def virsh_as(site, user: str, *args: str) -> subprocess.CompletedProcess:
    uri = (
        f"qemu+ssh://{user}@{site['host'].address}/system"
        f"?keyfile={site['keys'][user]}&command={site['ssh']}&no_tty=1"
    )
    return subprocess.run(
        ["virsh", "-c", uri, *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_role_grants_the_group_and_refuses_missing_users(access_site, record_property):
    record_property("role_access_runs_s", round(access_site["role_s"], 1))
    record_property("access_site_setup_s", round(access_site["setup_s"], 1))
    runs = access_site["runs"]
    # an unknown user: a clear failure before the first change (the group is not made)
    [failure] = [r for r in runs["refused"] if r["status"] == "failed"]
    assert f"do not exist on {access_site['host'].name}: {MISSING}." in failure["result"]["msg"]
    assert ADMIN not in failure["result"]["msg"].split(":", 1)[1]
    [after] = [r for r in runs["refused"] if r["task"] == "The socket group now"]
    assert after["result"]["ansible_facts"]["getent_group"] == {GROUP: None}
    # check mode predicts the group and the membership, and makes neither
    predicted = changed(access_site["check"])
    assert predicted == [
        "Create the libvirt socket group",
        "Add users to the libvirt socket group (check mode, group not created yet)",
    ], predicted
    [after] = [r for r in access_site["check"] if r["task"] == "The socket group now"]
    assert after["result"]["ansible_facts"]["getent_group"] == {GROUP: None}
    # the real run makes them, the second run changes nothing
    assert changed(runs["apply"]) == [
        "Create the libvirt socket group",
        "Add users to the libvirt socket group",
        "Render the role's libvirtd.conf",  # the test's, for the lab host
    ]
    assert changed(runs["again"]) == []
    group = grp.getgrnam(GROUP)
    assert group.gr_mem == [ADMIN] and group.gr_gid < 1000  # a system group
    # the lab host's socket now has the role's group and mode
    sock = lab_hosts_mod.path_on_host(
        access_site["host"].uri, Path("/run/libvirt/libvirt-sock")
    ).stat()
    assert (sock.st_gid, stat.S_IMODE(sock.st_mode)) == (group.gr_gid, 0o770)
    assert f'unix_sock_group = "{GROUP}"' in access_site["rendered"].read_text()


def test_group_member_lists_and_starts_guests_over_ssh(
    access_site, tiny_guest, name_prefix, record_property
):
    host = access_site["host"]
    conn = host.connect()
    guest = tiny_guest(f"{name_prefix}-ssh", conn=conn, start=False)
    started = time.monotonic()

    # outside the group: SSH lets the user in, the read-write socket does not
    for args in (["list", "--all", "--name"], ["start", guest.name]):
        refused = virsh_as(access_site, OUTSIDER, *args)
        assert refused.returncode != 0, refused.stdout
        assert "libvirt-sock': Permission denied" in refused.stderr, refused.stderr
        assert guest.name not in refused.stdout
    assert not conn.lookupByName(guest.name).isActive()
    sshd_log = access_site["sshd_log"].read_text()
    assert f"Accepted publickey for {OUTSIDER}" in sshd_log, sshd_log

    listed = virsh_as(access_site, ADMIN, "list", "--all", "--name")
    assert listed.returncode == 0, listed.stderr + access_site["sshd_log"].read_text()
    assert guest.name in listed.stdout.split()
    done = virsh_as(access_site, ADMIN, "start", guest.name)
    assert done.returncode == 0, done.stderr
    assert conn.lookupByName(guest.name).isActive()
    listed = virsh_as(access_site, ADMIN, "list", "--name")  # running guests only
    assert guest.name in listed.stdout.split(), listed.stderr
    record_property("virsh_over_ssh_s", round(time.monotonic() - started, 1))
    assert f"Accepted publickey for {ADMIN}" in access_site["sshd_log"].read_text()
