#!/usr/bin/python
# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: migrate
short_description: Move a guest to another KVM host (live or offline migration)
version_added: 0.1.0
description:
  - Moves the guest O(name) from the host of O(uri) to the host of O(dest_uri), or to the
    best host of O(dest_candidates).
  - Idempotent. A guest already running on the destination (and not on the source) is left
    alone; with O(mode=offline), a guest already defined on the destination is.
  - Checks the destination before it starts, and refuses with a clear message instead of
    failing half-way. It checks that the destination answers, is not the source host, has
    no other guest of the same name, has the guest's networks active, its storage pools active,
    a pool to receive each copied disk (O(storage_copy)), enough memory, and a CPU that can
    run the guest's CPU model. Bridges named by the guest's interfaces are not checked.
  - Succeeds only when both hosts say the guest moved - the destination has it running (or
    paused, when it was paused on the source; with O(mode=offline), defined and stopped) and
    the source confirms it no longer runs there. With O(undefine_source=true) a stopped
    definition the job left on the source is removed then. When a connection broke during
    the job, the module opens a fresh one (within O(connect_timeout), at most 20 seconds) to
    ask. A host that cannot be asked is never taken as an answer; the module fails and
    says what is known, for example that the guest runs on the destination and the source
    could not be reached to confirm it stopped there.
  - A failed migration never loses the guest. When the destination dies, the network
    drops or O(timeout) is reached with O(timeout_action=abort), the guest keeps running on
    the source, what this run created on the destination (the unfinished guest, its
    definition, the volumes it created) is removed, and the module fails saying what
    happened and where the guest is (RV(location) and RV(state), with C(source_state) and
    C(dest_state), in the failed result). A guest
    running on the destination is never destroyed there, and a paused source is resumed
    only when the destination does not run the guest.
  - Progress of a running migration is written every O(poll_interval) seconds as a JSON
    line to O(progress_file) (follow it with C(tail -f)) and to the module log of the host
    running the module (syslog or journal, when there is one). The module works with
    C(async) for migrations that outlast the connection's timeout.
author:
  - virtops.kvm contributors (!UNKNOWN)
extends_documentation_fragment:
  - virtops.kvm.connection
  - virtops.kvm.attributes
  - virtops.kvm.attributes.actions
attributes:
  check_mode:
    description: Runs every check and reports the destination it would choose; moves nothing.
  diff_mode:
    description: Shows the guest's location before and after.
  idempotent:
    description: A guest already on the destination is reported unchanged.
options:
  name:
    description:
      - Name of the guest to move.
      - Exactly one of O(name) and O(all_running=true) is required.
    type: str
  all_running:
    description:
      - Move every active guest of the host of O(uri), largest first, each to the candidate
        of O(dest_candidates) with the most room at that moment (or to O(dest_uri)).
      - The first guest that cannot move (no candidate can take it, or its migration
        fails) stops the evacuation safely. Guests already moved stay where they went,
        the others stay on the source, and the module fails listing which is where.
      - In check mode the whole plan is made, each planned guest's memory counted on its
        destination, and RV(moved) lists what would move where; nothing moves.
      - With O(balance_threshold_mib), only enough guests move to even out memory.
    type: bool
    default: false
  parallel:
    description:
      - With O(all_running=true), how many migrations may run at once.
    type: int
    default: 1
  exclude:
    description:
      - With O(all_running=true), names of active guests that are not to be moved (they are
        left running on the source and listed in RV(remaining)).
      - The C(evacuate) playbook passes the guests a Pacemaker cluster manages
        (M(virtops.kvm.cluster_guest)). The cluster moves those itself; a migration behind
        its back would make it see the guest fail.
    type: list
    elements: str
    default: []
  balance_threshold_mib:
    description:
      - With O(all_running=true), move guests off the host of O(uri) only while a candidate
        has more than this many MiB more memory not committed to guests than this host;
        each time the guest that best halves that gap goes to that candidate.
      - Run it for each host of a group in turn to even out the group (see the
        C(rebalance) playbook).
    type: int
  dest_uri:
    description:
      - libvirt URI of the destination host, for example V(qemu+tls://kvm2.example.com/system).
      - With O(peer2peer=true) the source's libvirtd connects to this URI, so it must work
        from the source host as well as from where the module runs.
      - O(dest_uri) and O(dest_candidates) are mutually exclusive; one is required.
    type: str
  dest_candidates:
    description:
      - libvirt URIs of hosts the guest may go to. The module checks each and chooses,
        among those that can take the guest, the one with the most memory not committed to
        active guests (ties go to the earlier one in the list). The source host is skipped,
        so the same list can be used for every host.
      - Runs of the module on one machine that share a candidate list take turns choosing
        until the chosen host shows the incoming guest, so parallel runs do not all pick the
        same host. The lock file is in C(/run/virtops-kvm) (mode 0700; for a user other than
        root, in C($XDG_RUNTIME_DIR/virtops-kvm)); a run waits at most 600 seconds for its
        turn, then fails naming the lock file and the run that holds it.
      - When no candidate can take the guest, fails with each candidate's reasons.
    type: list
    elements: str
  mode:
    description:
      - V(live) moves a running guest without stopping it.
      - V(offline) moves the persistent definition of a stopped guest (its disks must be on
        shared storage or copied some other way).
    type: str
    choices: [live, offline]
    default: live
  peer2peer:
    description:
      - V(true) lets the source's libvirtd drive the migration (C(migrateToURI3)).
      - V(false) is the managed direct mode, where this module drives both hosts through
        its own connections (C(migrate3)).
    type: bool
    default: true
  tunnelled:
    description:
      - Send the migration data through the libvirtd connection instead of a direct
        connection between the QEMU processes. Needs O(peer2peer=true).
    type: bool
    default: false
  tls:
    description:
      - Encrypt the migration data (memory, and disks copied with O(storage_copy)) with
        QEMU's TLS (C(VIR_MIGRATE_TLS)); the hosts need QEMU certificates, as the
        C(virtops.kvm.host) role makes with C(host_libvirt_tls).
      - V(true) always uses TLS, V(false) never does. On a host whose C(qemu.conf) sets
        C(migrate_tls_force = 1) (the C(virtops.kvm.host) role does with
        C(host_migration_tls)), a migration with V(false) is refused by libvirt before
        anything moves.
      - Not set (auto), a live migration that is not O(tunnelled) uses TLS when O(uri) or
        the destination URI uses libvirt's TLS transport (V(qemu+tls://), or a remote
        V(qemu://HOST/...) without a transport), or when O(uri) is a local C(qemu) URI
        (such as V(qemu:///system)) and the local C(/etc/libvirt/qemu.conf) sets
        C(migrate_tls_force = 1) or C(migrate_tls_x509_cert_dir) (a file the module
        cannot read counts as not set). Otherwise, and for O(mode=offline) and
        O(tunnelled=true) (whose data goes over libvirt's own connection), no TLS.
      - RV(tls) says which was used.
    type: bool
  migrate_uri:
    description:
      - URI the destination QEMU listens on for the migration data, for example
        V(tcp://10.0.0.12) to use a dedicated migration network.
      - If not set and the destination URI names a host, V(tcp://HOST) with that host is
        used (libvirt's own default, the destination's host name, often resolves to a
        loopback address).
    type: str
  storage_copy:
    description:
      - V(none) for storage the hosts share.
      - V(all) copies every writable, unshared disk of the guest to the destination.
      - V(incremental) copies only the top image of each such disk; its base image must
        already be on the destination at the same path.
      - The destination needs the same paths. With O(create_volumes=true) the module
        creates each missing disk as a volume (same name, format and size) in the active
        storage pool of the destination whose target directory holds that path, and
        removes those volumes again if the migration fails.
    type: str
    choices: [none, all, incremental]
    default: none
  copy_disks:
    description: Copy only these disks (target names such as V(vda)) with O(storage_copy).
    type: list
    elements: str
  create_volumes:
    description: Create the destination volumes for O(storage_copy) (see there).
    type: bool
    default: true
  unsafe:
    description:
      - Migrate even when libvirt thinks it is unsafe, for example with disks on a local
        file system that libvirt cannot tell is shared, and a cache mode other than
        V(none). Only when you know the storage is shared.
    type: bool
    default: false
  max_downtime:
    description:
      - Longest pause of the guest, in milliseconds, allowed at the switch-over (QEMU's
        default is 300). Set once the migration job has started.
    type: int
  bandwidth:
    description: Bandwidth limit of the migration in MiB/s.
    type: int
  postcopy_bandwidth:
    description: Bandwidth limit in MiB/s once in post-copy. Needs O(postcopy=true).
    type: int
  auto_converge:
    description: Slow down the guest's vCPUs when its memory changes faster than it is copied.
    type: bool
    default: false
  auto_converge_initial:
    description: Initial CPU throttling percentage with O(auto_converge).
    type: int
  auto_converge_increment:
    description: Throttling increment percentage with O(auto_converge).
    type: int
  postcopy:
    description:
      - Allow switching to post-copy, where the guest runs on the destination while its
        remaining memory is fetched from the source.
      - Once switched, a failure of either host or of the network loses the guest's
        running state; the guarantee that a failed migration keeps the guest on the source
        holds only until the switch.
      - Switching happens only with O(postcopy_after_iterations),
        O(postcopy_after_seconds) or O(timeout_action=postcopy).
      - The destination's QEMU must be allowed to use userfaultfd (the sysctl
        C(vm.unprivileged_userfaultfd=1), or C(/dev/userfaultfd) open to the QEMU user). Where
        it is not, QEMU refuses at the start ("Postcopy is not supported") and the guest stays
        on the source.
    type: bool
    default: false
  postcopy_after_iterations:
    description: Switch to post-copy once the memory has been copied this many times.
    type: int
  postcopy_after_seconds:
    description: Switch to post-copy this many seconds after the migration started.
    type: int
  compression:
    description: Compression methods for the memory pages (V(xbzrle), V(mt)).
    type: list
    elements: str
    choices: [xbzrle, mt]
  parallel_connections:
    description: Send the memory over this many parallel connections.
    type: int
  persistent:
    description: Define the guest persistently on the destination.
    type: bool
    default: true
  undefine_source:
    description:
      - Remove the guest's definition from the source once it has moved, so it cannot be
        started there again by mistake (for example by autostart).
      - A stopped definition left on the source by an earlier run is removed too.
    type: bool
    default: true
  timeout:
    description:
      - Seconds the migration may take. Then O(timeout_action) applies.
      - When not set, 600 seconds plus one second for every 16 MiB to send (the guest's
        memory, and with O(storage_copy) the allocation of the disks copied), or for every
        O(bandwidth) MiB when that is lower. C(timeout_s) in RV(stats.requested) says
        which timeout applied.
      - V(0) waits without a limit.
      - With O(timeout_action=abort), the job is aborted (C(abortJob)) and the module waits
        at most 60 more seconds for it to end. If it has not ended then (the abort was
        refused, or the source's libvirtd no longer answers), the module stops waiting, asks
        both hosts where the guest is and fails saying so; the source guest is then not
        resumed.
    type: int
  verify_agent:
    description:
      - After the switch-over, ping the guest's QEMU guest agent on the destination
        (C(guest-ping)) until it answers, for at most O(verify_agent_timeout) seconds.
      - When it does not answer (or the guest has no agent channel), the module fails
        naming the destination host and the guest's state there; the guest has moved and
        is not moved back.
      - Needs O(mode=live) and the agent installed and running in the guest.
    type: bool
    default: false
  verify_agent_timeout:
    description: Seconds O(verify_agent) waits for the guest agent to answer.
    type: int
    default: 30
  timeout_action:
    description:
      - V(abort) cancels the migration; the guest keeps running on the source and the
        module fails.
      - V(postcopy) switches to post-copy so that the migration finishes. Needs
        O(postcopy=true).
    type: str
    choices: [abort, postcopy]
    default: abort
  memory_reserve_mib:
    description:
      - Memory in MiB a destination must keep free beyond the guest's memory.
      - A destination can take a live guest when the guest's memory plus this reserve fits
        both in the host's free memory and in its memory not committed to active guests.
    type: int
    default: 0
  check_cpu:
    description: Check that the destination's CPU can run the guest's CPU model.
    type: bool
    default: true
  progress_file:
    description:
      - File to which a JSON line is appended for the start, every progress sample and the end
        of the migration, on the host running the module.
    type: path
  poll_interval:
    description: Seconds between two looks at the migration job (progress, timeout, post-copy).
    type: float
    default: 1.0
notes:
  - The figures in RV(stats) come from libvirt's statistics of the completed job, as the
    destination (or the source) recorded them.
seealso:
  - name: libvirt migration documentation
    description: What the flags and parameters do in libvirt.
    link: https://libvirt.org/migration.html
"""

EXAMPLES = r"""
- name: Live-migrate web1 from kvm1 to kvm2 with at most 200 ms downtime
  virtops.kvm.migrate:
    uri: qemu+ssh://root@kvm1.example.com/system
    name: web1
    dest_uri: qemu+ssh://root@kvm2.example.com/system
    max_downtime: 200
    bandwidth: 500
    auto_converge: true
    timeout: 600

- name: Move db1 where there is most room, copying its disks (no shared storage)
  virtops.kvm.migrate:
    uri: qemu+tls://kvm1.example.com/system
    name: db1
    dest_candidates:
      - qemu+tls://kvm2.example.com/system
      - qemu+tls://kvm3.example.com/system
    storage_copy: all  # encrypted: qemu+tls URIs make tls default to true
    progress_file: /var/tmp/migrate-db1.jsonl
  async: 3600
  poll: 15

- name: Finish a busy guest's migration with post-copy after 120 seconds
  virtops.kvm.migrate:
    uri: qemu+ssh://root@kvm1.example.com/system
    name: busy1
    dest_uri: qemu+ssh://root@kvm2.example.com/system
    postcopy: true
    timeout: 120
    timeout_action: postcopy

- name: Move web2 and check that its guest agent answers on the destination
  virtops.kvm.migrate:
    uri: qemu+ssh://root@kvm1.example.com/system
    name: web2
    dest_uri: qemu+ssh://root@kvm2.example.com/system
    verify_agent: true
    verify_agent_timeout: 60

- name: Move the definition of a stopped guest
  virtops.kvm.migrate:
    uri: qemu+ssh://root@kvm1.example.com/system
    name: spare1
    dest_uri: qemu+ssh://root@kvm2.example.com/system
    mode: offline
"""

RETURN = r"""
name:
  description: Name of the guest.
  returned: with O(name)
  type: str
uuid:
  description: UUID of the guest.
  returned: with O(name)
  type: str
source_uri:
  description: URI of the source host (O(uri)).
  returned: always
  type: str
dest_uri:
  description: URI of the destination given or chosen.
  returned: with O(name)
  type: str
tls:
  description: Whether the migration data used QEMU's TLS (O(tls), or what auto chose).
  returned: when a destination was chosen
  type: bool
  sample: true
location:
  description: URI of the host the guest is on at the end (in check mode, where it is now).
  returned: with O(name)
  type: str
  sample: qemu+tcp://198.18.0.12/system
state:
  description:
    - State of the guest on RV(location), such as V(running) or V(shutoff), named as
      M(virtops.kvm.domain) names them.
  returned: with O(name)
  type: str
placement:
  description:
    - Every destination checked, whether it can take the guest and why not, with its
      memory figures in MiB. Empty when the guest was already in place.
  returned: with O(name)
  type: list
  elements: dict
  sample:
    - uri: qemu+tcp://198.18.0.12/system
      can_take: true
      reasons: []
      notes: []
      memory_total_mib: 24105
      memory_free_mib: 22900
      memory_committed_mib: 256
      memory_uncommitted_mib: 23849
stats:
  description:
    - Figures of the completed migration. Sizes in bytes, times in milliseconds, except
      C(elapsed_s), the seconds the module waited. Figures libvirt does not report are null.
  returned: when a guest was migrated
  type: dict
  contains:
    total_time_ms:
      description: Duration of the migration job.
      type: int
    downtime_ms:
      description: How long the guest was paused at the switch-over.
      type: int
    setup_time_ms:
      description: Time spent setting the migration up.
      type: int
    data_transferred_bytes:
      description: Memory and disk data sent.
      type: int
    memory_transferred_bytes:
      description: Memory data sent.
      type: int
    disk_transferred_bytes:
      description:
        - Disk data sent (storage copy). The destination's figures of the completed job leave
          it out, so it is then the highest figure seen while the job ran (null or 0 when the
          copy was over between two looks at the job).
      type: int
    memory_iterations:
      description: How many times the memory was copied.
      type: int
    auto_converge_throttle:
      description:
        - With O(auto_converge), the highest CPU throttle percentage seen while the job ran
          (null when the guest never had to be slowed down).
      type: int
    compression_pages:
      description: With the V(xbzrle) method of O(compression), pages sent compressed.
      type: int
    compression_bytes:
      description: With the V(xbzrle) method of O(compression), compressed data sent.
      type: int
    compression_cache_bytes:
      description: With the V(xbzrle) method of O(compression), size of the page cache.
      type: int
    compression_cache_misses:
      description: With the V(xbzrle) method of O(compression), pages not found in the cache.
      type: int
    compression_overflow:
      description: With the V(xbzrle) method of O(compression), pages that did not compress.
      type: int
    elapsed_s:
      description: Seconds the module watched the migration.
      type: float
    stats_from:
      description: Where the figures come from (V(destination), V(source) or V(last_sample)).
      type: str
    postcopy_started:
      description: Whether the migration switched to post-copy.
      type: bool
    requested:
      description:
        - The O(max_downtime) and O(bandwidth) asked for, and C(timeout_s), the migration
          timeout that applied (null when there was none).
      type: dict
  sample:
    total_time_ms: 1210
    downtime_ms: 41
    data_transferred_bytes: 30567123
    memory_iterations: 3
    elapsed_s: 1.6
    stats_from: destination
    postcopy_started: false
    requested: {max_downtime_ms: 300, bandwidth_mib_s: null, timeout_s: 616}
progress:
  description: Samples taken while the migration ran (at most 60, thinned evenly).
  returned: when a guest was migrated
  type: list
  elements: dict
events:
  description: What the module did during the migration (post-copy switch, timeout, abort).
  returned: when a guest was migrated
  type: list
  elements: str
moved:
  description:
    - With O(all_running=true), the guests moved (in check mode, that would move), each
      with C(name), C(memory_mib), C(dest_uri), C(location) and C(stats).
  returned: with O(all_running=true)
  type: list
  elements: dict
remaining:
  description: With O(all_running=true), the guests still active on the source.
  returned: with O(all_running=true)
  type: list
  elements: str
verified_agent_s:
  description: With O(verify_agent=true), seconds until the guest agent on the destination answered.
  returned: when the guest was migrated with O(verify_agent=true)
  type: float
  sample: 0.4
volumes_created:
  description:
    - Destination volumes created for O(storage_copy) (in check mode, those it would create).
  returned: when a guest was or would be migrated
  type: list
  elements: str
notes:
  description: Remarks of the checks, such as what could not be checked.
  returned: with O(name)
  type: list
  elements: str
"""

from ansible_collections.virtops.kvm.plugins.module_utils._client import KvmModule  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._migrate import Migrator  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._migrate_evacuate import (  # noqa: E402
    Evacuator,
)

ARGUMENT_SPEC = {
    "name": {"type": "str"},
    "all_running": {"type": "bool", "default": False},
    "parallel": {"type": "int", "default": 1},
    "exclude": {"type": "list", "elements": "str", "default": []},
    "balance_threshold_mib": {"type": "int"},
    "dest_uri": {"type": "str"},
    "dest_candidates": {"type": "list", "elements": "str"},
    "mode": {"type": "str", "default": "live", "choices": ["live", "offline"]},
    "peer2peer": {"type": "bool", "default": True},
    "tunnelled": {"type": "bool", "default": False},
    "tls": {"type": "bool"},
    "migrate_uri": {"type": "str"},
    "storage_copy": {"type": "str", "default": "none", "choices": ["none", "all", "incremental"]},
    "copy_disks": {"type": "list", "elements": "str"},
    "create_volumes": {"type": "bool", "default": True},
    "unsafe": {"type": "bool", "default": False},
    "max_downtime": {"type": "int"},
    "bandwidth": {"type": "int"},
    "postcopy_bandwidth": {"type": "int"},
    "auto_converge": {"type": "bool", "default": False},
    "auto_converge_initial": {"type": "int"},
    "auto_converge_increment": {"type": "int"},
    "postcopy": {"type": "bool", "default": False},
    "postcopy_after_iterations": {"type": "int"},
    "postcopy_after_seconds": {"type": "int"},
    "compression": {"type": "list", "elements": "str", "choices": ["xbzrle", "mt"]},
    "parallel_connections": {"type": "int"},
    "persistent": {"type": "bool", "default": True},
    "undefine_source": {"type": "bool", "default": True},
    "timeout": {"type": "int"},
    "verify_agent": {"type": "bool", "default": False},
    "verify_agent_timeout": {"type": "int", "default": 30},
    "timeout_action": {"type": "str", "default": "abort", "choices": ["abort", "postcopy"]},
    "memory_reserve_mib": {"type": "int", "default": 0},
    "check_cpu": {"type": "bool", "default": True},
    "progress_file": {"type": "path"},
    "poll_interval": {"type": "float", "default": 1.0},
}


def main() -> None:
    module = KvmModule(
        argument_spec=ARGUMENT_SPEC,
        mutually_exclusive=[("dest_uri", "dest_candidates")],
        required_one_of=[("dest_uri", "dest_candidates")],
        supports_check_mode=True,
    )
    module.run(
        lambda kvm: Evacuator(kvm).run() if kvm.params["all_running"] else Migrator(kvm).run()
    )


if __name__ == "__main__":
    main()
