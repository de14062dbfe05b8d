"""The ``xml`` option of pool and network against the real local libvirtd (qemu:///system):
fragments merged over what the options produce, compared element by element."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import libvirt
import pytest
import yaml

from ansible_collections.virtops.kvm.plugins.modules import network as network_module
from ansible_collections.virtops.kvm.plugins.modules import pool as pool_module
from devtools.libvirt_cleanup import remove_network, remove_pool
from tests.helpers import failed, four_results, free_subnet, network_task

# make test runs these beside the main suite (side_stream): they share none of its guests
pytestmark = [pytest.mark.integration, pytest.mark.side_stream]


def pool_task(args: dict, name: str = "pool", **extra) -> dict:
    return {"name": name, "virtops.kvm.pool": args, **extra}


def test_dir_pool_permissions_from_a_fragment(playbook, conn, pool_dir):
    name, target = pool_dir
    args = {
        "name": name,
        "type": "dir",
        "target": target,
        "xml": "<target><permissions><mode>0750</mode><group>0</group></permissions></target>",
    }
    results = four_results(playbook, pool_task(args))
    assert results[1]["actions"] == ["define", "build", "start"]
    assert "<mode>0750</mode>" in results[1]["diff"]["after"]["xml"]
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o750  # libvirt built it so

    # another mode: written to the persistent definition, which a running pool takes when
    # it is built again; reported as needing a restart
    args["xml"] = "<target><permissions><mode>0700</mode></permissions></target>"
    results = four_results(playbook, pool_task(args))
    assert results[1]["actions"] == ["redefine"]
    assert results[1]["restart_required"] == ["xml"]
    assert "<mode>0750</mode>" in results[1]["diff"]["before"]["xml"]
    pool = conn.storagePoolLookupByName(name)
    assert "<mode>0700</mode>" in pool.XMLDesc(libvirt.VIR_STORAGE_XML_INACTIVE)


def _run_each(playbook, tasks):
    """Each task on its own (ignore_errors), so that every refusal is seen."""
    return playbook([{**t, "ignore_errors": True} for t in tasks])


def test_pool_fragment_refusals(playbook, conn, dir_pool):
    name = dir_pool.name()
    target = dir_pool.XMLDesc(0).split("<path>")[1].split("</path>")[0]
    before = dir_pool.XMLDesc(libvirt.VIR_STORAGE_XML_INACTIVE)
    base = {"name": name, "type": "dir", "target": target}
    run = _run_each(
        playbook,
        [
            pool_task({**base, "xml": "<target><path>/elsewhere</path></target>"}, "moved"),
            pool_task({**base, "xml": "<pool type='fs'/>"}, "retyped"),
            pool_task({**base, "xml": "<pool type='dir'><name>other</name></pool>"}, "renamed"),
            pool_task({**base, "xml": "<target><permissions>"}, "malformed"),
            pool_task({"name": name, "xml": "<target/>"}, "untyped"),
        ],
    )
    assert "target: " in failed(run, "moved")["msg"]
    assert "gives storage pool type 'fs', but type is 'dir'" in failed(run, "retyped")["msg"]
    assert "names storage pool 'other'" in failed(run, "renamed")["msg"]
    assert "Malformed xml option" in failed(run, "malformed")["msg"]
    assert "The pool type is needed" in failed(run, "untyped")["msg"]
    assert dir_pool.XMLDesc(libvirt.VIR_STORAGE_XML_INACTIVE) == before


def test_scsi_pool_given_only_by_xml(playbook, conn, name_prefix):
    """A pool type the options do not model, defined (not started: no such adapter here)."""
    name = f"{name_prefix}-scsi"
    xml = f"""
        <pool type="scsi">
          <name>{name}</name>
          <source><adapter type="scsi_host" name="host9"/></source>
          <target><path>/dev/disk/by-path</path></target>
        </pool>"""
    try:
        results = four_results(playbook, pool_task({"name": name, "active": False, "xml": xml}))
        assert results[1]["actions"] == ["define"]
        assert results[3]["pool"]["type"] == "scsi"
        defined = conn.storagePoolLookupByName(name).XMLDesc(0)
        assert "name='host9'" in defined and not conn.storagePoolLookupByName(name).isActive()
    finally:
        remove_pool(conn, name)


@pytest.fixture
def network_name(conn, name_prefix):
    name = f"{name_prefix}-x"
    yield name
    remove_network(conn, name)


def _dnsmasq_conf(name: str) -> str:
    return Path(f"/var/lib/libvirt/dnsmasq/{name}.conf").read_text()


def test_network_fragment_dns_forwarder_and_txt(playbook, conn, network_name):
    x = free_subnet(conn)
    fragment = (
        "<dns><forwarder addr='198.18.0.53'/><txt name='virtops' value='{value}'/>"
        f"<host ip='198.18.{x}.7'><hostname>seven</hostname></host></dns>"
    )
    args = {
        "name": network_name,
        "state": "active",
        "mode": "isolated",
        "addresses": [{"address": f"198.18.{x}.1/24"}],
        "xml": fragment.format(value="one"),
    }
    results = four_results(playbook, network_task(args))
    assert results[3]["network"]["dns_hosts"] == [{"ip": f"198.18.{x}.7", "hostnames": ["seven"]}]
    conf = _dnsmasq_conf(network_name)
    assert "server=198.18.0.53" in conf and "txt-record=virtops,one" in conf

    # a changed TXT record on the running network: written to the config, the running
    # network needs a restart (restart=true does it)
    args["xml"] = fragment.format(value="two")
    results = four_results(playbook, network_task(args))
    assert results[1]["restart_fields"] == ["xml"] and results[1]["restart_required"] is True
    assert 'value="one"' in results[1]["diff"]["before"]["xml"]
    assert "txt-record=virtops,one" in _dnsmasq_conf(network_name)
    restarted = playbook([network_task({**args, "restart": True})])
    assert restarted.rc == 0 and restarted.last["restarted"] is True
    assert "txt-record=virtops,two" in _dnsmasq_conf(network_name)

    # refused before any change: a setting an option sets, another network's name
    run = _run_each(
        playbook,
        [
            network_task({**args, "mtu": 1400, "xml": "<mtu size='9000'/>"}, "mtu"),
            network_task({**args, "xml": "<network><name>other</name></network>"}, "name"),
        ],
    )
    assert "mtu: 1400, the definition would have 9000" in failed(run, "mtu")["msg"]
    assert "names network 'other'" in failed(run, "name")["msg"]


def _example(module, title: str) -> dict:
    """The task of ``module``'s EXAMPLES with this title."""
    [task] = [task for task in yaml.safe_load(module.EXAMPLES) if task["name"] == title]
    return task


def test_the_pool_xml_example_runs(playbook, conn, pool_dir):
    """pool's EXAMPLE of a group's directory set through the xml option, with this test's pool
    name and directory: libvirt builds the directory with the fragment's mode and group."""
    name, target = pool_dir
    task = _example(
        pool_module,
        "A directory pool whose directory belongs to a group, set through the xml option",
    )
    args = task["virtops.kvm.pool"]
    assert (args["name"], args["target"]) == ("shared", "/srv/shared-images")
    args.update(name=name, target=target)
    run = playbook([task])
    assert run.rc == 0, run.stdout[-4000:]
    assert run.last["changed"] is True and conn.storagePoolLookupByName(name).isActive()
    info = os.stat(target)
    assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o770, 0, 64055)


def test_the_network_xml_example_runs(playbook, conn, network_name):
    """network's EXAMPLE of DNS forwarders and a TXT record through the xml option, on a
    running isolated network of this test in the example's place of lab: restarted, its
    dnsmasq forwards example.com and serves the TXT record."""
    x = free_subnet(conn)
    task = _example(
        network_module, "DNS forwarders and a TXT record, which the options do not model"
    )
    assert task["virtops.kvm.network"]["name"] == "lab"
    task["virtops.kvm.network"]["name"] = network_name
    lab = {
        "name": network_name,
        "state": "active",
        "mode": "isolated",
        "addresses": [{"address": f"198.18.{x}.1/24"}],
    }
    run = playbook([network_task(lab), task])
    assert run.rc == 0, run.stdout[-4000:]
    assert run.last["changed"] is True and run.last["restarted"] is True
    conf = _dnsmasq_conf(network_name)
    assert "server=/example.com/198.18.5.53" in conf
    assert "txt-record=lab,managed by ansible" in conf
