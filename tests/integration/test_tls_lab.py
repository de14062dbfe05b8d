"""The host role's PKI on real libvirtd: two lab hosts get their keys and certificates from the
role's own TLS tasks (``tasks_from: tls``, run in each host's namespaces through the
``virtops_lab_nsenter`` connection), their libvirtd.conf and qemu.conf TLS settings from the
role's templates; then who may connect, and migration over TLS by default.
"""

from __future__ import annotations

import contextlib
import grp
import pwd
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, PlaybookRun
from tests.lab import hosts as lab_hosts_mod
from tests.lab.playbooks import conf_settings, run_on_lab_hosts

# The module's set-up (two role runs, two libvirtd restarts) counts towards the first test.
pytestmark = [pytest.mark.lab, pytest.mark.multihost, pytest.mark.timeout(900)]

ORG = "virtops.kvm"
ADMIN = "alice"
# The settings of the role's templates that make TLS (the rest of the lab's files stay).
LIBVIRTD_KEYS = (
    "listen_tls",
    "auth_tls",
    "key_file",
    "cert_file",
    "ca_file",
    "tls_no_sanity_certificate",
    "tls_no_verify_certificate",
    "tls_allowed_dn_list",
)
QEMU_KEYS = (
    "default_tls_x509_cert_dir",
    "default_tls_x509_verify",
    "migrate_tls_x509_verify",
    "migrate_tls_force",
)


def pki_of(host) -> Path:
    """The host's /etc/pki as seen from here."""
    return lab_hosts_mod.path_on_host(host.uri, Path("/etc/pki"))


ROLE_PLAY = {
    "name": "The host role's TLS tasks and templates on the lab hosts",
    "hosts": "all",
    "gather_facts": True,
    "gather_subset": ["min", "network"],  # what tls.yml reads: fqdn, hostname, default_ipv4
    "vars": {
        "host_libvirt_tls": True,
        "host_migration_tls": True,
        "host_tls_admin_clients": [{"name": ADMIN}],
        "host_qemu_group": "libvirt-qemu",
        "host_libvirt_service_manager": "direct",
        "host_libvirt_restart_on_change": False,
    },
    "tasks": [
        {
            "name": "Make the PKI",
            "ansible.builtin.include_role": {
                "name": "virtops.kvm.host",
                "tasks_from": "tls",
                "public": True,
            },
        },
        {
            "name": "Render the role's libvirtd.conf",
            "ansible.builtin.template": {
                "src": str(ROOT / "roles" / "host" / "templates" / "daemon.conf.j2"),
                "dest": "{{ rendered_dir }}/{{ inventory_hostname }}-libvirtd.conf",
                "mode": "0600",
            },
            "delegate_to": "localhost",
            "loop": ["libvirtd"],
            "vars": {"__host_remote_daemon_name": "libvirtd"},
        },
        {
            "name": "Render the role's qemu.conf",
            "ansible.builtin.template": {
                "src": str(ROOT / "roles" / "host" / "templates" / "qemu.conf.j2"),
                "dest": "{{ rendered_dir }}/{{ inventory_hostname }}-qemu.conf",
                "mode": "0600",
            },
            "delegate_to": "localhost",
            "vars": {
                "__host_user": "libvirt-qemu",
                "__host_group": "libvirt-qemu",
                "__host_security_driver": "none",
            },
        },
    ],
}


@pytest.fixture(scope="module")
def tls_site(lab_hosts, tmp_path_factory):
    """Two lab hosts with the role's PKI and TLS settings (put back afterwards)."""
    tmp = tmp_path_factory.mktemp("tls")
    pki_dir, rendered = tmp / "pki", tmp / "rendered"
    rendered.mkdir()
    lab = lab_hosts
    started = time.monotonic()
    play = dict(ROLE_PLAY, vars=dict(ROLE_PLAY["vars"], host_tls_pki_dir=str(pki_dir)))
    play["vars"]["rendered_dir"] = str(rendered)
    run = run_on_lab_hosts(tmp, lab.hosts, [play], "pki")
    assert run.rc == 0, run.stdout[-6000:] + run.stderr[-3000:]
    role_s = time.monotonic() - started
    again = run_on_lab_hosts(tmp, lab.hosts, [play], "pki-again")
    assert again.rc == 0, again.stdout[-6000:] + again.stderr[-3000:]
    with contextlib.ExitStack() as stack:
        for host in lab.hosts[:2]:
            daemon = (rendered / f"{host.name}-libvirtd.conf").read_text()
            qemu = (rendered / f"{host.name}-qemu.conf").read_text()
            stack.enter_context(
                lab_hosts_mod.reconfigured(
                    host,
                    "virtops.kvm.host role's TLS settings (test_tls_lab.py)",
                    conf_settings(daemon, LIBVIRTD_KEYS),
                    conf_settings(qemu, QEMU_KEYS),
                )
            )
        yield {
            "hosts": lab.hosts[:2],
            "pki_dir": pki_dir,
            "rendered": rendered,
            "tmp": tmp,
            "run": run,
            "again": again,
            "role_s": role_s,
            "setup_s": time.monotonic() - started,
        }


def test_role_makes_one_private_key_per_role(tls_site, record_property):
    record_property("role_tls_tasks_s", round(tls_site["role_s"], 1))
    record_property("tls_site_setup_s", round(tls_site["setup_s"], 1))
    changed = [r["task"] for r in tls_site["again"].results if r["result"].get("changed")]
    assert changed == [], f"second run changed: {changed}"
    keys = {
        "libvirt/private/serverkey.pem": ("root", "root", 0o600),
        "libvirt/private/clientkey.pem": ("root", "root", 0o600),
        "qemu/server-key.pem": ("root", "libvirt-qemu", 0o640),
        "qemu/client-key.pem": ("root", "libvirt-qemu", 0o640),
    }
    ca_key = (tls_site["pki_dir"] / "ca-key.pem").read_bytes()
    publics = set()
    for host in tls_site["hosts"]:
        pki = pki_of(host)
        for rel, (owner, group, mode) in keys.items():
            st = (pki / rel).stat()
            assert (pwd.getpwuid(st.st_uid).pw_name, st.st_gid, st.st_mode & 0o777) == (
                owner,
                grp.getgrnam(group).gr_gid,
                mode,
            ), rel
        assert ((pki / "libvirt" / "private").stat().st_mode & 0o777) == 0o700
        assert ((pki / "qemu").stat().st_mode & 0o777) == 0o750
        for cert in ("CA/cacert.pem", "libvirt/servercert.pem", "libvirt/clientcert.pem"):
            assert ((pki / cert).stat().st_mode & 0o777) == 0o644, cert
        # the CA key never reaches a host
        for path in pki.rglob("*"):
            assert not path.is_file() or path.read_bytes() != ca_key, path
        # server, client and QEMU keys differ (QEMU's one key serves both directions)
        host_keys = {
            rel: pubkey(pki / rel)
            for rel in ("libvirt/private/serverkey.pem", "libvirt/private/clientkey.pem")
        }
        host_keys["qemu"] = pubkey(pki / "qemu/server-key.pem")
        assert pubkey(pki / "qemu/client-key.pem") == host_keys["qemu"]
        assert len(set(host_keys.values())) == 3
        publics |= set(host_keys.values())
        subjects = {
            cert: subject(pki / cert)
            for cert in ("libvirt/servercert.pem", "libvirt/clientcert.pem", "qemu/server-cert.pem")
        }
        assert subjects == {
            "libvirt/servercert.pem": f"O={ORG},OU=servers,CN={host.name}",
            "libvirt/clientcert.pem": f"O={ORG},OU=hosts,CN={host.name}",
            "qemu/server-cert.pem": f"O={ORG},OU=qemu,CN={host.name}",
        }
    assert len(publics) == 6
    # the controller: CA key and the admin's key private, the admin's dir a pkipath
    admin = tls_site["pki_dir"] / "admins" / ADMIN
    for path in (tls_site["pki_dir"] / "ca-key.pem", admin / "clientkey.pem"):
        assert (path.stat().st_mode & 0o777) == 0o600, path
    assert (tls_site["pki_dir"].stat().st_mode & 0o777) == 0o700
    assert subject(admin / "clientcert.pem") == f"O={ORG},OU=admins,CN={ADMIN}"


def pubkey(key: Path) -> str:
    return subprocess.run(
        ["openssl", "pkey", "-pubout", "-in", str(key)], capture_output=True, text=True, check=True
    ).stdout


def subject(cert: Path) -> str:
    """The DN as libvirtd compares it with tls_allowed_dn_list (libvirt's own tool)."""
    out = subprocess.run(
        ["virt-pki-query-dn", str(cert)], capture_output=True, text=True, check=True
    ).stdout
    return out.strip()


def pkipath(tmp: Path, name: str, ca: Path, cert: Path, key: Path) -> Path:
    """A directory for libvirt's ``pkipath`` URI parameter."""
    path = tmp / "clients" / name
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(ca, path / "cacert.pem")
    shutil.copy(cert, path / "clientcert.pem")
    shutil.copy(key, path / "clientkey.pem")
    return path


def virsh_hostname(host, path: Path) -> subprocess.CompletedProcess:
    uri = f"qemu+tls://{host.address}/system?pkipath={path}"
    return subprocess.run(
        ["virsh", "-c", uri, "hostname"], capture_output=True, text=True, timeout=60, check=False
    )


def other_ca_client(tmp: Path) -> tuple[Path, Path]:
    """A client certificate with a host's DN, signed by a CA that is not ours."""
    d = tmp / "other-ca"
    d.mkdir(exist_ok=True)
    ec = "-algorithm EC -pkeyopt ec_paramgen_curve:P-256"
    ca_ext = "basicConstraints=critical,CA:TRUE"
    cmds = [
        f"openssl genpkey {ec} -out ca.key",
        f"openssl req -new -x509 -key ca.key -subj '/O={ORG}/CN=other CA' -addext {ca_ext}"
        " -out ca.pem",
        f"openssl genpkey {ec} -out client.key",
        f"openssl req -new -key client.key -subj /O={ORG}/OU=hosts/CN=vtlab-h1 -out client.csr",
        "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2"
        " -extfile ext -out client.pem",
    ]
    (d / "ext").write_text("extendedKeyUsage = clientAuth\n")
    for cmd in cmds:
        subprocess.run(shlex.split(cmd), cwd=d, capture_output=True, check=True)
    return d / "client.pem", d / "client.key"


def test_only_fleet_clients_open_libvirtd(tls_site):
    h1, h2 = tls_site["hosts"]
    tmp, p1 = tls_site["tmp"], pki_of(h1)
    ca = p1 / "CA" / "cacert.pem"
    log = lab_hosts_mod.path_on_host(h2.uri, Path("/var/log/libvirt/libvirtd.log"))

    host_client = pkipath(
        tmp, "h1-client", ca, p1 / "libvirt/clientcert.pem", p1 / "libvirt/private/clientkey.pem"
    )
    done = virsh_hostname(h2, host_client)
    assert (done.returncode, done.stdout.strip()) == (0, h2.name), log.read_text()[-3000:]

    admin = tls_site["pki_dir"] / "admins" / ADMIN
    done = virsh_hostname(h2, admin)
    assert (done.returncode, done.stdout.strip()) == (0, h2.name), done.stderr

    log_before = log.read_text() if log.exists() else ""
    qemu = pkipath(tmp, "h1-qemu", ca, p1 / "qemu/server-cert.pem", p1 / "qemu/server-key.pem")
    refused = virsh_hostname(h2, qemu)
    assert refused.returncode != 0 and h2.name not in refused.stdout
    # libvirtd itself refused the DN (not a client-side check)
    logged = log.read_text()[len(log_before) :]
    assert "is not on the list of allowed clients (tls_allowed_dn_list)" in logged, logged

    other_cert, other_key = other_ca_client(tmp)
    refused = virsh_hostname(h2, pkipath(tmp, "other-ca", ca, other_cert, other_key))
    assert refused.returncode != 0 and h2.name not in refused.stdout

    # no client certificate at all (only the CA, to trust the server): libvirtd refuses it
    bare = tmp / "clients" / "no-cert"
    bare.mkdir(parents=True)
    shutil.copy(ca, bare / "cacert.pem")
    log_before = log.read_text()
    refused = virsh_hostname(h2, bare)
    assert refused.returncode != 0 and h2.name not in refused.stdout
    logged = log.read_text()[len(log_before) :]
    assert "Unable to verify TLS peer: No certificate was found" in logged, (refused.stderr, logged)

    rendered = (tls_site["rendered"] / f"{h2.name}-libvirtd.conf").read_text()
    assert (
        f'tls_allowed_dn_list = ["O={ORG},OU=hosts,CN=*", "O={ORG},OU=admins,CN={ADMIN}"]'
        in rendered
    )


def test_migration_uses_tls_by_default(tls_site, tiny_guest, name_prefix, record_property):
    h1, h2 = tls_site["hosts"]
    src_conn, dst_conn = h1.connect(), h2.connect()
    guest = tiny_guest(f"{name_prefix}-tls", conn=src_conn)
    guest.write_marker("where", "written on h1")

    def migrate(src, dst, **extra) -> PlaybookRun:
        task = {
            "name": "Migrate",
            "virtops.kvm.migrate": {
                "uri": "qemu:///system",
                "name": guest.name,
                "dest_uri": f"qemu+tls://{dst.name}/system",
                "unsafe": True,  # the lab hosts share the guest's files
                **extra,
            },
            "ignore_errors": True,
        }
        play = {"name": "migrate", "hosts": src.name, "gather_facts": False, "tasks": [task]}
        return run_on_lab_hosts(
            tls_site["tmp"], lab_of(tls_site).hosts, [play], f"migrate-{time.time_ns()}"
        )

    started = time.monotonic()
    moved = migrate(h1, h2)
    record_property("migrate_tls_default_s", round(time.monotonic() - started, 1))
    status, result = outcome(moved, "Migrate")
    assert status == "ok", result
    assert result["tls"] is True and result["location"].endswith(f"//{h2.name}/system")
    guest.conn = dst_conn
    assert guest.read_marker("where") == "written on h1"

    # The opt-out: the role's migrate_tls_force = 1 makes libvirt refuse it, nothing moves.
    status, refused = outcome(migrate(h2, h1, tls=False), "Migrate")
    assert status == "failed", refused
    assert "VIR_MIGRATE_TLS" in refused["msg"], refused["msg"]
    assert [d.name() for d in dst_conn.listAllDomains()] == [guest.name]
    assert dst_conn.lookupByName(guest.name).isActive()


def outcome(run: PlaybookRun, name: str) -> tuple[str, dict]:
    """(status, result) of the task ``name``."""
    [entry] = [e for e in run.results if e["task"] == name]
    return entry["status"], entry["result"]


def lab_of(tls_site):
    return lab_hosts_mod.Lab(list(tls_site["hosts"]), owner="test")
