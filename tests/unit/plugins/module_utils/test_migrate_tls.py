"""migrate's ``tls`` option: explicit values, and what auto (unset) chooses."""

from __future__ import annotations

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._migrate import Migrator
from ansible_collections.virtops.kvm.plugins.module_utils._migrate_options import (
    build_call,
    qemu_conf_forces_tls,
    tls_wanted,
)
from ansible_collections.virtops.kvm.plugins.modules.migrate import ARGUMENT_SPEC

from .migrate_fakes import DST as TCP_DST
from .migrate_fakes import SRC as TCP_SRC
from .migrate_fakes import FakeHost, FakeKvm, move, opener_for, params

TLS_DST = "qemu+tls://198.18.0.12/system"


@pytest.fixture
def forcing_conf(tmp_path):
    conf = tmp_path / "qemu.conf"
    conf.write_text('# migrate_tls_force = 0\nuser = "libvirt-qemu"\nmigrate_tls_force = 1\n')
    return str(conf)


def test_unset_is_auto():
    assert ARGUMENT_SPEC["tls"] == {"type": "bool"}


@pytest.mark.parametrize(
    ("uri", "dest", "expected"),
    [
        (TCP_SRC, TCP_DST, False),
        (TCP_SRC, TLS_DST, True),
        ("qemu+tls://198.18.0.11/system", TCP_DST, True),
        ("qemu://kvm1.example.com/system", TCP_DST, True),  # libvirt's default transport: TLS
        ("qemu+ssh://root@kvm1.example.com/system", "qemu+ssh://root@kvm2/system", False),
    ],
)
def test_auto_follows_the_uris(uri, dest, expected, tmp_path):
    missing = str(tmp_path / "none.conf")
    assert tls_wanted(params(uri=uri), dest, qemu_conf=missing) is expected


def test_auto_follows_the_local_qemu_conf(forcing_conf, tmp_path):
    local = params(uri="qemu:///system")
    assert tls_wanted(local, "qemu+ssh://kvm2/system", qemu_conf=forcing_conf) is True
    plain = tmp_path / "plain.conf"
    plain.write_text("migrate_tls_force = 0\nmigrate_tls_force = 1\n")  # the first counts
    assert tls_wanted(local, "qemu+ssh://kvm2/system", qemu_conf=str(plain)) is False
    # qemu.conf of this machine says nothing about a remote source
    remote = params(uri="qemu+ssh://kvm1/system")
    assert tls_wanted(remote, "qemu+ssh://kvm2/system", qemu_conf=forcing_conf) is False


def test_cert_dir_counts_and_unreadable_conf_does_not(tmp_path):
    conf = tmp_path / "qemu.conf"
    conf.write_text('migrate_tls_x509_cert_dir = "/etc/pki/qemu-migrate"\n')
    assert qemu_conf_forces_tls(str(conf)) is True
    conf.chmod(0)
    assert qemu_conf_forces_tls(str(tmp_path / "missing.conf")) is False


def test_explicit_value_wins(forcing_conf):
    local = params(uri="qemu:///system")
    assert tls_wanted(dict(local, tls=False), TLS_DST, qemu_conf=forcing_conf) is False
    assert tls_wanted(params(tls=True), TCP_DST, qemu_conf=forcing_conf) is True


def test_auto_never_for_offline_or_tunnelled():
    assert tls_wanted(params(mode="offline"), TLS_DST) is False
    assert tls_wanted(params(tunnelled=True), TLS_DST) is False


def test_build_call_sets_the_flag():
    flags, _mig = build_call(params(dest_uri=TLS_DST), TLS_DST)
    assert flags & libvirt.VIR_MIGRATE_TLS
    flags, _mig = build_call(params(), TCP_DST)
    assert not flags & libvirt.VIR_MIGRATE_TLS


@pytest.mark.parametrize(
    ("tls", "dest", "expected"),
    [(None, TLS_DST, True), (None, TCP_DST, False), (False, TLS_DST, False), (True, TCP_DST, True)],
)
def test_result_says_which_was_used(tls, dest, expected):
    hosts = {TCP_SRC: FakeHost(TCP_SRC), dest: FakeHost(dest)}
    dom = hosts[TCP_SRC].add("g1")
    dom.migrate_impl = move(hosts[TCP_SRC], hosts[dest])
    kvm = FakeKvm(params(tls=tls, dest_uri=dest), hosts[TCP_SRC])
    result = Migrator(kvm, opener=opener_for(hosts)).run()
    assert result["tls"] is expected
    [call] = [c for c in hosts[TCP_SRC].calls if c[0] == "migrateToURI3"]
    assert bool(call[3] & libvirt.VIR_MIGRATE_TLS) is expected
