#!/usr/bin/python
# Copyright (c) virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: domain
short_description: Manage a libvirt guest (domain) and its run state
version_added: 1.0.0
description:
  - Defines, updates, starts, stops and removes one libvirt guest, driven by O(state).
  - Typed options cover what virt-install users set (memory, vCPUs, CPU, machine, firmware,
    boot, direct kernel boot, disks, NICs, graphics, serial ports, guest agent, RNG, watchdog,
    controllers, TPM, video, sound, inputs, SMBIOS system information, virtiofs shared
    folders, host devices, tuning). O(xml) merges a fragment or a whole document for anything
    not modelled.
  - Only the settings given are compared, on libvirt's inactive definition parsed into typed
    models. What libvirt generates (UUID, MAC addresses not given, PCI addresses, aliases,
    default controllers) is kept and never reported as a change. Check mode never writes.
  - On a running guest, changes libvirt can apply live are applied live and persisted
    (memory balloon, vCPUs up to the maximum, pinning, scheduler, memory and block tuning,
    title, description, tags, disk and NIC attach and detach, CD-ROM media, disk I/O
    limits, and the hot-pluggable typed devices - host devices, virtio inputs, new SCSI
    controllers and virtiofs folders attached and detached). The others (video, sound, TPM,
    SMBIOS, USB inputs, a changed device) are written to the definition and reported in
    RV(restart_required), and so is a live attach or detach libvirt refuses (with a warning;
    the definition keeps the change). O(restart_if_required=true) restarts the guest
    gracefully to apply them.
  - Transitions wait until libvirt reports the new state, up to O(timeout) seconds.
  - All input is checked before anything changes (units, ranges, conflicting options, that
    networks, pools, volumes, bridges and files exist, memory against the host); a new guest
    that fails to start is removed again.
author:
  - virtops.kvm contributors (@virtops)
extends_documentation_fragment:
  - virtops.kvm.connection
  - virtops.kvm.attributes
  - virtops.kvm.attributes.actions
attributes:
  check_mode:
    description: Predicts the changes, the restart and the final state; libvirt's definition
      stays byte-identical.
    details: A network, storage pool, volume, bridge or file that does not exist yet (or a
      network or pool that is not running) is assumed to come from an earlier task of the
      play, with a warning, so a provisioning playbook can run in check mode from nothing;
      the real run with the same input fails before any change if it is still missing.
  diff_mode:
    description:
      - Shows the managed settings (and the run state) before and after.
      - A console password shows as C(secret:) and a digest under a random key of the run
        (equal before and after when unchanged), never as the password.
options:
  name:
    description: Name of the guest.
    type: str
    required: true
  state:
    description:
      - V(present) defines the guest and leaves its run state as it is (a new guest stays
        shut off).
      - V(running) defines and starts it (resumes a paused one).
      - V(shutdown) asks the guest to shut down (ACPI or guest agent, see O(shutdown_mode))
        and waits until it is off; see O(force).
      - V(paused) starts it paused or pauses it.
      - V(destroyed) stops it hard (like pulling the plug).
      - V(absent) stops it hard and removes it with its NVRAM, managed save and snapshot and
        checkpoint metadata; with O(remove_storage=true) also the volumes of its disks.
    type: str
    choices: [present, running, shutdown, paused, destroyed, absent]
    default: present
  virt_type:
    description:
      - The domain type. V(auto) uses KVM when the host can run it, else QEMU emulation
        (TCG), as M(virtops.kvm.host_info) recommends. V(auto) only matters when the guest
        is created; V(kvm) and V(qemu) are also compared on existing guests.
    type: str
    choices: [auto, kvm, qemu]
    default: auto
  title:
    description: A short title (V("") removes it).
    type: str
  description:
    description: A description (V("") removes it).
    type: str
  tags:
    description:
      - Tags stored in the guest's metadata in the namespace C(https://virtops.dev/xmlns/kvm/1.0).
        The complete list; V([]) removes all. M(virtops.kvm.domain_info) filters by them.
    type: list
    elements: str
  memory:
    description:
      - Memory of the guest (the balloon target), as an integer in MiB or a string with a
        unit (V(512MiB), V(2GiB), V(1G)). Required to create a guest.
      - Raising it above O(max_memory) raises the maximum too (which needs a restart).
    type: raw
  max_memory:
    description:
      - Memory allocated at boot, the most O(memory) can grow to live (libvirt's
        C(<memory>)). Defaults to O(memory) for a new guest. Changing it needs a restart.
    type: raw
  vcpus:
    description: Number of vCPUs the guest runs with (at most O(max_vcpus)).
    type: int
  max_vcpus:
    description: Maximum number of vCPUs (hot-plug up to it). Defaults to O(vcpus).
    type: int
  cpu:
    description: The guest CPU.
    type: dict
    suboptions:
      mode:
        description: CPU mode. V(host-passthrough) needs KVM.
        type: str
        choices: [host-passthrough, host-model, custom, maximum]
      model:
        description: A named CPU model (mode V(custom)), for example V(qemu64) or V(Haswell).
        type: str
      sockets:
        description: Sockets of the topology. Sockets x cores x threads must be the maximum
          vCPUs.
        type: int
      cores:
        description: Cores per socket.
        type: int
      threads:
        description: Threads per core.
        type: int
  machine:
    description: Machine type, for example V(q35), V(pc) or V(pc-q35-7.2). Aliases are
      resolved with the host's capabilities, so V(q35) matches C(pc-q35-7.2).
    type: str
  firmware:
    description: V(bios) (SeaBIOS) or V(uefi) (OVMF, picked by libvirt).
    type: str
    choices: [bios, uefi]
  secure_boot:
    description: UEFI secure boot. Implies O(firmware=uefi), needs a q35 machine (the
      default for a new guest with secure boot) and enables SMM.
    type: bool
  boot:
    description: Boot devices in order.
    type: list
    elements: str
    choices: [hd, cdrom, network, fd]
  kernel:
    description: Direct kernel boot, a kernel on the host (for network installs from an
      install tree). V("") removes it.
    type: str
  initrd:
    description: The initrd for O(kernel).
    type: str
  cmdline:
    description: The kernel command line for O(kernel).
    type: str
  cdrom:
    description:
      - An install ISO as the guest's first CD-ROM (added on a SATA bus when the guest has
        none). V("") ejects the media. Changed live on a running guest.
    type: str
  disks:
    description:
      - The complete list of the guest's disks and CD-ROMs (others are removed, except the
        O(cdrom)). Targets are given in order per bus (C(vda), C(vdb), C(sda)...) unless set.
      - Within a disk only the settings given are compared.
    type: list
    elements: dict
    suboptions:
      path:
        description: A file or block device on the host.
        type: str
      pool:
        description: Storage pool of O(disks[].volume).
        type: str
      volume:
        description: A volume in O(disks[].pool).
        type: str
      device:
        description: Kind of device.
        type: str
        choices: [disk, cdrom]
        default: disk
      bus:
        description: Bus. Defaults to V(virtio) for disks and V(sata) for CD-ROMs.
        type: str
        choices: [virtio, scsi, sata, ide, usb]
      target:
        description: Target device name in the guest definition (V(vda), V(sdb)...).
        type: str
      format:
        description:
          - Image format. Never guessed from the file's contents, which the guest can write (a
            qcow2 header planted in a raw disk could name any host file as backing image).
          - When not given for a new disk, the format is the one its storage pool reports for
            the volume (O(disks[].pool) and O(disks[].volume), or a O(disks[].path) that a
            running pool lists as a volume; refresh the pool after copying a file into it). A
            volume the pool reports with a backing file, or a path outside every running
            pool, needs O(disks[].format); without it the module fails before changing anything.
          - A disk already in the definition (same target and source) keeps its format.
          - In check mode, the format of a volume or file that does not exist yet stays
            unknown.
        type: str
        choices: [raw, qcow2]
      cache:
        description: Cache mode.
        type: str
        choices: [none, writeback, writethrough, directsync, unsafe, default]
      io:
        description: I/O mode.
        type: str
        choices: [native, threads, io_uring]
      discard:
        description: Pass discard requests (V(unmap)) or not (V(ignore)).
        type: str
        choices: [unmap, ignore]
      iothread:
        description: The I/O thread (1 to O(tuning.iothreads)) of a virtio disk.
        type: int
      readonly:
        description: Read-only disk (always for CD-ROMs).
        type: bool
      serial:
        description: Serial number shown to the guest.
        type: str
      iotune:
        description: I/O limits; 0 removes a limit. Changed live on a running guest.
        type: dict
        suboptions:
          total_bytes_sec:
            description: Total bytes per second.
            type: int
          read_bytes_sec:
            description: Read bytes per second.
            type: int
          write_bytes_sec:
            description: Write bytes per second.
            type: int
          total_iops_sec:
            description: Total I/O operations per second.
            type: int
          read_iops_sec:
            description: Read I/O operations per second.
            type: int
          write_iops_sec:
            description: Write I/O operations per second.
            type: int
  interfaces:
    description:
      - The complete list of network interfaces (others are removed). Each takes exactly
        one of O(interfaces[].network), O(interfaces[].bridge) or O(interfaces[].dev).
      - Interfaces are matched by MAC address when given, else in order; a MAC address not
        given is generated by libvirt and kept.
    type: list
    elements: dict
    suboptions:
      network:
        description: A libvirt network.
        type: str
      bridge:
        description: A host bridge.
        type: str
      dev:
        description: A host interface for macvtap.
        type: str
      mode:
        description: Macvtap mode.
        type: str
        choices: [bridge, vepa, private, passthrough]
      model:
        description: NIC model.
        type: str
        default: virtio
      mac:
        description: MAC address.
        type: str
      mtu:
        description: MTU of the guest side.
        type: int
  graphics:
    description:
      - The graphical console. Only the settings given are managed; changing the others (say
        O(graphics.listen)) keeps the console's existing password.
    type: dict
    suboptions:
      type:
        description: V(none) removes the graphics.
        type: str
        choices: [none, vnc, spice]
        default: vnc
      listen:
        description: Address to listen on, for example V(127.0.0.1).
        type: str
      port:
        description: Fixed port; automatic when not given.
        type: int
      password:
        description:
          - Password of the console. When not given, the existing password is kept (also when
            O(graphics.type), O(graphics.listen) or O(graphics.port) change).
          - The empty string V("") removes the password.
          - A V(vnc) console takes at most 8 characters (QEMU's VNC authentication); a longer
            one fails before anything is changed. V(spice) has no such limit.
          - Compared with the stored one by a keyed digest. It never appears in the module's
            results, diff, warnings or errors (nor does a password already stored on the guest),
            in raw, XML-escaped or JSON-escaped form.
        type: str
  serials:
    description:
      - The complete list of serial ports. A new guest gets one V(pty) serial port when not
        given. The console on port 0 follows the first serial port.
    type: list
    elements: dict
    suboptions:
      type:
        description: Kind of host side.
        type: str
        choices: [pty, file, unix, tcp]
        default: pty
      port:
        description: Target port (0 is ttyS0). Defaults to the position in the list.
        type: int
      path:
        description: File (V(file)), socket (V(unix)) or C(host:port) (V(tcp)).
        type: str
      mode:
        description: V(bind) (QEMU listens) or V(connect), for V(unix) and V(tcp).
        type: str
        choices: [bind, connect]
  guest_agent:
    description: A channel for the QEMU guest agent.
    type: bool
  rng:
    description: A virtio RNG fed from the host's C(/dev/urandom).
    type: bool
  watchdog:
    description: A watchdog device.
    type: dict
    suboptions:
      model:
        description: Model; V(none) removes the watchdog.
        type: str
        choices: [i6300esb, ib700, diag288, itco, none]
        default: i6300esb
      action:
        description: What happens when it fires.
        type: str
        choices: [reset, shutdown, poweroff, pause, none, dump, inject-nmi]
  controllers:
    description:
      - Controllers to ensure, each found by O(controllers[].type) and O(controllers[].index);
        the controllers libvirt adds itself (PCI, USB, SATA, serial) and those not listed are
        kept.
      - A disk with O(disks[].bus=scsi) sits on SCSI controller 0; make it a V(virtio-scsi)
        controller here, with its queues and I/O thread.
      - On a running guest a new V(scsi) controller is attached live (on a q35 guest that needs
        a free PCIe root port; without one the attach fails and waits for the next boot);
        other new controllers and changes of an existing one apply at the next boot (in
        RV(restart_required)).
    type: list
    elements: dict
    suboptions:
      type:
        description: Controller type.
        type: str
        choices: [scsi, virtio-serial, usb, sata, pci, ide]
        default: scsi
      index:
        description: Controller index.
        type: int
        default: 0
      model:
        description: Model; a V(scsi) controller defaults to V(virtio-scsi).
        type: str
      queues:
        description: Request queues of a V(virtio-scsi) controller (the guest sees as many
          blk-mq hardware queues).
        type: int
      iothread:
        description: I/O thread (from 1, see O(tuning.iothreads)) of a V(virtio-scsi)
          controller.
        type: int
  tpm:
    description:
      - An emulated TPM (swtpm, which must be installed on the host; libvirt's domain
        capabilities are checked before any change). Applies at the next boot.
    type: dict
    suboptions:
      model:
        description: Interface; V(none) removes the TPM.
        type: str
        choices: [tpm-crb, tpm-tis, none]
        default: tpm-crb
      version:
        description: TPM version; V(1.2) needs V(tpm-tis).
        type: str
        choices: ['2.0', '1.2']
        default: '2.0'
      persistent_state:
        description: Keep the TPM's state when the guest is undefined.
        type: bool
        default: false
  video:
    description: The primary video device (applies at the next boot).
    type: dict
    suboptions:
      model:
        description: Model; V(none) gives the guest no video device.
        type: str
        choices: [virtio, qxl, vga, bochs, cirrus, ramfb, none]
        default: virtio
      heads:
        description: Number of heads (1 when not given).
        type: int
  sound:
    description: The complete list of sound cards (V([]) removes them; applies at the next
      boot).
    type: list
    elements: dict
    suboptions:
      model:
        description: Model.
        type: str
        choices: [ich9, ich7, ich6, ac97, es1370, sb16, usb]
        default: ich9
  inputs:
    description:
      - The complete list of input devices, except the PS/2 mouse and keyboard libvirt gives
        every x86 guest, which are neither listed nor compared.
      - On a running guest V(virtio) inputs are attached and detached live; V(usb) ones apply
        at the next boot (in RV(restart_required)).
    type: list
    elements: dict
    suboptions:
      type:
        description: Kind of device.
        type: str
        required: true
        choices: [tablet, mouse, keyboard]
      bus:
        description: Bus.
        type: str
        choices: [usb, virtio]
        default: usb
  sysinfo:
    description:
      - SMBIOS information the guest reads (C(dmidecode), C(/sys/class/dmi/id)); sets
        C(<os><smbios mode="sysinfo"/>) so QEMU exposes it. The complete set of entries;
        V({}) removes it. The system UUID is always the guest's UUID. Applies at the next
        boot.
    type: dict
    suboptions:
      system:
        description: SMBIOS type 1 entries.
        type: dict
        suboptions:
          manufacturer: {description: Manufacturer., type: str}
          product: {description: Product name., type: str}
          version: {description: Version., type: str}
          serial: {description: Serial number., type: str}
          sku: {description: SKU number., type: str}
          family: {description: Family., type: str}
      baseboard:
        description: SMBIOS type 2 entries.
        type: dict
        suboptions:
          manufacturer: {description: Manufacturer., type: str}
          product: {description: Product name., type: str}
          version: {description: Version., type: str}
          serial: {description: Serial number., type: str}
          asset: {description: Asset tag., type: str}
          location: {description: Location in the chassis., type: str}
  filesystems:
    description:
      - The complete list of virtiofs shared folders (V([]) removes them). The guest mounts
        one with C(mount -t virtiofs TAG /mnt).
      - On a running guest folders are attached and detached live when its memory is already
        shared (it was started with a shared folder, or with that memory backing); otherwise
        they apply at the next boot (in RV(restart_required)). Unmount a folder in the guest
        before removing it.
      - virtiofsd maps the guest's memory, so a guest with a shared folder gets shared memory
        backing (C(<memoryBacking><source type="memfd"/><access mode="shared"/>)) set
        automatically; it stays when the folders are removed. libvirt finds virtiofsd through
        QEMU's vhost-user descriptor (C(/usr/share/qemu/vhost-user/50-qemu-virtiofsd.json),
        package qemu-system-common).
      - The source directory must exist (on a local URI; checked before any change).
    type: list
    elements: dict
    suboptions:
      source:
        description: Host directory to share.
        type: path
        required: true
      target:
        description: Mount tag the guest uses (at most 36 characters).
        type: str
        required: true
  hostdevs:
    description:
      - The complete list of host devices given to the guest (V([]) removes them); PCI devices
        by address (an SR-IOV virtual function is a PCI device at its own address), USB devices
        by vendor and product, mediated devices (vGPU slices and the like) by UUID. Other host
        devices of the definition (SCSI, C(mode="capabilities")) are kept and not compared.
      - A PCI address the host does not have fails before any change. USB and mediated devices
        are looked for by libvirt when the guest starts.
      - With O(hostdevs[].managed) libvirt detaches a PCI device from its host driver (binds
        it to vfio-pci) when the guest starts and gives it back when it stops; nothing happens
        to the device while the guest is only defined.
      - On a running guest host devices are attached and detached live (libvirt's hotplug,
        the device calls used for disks and NICs; a managed PCI device leaves its host driver
        then); a changed one (managed, ROM, boot order) applies at the next boot (in
        RV(restart_required)). On a q35 guest a PCI device needs a free PCIe root port.
    type: list
    elements: dict
    suboptions:
      type:
        description: Kind of device.
        type: str
        choices: [pci, usb, mdev]
        default: pci
      address:
        description: PCI address, V(DDDD:BB:SS.F) or V(BB:SS.F) as C(lspci -D) shows it (V(pci)
          only).
        type: str
      vendor:
        description: USB vendor id, 4 hex digits as C(lsusb) shows it (V(usb) only).
        type: str
      product:
        description: USB product id (V(usb) only).
        type: str
      uuid:
        description: UUID of the mediated device (V(mdev) only).
        type: str
      model:
        description: Device API of a mediated device (V(mdev) only; V(vfio-pci) when not
          given).
        type: str
        choices: [vfio-pci, vfio-ccw, vfio-ap]
      managed:
        description: Whether libvirt detaches the device from the host and reattaches it
          (V(pci) and V(usb); V(true) when not given).
        type: bool
      rom:
        description: Whether the guest sees the PCI device's option ROM (C(<rom bar=...>));
          not compared when not given (V(pci) only).
        type: bool
      boot_order:
        description: Boot from this device, in this order (from 1). Per-device boot orders
          exclude O(boot) (libvirt refuses both), so the guest's boot list must be empty.
        type: int
  autostart:
    description: Start the guest when libvirtd starts.
    type: bool
  tuning:
    description:
      - Performance tuning. Pinning takes cpusets like V(0-3,^2).
      - CPU numbers in a cpuset go up to 16383 (libvirt's limit) and must name CPUs the host
        has; anything beyond fails before the guest is changed.
    type: dict
    suboptions:
      vcpu_pins:
        description: The complete vCPU pinning (live on a running guest).
        type: list
        elements: dict
        suboptions:
          vcpu:
            description: vCPU number.
            type: int
            required: true
          cpuset:
            description: Host CPUs.
            type: str
            required: true
      emulator_pin:
        description: Host CPUs of the emulator threads (V("") unpins).
        type: str
      iothreads:
        description: Number of I/O threads.
        type: int
      iothread_pins:
        description: The complete I/O thread pinning.
        type: list
        elements: dict
        suboptions:
          iothread:
            description: I/O thread number (from 1).
            type: int
            required: true
          cpuset:
            description: Host CPUs.
            type: str
            required: true
      cpu_shares:
        description: Relative CPU weight.
        type: int
      cpu_period:
        description: vCPU bandwidth period in microseconds.
        type: int
      cpu_quota:
        description: vCPU bandwidth quota in microseconds per period (-1 unlimited).
        type: int
      numa_memory:
        description: NUMA memory policy.
        type: dict
        suboptions:
          mode:
            description: Policy.
            type: str
            choices: [strict, interleave, preferred, restrictive]
            default: strict
          nodeset:
            description: Host NUMA nodes.
            type: str
      hugepages:
        description: Back the guest memory with huge pages.
        type: bool
      hugepage_size:
        description: Huge page size (V(2M), V(1G)); the host default when not given.
        type: str
      memory_locked:
        description: Lock the guest memory in host RAM.
        type: bool
      memory_hard_limit:
        description: Memory hard limit (MiB or with a unit); 0 removes it.
        type: raw
      memory_soft_limit:
        description: Memory soft limit (MiB or with a unit); 0 removes it.
        type: raw
      blkio_weight:
        description: Block I/O weight (100-1000).
        type: int
      cachetune:
        description: Cache allocation (needs resctrl on the host); the complete list.
        type: list
        elements: dict
        suboptions:
          vcpus:
            description: vCPUs the allocation is for.
            type: str
            required: true
          cache_id:
            description: Host cache id.
            type: int
            default: 0
          level:
            description: Cache level.
            type: int
            default: 3
          type:
            description: Cache type.
            type: str
            choices: [both, code, data]
            default: both
          size:
            description: Size (KiB or with a unit).
            type: raw
            required: true
  xml:
    description:
      - A fragment of domain XML (one element, such as C(<features>...</features>) or
        C(<devices>...</devices>)) or a whole C(<domain>) document for what the options do
        not model. It is merged into the definition and counts as unchanged when the
        definition already contains it. Write it as libvirt stores it (for example memory in
        KiB) to stay idempotent. It may not change a setting an option sets.
    type: str
  timeout:
    description: Seconds to wait for each transition (shutdown, start, pause, restart).
    type: int
    default: 300
  shutdown_mode:
    description: How a graceful shutdown asks the guest.
    type: str
    choices: [default, acpi, agent]
    default: default
  force:
    description: Stop the guest hard when it did not shut down within O(timeout). Without
      it the run fails and the guest keeps running.
    type: bool
    default: false
  restart_if_required:
    description: Restart a running guest (graceful shutdown, then start) when changes need a
      restart to apply.
    type: bool
    default: false
  remove_storage:
    description:
      - With O(state=absent), also delete the storage volumes of the guest's disks (not
        CD-ROMs, not files outside running storage pools).
      - A volume that is in use elsewhere is kept, and RV(kept_volumes) and a warning say why -
        when another guest (running or shut off, persistent or transient) has it as a disk
        (file, block device, pool volume or network disk) or as any layer of a disk's
        backing chain, or when another volume of its pool backs onto it. Nothing else
        deletes it; use M(virtops.kvm.volume) with O(virtops.kvm.volume#module:force=true)
        to delete a volume in use.
    type: bool
    default: false
  memory_guard:
    description: Refuse a guest with more memory than the host has, and refuse to start one
      with more than the host has free.
    type: bool
    default: true
notes:
  - Use M(virtops.kvm.volume) to create disk volumes first; this module does not create
    images.
  - Another writer's change is not overwritten. Just before writing the guest definition
    the module reads it again; when it changed since the task read it, the task is computed
    once more from the new definition, and when it changed again the task fails with
    nothing written. libvirt has no atomic compare-and-write, so only a change made in the
    instant between that read and the write can still be lost.
seealso:
  - module: virtops.kvm.domain_info
"""

EXAMPLES = r"""
- name: A guest with a disk, a NIC on the default network and pinned vCPUs, running
  virtops.kvm.domain:
    name: web1
    state: running
    memory: 1GiB
    vcpus: 2
    disks:
      - pool: default
        volume: web1.qcow2
        cache: none
        discard: unmap
    interfaces:
      - network: default
    graphics:
      type: vnc
      listen: 127.0.0.1
    guest_agent: true
    tags: [web]
    tuning:
      vcpu_pins:
        - {vcpu: 0, cpuset: "0"}
        - {vcpu: 1, cpuset: "1"}

- name: Network install from an install tree (direct kernel boot)
  virtops.kvm.domain:
    name: installer
    state: running
    virt_type: auto
    memory: 2048
    kernel: /var/lib/libvirt/boot/vmlinuz
    initrd: /var/lib/libvirt/boot/initrd.gz
    cmdline: console=ttyS0 auto=true url=http://192.0.2.10/preseed.cfg
    disks:
      - path: /var/lib/libvirt/images/installer.qcow2
        format: qcow2  # a file outside every pool needs its format: never guessed
    serials:
      - type: pty

- name: UEFI with secure boot, booting an ISO
  virtops.kvm.domain:
    name: win1
    memory: 4G
    vcpus: 2
    secure_boot: true
    cdrom: /var/lib/libvirt/images/installer.iso
    boot: [cdrom, hd]

- name: Grow memory and vCPUs of a running guest (live), restart for the rest
  virtops.kvm.domain:
    name: web1
    memory: 2GiB
    max_memory: 4GiB
    vcpus: 2
    restart_if_required: true

- name: A virtio-scsi disk with 2 queues, a TPM 2.0 and a shared folder
  virtops.kvm.domain:
    name: web1
    tuning:
      iothreads: 1
    controllers:
      - {type: scsi, model: virtio-scsi, queues: 2, iothread: 1}
    disks:
      - {path: /var/lib/libvirt/images/web1.qcow2, format: qcow2}
      - {path: /var/lib/libvirt/images/web1-data.qcow2, format: qcow2, bus: scsi}
    tpm:
      model: tpm-crb
      version: "2.0"
    filesystems:
      - {source: /srv/share, target: share}  # in the guest - mount -t virtiofs share /mnt
    video:
      model: virtio
    inputs:
      - {type: tablet, bus: usb}
    sysinfo:
      system: {manufacturer: Example, product: Web, serial: WEB-0001}

- name: A PCI device (an SR-IOV virtual function) and a USB stick, booting from the VF
  virtops.kvm.domain:
    name: web1
    boot: []  # per-device boot orders replace the boot list
    hostdevs:
      - {type: pci, address: "0000:3b:02.1", boot_order: 1}
      - {type: usb, vendor: "0781", product: "5581"}

- name: Something not modelled, as an XML fragment
  virtops.kvm.domain:
    name: web1
    xml: |
      <features><acpi/><apic/><pae/></features>

- name: Shut down and wait; stop hard after 60 seconds
  virtops.kvm.domain:
    name: web1
    state: shutdown
    timeout: 60
    force: true

- name: Open the console on every address; its password stays as it is
  virtops.kvm.domain:
    name: web1
    graphics:
      type: vnc
      listen: 0.0.0.0

- name: Remove the console password
  virtops.kvm.domain:
    name: web1
    graphics:
      type: vnc
      password: ""

- name: Remove the guest and its volumes
  virtops.kvm.domain:
    name: web1
    state: absent
    remove_storage: true
"""

RETURN = r"""
name:
  description: Name of the guest.
  returned: always
  type: str
uuid:
  description: UUID of the guest (null when absent, or new in check mode).
  returned: always
  type: str
state:
  description: The run state at the end (predicted in check mode).
  returned: always
  type: str
  sample: running
  choices: [running, paused, shutoff, crashed, pmsuspended, absent]
changes:
  description: Names of the settings that changed (or would change).
  returned: always
  type: list
  elements: str
  sample: [memory, tuning.vcpu_pins]
restart_required:
  description: Settings written to the definition that the running guest only gets after a
    restart (also on later runs, while the running guest still differs).
  returned: always
  type: list
  elements: str
  sample: [max_memory, machine]
live_applied:
  description: Settings applied to the running guest live.
  returned: always
  type: list
  elements: str
restarted:
  description: Whether the guest was (or in check mode would be) restarted to apply changes.
  returned: always
  type: bool
forced:
  description: Whether a shutdown ended in a hard stop after O(timeout) (O(force=true)).
  returned: always
  type: bool
removed_volumes:
  description: Paths of the volumes deleted with O(state=absent) and O(remove_storage=true).
  returned: when O(state=absent)
  type: list
  elements: str
kept_volumes:
  description: >-
    The disks of the guest that O(remove_storage=true) kept, with the reason (in use by
    another guest or volume, or not a volume of a running storage pool).
  returned: when O(state=absent)
  type: list
  elements: dict
  contains:
    path:
      description: Path of the volume (or the disk's file).
      type: str
      returned: success
    reason:
      description: Why it was kept, naming each guest and disk that uses it.
      type: str
      returned: success
      sample: "in use: guest web2 (running) disk vdb uses data.qcow2"
consoles:
  description:
    - Where to connect to the guest's consoles - every graphics device (VNC, SPICE), then
      every serial and console device, as M(virtops.kvm.domain_info) reports them in
      RV(virtops.kvm.domain_info#module:guests[].consoles).
    - Read from the live definition while the guest runs (after the run, or as it runs now
      in check mode), so an automatic port is the one QEMU listens on; from the inactive
      definition otherwise (an automatic port is then null).
  returned: always
  type: list
  elements: dict
  sample:
    - {device: graphics, type: vnc, listen: 127.0.0.1, port: 5900, autoport: true, socket: null}
    - {device: serial, type: pty, target_type: isa-serial, target_port: 0, path: /dev/pts/3,
       listen: null, port: null}
xml:
  description:
    - The inactive definition after the run (predicted in check mode).
    - Without console passwords (the C(passwd) attribute is left out, as libvirt does without
      C(VIR_DOMAIN_XML_SECURE)); any other text that equals a known password is masked.
  returned: unless absent
  type: str
"""

from ansible_collections.virtops.kvm.plugins.module_utils._client import KvmModule  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._domain import DomainManager  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._domain_devices import IOTUNE_KEYS  # noqa: E402

_IOTUNE = {k: {"type": "int"} for k in IOTUNE_KEYS}
_PIN = {"cpuset": {"type": "str", "required": True}}
_SMBIOS_SYSTEM = {
    k: {"type": "str"} for k in ("manufacturer", "product", "version", "serial", "sku", "family")
}
_SMBIOS_BOARD = {
    k: {"type": "str"}
    for k in ("manufacturer", "product", "version", "serial", "asset", "location")
}

ARGUMENT_SPEC = {
    "name": {"type": "str", "required": True},
    "state": {
        "type": "str",
        "default": "present",
        "choices": ["present", "running", "shutdown", "paused", "destroyed", "absent"],
    },
    "virt_type": {"type": "str", "default": "auto", "choices": ["auto", "kvm", "qemu"]},
    "title": {"type": "str"},
    "description": {"type": "str"},
    "tags": {"type": "list", "elements": "str"},
    "memory": {"type": "raw"},
    "max_memory": {"type": "raw"},
    "vcpus": {"type": "int"},
    "max_vcpus": {"type": "int"},
    "cpu": {
        "type": "dict",
        "options": {
            "mode": {
                "type": "str",
                "choices": ["host-passthrough", "host-model", "custom", "maximum"],
            },
            "model": {"type": "str"},
            "sockets": {"type": "int"},
            "cores": {"type": "int"},
            "threads": {"type": "int"},
        },
    },
    "machine": {"type": "str"},
    "firmware": {"type": "str", "choices": ["bios", "uefi"]},
    "secure_boot": {"type": "bool"},
    "boot": {"type": "list", "elements": "str", "choices": ["hd", "cdrom", "network", "fd"]},
    "kernel": {"type": "str"},
    "initrd": {"type": "str"},
    "cmdline": {"type": "str"},
    "cdrom": {"type": "str"},
    "disks": {
        "type": "list",
        "elements": "dict",
        "options": {
            "path": {"type": "str"},
            "pool": {"type": "str"},
            "volume": {"type": "str"},
            "device": {"type": "str", "default": "disk", "choices": ["disk", "cdrom"]},
            "bus": {"type": "str", "choices": ["virtio", "scsi", "sata", "ide", "usb"]},
            "target": {"type": "str"},
            "format": {"type": "str", "choices": ["raw", "qcow2"]},
            "cache": {
                "type": "str",
                "choices": ["none", "writeback", "writethrough", "directsync", "unsafe", "default"],
            },
            "io": {"type": "str", "choices": ["native", "threads", "io_uring"]},
            "discard": {"type": "str", "choices": ["unmap", "ignore"]},
            "iothread": {"type": "int"},
            "readonly": {"type": "bool"},
            "serial": {"type": "str"},
            "iotune": {"type": "dict", "options": _IOTUNE},
        },
    },
    "interfaces": {
        "type": "list",
        "elements": "dict",
        "options": {
            "network": {"type": "str"},
            "bridge": {"type": "str"},
            "dev": {"type": "str"},
            "mode": {"type": "str", "choices": ["bridge", "vepa", "private", "passthrough"]},
            "model": {"type": "str", "default": "virtio"},
            "mac": {"type": "str"},
            "mtu": {"type": "int"},
        },
    },
    "graphics": {
        "type": "dict",
        "options": {
            "type": {"type": "str", "default": "vnc", "choices": ["none", "vnc", "spice"]},
            "listen": {"type": "str"},
            "port": {"type": "int"},
            "password": {"type": "str", "no_log": True},
        },
    },
    "serials": {
        "type": "list",
        "elements": "dict",
        "options": {
            "type": {"type": "str", "default": "pty", "choices": ["pty", "file", "unix", "tcp"]},
            "port": {"type": "int"},
            "path": {"type": "str"},
            "mode": {"type": "str", "choices": ["bind", "connect"]},
        },
    },
    "guest_agent": {"type": "bool"},
    "rng": {"type": "bool"},
    "watchdog": {
        "type": "dict",
        "options": {
            "model": {
                "type": "str",
                "default": "i6300esb",
                "choices": ["i6300esb", "ib700", "diag288", "itco", "none"],
            },
            "action": {
                "type": "str",
                "choices": ["reset", "shutdown", "poweroff", "pause", "none", "dump", "inject-nmi"],
            },
        },
    },
    "controllers": {
        "type": "list",
        "elements": "dict",
        "options": {
            "type": {
                "type": "str",
                "default": "scsi",
                "choices": ["scsi", "virtio-serial", "usb", "sata", "pci", "ide"],
            },
            "index": {"type": "int", "default": 0},
            "model": {"type": "str"},
            "queues": {"type": "int"},
            "iothread": {"type": "int"},
        },
    },
    "tpm": {
        "type": "dict",
        "options": {
            "model": {
                "type": "str",
                "default": "tpm-crb",
                "choices": ["tpm-crb", "tpm-tis", "none"],
            },
            "version": {"type": "str", "default": "2.0", "choices": ["2.0", "1.2"]},
            "persistent_state": {"type": "bool", "default": False},
        },
    },
    "video": {
        "type": "dict",
        "options": {
            "model": {
                "type": "str",
                "default": "virtio",
                "choices": ["virtio", "qxl", "vga", "bochs", "cirrus", "ramfb", "none"],
            },
            "heads": {"type": "int"},
        },
    },
    "sound": {
        "type": "list",
        "elements": "dict",
        "options": {
            "model": {
                "type": "str",
                "default": "ich9",
                "choices": ["ich9", "ich7", "ich6", "ac97", "es1370", "sb16", "usb"],
            },
        },
    },
    "inputs": {
        "type": "list",
        "elements": "dict",
        "options": {
            "type": {"type": "str", "required": True, "choices": ["tablet", "mouse", "keyboard"]},
            "bus": {"type": "str", "default": "usb", "choices": ["usb", "virtio"]},
        },
    },
    "sysinfo": {
        "type": "dict",
        "options": {
            "system": {"type": "dict", "options": _SMBIOS_SYSTEM},
            "baseboard": {"type": "dict", "options": _SMBIOS_BOARD},
        },
    },
    "filesystems": {
        "type": "list",
        "elements": "dict",
        "options": {
            "source": {"type": "path", "required": True},
            "target": {"type": "str", "required": True},
        },
    },
    "hostdevs": {
        "type": "list",
        "elements": "dict",
        "options": {
            "type": {"type": "str", "default": "pci", "choices": ["pci", "usb", "mdev"]},
            "address": {"type": "str"},
            "vendor": {"type": "str"},
            "product": {"type": "str"},
            "uuid": {"type": "str"},
            "model": {"type": "str", "choices": ["vfio-pci", "vfio-ccw", "vfio-ap"]},
            "managed": {"type": "bool"},
            "rom": {"type": "bool"},
            "boot_order": {"type": "int"},
        },
    },
    "autostart": {"type": "bool"},
    "tuning": {
        "type": "dict",
        "options": {
            "vcpu_pins": {
                "type": "list",
                "elements": "dict",
                "options": {"vcpu": {"type": "int", "required": True}, **_PIN},
            },
            "emulator_pin": {"type": "str"},
            "iothreads": {"type": "int"},
            "iothread_pins": {
                "type": "list",
                "elements": "dict",
                "options": {"iothread": {"type": "int", "required": True}, **_PIN},
            },
            "cpu_shares": {"type": "int"},
            "cpu_period": {"type": "int"},
            "cpu_quota": {"type": "int"},
            "numa_memory": {
                "type": "dict",
                "options": {
                    "mode": {
                        "type": "str",
                        "default": "strict",
                        "choices": ["strict", "interleave", "preferred", "restrictive"],
                    },
                    "nodeset": {"type": "str"},
                },
            },
            "hugepages": {"type": "bool"},
            "hugepage_size": {"type": "str"},
            "memory_locked": {"type": "bool"},
            "memory_hard_limit": {"type": "raw"},
            "memory_soft_limit": {"type": "raw"},
            "blkio_weight": {"type": "int"},
            "cachetune": {
                "type": "list",
                "elements": "dict",
                "options": {
                    "vcpus": {"type": "str", "required": True},
                    "cache_id": {"type": "int", "default": 0},
                    "level": {"type": "int", "default": 3},
                    "type": {"type": "str", "default": "both", "choices": ["both", "code", "data"]},
                    "size": {"type": "raw", "required": True},
                },
            },
        },
    },
    "xml": {"type": "str"},
    "timeout": {"type": "int", "default": 300},
    "shutdown_mode": {
        "type": "str",
        "default": "default",
        "choices": ["default", "acpi", "agent"],
    },
    "force": {"type": "bool", "default": False},
    "restart_if_required": {"type": "bool", "default": False},
    "remove_storage": {"type": "bool", "default": False},
    "memory_guard": {"type": "bool", "default": True},
}


def main() -> None:
    module = KvmModule(
        argument_spec=ARGUMENT_SPEC,
        supports_check_mode=True,
    )
    module.run(lambda m: DomainManager(m).run())


if __name__ == "__main__":
    main()
