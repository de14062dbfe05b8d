"""The virtops.kvm.libvirt inventory plugin, in-process against libvirt's test driver."""

from __future__ import annotations

import secrets

import libvirt
import pytest
import yaml
from ansible.errors import AnsibleError, AnsibleParserError
from ansible.inventory.data import InventoryData
from ansible.parsing.dataloader import DataLoader
from ansible.plugins import loader as plugin_loader

from ansible_collections.virtops.kvm.plugins.inventory import libvirt as plugin_module
from ansible_collections.virtops.kvm.plugins.module_utils._domain_general import (
    NS_PREFIX,
    NS_VIRTOPS,
)
from ansible_collections.virtops.kvm.plugins.module_utils._inventory import (
    guest_record,
    pick_address,
)

TEST_URI = "test:///default"


@pytest.fixture(scope="module")
def plugin_class():
    """The plugin class with its options registered, as the plugin loader would do."""
    name = plugin_module.__name__
    plugin_loader.inventory_loader._load_config_defs(name, plugin_module, plugin_module.__file__)

    class InventoryModule(plugin_module.InventoryModule):  # plugin_type comes from the name
        _load_name = name
        _redirected_names = ()  # set by the loader; ansible-core 2.16 reads it in verify

    return InventoryModule


@pytest.fixture
def conn():
    """The test driver's shared state lives while a connection is open."""
    libvirt.registerErrorHandler(lambda *_: None, None)
    conn = libvirt.open(TEST_URI)
    made = []

    def define(tags=(), *, start=False, vcpus=1, mac=None, title=None):
        name = f"inv-{secrets.token_hex(3)}"
        meta = ""
        if tags:
            items = "".join(f"<{NS_PREFIX}:tag>{t}</{NS_PREFIX}:tag>" for t in tags)
            meta = (
                f"<metadata><{NS_PREFIX}:tags xmlns:{NS_PREFIX}='{NS_VIRTOPS}'>"
                f"{items}</{NS_PREFIX}:tags></metadata>"
            )
        nic = ""
        if mac:
            nic = (
                f"<interface type='network'><mac address='{mac}'/>"
                "<source network='default'/></interface>"
            )
        xml = (
            f"<domain type='test'><name>{name}</name>"
            f"{'<title>' + title + '</title>' if title else ''}{meta}"
            f"<memory unit='MiB'>256</memory><vcpu>{vcpus}</vcpu>"
            "<os><type>hvm</type></os>"
            f"<devices>{nic}</devices></domain>"
        )
        dom = conn.defineXML(xml)
        made.append(dom)
        if start:
            dom.create()
        return name

    conn.define = define
    yield conn
    for dom in made:
        try:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        except libvirt.libvirtError:
            pass
    conn.close()


def run_plugin(plugin_class, tmp_path, config, *, cache=True, name="lab.libvirt.yml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"plugin": "virtops.kvm.libvirt", **config}))
    inventory = InventoryData()
    plugin = plugin_class()
    plugin.parse(inventory, DataLoader(), str(path), cache=cache)
    if config.get("cache"):
        plugin.update_cache_if_changed()  # as the inventory manager does after parsing
    return inventory


def members(inventory, group):
    return sorted(h.name for h in inventory.groups[group].get_hosts())


def test_verify_file(plugin_class, tmp_path):
    plugin = plugin_class()
    for name, ok in [
        ("a.libvirt.yml", True),
        ("a.libvirt.yaml", True),
        ("libvirt.yml", False),
        ("a.yml", False),
        ("a.libvirt.json", False),
    ]:
        path = tmp_path / name
        path.write_text("plugin: virtops.kvm.libvirt\n")
        assert plugin.verify_file(str(path)) is ok, name


def test_guests_groups_and_hostvars(plugin_class, tmp_path, conn):
    web = conn.define(["web", "prod"], start=True, vcpus=2, title="Web one")
    db = conn.define(["db"])
    inv = run_plugin(plugin_class, tmp_path, {"uris": [TEST_URI]})
    hostname = conn.getHostname()
    assert {web, db, "test"} <= set(inv.hosts)
    assert members(inv, "tag_web") == [web]
    assert members(inv, "tag_prod") == [web]
    assert members(inv, "tag_db") == [db]
    assert web in members(inv, "state_running")
    assert members(inv, "state_shutoff") == [db]
    assert set(members(inv, f"hypervisor_{hostname}")) >= {web, db, "test"}
    hv = inv.get_host(web).vars
    assert hv["libvirt_tags"] == ["prod", "web"]
    assert hv["libvirt_state"] == "running"
    assert hv["libvirt_uri"] == TEST_URI
    assert hv["libvirt_hypervisor"] == hostname
    assert hv["libvirt_vcpus"] == 2
    assert hv["libvirt_memory_mib"] == 256
    assert hv["libvirt_title"] == "Web one"
    assert hv["libvirt_uuid"] == conn.lookupByName(web).UUIDString()
    assert "ansible_host" not in hv  # the test driver has no leases
    assert inv.get_host(db).vars["libvirt_active"] is False


def test_filters_compose_and_keyed_groups(plugin_class, tmp_path, conn):
    web = conn.define(["web"], start=True, vcpus=2)
    conn.define(["web"])  # shut off: filtered out by state
    conn.define(["db"], start=True)  # filtered out by tag
    inv = run_plugin(
        plugin_class,
        tmp_path,
        {
            "uris": [TEST_URI],
            "states": ["running"],
            "tags": ["web"],
            "compose": {"ansible_user": "'admin'", "cpu_label": "'cpus-' ~ (libvirt_vcpus * 1)"},
            "keyed_groups": [{"key": "libvirt_vcpus | string", "prefix": "vcpus"}],
            "groups": {"small": "libvirt_memory_mib < 512"},
        },
    )
    assert sorted(inv.hosts) == [web]
    assert members(inv, "vcpus_2") == [web]
    assert members(inv, "small") == [web]
    assert inv.get_host(web).vars["ansible_user"] == "admin"
    assert inv.get_host(web).vars["cpu_label"] == "cpus-2"


def test_default_groups_off_and_hostname_styles(plugin_class, tmp_path, conn):
    web = conn.define(["web"])
    inv = run_plugin(
        plugin_class, tmp_path, {"uris": [TEST_URI], "default_groups": False, "tags": ["web"]}
    )
    assert "tag_web" not in inv.groups
    assert "state_shutoff" not in inv.groups
    inv = run_plugin(
        plugin_class, tmp_path, {"uris": [TEST_URI], "hostname": "uuid", "tags": ["web"]}
    )
    assert sorted(inv.hosts) == [conn.lookupByName(web).UUIDString()]
    inv = run_plugin(
        plugin_class,
        tmp_path,
        {"uris": [TEST_URI], "hostname": "name_hypervisor", "tags": ["web"]},
    )
    assert sorted(inv.hosts) == [f"{web}@{conn.getHostname()}"]


def test_same_guest_on_two_uris_is_listed_once(plugin_class, tmp_path, conn):
    web = conn.define(["web"], start=True)
    inv = run_plugin(plugin_class, tmp_path, {"uris": [TEST_URI, TEST_URI], "tags": ["web"]})
    assert sorted(inv.hosts) == [web]


def test_unreachable_uri(plugin_class, tmp_path, conn):
    web = conn.define(["web"])
    bad = "test:///nonexistent/file.xml"
    with pytest.raises(AnsibleError, match="nonexistent"):
        run_plugin(plugin_class, tmp_path, {"uris": [bad, TEST_URI], "connect_timeout": 0})
    inv = run_plugin(
        plugin_class,
        tmp_path,
        {"uris": [bad, TEST_URI], "connect_timeout": 0, "skip_unreachable": True, "tags": ["web"]},
    )
    assert sorted(inv.hosts) == [web]


def test_cache(plugin_class, tmp_path, conn):
    web = conn.define(["cached"], start=True)
    config = {
        "uris": [TEST_URI],
        "tags": ["cached"],
        "cache": True,
        "cache_plugin": "jsonfile",
        "cache_connection": str(tmp_path / "cache"),
        "cache_timeout": 600,
    }
    inv = run_plugin(plugin_class, tmp_path, config)
    assert sorted(inv.hosts) == [web]
    assert any((tmp_path / "cache").iterdir())
    conn.lookupByName(web).destroy()
    # from the cache: still running
    inv = run_plugin(plugin_class, tmp_path, config)
    assert members(inv, "state_running") == [web]
    # a refresh (what --flush-cache does) reads the hypervisor and rewrites the cache
    inv = run_plugin(plugin_class, tmp_path, config, cache=False)
    assert members(inv, "state_shutoff") == [web]
    inv = run_plugin(plugin_class, tmp_path, config)
    assert members(inv, "state_shutoff") == [web]


# -- addresses -------------------------------------------------------------------------------


def _guest(state="running", nics=()):
    return {
        "name": "g",
        "uuid": "u",
        "state": state,
        "active": state == "running",
        "persistent": True,
        "autostart": False,
        "config": {"tags": ["a"], "memory": 512, "vcpus": 1},
        "stats": {},
        "interfaces": [
            {"mac": mac, "type": "network", "source": "default", "ip_addresses": addrs}
            for mac, addrs in nics
        ],
    }


def test_addresses_split_by_source_and_ordered():
    guest = _guest(
        nics=[
            ("52:54:00:00:00:01", ["192.0.2.10", "192.0.2.20", "fe80::1", "2001:db8::5"]),
            ("52:54:00:00:00:02", ["127.0.0.1", "198.18.0.7"]),
        ]
    )
    leases = {"52:54:00:00:00:01": ["192.0.2.10"]}
    rec = guest_record(guest, leases, sources=["lease", "agent"], uri="qemu:///system")
    assert rec["addresses"] == {
        "lease": ["192.0.2.10"],
        "agent": ["192.0.2.20", "2001:db8::5", "198.18.0.7"],
    }
    assert rec["interfaces"][0]["addresses"] == ["192.0.2.10", "192.0.2.20", "2001:db8::5"]
    assert pick_address(rec["addresses"], ["lease", "agent"]) == ("192.0.2.10", "lease")
    assert pick_address(rec["addresses"], ["agent", "lease"]) == ("192.0.2.20", "agent")
    rec = guest_record(guest, leases, sources=["agent"], uri="qemu:///system")
    assert rec["addresses"] == {"agent": ["192.0.2.20", "2001:db8::5", "198.18.0.7"]}


def test_no_ipv4_no_address():
    assert pick_address({"lease": [], "agent": ["2001:db8::5"]}, ["lease", "agent"]) == (
        None,
        None,
    )


def test_concurrent_read_equals_one_after_another(plugin_class, tmp_path, conn):
    web = conn.define(["fleet"], start=True)
    db = conn.define(["fleet"])
    config = {"uris": [TEST_URI] * 4, "tags": ["fleet"], "hostname": "uuid"}
    one = run_plugin(plugin_class, tmp_path, {**config, "max_workers": 1})
    many = run_plugin(plugin_class, tmp_path, {**config, "max_workers": 4})
    assert (
        sorted(many.hosts)
        == sorted(one.hosts)
        == sorted(conn.lookupByName(n).UUIDString() for n in (web, db))
    )
    for name in one.hosts:
        assert many.get_host(name).vars == one.get_host(name).vars
    assert sorted(many.groups) == sorted(one.groups)


def test_max_workers_must_be_positive(plugin_class, tmp_path, conn):
    with pytest.raises(AnsibleParserError, match="max_workers must be at least 1"):
        run_plugin(plugin_class, tmp_path, {"uris": [TEST_URI], "max_workers": 0})


def test_keepalive_off(plugin_class, tmp_path, conn):
    web = conn.define(["nokeepalive"])
    inv = run_plugin(
        plugin_class,
        tmp_path,
        {"uris": [TEST_URI], "tags": ["nokeepalive"], "keepalive_interval": 0},
    )
    assert sorted(inv.hosts) == [web]


def test_guest_agent_connection_only_where_the_agent_answers(
    plugin_class, tmp_path, conn, monkeypatch
):
    answering = conn.define(start=True)
    silent = conn.define(start=True)
    off = conn.define()
    pinged = []

    class FakeAgent:  # GuestAgent: the test driver has no guest agent
        def __init__(self, dom, *, timeout):
            self.dom, self.timeout = dom, timeout

        def ping(self):
            pinged.append((self.dom.name(), self.timeout))
            if self.dom.name() != answering:
                raise plugin_module.AgentError("guest-ping: QEMU guest agent is not connected")

    monkeypatch.setattr(plugin_class, "guest_agent", FakeAgent)
    inv = run_plugin(
        plugin_class, tmp_path, {"uris": [TEST_URI], "guest_agent_connection": True}, cache=False
    )
    hv = inv.get_host(answering).vars
    assert hv["ansible_connection"] == "virtops.kvm.qemu_ga"
    assert hv["virtops_qemu_ga_uri"] == TEST_URI
    assert hv["virtops_qemu_ga_guest"] == answering
    assert hv["libvirt_agent_answers"] is True
    for name in (silent, off):
        assert inv.get_host(name).vars["libvirt_agent_answers"] is False
        assert "ansible_connection" not in inv.get_host(name).vars
    pinged_names = {name for name, _timeout in pinged}
    assert {answering, silent} <= pinged_names and off not in pinged_names  # running only
    assert {timeout for _name, timeout in pinged} == {3}

    # off by default: nobody is pinged and nothing is set
    pinged.clear()
    inv = run_plugin(plugin_class, tmp_path, {"uris": [TEST_URI]}, cache=False)
    assert pinged == [] and "ansible_connection" not in inv.get_host(answering).vars
    assert "libvirt_agent_answers" not in inv.get_host(answering).vars


def test_guest_agent_connection_needs_read_write(plugin_class, tmp_path, conn):
    with pytest.raises(AnsibleParserError, match="not readonly"):
        run_plugin(
            plugin_class,
            tmp_path,
            {"uris": [TEST_URI], "guest_agent_connection": True, "readonly": True},
            cache=False,
        )


def test_guest_agent_connection_with_the_real_agent_class_on_the_test_driver(
    plugin_class, tmp_path, conn
):
    """libvirt's test driver has no agent: the real GuestAgent says so and guests stay alone."""
    running = conn.define(start=True)
    inv = run_plugin(
        plugin_class, tmp_path, {"uris": [TEST_URI], "guest_agent_connection": True}, cache=False
    )
    assert inv.get_host(running).vars["libvirt_agent_answers"] is False
    assert "ansible_connection" not in inv.get_host(running).vars
