"""Facts about this machine that the lab depends on, fixed where Debian's own setup would."""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path

KVM_DEVICE = Path("/dev/kvm")


def ensure_kvm_device_access() -> bool:
    """Give /dev/kvm the ``root:kvm 0660`` that Debian's udev rules set; True if changed.

    Without udev (no systemd here) the node stays ``root:root 0600``. QEMU's capability probe
    still reports KVM, but libvirt then finds /dev/kvm unusable for libvirt-qemu, judges its
    capability cache stale and probes QEMU again on every lookup: each API call that needs the
    capabilities (define, create, domcapabilities...) then takes seconds, tens of seconds
    when several test processes do it at once. Guests still use domain type ``qemu`` (TCG).
    """
    if not KVM_DEVICE.exists() or os.geteuid() != 0:
        return False
    try:
        kvm_gid = grp.getgrnam("kvm").gr_gid
    except KeyError:
        return False
    st = KVM_DEVICE.stat()
    if st.st_gid == kvm_gid and stat.S_IMODE(st.st_mode) & 0o060 == 0o060:
        return False
    os.chown(KVM_DEVICE, 0, kvm_gid)
    KVM_DEVICE.chmod(stat.S_IMODE(st.st_mode) | 0o660)
    return True
