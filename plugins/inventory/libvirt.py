# Copyright (c) virtops.kvm contributors (!UNKNOWN)
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: libvirt
short_description: Guests of libvirt hypervisors as inventory hosts
version_added: 1.0.0
description:
  - Makes every guest of one or more libvirt hypervisors (O(uris)) an inventory host, with
    its address, run state, hypervisor and the tags that M(virtops.kvm.domain) stores in the
    guest's metadata (namespace C(https://virtops.dev/xmlns/kvm/1.0)).
  - C(ansible_host) is the first IPv4 address found, trying the sources in
    O(address_sources) in order; guests without one get no C(ansible_host).
  - Groups per tag (C(tag_<tag>)), per run state (C(state_<state>)) and per hypervisor
    (C(hypervisor_<host name>)) unless O(default_groups=false); O(compose), O(groups) and
    O(keyed_groups) work as in other inventory plugins, on the C(libvirt_*) host variables.
  - Hypervisors are read concurrently (O(max_workers) at a time); hosts, groups and
    variables come out in the order of O(uris), as a read one after another would give them.
  - Per hypervisor one connection and bulk calls - C(getAllDomainStats), filtered
    C(listAllDomains) and one C(DHCPLeases) per network - plus one definition read per guest
    and, for running guests, a guest agent query where its channel is connected (and an ARP
    lookup when O(address_sources) has V(arp)).
  - The configuration file name must end in C(.libvirt.yml) or C(.libvirt.yaml).
author:
  - virtops.kvm contributors (!UNKNOWN)
requirements:
  - libvirt-python
  - lxml
extends_documentation_fragment:
  - constructed
  - inventory_cache
options:
  plugin:
    description: The name of this plugin; this file is for it.
    required: true
    choices: [virtops.kvm.libvirt]
    type: str
  uris:
    description:
      - libvirt connection URIs of the hypervisors, for example V(qemu:///system) or
        V(qemu+ssh://root@kvm1.example.com/system).
    type: list
    elements: str
    default: [qemu:///system]
  connect_timeout:
    description:
      - Seconds a hypervisor has to accept the connection. Attempts are retried while its
        libvirt daemon is not answering yet; a hypervisor still not connected after this
        long (at least 5 seconds, so that one attempt over SSH has time) is unreachable,
        also when it drops packets and the TCP connect itself would wait minutes.
    type: int
    default: 10
  max_workers:
    description:
      - How many hypervisors are read at the same time. The whole read then costs about as
        much as the slowest hypervisor instead of the sum of all of them. V(1) reads them
        one after another.
      - Each read holds one libvirt connection (over SSH, one C(ssh) process) while it runs.
    type: int
    default: 10
  keepalive_interval:
    description:
      - Seconds between libvirt keepalive messages on each connection. A hypervisor that
        stops answering in the middle of the read is dropped after
        O(keepalive_interval) * (O(keepalive_count) + 1) seconds (as unreachable, see
        O(skip_unreachable)). V(0) turns keepalive off (a call to a silent hypervisor then
        waits as long as TCP does).
    type: int
    default: 5
  keepalive_count:
    description: Keepalive messages without an answer after which a connection is closed.
    type: int
    default: 5
  skip_unreachable:
    description:
      - Warn about a hypervisor that cannot be reached (or stops answering while it is
        read) and list the others, instead of failing.
    type: bool
    default: false
  readonly:
    description:
      - Use read-only connections. libvirt refuses guest agent queries on them, so
        V(agent) addresses are then not found.
    type: bool
    default: false
  states:
    description: Only guests in these run states.
    type: list
    elements: str
    choices: [running, paused, shutoff, crashed, pmsuspended, shutdown, blocked, nostate]
  tags:
    description: Only guests that have all these tags.
    type: list
    elements: str
  address_sources:
    description:
      - Where guest addresses come from, in order of preference for C(ansible_host).
      - V(lease) - DHCP leases of libvirt networks. V(agent) - the QEMU guest agent (running
        guests with a connected agent channel). V(arp) - the host's ARP table (running guests,
        for example on a bridge without a libvirt DHCP server).
    type: list
    elements: str
    choices: [lease, agent, arp]
    default: [lease, agent]
  hostname:
    description:
      - How a guest is named in the inventory. V(name) - its libvirt name; V(uuid) - its UUID;
        V(name_hypervisor) - C(<name>@<hypervisor host name>).
      - With V(name), a guest found on two hypervisors (defined on both, for example after
        a migration) is listed once, the running one, with a warning.
    type: str
    choices: [name, uuid, name_hypervisor]
    default: name
  default_groups:
    description: Make the C(tag_*), C(state_*) and C(hypervisor_*) groups.
    type: bool
    default: true
  guest_agent_connection:
    description:
      - Reach guests through their QEMU guest agent. Every running guest's agent is sent a
        C(guest-ping) (at most 3 seconds each); a guest whose agent answers gets
        C(ansible_connection=virtops.kvm.qemu_ga) with C(virtops_qemu_ga_uri) (its
        hypervisor's URI) and C(virtops_qemu_ga_guest) (its libvirt name), so tasks run in it
        through P(virtops.kvm.qemu_ga#connection), without network in the guest.
      - Guests whose agent does not answer (shut off, no agent channel, no agent running)
        are left alone - they keep the default connection, normally SSH to C(ansible_host).
      - C(libvirt_agent_answers) tells which it was. With O(cache), the answer is the one of
        the read that filled the cache.
      - Needs connections that are not O(readonly).
    type: bool
    default: false
notes:
  - Host variables - C(libvirt_name), C(libvirt_uuid), C(libvirt_uri), C(libvirt_hypervisor),
    C(libvirt_state), C(libvirt_active), C(libvirt_persistent), C(libvirt_autostart),
    C(libvirt_tags), C(libvirt_title), C(libvirt_description), C(libvirt_memory_mib),
    C(libvirt_vcpus), C(libvirt_snapshot_count), C(libvirt_interfaces) (MAC, type, source,
    addresses), C(libvirt_addresses) (by source), C(libvirt_address_source) (where
    C(ansible_host) came from), C(libvirt_errors) (agent errors, if any) and, with
    O(guest_agent_connection), C(libvirt_agent_answers).
seealso:
  - module: virtops.kvm.domain_info
  - module: virtops.kvm.domain
"""

EXAMPLES = r"""
# inventory/lab.libvirt.yml: the guests of the local hypervisor, grouped by tag, state and
# hypervisor; ansible-inventory -i inventory/lab.libvirt.yml --graph
plugin: virtops.kvm.libvirt
uris:
  - qemu:///system
address_sources: [lease, agent]
compose:
  ansible_user: "'root'"
keyed_groups:
  - key: libvirt_vcpus | string
    prefix: vcpus

# Two hypervisors over SSH, running guests tagged web only, cached for 10 minutes
plugin: virtops.kvm.libvirt
uris:
  - qemu+ssh://root@kvm1.example.com/system
  - qemu+ssh://root@kvm2.example.com/system
states: [running]
tags: [web]
hostname: name_hypervisor
skip_unreachable: true
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: ~/.cache/virtops-kvm-inventory
cache_timeout: 600
groups:
  big: libvirt_memory_mib >= 4096

# Guests without network yet: tasks run through the guest agent where it answers
plugin: virtops.kvm.libvirt
uris:
  - qemu:///system
states: [running]
guest_agent_connection: true
compose:
  ansible_python_interpreter: "'/usr/bin/python3'"
"""

import traceback  # noqa: E402
from typing import Any  # noqa: E402

from ansible.errors import AnsibleError, AnsibleParserError  # noqa: E402
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable  # noqa: E402

try:
    from ansible_collections.virtops.kvm.plugins.module_utils._client import open_connection
    from ansible_collections.virtops.kvm.plugins.module_utils._errors import from_libvirt
    from ansible_collections.virtops.kvm.plugins.module_utils._fleet import (
        ensure_event_loop,
        read_many,
        set_keepalive,
    )
    from ansible_collections.virtops.kvm.plugins.module_utils._inventory import (
        pick_address,
        read_hypervisor,
    )
    from ansible_collections.virtops.kvm.plugins.module_utils._libvirt import (
        LIBVIRT_IMPORT_ERROR,
        libvirt,
    )
    from ansible_collections.virtops.kvm.plugins.module_utils._qemu_ga import (
        AgentError,
        GuestAgent,
    )
except ImportError as exc:  # lxml missing: the plugin says so when used
    libvirt = GuestAgent = AgentError = None
    LIBVIRT_IMPORT_ERROR = f"{exc}\n{traceback.format_exc()}"

PREFIX = "libvirt_"
AGENT_CONNECTION = "virtops.kvm.qemu_ga"
AGENT_PING_SECONDS = 3
# One connection attempt over SSH (TCP, key exchange, authentication) may take seconds.
MIN_CONNECT_SECONDS = 5


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):
    NAME = "virtops.kvm.libvirt"
    # GuestAgent(dom, timeout=...) with ping(): tests put a fake agent here
    guest_agent = GuestAgent

    def verify_file(self, path: str) -> bool:
        return super().verify_file(path) and path.endswith((".libvirt.yml", ".libvirt.yaml"))

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        if LIBVIRT_IMPORT_ERROR:
            raise AnsibleError(
                "The virtops.kvm.libvirt inventory plugin needs libvirt-python and lxml: "
                + LIBVIRT_IMPORT_ERROR
            )
        self._read_config_data(path)
        cache_key = self.get_cache_key(path)
        use_cache = self.get_option("cache")
        data = None
        update_cache = False
        if use_cache and cache:
            try:
                data = self._cache[cache_key]
            except KeyError:
                update_cache = True
        elif use_cache:
            update_cache = True  # a refresh (--flush-cache or cache=False)
        if data is None:
            data = self._read_all()
        if update_cache:
            self._cache[cache_key] = data
        self._populate(data)

    # -- reading ---------------------------------------------------------------------------
    def _read_all(self) -> list[dict[str, Any]]:
        sources = self.get_option("address_sources")
        if not sources:
            raise AnsibleParserError("address_sources must name at least one source")
        workers = self.get_option("max_workers")
        if workers < 1:
            raise AnsibleParserError("max_workers must be at least 1")
        skip = self.get_option("skip_unreachable")
        if self.get_option("guest_agent_connection") and self.get_option("readonly"):
            raise AnsibleParserError(
                "guest_agent_connection needs connections that are not readonly "
                "(libvirt refuses guest agent calls on read-only ones)"
            )
        if self.get_option("keepalive_interval") > 0:
            ensure_event_loop()
        outcomes = read_many(
            self.get_option("uris"),
            lambda uri, connected: self._read_one(uri, sources, connected),
            max_workers=workers,
            connect_limit=max(self.get_option("connect_timeout"), MIN_CONNECT_SECONDS),
            stop_on_error=not skip,
        )
        errors = [o for o in outcomes if o.error is not None]
        if errors and not skip:
            raise AnsibleError(
                "virtops.kvm.libvirt: " + "; ".join(o.error.msg for o in errors)
            ) from errors[0].error
        for outcome in errors:
            self.display.warning(
                f"virtops.kvm.libvirt: skipping {outcome.uri}: {outcome.error.msg}"
            )
        return [o.data for o in outcomes if o.error is None]

    def _read_one(self, uri: str, sources: list[str], connected) -> dict[str, Any]:
        conn = open_connection(
            uri,
            readonly=self.get_option("readonly"),
            timeout=self.get_option("connect_timeout"),
        )
        try:
            set_keepalive(
                conn, self.get_option("keepalive_interval"), self.get_option("keepalive_count")
            )
            connected()
            data = read_hypervisor(
                conn,
                uri,
                sources=sources,
                states=self.get_option("states"),
                tags=self.get_option("tags"),
            )
            if self.get_option("guest_agent_connection"):
                for guest in data["guests"]:
                    guest["agent_answers"] = self._agent_answers(conn, guest)
            return data
        except libvirt.libvirtError as exc:
            raise from_libvirt(exc, f"list the guests of {uri}") from exc
        finally:
            try:
                conn.close()
            except libvirt.libvirtError:
                pass

    def _agent_answers(self, conn, guest: dict[str, Any]) -> bool:
        if guest["state"] != "running":
            return False
        try:
            dom = conn.lookupByUUIDString(guest["uuid"])
            self.guest_agent(dom, timeout=AGENT_PING_SECONDS).ping()
        except (AgentError, libvirt.libvirtError):
            return False
        return True

    # -- populating ------------------------------------------------------------------------
    def _host_name(self, guest: dict[str, Any], hypervisor: str) -> str:
        style = self.get_option("hostname")
        if style == "uuid":
            return guest["uuid"]
        if style == "name_hypervisor":
            return f"{guest['name']}@{hypervisor}"
        return guest["name"]

    def _populate(self, data: list[dict[str, Any]]) -> None:
        strict = self.get_option("strict")
        order = self.get_option("address_sources")
        chosen: dict[str, tuple[dict[str, Any], str]] = {}
        for host in data:
            for guest in host["guests"]:
                name = self._host_name(guest, host["hypervisor"])
                seen = chosen.get(name)
                if seen is not None:
                    keep_new = guest["active"] and not seen[0]["active"]
                    kept = guest if keep_new else seen[0]
                    self.display.warning(
                        f"virtops.kvm.libvirt: guest {name} is on {seen[0]['uri']} and "
                        f"{guest['uri']}; listing the one on {kept['uri']} ({kept['state']})"
                    )
                    if not keep_new:
                        continue
                chosen[name] = (guest, host["hypervisor"])

        for name, (guest, hypervisor) in chosen.items():
            self.inventory.add_host(name)
            hostvars = self._hostvars(guest, hypervisor, order)
            if self.get_option("guest_agent_connection"):
                hostvars[PREFIX + "agent_answers"] = bool(guest.get("agent_answers"))
                if guest.get("agent_answers"):
                    hostvars["ansible_connection"] = AGENT_CONNECTION
                    hostvars["virtops_qemu_ga_uri"] = guest["uri"]
                    hostvars["virtops_qemu_ga_guest"] = guest["name"]
            for key, value in hostvars.items():
                self.inventory.set_variable(name, key, value)
            if self.get_option("default_groups"):
                groups = [f"tag_{tag}" for tag in guest["tags"]]
                groups += [f"state_{guest['state']}", f"hypervisor_{hypervisor}"]
                for group in groups:
                    added = self.inventory.add_group(self._sanitize_group_name(group))
                    self.inventory.add_child(added, name)
            self._set_composite_vars(self.get_option("compose"), hostvars, name, strict=strict)
            self._add_host_to_composed_groups(self.get_option("groups"), hostvars, name, strict)
            self._add_host_to_keyed_groups(
                self.get_option("keyed_groups"), hostvars, name, strict=strict
            )

    @staticmethod
    def _hostvars(guest: dict[str, Any], hypervisor: str, order: list[str]) -> dict[str, Any]:
        address, source = pick_address(guest["addresses"], order)
        hostvars: dict[str, Any] = {}
        if address:
            hostvars["ansible_host"] = address
        fields = (
            "name",
            "uuid",
            "uri",
            "state",
            "active",
            "persistent",
            "autostart",
            "tags",
            "title",
            "description",
            "memory_mib",
            "vcpus",
            "snapshot_count",
            "interfaces",
            "addresses",
            "errors",
        )
        for key in fields:
            hostvars[PREFIX + key] = guest.get(key)
        hostvars[PREFIX + "hypervisor"] = hypervisor
        hostvars[PREFIX + "address_source"] = source
        return hostvars
