"""What domain/domain_info report about a guest beyond its definition: consoles with live
ports, the guest agent's report (from a reply recorded from a Debian guest's agent), and
the I/O counters of the bulk statistics."""

from __future__ import annotations

import json
from pathlib import Path

import libvirt
import pytest
from lxml import etree

from ansible_collections.virtops.kvm.plugins.module_utils._domain_agent import (
    agent_report,
    io_counters,
    parse_guest_info,
)
from ansible_collections.virtops.kvm.plugins.module_utils._domain_consoles import consoles

RECORDED = Path(__file__).parent / "data"
UNRESPONSIVE = "Guest agent is not responding"

LIVE = """
<domain type='qemu'>
  <name>g</name>
  <devices>
    <serial type='pty'>
      <source path='/dev/pts/3'/>
      <target type='isa-serial' port='0'><model name='isa-serial'/></target>
      <alias name='serial0'/>
    </serial>
    <serial type='tcp'>
      <source mode='bind' host='0.0.0.0' service='4555'/>
      <protocol type='raw'/>
      <target type='isa-serial' port='1'/>
    </serial>
    <console type='pty' tty='/dev/pts/3'>
      <source path='/dev/pts/3'/>
      <target type='serial' port='0'/>
    </console>
    <graphics type='vnc' port='5901' autoport='yes' listen='127.0.0.1'>
      <listen type='address' address='127.0.0.1'/>
    </graphics>
    <graphics type='spice' port='5902' tlsPort='5903' autoport='yes'>
      <listen type='address' address='0.0.0.0'/>
    </graphics>
    <graphics type='vnc' socket='/run/vnc.sock'>
      <listen type='socket' socket='/run/vnc.sock'/>
    </graphics>
  </devices>
</domain>
"""


def test_consoles_of_a_live_definition():
    found = consoles(etree.fromstring(LIVE))
    assert [c["device"] for c in found] == ["graphics"] * 3 + ["serial", "serial", "console"]
    vnc, spice, sock, pty, tcp, console = found
    assert vnc == {
        "device": "graphics",
        "type": "vnc",
        "listen": "127.0.0.1",
        "port": 5901,
        "autoport": True,
        "socket": None,
    }
    assert spice["listen"] == "0.0.0.0" and spice["port"] == 5902 and spice["tls_port"] == 5903
    assert sock["socket"] == "/run/vnc.sock" and sock["port"] is None
    assert pty["path"] == "/dev/pts/3" and pty["target_port"] == 0
    assert pty["target_type"] == "isa-serial"
    assert (tcp["listen"], tcp["port"], tcp["mode"], tcp["target_port"]) == (
        "0.0.0.0",
        4555,
        "bind",
        1,
    )
    assert console["path"] == "/dev/pts/3" and console["target_type"] == "serial"


def test_an_automatic_port_of_a_stopped_guest_is_none():
    inactive = "<domain><devices><graphics type='vnc' port='-1' autoport='yes'/></devices></domain>"
    (vnc,) = consoles(etree.fromstring(inactive))
    assert vnc["port"] is None and vnc["autoport"] is True and vnc["listen"] is None
    fixed = "<domain><devices><graphics type='vnc' port='5990' autoport='no'/></devices></domain>"
    assert consoles(etree.fromstring(fixed))[0]["port"] == 5990
    assert consoles(None) == []


def test_guest_info_from_a_recorded_agent_reply():
    reply = json.loads((RECORDED / "guest_info_debian12.json").read_text())
    info = parse_guest_info(reply)
    assert info["answering"] is True
    assert info["os"]["id"] == "debian" and info["os"]["version_id"] == "12"
    assert info["os"]["pretty_name"].startswith("Debian GNU/Linux 12")
    assert info["hostname"] == reply["hostname"]
    assert info["timezone"] == {"name": reply["timezone.name"], "offset": reply["timezone.offset"]}
    root = next(fs for fs in info["filesystems"] if fs["mountpoint"] == "/")
    assert root["fstype"] == "ext4" and root["total_bytes"] > root["used_bytes"] > 0
    assert root["used_percent"] == round(100 * root["used_bytes"] / root["total_bytes"], 1)
    assert root["disks"] and root["disks"][0]["alias"] == "vda"
    assert len(info["filesystems"]) == reply["fs.count"]
    names = [nic["name"] for nic in info["interfaces"]]
    assert "lo" in names and len(names) == reply["if.count"]
    nic = next(n for n in info["interfaces"] if n["name"] != "lo")
    ipv4 = [a for a in nic["addresses"] if a["type"] == "ipv4"]
    assert ipv4 and ipv4[0]["prefix"] == 24 and nic["mac"]
    assert len(info["users"]) == reply.get("user.count", 0)
    assert [(d["name"], d["alias"]) for d in info["disks"]] == [
        ("/dev/vda", "vda"),
        ("/dev/vdb", "vdb"),
    ]


def test_io_counters_from_a_recorded_statistics_record():
    record = json.loads((RECORDED / "domain_stats_block_net.json").read_text())
    counters = io_counters(record)
    disk = counters["disks"][0]
    assert disk["name"] == record["block.0.name"] == "vda"
    assert disk["read_bytes"] == record["block.0.rd.bytes"] > 0
    assert disk["write_requests"] == record["block.0.wr.reqs"]
    assert disk["capacity"] == record["block.0.capacity"]
    assert len(counters["disks"]) == record["block.count"]
    (nic,) = counters["interfaces"]
    assert nic["name"] == record["net.0.name"]
    assert nic["rx_bytes"] == record["net.0.rx.bytes"] > 0
    assert nic["tx_packets"] == record["net.0.tx.pkts"] > 0
    assert io_counters({}) == {"disks": [], "interfaces": []}


class _Dom:
    def __init__(self, reply=None, error=None):
        self.reply, self.error = reply, error

    def guestInfo(self, types, flags):
        if self.error:
            raise self.error
        return self.reply


def _libvirt_error(message: str) -> libvirt.libvirtError:
    err = libvirt.libvirtError(message)
    err.err = (libvirt.VIR_ERR_AGENT_UNRESPONSIVE, 0, message, 2, None, None, None, 0, 0)
    return err


@pytest.mark.parametrize(
    ("dom", "running", "channel", "reason"),
    [
        (_Dom({}), False, True, "the guest is not running"),
        (_Dom({}), True, False, "no guest agent channel"),
        (
            _Dom(
                error=_libvirt_error(
                    "Guest agent is not responding: QEMU guest agent is not connected"
                )
            ),
            True,
            True,
            "agent not answering: Guest agent is not responding",
        ),
    ],
)
def test_an_agent_that_does_not_answer_is_said_not_raised(dom, running, channel, reason):
    report = agent_report(dom, running=running, has_channel=channel)
    assert report["answering"] is False and reason in report["reason"]


def test_an_answering_agent_is_parsed():
    report = agent_report(_Dom({"hostname": "web1"}), running=True, has_channel=True)
    assert report["answering"] is True and report["hostname"] == "web1"
    assert report["os"] is None and report["filesystems"] == [] and report["timezone"] is None


def test_qemu_uptimes_from_proc(tmp_path, monkeypatch):
    from ansible_collections.virtops.kvm.plugins.module_utils._domain_info import (  # noqa: PLC0415
        qemu_uptimes,
    )

    monkeypatch.setattr("os.sysconf", lambda name: 100)
    (tmp_path / "uptime").write_text("1000.50 1800.00\n")

    def process(pid: int, args: list[str], start_ticks: int) -> None:
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in args) + b"\0")
        fields = ["S"] + ["0"] * 18 + [str(start_ticks)] + ["0"] * 10
        (tmp_path / str(pid) / "stat").write_text(f"{pid} (qemu-system-x86) " + " ".join(fields))

    process(10, ["/usr/bin/qemu-system-x86_64", "-name", "guest=a", "-uuid", "AA-1"], 40050)
    process(11, ["/bin/sh", "-c", "echo -uuid BB-2"], 100)  # not QEMU
    process(12, ["/usr/bin/qemu-system-x86_64", "-name", "guest=c"], 100)  # no -uuid
    (tmp_path / "13").mkdir()  # a process that ended while we looked
    assert qemu_uptimes(str(tmp_path)) == {"aa-1": 600.0}
    assert qemu_uptimes(str(tmp_path / "missing")) == {}
