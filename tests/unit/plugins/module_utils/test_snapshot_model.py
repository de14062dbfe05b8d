"""Unit tests of the snapshot models, the recorded point and the tree."""

from __future__ import annotations

from lxml import etree

from ansible_collections.virtops.kvm.plugins.module_utils._snapshot_model import (
    ordered,
    parse_disks,
    parse_snapshot,
    tree,
)
from ansible_collections.virtops.kvm.plugins.module_utils._snapshot_state import (
    DiskPoint,
    Point,
    expected_power,
)

EXTERNAL = """<domainsnapshot>
  <name>e2</name>
  <description>second</description>
  <state>disk-snapshot</state>
  <creationTime>1700000010</creationTime>
  <parent><name>e1</name></parent>
  <memory snapshot='no'/>
  <disks>
    <disk name='vda' snapshot='external' type='file'>
      <driver type='qcow2'/>
      <source file='/img/g-vda.e2.qcow2'/>
    </disk>
    <disk name='vdb' snapshot='no'/>
  </disks>
  <domain type='qemu'>
    <name>g</name>
    <devices>
      <disk type='file' device='disk'>
        <driver name='qemu' type='qcow2'/>
        <source file='/img/g-vda.e1.qcow2' index='2'/>
        <backingStore type='file' index='1'>
          <format type='raw'/>
          <source file='/img/base.raw'/>
          <backingStore/>
        </backingStore>
        <target dev='vda' bus='virtio'/>
      </disk>
      <disk type='file' device='disk'>
        <driver name='qemu' type='raw'/>
        <source file='/img/data.raw'/>
        <target dev='vdb' bus='virtio'/>
      </disk>
      <disk type='file' device='cdrom'>
        <source file='/img/seed.iso'/>
        <target dev='sda' bus='sata'/>
        <readonly/>
      </disk>
    </devices>
  </domain>
</domainsnapshot>"""

INTERNAL = """<domainsnapshot>
  <name>{name}</name>
  <state>{state}</state>
  <creationTime>{ctime}</creationTime>
  {parent}
  <memory snapshot='{memory}'/>
  <disks><disk name='vda' snapshot='internal'/></disks>
  <domain type='qemu'><name>g</name><devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='/img/g.qcow2'/><target dev='vda'/></disk>
  </devices></domain>
</domainsnapshot>"""


def internal(name, ctime, parent=None, state="shutoff", memory="no"):
    p = f"<parent><name>{parent}</name></parent>" if parent else ""
    return parse_snapshot(
        INTERNAL.format(name=name, ctime=ctime, parent=p, state=state, memory=memory)
    )


def test_external_snapshot_model_knows_overlay_and_base():
    snap = parse_snapshot(EXTERNAL, current=True)
    assert snap.kind == "external" and not snap.has_memory
    assert snap.parent == "e1" and snap.description == "second"
    vda = snap.disk("vda")
    assert vda.file == "/img/g-vda.e2.qcow2"
    assert vda.base == "/img/g-vda.e1.qcow2" and vda.base_fmt == "qcow2"
    assert snap.disk("vdb").snapshot == "no"
    facts = snap.facts()
    assert facts["current"] is True and facts["memory"] is False
    assert facts["creation_time_iso"] == "2023-11-14T22:13:30+00:00"


def test_internal_snapshot_memory_and_state():
    snap = internal("m", 1, state="running", memory="internal")
    assert snap.kind == "internal" and snap.has_memory
    assert snap.disk("vda").file == "/img/g.qcow2"
    assert expected_power(snap, "snapshot") == "running"
    assert expected_power(snap, "paused") == "paused"
    disk_only = internal("d", 1)
    assert expected_power(disk_only, "snapshot") == "shutoff"
    assert expected_power(disk_only, "running") == "running"


def test_parse_disks_reads_chain_and_skips_cdrom():
    domain = etree.fromstring(EXTERNAL.encode()).find("domain")
    disks = {d.target: d for d in parse_disks(domain)}
    assert disks["vda"].chain == ["/img/g-vda.e1.qcow2", "/img/base.raw"]
    assert disks["vda"].snapshotable and disks["vdb"].fmt == "raw"
    assert not disks["sda"].snapshotable


def test_order_and_tree_put_parents_first_within_one_second():
    snaps = {
        "b": internal("b", 100, parent="a"),
        "a": internal("a", 100),
        "c": internal("c", 101, parent="a"),
        "d": internal("d", 100, parent="b"),
    }
    for s in snaps.values():
        if s.parent:
            snaps[s.parent].children.append(s.name)
    snaps["c"].current = True
    assert [s.name for s in ordered(snaps)] == ["a", "b", "d", "c"]
    assert tree(snaps) == [
        {
            "name": "a",
            "current": False,
            "children": [
                {
                    "name": "b",
                    "current": False,
                    "children": [{"name": "d", "current": False, "children": []}],
                },
                {"name": "c", "current": True, "children": []},
            ],
        }
    ]


def test_point_round_trip():
    point = Point(
        "s1",
        1700000000,
        True,
        "paused",
        cpu_time=123,
        token="ab",
        disks=[DiskPoint("vda", "/img/a b.qcow2", wr_reqs=7, size=10, mtime_ns=11)],
    )
    back = Point.from_xml(point.to_xml())
    assert back == point
