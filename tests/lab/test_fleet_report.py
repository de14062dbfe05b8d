"""playbooks/fleet_report.yml (issue 18): the fleet view of two lab hosts and this machine.

The lab hosts get defined guests of known sizes (one with a snapshot); this machine's
libvirtd runs a tiny guest on the ``default`` network, whose uptime (read from /proc: the
modules run on this machine for a local URI) and DHCP address the report shows. A fourth
inventory host names a libvirt socket that does not exist: it is listed as not read, the
others are still reported, and the run ends failed (exit code 2) for it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from html.parser import HTMLParser

import pytest
import yaml

from tests.helpers import ROOT, VENV_BIN, checkout_env, make_qcow2
from tests.lab.guests import defined_only_xml, disk_xml, unique_name

pytestmark = [pytest.mark.lab, pytest.mark.multihost]

# used/size of a 32 MiB qcow2 image (allocation of the host file: some KiB of metadata)
DISK_USE = re.compile(r"[\d.]+[KM]/32M")
ROW = re.compile(
    r"^(?P<name>\S+)\s+(?P<state>\S+)\s+(?P<vcpus>\S+)\s+(?P<memory>\S+)\s+(?P<disk>\S+)"
    r"\s+(?P<snap>\d+)\s+(?P<uptime>\S+)\s+(?P<addresses>\S+)$"
)


def sized_xml(name: str, vcpus: int, memory_mib: int, disk: str = "") -> str:
    return (
        defined_only_xml(name)
        .replace("<vcpu>1</vcpu>", f"<vcpu>{vcpus}</vcpu>")
        .replace("<memory unit='MiB'>16</memory>", f"<memory unit='MiB'>{memory_mib}</memory>")
        .replace("<devices>", f"<devices>{disk}")
    )


def free_bytes(conn) -> int:
    """The host's free memory as libvirt counts it over all NUMA cells (/proc/meminfo).

    Not getFreeMemory: that sums the cells' own meminfo, which on some machines (memory
    outside the NUMA nodes the kernel lists) is a fraction of the host's.
    """
    return conn.getMemoryStats(-1, 0)["free"] * 1024


class Page(HTMLParser):
    """The report's hosts (section ids), their free memory (bytes), SVGs and guest rows."""

    def __init__(self) -> None:
        super().__init__()
        self.host: str | None = None
        self.svgs: dict[str, int] = {}
        self.free: dict[str, int] = {}
        self.rows: dict[str, list[str]] = {}
        self._row: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section" and "host" in (a.get("class") or ""):
            self.host = a["id"].removeprefix("host-")
        elif tag == "svg":
            self.svgs[self.host] = self.svgs.get(self.host, 0) + 1
        elif tag == "span" and a.get("class") == "free-bytes":
            self.free[self.host] = int(a["data-bytes"])
        elif tag == "tr" and "data-guest" in a:
            self._row = a["data-guest"]
            self.rows[self._row] = []

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row = None

    def handle_data(self, data):
        if self._row is not None and data.strip():
            self.rows[self._row].append(data.strip())


@pytest.mark.usefixtures("default_network")
def test_fleet_report_tables_and_page(lab_hosts, tiny_guest, tmp_path, record_property):
    import libvirt  # noqa: PLC0415

    h1, h2 = lab_hosts.hosts[:2]
    conns = {h1.name: h1.connect(), h2.name: h2.connect()}
    sizes = {  # name -> (host, vCPUs, MiB)
        unique_name("frep-a"): (h1.name, 1, 16),
        unique_name("frep-b"): (h1.name, 3, 48),
        unique_name("frep-c"): (h2.name, 2, 32),
    }
    try:
        # the first has a 32 MiB qcow2 disk, so that it can have an (internal) snapshot
        snapped = next(iter(sizes))
        make_qcow2(tmp_path / "disk.qcow2")
        for name, (host, vcpus, mib) in sizes.items():
            disk = disk_xml(tmp_path / "disk.qcow2") if name == snapped else ""
            conns[host].defineXML(sized_xml(name, vcpus, mib, disk))
        conns[h1.name].lookupByName(snapped).snapshotCreateXML(
            "<domainsnapshot><name>fleet-report</name></domainsnapshot>", 0
        )
        booted = time.monotonic()
        running = tiny_guest(unique_name("frep-run"), network="default")
        address = running.dhcp_address(running.mac)

        inventory = {
            "hypervisors": {
                "hosts": {
                    name: {
                        "ansible_connection": "local",
                        "ansible_python_interpreter": sys.executable,
                        "kvm_uri": uri,
                    }
                    for name, uri in [
                        (h1.name, h1.uri),
                        (h2.name, h2.uri),
                        ("this-machine", "qemu:///system"),
                        ("unreadable", f"qemu+unix:///system?socket={tmp_path}/no-libvirt-sock"),
                    ]
                }
            }
        }
        (tmp_path / "inventory.yml").write_text(yaml.safe_dump(inventory, sort_keys=False))
        html = tmp_path / "fleet.html"
        results = tmp_path / "results.json"
        # free memory moves with the page cache of whatever else runs: read before and after
        free_before = {name: free_bytes(conn) for name, conn in conns.items()}
        free_before["this-machine"] = free_bytes(running.conn)
        started = time.monotonic()
        proc = subprocess.run(
            [
                str(VENV_BIN / "ansible-playbook"),
                "-i",
                str(tmp_path / "inventory.yml"),
                "virtops.kvm.fleet_report",
                "-e",
                json.dumps({"fleet_report_html": str(html)}),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            env=checkout_env(
                ANSIBLE_CALLBACK_PLUGINS=str(ROOT / "tests" / "integration" / "callback_plugins"),
                ANSIBLE_CALLBACKS_ENABLED="virtops_results",
                VIRTOPS_RESULTS_FILE=str(results),
            ),
        )
        record_property("fleet_report_playbook_s", round(time.monotonic() - started, 1))
        # the unreadable host fails its tasks; the report of all four is printed all the same
        assert proc.returncode == 2, proc.stdout + proc.stderr
        free_after = {name: free_bytes(conn) for name, conn in conns.items()}
        free_after["this-machine"] = free_bytes(running.conn)
        printed = next(
            e["result"]["msg"]
            for e in json.loads(results.read_text())
            if e["task"] == "Print the fleet"
        )

        # the text: a section per host, each guest's row under its own host
        text = "\n".join(printed)
        headers = [
            i for i, line in enumerate(printed) if re.match(r"^(vtlab-h\d|this-machine) \(", line)
        ]
        assert [printed[i].split()[0] for i in headers] == [h1.name, h2.name, "this-machine"]
        unread = [line for line in printed if line.startswith("unreadable: not read (")]
        assert len(unread) == 1 and "no-libvirt-sock" in unread[0], text
        assert f"{h1.name} ({h1.name}, {h1.uri})" in text
        rows = {}
        for i, line in enumerate(printed):
            m = ROW.match(line)
            if m and m["name"] != "GUEST":
                host = printed[max(h for h in headers if h < i)].split()[0]
                rows[m["name"]] = (host, m)
        for name, (host, vcpus, mib) in sizes.items():
            where, m = rows[name]
            assert (where, m["state"], m["vcpus"], m["memory"]) == (
                host,
                "shutoff",
                str(vcpus),
                f"{mib}M",
            )
            assert m["uptime"] == "-" and m["addresses"] == "-"
            assert m["snap"] == ("1" if name == snapped else "0")
            assert DISK_USE.fullmatch(m["disk"]) if name == snapped else m["disk"] == "-"
        where, m = rows[running.name]
        assert (where, m["state"], m["vcpus"], m["memory"]) == (
            "this-machine",
            "running",
            "1",
            "192M",
        )
        assert m["addresses"] == address
        assert re.fullmatch(r"\d+m\d\ds", m["uptime"]), m["uptime"]
        assert re.fullmatch(r"[\d.]+[KMG]/[\d.]+[KMG]", m["disk"]), m["disk"]  # the marker disk
        for line in printed:
            if line.strip().startswith("CPU "):
                assert re.search(r"busy \d+\.\d%", line), line
        assert re.search(r"load average [\d.]+ [\d.]+ [\d.]+", text)  # this machine's /proc

        # the page: a section with an SVG plot per host, the same rows, free memory in bytes
        page = Page()
        page.feed(html.read_text())
        assert page.svgs == {h1.name: 1, h2.name: 1, "this-machine": 1}
        assert '<p class="error">Not read: ' in html.read_text()
        for host, free in page.free.items():
            # read in between: within the two readings, give or take 10 % or 512 MiB
            low, high = sorted((free_before[host], free_after[host]))
            slack = max(high * 0.1, 512 * 1024**2)
            assert low - slack <= free <= high + slack, (host, free, low, high)
        assert set(page.free) == set(page.svgs)
        for name, (_host, vcpus, mib) in sizes.items():
            assert page.rows[name][:4] == [name, "shutoff", str(vcpus), f"{mib} MiB"]
        assert page.rows[running.name][:4] == [running.name, "running", "1", "192 MiB"]
        assert page.rows[snapped][5] == "1"
        assert page.rows[running.name][-1] == address
        # uptime in seconds: since its QEMU process started, so within the time since we did
        uptime = int(page.rows[running.name][6].removesuffix(" s"))
        assert 0 <= uptime <= time.monotonic() - booted + 1
    finally:
        for name, (host, _vcpus, _mib) in sizes.items():
            try:
                conns[host].lookupByName(name).undefineFlags(
                    libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                )
            except libvirt.libvirtError:
                pass
        for conn in conns.values():
            conn.close()
