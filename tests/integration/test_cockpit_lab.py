"""Cockpit on a lab host, run by the host role without systemd, seen in a real browser.

One lab host (its own libvirtd, network and mount namespaces; tests/lab/hosts.py) gets the
role's PKI (``tasks_from: tls``) and then Cockpit (``tasks_from: cockpit``: libvirt-dbus in the
socket group, the host's server certificate in /etc/cockpit/ws-certs.d, a system D-Bus of its
own and cockpit-ws started directly), through the ``virtops_lab_nsenter`` connection. Its
libvirtd gets the role's socket settings (group ``libvirt``, ``auth_unix_rw = "none"``), and two
guests: one running, one shut off. Debian's headless Chromium, driven by Selenium through
Debian's chromedriver, logs in as an admin user (a member of ``libvirt``), opens the Virtual
Machines page and reads both guests with their states; a screenshot is kept.

What this changes outside the lab host is put back: the admin account, libvirtdbus's
membership of ``libvirt`` (the role adds it) and the machine's /etc/cockpit (the host sees a
private copy bound over it in its mount namespace; its /run is its own tmpfs already).
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import secrets
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from devtools.libvirt_cleanup import remove_domain_named
from tests.helpers import PlaybookRun, wait_for
from tests.lab import hosts as lab_hosts_mod
from tests.lab.playbooks import run_on_lab_hosts

pytestmark = [pytest.mark.lab, pytest.mark.multihost, pytest.mark.timeout(420)]

ROLE = "virtops.kvm.host"
ADMIN = "vtcockpit"
SOCKET_GROUP = "libvirt"
DBUS_USER = "libvirtdbus"
PORT = 9090
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# What the role's daemon.conf.j2 writes for the read-write socket with its defaults.
SOCKET_SETTINGS = {
    "unix_sock_group": f'"{SOCKET_GROUP}"',
    "unix_sock_rw_perms": '"0770"',
    "auth_unix_rw": '"none"',
}
# Everything the role and the browser session start in the host (killed by PID at teardown).
STARTED = (
    "cockpit-ws",
    "cockpit-session",
    "cockpit-bridge",
    "cockpit-askpass",
    "dbus-daemon",
    "libvirt-dbus",
    "ssh-agent",
)


def run_role(tmp: Path, host, name: str, plays_vars: dict, *, check: bool = False) -> PlaybookRun:
    play = {
        "name": "The host role's PKI and Cockpit on a lab host",
        "hosts": "all",
        "gather_facts": True,
        "gather_subset": ["min", "network"],
        "vars": plays_vars,
        "tasks": [
            {
                "name": "Make the PKI",
                "ansible.builtin.include_role": {"name": "virtops.kvm.host", "tasks_from": "tls"},
            },
            {
                "name": "Run Cockpit",
                "ansible.builtin.include_role": {
                    "name": "virtops.kvm.host",
                    "tasks_from": "cockpit",
                },
            },
        ],
    }
    return run_on_lab_hosts(tmp, [host], [play], name, check=check, timeout=300)


def changed_tasks(run: PlaybookRun) -> list[str]:
    return [e["task"] for e in run.results if e["result"].get("changed")]


def in_host(host, script: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        host.nsenter(["sh", "-c", script]),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        **kwargs,
    )


def served_certificate(address: str, ca: Path) -> bytes:
    """The certificate Cockpit serves, verified against the fleet's CA and the address."""
    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection((address, PORT), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=address) as tls,
    ):
        return tls.getpeercert(binary_form=True)


def pem_der(path: Path) -> bytes:
    """The first certificate of a PEM file, as DER."""
    return ssl.PEM_cert_to_DER_cert(
        path.read_text().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    )


@contextlib.contextmanager
def admin_account(password: str):
    """A local admin user in the socket group (in /etc/passwd, which the lab host shares)."""
    subprocess.run(["userdel", "-r", ADMIN], capture_output=True, check=False)
    subprocess.run(
        ["useradd", "-m", "-s", "/bin/bash", "-G", SOCKET_GROUP, ADMIN],
        capture_output=True,
        check=True,
    )
    try:
        subprocess.run(
            ["chpasswd"], input=f"{ADMIN}:{password}\n", text=True, capture_output=True, check=True
        )
        yield ADMIN
    finally:
        subprocess.run(["userdel", "-r", ADMIN], capture_output=True, check=False)


@contextlib.contextmanager
def dbus_user_membership_restored():
    """libvirtdbus's membership of the socket group as it was before the role added it."""
    before = DBUS_USER in grp.getgrnam(SOCKET_GROUP).gr_mem
    try:
        yield before
    finally:
        if not before and DBUS_USER in grp.getgrnam(SOCKET_GROUP).gr_mem:
            subprocess.run(
                ["gpasswd", "-d", DBUS_USER, SOCKET_GROUP], capture_output=True, check=True
            )


@contextlib.contextmanager
def private_cockpit_config(host, tmp: Path):
    """A copy of the machine's /etc/cockpit bound over it in the host's mount namespace."""
    copy = tmp / "etc-cockpit"
    shutil.copytree("/etc/cockpit", copy, symlinks=True)
    copy.chmod(0o755)
    bound = in_host(host, f"mount --bind {copy} /etc/cockpit")
    assert bound.returncode == 0, bound.stderr
    try:
        yield copy
    finally:
        in_host(host, "umount /etc/cockpit")


def stop_started(host) -> list[int]:
    """Kill, by PID, what the role and the browser session started in the host."""
    pids = lab_hosts_mod.node_processes(host, STARTED)
    for pid in pids:
        lab_hosts_mod._stop_pid(pid, "", timeout=10)
    in_host(host, "rm -rf /run/dbus /run/virtops-kvm-cockpit-ws.pid /run/user")
    return pids


@contextlib.contextmanager
def browser(tmp: Path):
    from selenium import webdriver  # noqa: PLC0415
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,900",
        f"--user-data-dir={tmp / 'chromium-profile'}",
        # The fleet's CA is not in Chromium's store; the test verifies the served chain itself.
        "--ignore-certificate-errors",
    ):
        options.add_argument(arg)
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(tmp / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    pid = service.process.pid
    try:
        yield driver
    finally:
        driver.quit()
        if service.process.poll() is None:
            service.process.kill()
            service.process.wait(10)
        assert pid > 0


def visible(driver, element_id: str):
    """The element with this id once it is displayed (the page's scripts show it), or None."""
    from selenium.webdriver.common.by import By  # noqa: PLC0415

    found = [e for e in driver.find_elements(By.ID, element_id) if e.is_displayed()]
    return found[0] if found else None


def machines_listed(driver, names: list[str]) -> dict[str, str]:
    from selenium.webdriver.common.by import By  # noqa: PLC0415

    found = {}
    for name in names:
        cells = driver.find_elements(By.ID, f"vm-{name}-system-state")
        if cells and cells[0].text.strip():
            found[name] = cells[0].text.strip()
    return found


def test_cockpit_lists_the_hosts_guests_in_chromium(
    lab_hosts, tiny_guest, name_prefix, tmp_path, record_property
):
    from selenium.common.exceptions import (  # noqa: PLC0415
        ElementNotInteractableException,
        StaleElementReferenceException,
    )
    from selenium.webdriver.common.by import By  # noqa: PLC0415

    for path in (CHROMIUM, CHROMEDRIVER, Path("/usr/lib/cockpit/cockpit-ws")):
        assert path.exists(), f"{path} missing: scripts/setup.sh installs it"
    host = lab_hosts.hosts[0]
    started = time.monotonic()
    password = secrets.token_urlsafe(18)
    role_vars = {
        "host_libvirt_tls": True,
        "host_tls_pki_dir": str(tmp_path / "pki"),
        "host_libvirt_service_manager": "direct",
        "host_libvirt_restart_on_change": False,
        "host_qemu_group": "libvirt-qemu",
        "host_install_cockpit": True,
    }
    with contextlib.ExitStack() as stack:
        # Undone in reverse: Cockpit's processes stopped first (the admin's bridge among them),
        # the guests removed before libvirtd gets its own settings back.
        admin = stack.enter_context(admin_account(password))
        stack.enter_context(dbus_user_membership_restored())
        stack.enter_context(private_cockpit_config(host, tmp_path))
        stack.enter_context(
            lab_hosts_mod.reconfigured(
                host,
                "virtops.kvm.host role's socket settings (test_cockpit_lab.py)",
                SOCKET_SETTINGS,
                {},
            )
        )
        conn = host.connect()
        stack.callback(conn.close)
        names = [f"{name_prefix}-ck-on", f"{name_prefix}-ck-off"]
        stack.callback(remove_domain_named, [conn], names[0])
        stack.callback(remove_domain_named, [conn], names[1])
        stack.callback(stop_started, host)
        running = tiny_guest(names[0], conn=conn, wait=False)
        off = tiny_guest(names[1], conn=conn, start=False)

        # Check mode first: it predicts the bus and cockpit-ws and starts neither.
        before = run_role(tmp_path, host, "check-before", role_vars, check=True)
        assert before.rc == 0, before.stdout[-6000:] + before.stderr[-3000:]
        predicted = changed_tasks(before)
        for task in ("Start a system D-Bus when none answers", "Run cockpit-ws"):
            assert f"{ROLE} : {task}" in predicted, predicted
        assert not lab_hosts_mod.node_processes(host, STARTED), "check mode started something"
        assert in_host(host, "test -e /run/dbus/system_bus_socket").returncode == 1
        assert not (tmp_path / "etc-cockpit" / "ws-certs.d" / "50-virtops-kvm.cert").exists()

        first = run_role(tmp_path, host, "first", role_vars)
        assert first.rc == 0, first.stdout[-6000:] + first.stderr[-3000:]
        assert first.task(f"{ROLE} : Start a system D-Bus when none answers")["stdout"] == "started"
        assert first.task(f"{ROLE} : Run cockpit-ws")["stdout"] == "started"
        role_s = time.monotonic() - started
        again = run_role(tmp_path, host, "again", role_vars)
        assert again.rc == 0, again.stdout[-6000:] + again.stderr[-3000:]
        assert changed_tasks(again) == [], "second run changed something"
        check = run_role(tmp_path, host, "check", role_vars, check=True)
        assert check.rc == 0, check.stdout[-6000:] + check.stderr[-3000:]
        assert changed_tasks(check) == [], "check mode predicts a change on a converged host"

        # cockpit-ws runs as its own user, serves the host's certificate chained to the fleet CA
        pid = int(in_host(host, "cat /run/virtops-kvm-cockpit-ws.pid").stdout)
        assert Path(f"/proc/{pid}/status").read_text().count(f"Uid:\t{_uid('cockpit-ws')}"), (
            "cockpit-ws does not run as cockpit-ws"
        )
        pki = lab_hosts_mod.path_on_host(host.uri, Path("/etc/pki"))
        served = served_certificate(host.address, tmp_path / "pki" / "ca-cert.pem")
        assert served == pem_der(pki / "libvirt" / "servercert.pem")
        record_property("cockpit_cert_sha256", hashlib.sha256(served).hexdigest())

        base = f"https://{host.address}:{PORT}"
        with browser(tmp_path) as driver:
            driver.get(base + "/")
            # The login page shows its form once its script has run.
            for field, text in (("login-user-input", admin), ("login-password-input", password)):
                wait_for(lambda f=field: visible(driver, f), 30, f"{field} shown").send_keys(text)
            wait_for(lambda: visible(driver, "login-button"), 30, "login-button shown").click()
            wait_for(
                lambda: driver.find_elements(By.CSS_SELECTOR, "iframe"),
                60,
                "the shell after logging in",
            )
            driver.get(base + "/machines")
            frame = wait_for(
                lambda: driver.find_elements(
                    By.CSS_SELECTOR, "iframe[name='cockpit1:localhost/machines']"
                ),
                60,
                "the Virtual Machines page",
            )
            driver.switch_to.frame(frame[0])

            def listed() -> dict[str, str] | None:
                # Without VT-x, virt-host-validate fails and the page says so first: go on.
                # The page re-renders while it loads: an element may go stale under us.
                try:
                    ignore = visible(driver, "ignore-hw-virtualization-disabled-btn")
                    if ignore:
                        ignore.click()
                    found = machines_listed(driver, names)
                except (StaleElementReferenceException, ElementNotInteractableException):
                    return None
                return found if len(found) == len(names) else None

            states = wait_for(listed, 90, "both guests listed", interval=1)
            driver.switch_to.default_content()
            shot = tmp_path / "cockpit-machines.png"
            driver.save_screenshot(str(shot))
        record_property("cockpit_screenshot", str(shot))
        print(f"screenshot: {shot}")
        assert states == {running.name: "Running", off.name: "Shut off"}
        assert shot.stat().st_size > 10_000
        stopped = stop_started(host)
        assert stopped, "nothing of Cockpit was running"
    record_property("cockpit_role_s", round(role_s, 1))
    record_property("cockpit_total_s", round(time.monotonic() - started, 1))


def _uid(user: str) -> int:
    import pwd  # noqa: PLC0415

    return pwd.getpwnam(user).pw_uid
