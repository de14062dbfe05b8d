"""Unit tests of the option checks and the lifecycle plan of the domain module."""

from __future__ import annotations

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._domain_lifecycle import (
    Lifecycle,
    plan,
)
from ansible_collections.virtops.kvm.plugins.module_utils._domain_spec import (
    desired_from_params,
)
from ansible_collections.virtops.kvm.plugins.module_utils._errors import (
    KvmTimeoutError,
    KvmValidationError,
)


def wish(**params):
    params.setdefault("name", "g")
    return desired_from_params(params)


def test_memory_units():
    assert wish(memory=512).fields["memory"] == 512
    assert wish(memory="2GiB").fields["memory"] == 2048
    assert wish(memory="1G").fields["memory"] == 1024
    assert wish(memory="1536MiB", max_memory="2G").fields["max_memory"] == 2048


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"memory": "lots"}, "cannot read"),
        ({"memory": "1000KiB"}, "not a whole number of MiB"),
        ({"memory": 0}, "at least 1 MiB"),
        ({"memory": 512, "max_memory": 256}, "is below memory"),
        ({"vcpus": 0}, "at least 1"),
        ({"vcpus": 4, "max_vcpus": 2}, "is below vcpus"),
        ({"cpu": {"mode": "host-passthrough", "model": "qemu64"}}, "needs mode custom"),
        ({"firmware": "bios", "secure_boot": True}, "needs firmware uefi"),
        ({"kernel": "", "initrd": "/i"}, "need a kernel"),
        ({"disks": [{"path": "/a", "pool": "p", "volume": "v"}]}, "not both"),
        ({"disks": [{"volume": "v"}]}, "needs its pool"),
        ({"disks": [{"device": "disk"}]}, "needs a path"),
        ({"disks": [{"path": "/a", "bus": "sata", "target": "vdb"}]}, "does not fit bus"),
        ({"interfaces": [{}]}, "exactly one of"),
        ({"interfaces": [{"network": "n", "mac": "01:00:00:00:00:01"}]}, "multicast"),
        ({"interfaces": [{"network": "n", "mac": "zz"}]}, "invalid MAC"),
        ({"interfaces": [{"network": "n", "mode": "vepa"}]}, "macvtap"),
        ({"serials": [{"type": "file"}]}, "needs a path"),
        ({"serials": [{"port": 0}, {"port": 0}]}, "given twice"),
        ({"graphics": {"type": "none", "port": 5901}}, "takes no listen"),
        ({"tuning": {"vcpu_pins": [{"vcpu": 0, "cpuset": "x"}]}}, "Invalid"),
        (
            {"tuning": {"iothreads": 1, "iothread_pins": [{"iothread": 2, "cpuset": "0"}]}},
            "does not exist",
        ),
        ({"tuning": {"blkio_weight": 5}}, "100-1000"),
        ({"tuning": {"memory_hard_limit": 100, "memory_soft_limit": 200}}, "above"),
        ({"xml": "<devices><disk></devices>"}, "Malformed xml option"),
    ],
)
def test_bad_input(params, message):
    with pytest.raises(KvmValidationError, match=message):
        wish(**params)


def test_secure_boot_implies_uefi():
    fields = wish(secure_boot=True).fields
    assert fields["firmware"] == "uefi" and fields["secure_boot"] is True


def test_cdrom_is_an_extra_disk_and_not_exclusive():
    disks = wish(cdrom="/x.iso").fields["disks"]
    assert disks.exclusive is False
    [cd] = disks.disks
    assert (cd.device, cd.bus, cd.path, cd.readonly) == ("cdrom", "sata", "/x.iso", True)


def test_interfaces_types():
    nics = wish(interfaces=[{"network": "n"}, {"bridge": "br0"}, {"dev": "eth0"}]).fields[
        "interfaces"
    ]
    assert [(n.type, n.source, n.mode) for n in nics] == [
        ("network", "n", None),
        ("bridge", "br0", None),
        ("direct", "eth0", "bridge"),
    ]


@pytest.mark.parametrize(
    ("current", "wanted", "steps", "final"),
    [
        ("shutoff", "running", ["start"], "running"),
        ("paused", "running", ["resume"], "running"),
        ("running", "running", [], "running"),
        ("running", "shutdown", ["shutdown"], "shutoff"),
        ("paused", "shutdown", ["resume", "shutdown"], "shutoff"),
        ("shutoff", "shutdown", [], "shutoff"),
        ("running", "paused", ["suspend"], "paused"),
        ("shutoff", "paused", ["start_paused"], "paused"),
        ("running", "destroyed", ["destroy"], "shutoff"),
        ("shutoff", "destroyed", [], "shutoff"),
        ("running", "present", [], "running"),
        ("crashed", "running", ["start"], "running"),
    ],
)
def test_plan(current, wanted, steps, final):
    result = plan(current, wanted)
    assert (result.steps, result.final) == (steps, final)


class FakeDom:
    """A guest that ignores the first ``ignore`` shutdown requests."""

    def __init__(self, ignore: int):
        self.ignore = ignore
        self.requests = 0
        self.running = True
        self.destroyed = False

    def name(self):
        return "fake"

    def state(self):
        return (1 if self.running else 5, 0)

    def shutdownFlags(self, flags):
        self.requests += 1
        if self.requests > self.ignore:
            self.running = False

    def destroy(self):
        self.running = False
        self.destroyed = True


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_shutdown_asks_again_and_waits():
    clock = Clock()
    dom = FakeDom(ignore=1)
    life = Lifecycle(dom, timeout=60, clock=clock, sleep=clock.sleep)
    life.shutdown()
    assert dom.requests == 2 and not dom.running and not dom.destroyed
    assert 5 <= clock.now < 10


def test_shutdown_times_out_without_force():
    clock = Clock()
    dom = FakeDom(ignore=1000)
    life = Lifecycle(dom, timeout=20, clock=clock, sleep=clock.sleep)
    with pytest.raises(KvmTimeoutError, match="set force true"):
        life.shutdown()
    assert dom.running and not dom.destroyed


def test_shutdown_forced_after_timeout():
    clock = Clock()
    dom = FakeDom(ignore=1000)
    life = Lifecycle(dom, timeout=20, force=True, clock=clock, sleep=clock.sleep)
    life.shutdown()
    assert dom.destroyed and life.forced
