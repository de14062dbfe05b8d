"""The host role without a Red Hat machine, and on this machine, in check mode.

We cannot boot a Red Hat-family guest here. This runs the role in check mode with the facts of a
RHEL 9 host (SELinux enforcing, systemd, modular daemons) from a fact cache, on this machine:
every task of the Red Hat path is evaluated and its templates rendered (diffs asserted below);
read-only probes of systemd and SELinux are answered by small shims on PATH. The package task
(dnf needs a Red Hat system) is skipped by tag. A second test runs the role in check mode
against this Debian machine as it is: it must not fail and must change nothing.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.helpers import run_playbook

pytestmark = pytest.mark.integration

SHIMS = {
    "systemctl": """#!/bin/sh
# Test shim: answers systemctl's read-only queries like a Red Hat host on which no libvirt
# unit runs yet. Anything that would change state fails loudly (check mode must not get here).
case "$1" in
    show)
        unit=$2
        printf 'Id=%s\nNames=%s\nLoadState=loaded\n' "$unit" "$unit"
        printf 'ActiveState=inactive\nSubState=dead\nUnitFileState=disabled\n'
        ;;
    is-enabled) echo disabled; exit 1 ;;
    is-active) echo inactive; exit 3 ;;
    list-unit-files|list-units) exit 0 ;;
    --version) echo "systemd 252 (252-32.el9)"; ;;
    *) echo "systemctl shim: refusing '$*' (a check-mode run must not change units)" >&2; exit 99 ;;
esac
""",
    "getsebool": """#!/bin/sh
# Test shim: every SELinux boolean is off (read-only).
echo "$1 --> off"
""",
    "semanage": """#!/bin/sh
# Test shim: no local file context rules yet; refuses changes.
case "$*" in
    "fcontext --list --locallist") exit 0 ;;
    *) echo "semanage shim: refusing '$*'" >&2; exit 99 ;;
esac
""",
}


def task(run, name: str) -> dict:
    return run.task(f"virtops.kvm.host : {name}")


def _snapshot(paths: list[str]) -> dict[str, float | None]:
    return {p: (os.stat(p).st_mtime if os.path.exists(p) else None) for p in paths}


WATCHED = [
    "/etc/libvirt/libvirtd.conf",
    "/etc/libvirt/qemu.conf",
    "/etc/libvirt/virtqemud.conf",
    "/etc/libvirt/virtproxyd.conf",
    "/etc/modules-load.d/virtops-kvm.conf",
    "/etc/tmpfiles.d/virtops-kvm.conf",
    "/etc/pki",
    "/etc/NetworkManager",
    "/etc/cockpit/ws-certs.d",
]


@pytest.fixture
def rhel_facts(tmp_path):
    """A fact cache holding this machine's facts turned into a RHEL 9 host's."""
    cache = tmp_path / "facts"
    gather = run_playbook(
        tmp_path,
        plays=[{"name": "gather", "hosts": "localhost", "gather_facts": True, "tasks": []}],
        env={
            "ANSIBLE_CACHE_PLUGIN": "jsonfile",
            "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(cache),
        },
    )
    assert gather.rc == 0, gather.stdout + gather.stderr
    (entry,) = cache.iterdir()
    payload = json.loads(json.loads(entry.read_text())["__payload__"])
    payload.update(
        ansible_os_family="RedHat",
        ansible_distribution="RedHat",
        ansible_distribution_major_version="9",
        ansible_distribution_version="9.4",
        ansible_pkg_mgr="dnf",
        ansible_service_mgr="systemd",
        ansible_selinux={
            "status": "enabled",
            "mode": "enforcing",
            "type": "targeted",
            "config_mode": "enforcing",
            "policyvers": 33,
        },
        ansible_apparmor={"status": "disabled"},
        ansible_fqdn="rhel9.example.com",
        ansible_hostname="rhel9",
    )
    entry.write_text(json.dumps({"__payload__": json.dumps(payload)}))
    shims = tmp_path / "shims"
    shims.mkdir()
    for name, text in SHIMS.items():
        (shims / name).write_text(text)
        (shims / name).chmod(0o755)
    return cache, shims


def test_redhat_path_in_check_mode(tmp_path, rhel_facts):
    cache, shims = rhel_facts
    before = _snapshot(WATCHED)
    play = {
        "name": "Red Hat host, check mode",
        "hosts": "localhost",
        "gather_facts": False,
        "environment": {"PATH": f"{shims}:{os.environ['PATH']}"},
        "vars": {
            "host_libvirt_tls": True,
            "host_tls_pki_dir": str(tmp_path / "pki"),
            "host_qemu_security_driver": "auto",
            "host_selinux_booleans": [{"name": "virt_use_nfs", "state": True}],
            "host_storage_pool_path": "/srv/kvm/images",
            "host_hugepages_count": 8,
            "host_network_stack": "networkmanager",
            "host_bridges": [{"name": "br0", "interface": "eth0", "address": "inherit"}],
            "host_libvirt_restart_on_change": False,
            "host_install_cockpit": True,
            "host_cockpit_port": 9443,
        },
        "roles": ["virtops.kvm.host"],
    }
    run = run_playbook(
        tmp_path,
        plays=[play],
        check=True,
        diff=True,
        env={
            "ANSIBLE_CACHE_PLUGIN": "jsonfile",
            "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(cache),
            "ANSIBLE_SKIP_TAGS": "host_install",
        },
    )
    assert run.rc == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert _snapshot(WATCHED) == before, "check mode changed files on this machine"
    assert not (tmp_path / "pki").exists()

    # Modular daemons: one configuration file per daemon, TLS on virtproxyd.
    daemons = task(run, "Configure the libvirt daemons")
    rendered = {r["item"]: r for r in daemons["results"]}
    assert set(rendered) == {
        "virtqemud",
        "virtnetworkd",
        "virtstoraged",
        "virtnodedevd",
        "virtsecretd",
        "virtnwfilterd",
        "virtinterfaced",
        "virtproxyd",
    }
    proxy = rendered["virtproxyd"]["diff"][0]["after"]
    assert "listen_tls = 1" in proxy and "tls_no_verify_certificate = 0" in proxy
    # only the fleet's host client certificates, never QEMU's (OU=qemu)
    assert 'tls_allowed_dn_list = ["O=virtops.kvm,OU=hosts,CN=*"]' in proxy
    assert "listen_tls" not in rendered["virtqemud"]["diff"][0]["after"]
    qemu = task(run, "Configure QEMU")["diff"][0]["after"]
    assert 'security_driver = "selinux"' in qemu
    assert 'user = "qemu"' in qemu and 'group = "qemu"' in qemu
    assert "migrate_tls_force = 1" in qemu
    # systemd: socket drop-ins for the modular sockets, monolithic units disabled.
    dropins = task(run, "Set the socket group and mode")["results"]
    assert {r["item"] for r in dropins} >= {"virtqemud.socket", "virtproxyd.socket"}
    wanted = [r["item"] for r in task(run, "Enable and start the libvirt sockets")["results"]]
    assert "virtproxyd-tls.socket" in wanted and "virtqemud.socket" in wanted
    unwanted = [r["item"] for r in task(run, "Stop and disable unwanted libvirt units")["results"]]
    assert "libvirtd.service" in unwanted
    # SELinux: the boolean would be set, the pool directory labelled.
    sebool = task(run, "Set SELinux booleans persistently")["results"][0]
    assert sebool.get("skipped") and "check mode" in sebool.get("msg", "")
    assert (
        task(run, "Label image directories virt_image_t")["results"][0]["item"] == "/srv/kvm/images"
    )
    # NetworkManager keyfiles for the bridge; nothing applied in check mode.
    nm = task(run, "Preview the configuration of bridge br0")["results"]
    assert any("type=bridge" in r["diff"][0]["after"] for r in nm)
    detached = task(run, "Start the script detached (it survives a dropped connection)")
    assert "not ansible_check_mode" in detached["false_condition"]
    # Cockpit under systemd: the fleet certificate (no PKI yet in check mode), cockpit.socket
    # on its port through a drop-in, nothing of the direct path.
    cert = task(run, "Serve Cockpit with the host's server certificate (and the CA, the chain)")
    assert cert["changed"] and cert["stdout"] == "changed: cert key"
    dropin = task(run, "Listen on host_cockpit_port")
    assert "ListenStream=9443" in dropin["diff"][0]["after"]
    assert (
        dropin["diff"][0]["after_header"] == "/etc/systemd/system/cockpit.socket.d/virtops-kvm.conf"
    )
    assert task(run, "Enable the Cockpit web console")["changed"]
    assert "skip_reason" in task(run, "Start a system D-Bus when none answers")
    assert "skip_reason" in task(run, "Run cockpit-ws")


def test_this_machine_in_check_mode(tmp_path):
    """This Debian machine without systemd: check mode runs through and changes nothing."""
    before = _snapshot(WATCHED)
    play = {
        "name": "this machine, check mode",
        "hosts": "localhost",
        "gather_facts": True,
        "vars": {
            "ansible_python_interpreter": "/usr/bin/python3",
            "host_libvirt_tls": True,
            "host_tls_pki_dir": str(tmp_path / "pki"),
            "host_hugepages_count": 16,
            "host_ksm": False,
            "host_libvirt_restart_on_change": False,
            "host_install_cockpit": True,
        },
        "roles": ["virtops.kvm.host"],
    }
    bus = os.path.exists("/run/dbus/system_bus_socket")
    run = run_playbook(tmp_path, plays=[play], check=True, diff=True)
    assert run.rc == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert _snapshot(WATCHED) == before
    # Cockpit without systemd: a bus and cockpit-ws predicted, neither started.
    if not bus:
        assert task(run, "Start a system D-Bus when none answers")["stdout"] == "started"
        assert not os.path.exists("/run/dbus/system_bus_socket")
    assert task(run, "Run cockpit-ws")["stdout"] in {"started", "restarted"}
    assert not os.path.exists("/run/virtops-kvm-cockpit-ws.pid")
    assert not (tmp_path / "pki").exists()
    judged = task(run, "Judge KVM and publish host_virt_type")
    assert judged["ansible_facts"]["host_virt_type"] == "qemu"  # no vmx/svm here
    direct = task(run, "Read the command lines of running daemons")["results"]
    assert {r["item"] for r in direct} == {"virtlogd", "libvirtd"}


def test_tls_defaults_in_check_mode(tmp_path):
    """The CA's directory defaults outside the playbook tree, in the user's data directory;
    admins get a DN of their own in the default list; check mode makes nothing."""
    home = tmp_path / "home"
    home.mkdir()
    play = {
        "name": "TLS tasks, check mode",
        "hosts": "localhost",
        "gather_facts": True,
        "vars": {
            "ansible_python_interpreter": "/usr/bin/python3",
            "host_libvirt_tls": True,
            "host_tls_admin_clients": [{"name": "alice"}],
            "host_qemu_group": "libvirt-qemu",
        },
        "tasks": [
            {
                "name": "PKI",
                "ansible.builtin.include_role": {
                    "name": "virtops.kvm.host",
                    "tasks_from": "tls",
                    "public": True,
                },
            },
            {
                "name": "Show the DN list",
                "ansible.builtin.debug": {"var": "host_libvirt_tls_allowed_dn_list"},
            },
        ],
    }
    before = _snapshot(WATCHED)
    env = {"HOME": str(home), "XDG_DATA_HOME": ""}
    run = run_playbook(tmp_path, plays=[play], check=True, env=env)
    assert run.rc == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert _snapshot(WATCHED) == before
    dirs = task(run, "Create the controller's PKI directories")["results"]
    assert dirs[0]["item"] == str(home / ".local" / "share" / "virtops-kvm" / "pki")
    assert not (home / ".local").exists()
    assert run.task("Show the DN list")["host_libvirt_tls_allowed_dn_list"] == [
        "O=virtops.kvm,OU=hosts,CN=*",
        "O=virtops.kvm,OU=admins,CN=alice",
    ]


def _this_machine_play(tmp_path, **variables) -> dict:
    return {
        "name": "this machine, check mode",
        "hosts": "localhost",
        "gather_facts": True,
        "vars": {
            "ansible_python_interpreter": "/usr/bin/python3",
            "host_tls_pki_dir": str(tmp_path / "pki"),
            "host_libvirt_restart_on_change": False,
            **variables,
        },
        "roles": ["virtops.kvm.host"],
    }


@pytest.mark.parametrize(
    ("spec", "refused"),
    [
        ({"mode": "nat", "bogus": 1}, "bogus"),  # not an option of virtops.kvm.network
        ({"name": "other"}, "name"),  # the role names the network itself
    ],
)
def test_default_network_spec_takes_only_the_modules_options(tmp_path, spec, refused):
    before = _snapshot(WATCHED)
    play = _this_machine_play(
        tmp_path, host_libvirt_default_network="replace", host_libvirt_default_network_spec=spec
    )
    run = run_playbook(tmp_path, plays=[play], check=True)
    assert run.rc != 0
    (failure,) = [e for e in run.results if e["status"] == "failed"]
    assert failure["task"].startswith("virtops.kvm.host : Validating arguments against arg spec")
    assert failure["result"]["msg"].startswith(
        "Validation of arguments failed:\n"
        f"host_libvirt_default_network_spec.{refused}. Supported parameters include: addresses,"
    )
    assert _snapshot(WATCHED) == before


def test_each_problem_of_a_bridge_is_named_before_anything_changes(tmp_path):
    before = _snapshot(WATCHED)
    bridge = {"name": "br-name-too-long-x", "address": "10.0.0.1", "interface": "nosuchnic9"}
    play = _this_machine_play(tmp_path, host_bridges=[bridge])
    run = run_playbook(tmp_path, plays=[play], check=True)
    assert run.rc != 0
    (failure,) = [e for e in run.results if e["status"] == "failed"]
    assert failure["task"] == "virtops.kvm.host : Check the bridge definitions"
    for problem in (
        "Bridge br-name-too-long-x:",
        'the name takes 1 to 15 letters, digits, ".", "_" or "-"',
        "the address is inherit, dhcp, none or A.B.C.D/N, not 10.0.0.1",
        "this host has no interface nosuchnic9",
    ):
        assert problem in run.stdout
    assert not [e["task"] for e in run.results if e["result"].get("changed")]
    assert _snapshot(WATCHED) == before
