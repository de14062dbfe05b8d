"""No format probing, against the real libvirtd: a disk's format comes from the user or the
storage pool, never from the guest-writable bytes of the file (issue 14)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from lxml import etree

from tests.helpers import domain_exists, domain_task, failed, four_results, inactive_xml


def plant_header(path: Path, work: Path) -> None:
    """A raw file whose first cluster is a valid qcow2 header naming /etc/shadow as backing
    file, as a guest can write into its own raw disk."""
    header = work / "hdr.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw", str(header)],
        check=True,
    )
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(path), "16M"], check=True)
    with path.open("r+b") as out:
        out.write(header.read_bytes()[:65536])
    # what probing would see: a qcow2 image on /etc/shadow
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", str(path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert (info["format"], info.get("backing-filename")) == ("qcow2", "/etc/shadow")


def driver_types(xml: str) -> dict[str, str | None]:
    """Source (file, or pool/volume) -> driver type of every disk."""
    out = {}
    for disk in etree.fromstring(xml.encode()).findall("devices/disk"):
        source = disk.find("source")
        if source is None:
            continue
        key = source.get("file") or f"{source.get('pool')}/{source.get('volume')}"
        driver = disk.find("driver")
        out[key] = driver.get("type") if driver is not None else None
    return out


def define_dir_pool(conn, name: str, path: Path):
    path.mkdir()
    pool = conn.storagePoolDefineXML(
        f"<pool type='dir'><name>{name}</name><target><path>{path}</path></target></pool>"
    )
    pool.create()
    return pool


@pytest.mark.integration
def test_a_planted_qcow2_header_is_refused_without_format_and_raw_with_it(
    playbook, conn, name_prefix, files, tmp_path
):
    planted = files / "planted.img"
    plant_header(planted, tmp_path)
    existing = f"{name_prefix}-ok"
    base = {
        "name": existing,
        "memory": 128,
        "disks": [{"path": str(files / "a.img"), "format": "raw"}],
    }
    assert playbook([domain_task("create", base)]).rc == 0
    before = inactive_xml(conn, existing)

    new = f"{name_prefix}-new"
    run = playbook(
        [
            domain_task(
                "new",
                {"name": new, "memory": 128, "disks": [{"path": str(planted)}]},
                ignore_errors=True,
            ),
            domain_task(
                "new check",
                {"name": new, "memory": 128, "disks": [{"path": str(planted)}]},
                check=True,
                ignore_errors=True,
            ),
            domain_task(
                "existing",
                dict(base, disks=[*base["disks"], {"path": str(planted)}]),
                ignore_errors=True,
            ),
        ]
    )
    for name, target in (("new", "vda"), ("new check", "vda"), ("existing", "vdb")):
        msg = failed(run, name)["msg"]
        assert f"set format (raw or qcow2) for disk {target} ({planted})" in msg, msg
        assert "not a volume of a running storage pool" in msg
    assert not domain_exists(conn, new)
    assert inactive_xml(conn, existing) == before

    four_results(
        playbook,
        domain_task(
            "guest",
            {"name": new, "memory": 128, "disks": [{"path": str(planted), "format": "raw"}]},
        ),
    )
    xml = inactive_xml(conn, new)
    assert driver_types(xml) == {str(planted): "raw"}
    assert "/etc/shadow" not in xml


@pytest.mark.integration
def test_a_pool_volume_takes_the_pools_format(playbook, conn, name_prefix, files):
    pool_name = f"{name_prefix}-pool"
    pool_dir = files / "pool"
    pool = define_dir_pool(conn, pool_name, pool_dir)
    pool.createXML(
        "<volume><name>root.qcow2</name><capacity unit='MiB'>16</capacity>"
        "<target><format type='qcow2'/></target></volume>"
    )
    pool.createXML(
        "<volume><name>data.img</name><capacity unit='MiB'>16</capacity>"
        "<target><format type='raw'/></target></volume>"
    )
    # a file the pool lists, attached by its path
    known = pool_dir / "known.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(known), "16M"], check=True)
    pool.refresh()
    name = f"{name_prefix}-pooled"
    spec = {
        "name": name,
        "memory": 128,
        "disks": [
            {"pool": pool_name, "volume": "root.qcow2"},
            {"pool": pool_name, "volume": "data.img"},
            {"path": str(known)},
        ],
    }
    four_results(playbook, domain_task("guest", spec))
    assert driver_types(inactive_xml(conn, name)) == {
        f"{pool_name}/root.qcow2": "qcow2",
        f"{pool_name}/data.img": "raw",
        str(known): "qcow2",
    }


@pytest.mark.integration
def test_a_pool_volume_with_a_planted_backing_file_needs_format(
    playbook, conn, name_prefix, files, tmp_path
):
    pool_name = f"{name_prefix}-pool"
    pool_dir = files / "pool"
    pool = define_dir_pool(conn, pool_name, pool_dir)
    plant_header(pool_dir / "guest.img", tmp_path)
    pool.refresh()  # libvirt's dir pool reads the header: it reports qcow2 on /etc/shadow
    assert "/etc/shadow" in pool.storageVolLookupByName("guest.img").XMLDesc(0)
    name = f"{name_prefix}-planted"
    for disk in ({"pool": pool_name, "volume": "guest.img"}, {"path": str(pool_dir / "guest.img")}):
        run = playbook(
            [
                domain_task(
                    "define", {"name": name, "memory": 128, "disks": [disk]}, ignore_errors=True
                )
            ]
        )
        msg = failed(run, "define")["msg"]
        assert "set format (raw or qcow2) for disk vda" in msg, msg
        assert "names /etc/shadow as backing" in msg
        assert not domain_exists(conn, name)
    raw = {"pool": pool_name, "volume": "guest.img", "format": "raw"}
    four_results(playbook, domain_task("guest", {"name": name, "memory": 128, "disks": [raw]}))
    assert driver_types(inactive_xml(conn, name)) == {f"{pool_name}/guest.img": "raw"}
