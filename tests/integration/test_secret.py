"""The secret and secret_info modules against the real local libvirtd (qemu:///system).

Secrets are named from ``name_prefix`` and removed in teardown, even when a test fails. The
values are random, so finding one in any output (results, -vvv, the log) is a leak.
"""

from __future__ import annotations

import base64
import json
import secrets
import uuid as uuidlib

import libvirt
import pytest
import yaml
from lxml import etree

from ansible_collections.virtops.kvm.plugins.modules import secret as secret_module
from ansible_collections.virtops.kvm.plugins.modules import secret_info
from devtools.libvirt_cleanup import remove_pool
from tests.helpers import failed, four_times

# make test runs these beside the main suite (side_stream): they share none of its guests
pytestmark = [pytest.mark.integration, pytest.mark.side_stream]


@pytest.fixture
def made_secrets(conn, name_prefix):
    """Removes every secret whose usage id holds ``name_prefix`` afterwards."""
    yield
    for secret in conn.listAllSecrets(0):
        if name_prefix in (secret.usageID() or ""):
            secret.undefine()


def secret_task(args: dict, name: str = "secret", **extra) -> dict:
    return {"name": name, "virtops.kvm.secret": args, **extra}


def verbose(playbook, log_path, values: dict[str, str]):
    """``playbook`` with -vvv and Ansible's log file, every place a value could leak to, and
    the ``values`` as extra vars: tasks name them (``"{{ first }}"``) as a user names a vault
    variable, so the playbook's own text (which Ansible quotes with a failed task) holds none.
    """

    def run(tasks=None, **kwargs):
        env = {"ANSIBLE_VERBOSITY": "3", "ANSIBLE_LOG_PATH": str(log_path)}
        return playbook(tasks, env=env, extra_vars=values, **kwargs)

    return run


def assert_not_leaked(value: str, runs, log_path) -> None:
    for run in runs:
        text = run.stdout + run.stderr + json.dumps(run.results)
        assert value not in text
    assert log_path.exists() and value not in log_path.read_text()


def test_secret_value_is_write_only(playbook, conn, name_prefix, made_secrets, tmp_path):
    usage = f"iqn.2026-12.test.virtops:{name_prefix}"
    first = f"first-{secrets.token_hex(8)}"
    second = f"second-{secrets.token_hex(8)}"
    log = tmp_path / "ansible.log"
    args = {
        "usage_type": "iscsi",
        "usage_id": usage,
        "description": "CHAP password of the test target",
        "private": False,
    }
    values = {"first": first, "second": second}
    runs = four_times(
        verbose(playbook, log, values), [secret_task({**args, "value": "{{ first }}"})]
    )
    assert runs[0].last["secret"] is None  # check mode made nothing
    created = runs[1].last
    assert created["actions"] == ["define", "set value"]
    assert created["diff"]["after"]["value"] == "(hidden, new value)"
    uuid = created["secret"]["uuid"]
    assert created["secret"] == {
        "uuid": uuid,
        "usage_type": "iscsi",
        "usage_id": usage,
        "description": "CHAP password of the test target",
        "ephemeral": False,
        "private": False,
    }
    secret = conn.secretLookupByUUIDString(uuid)
    assert secret.value() == first.encode()

    # a new value: libvirt gives a readable secret's value back, so it is compared
    changed = four_times(
        verbose(playbook, log, values), [secret_task({**args, "value": "{{ second }}"})]
    )
    assert changed[0].last["actions"] == ["set value"]
    assert changed[1].last["diff"]["before"]["value"] == "(hidden)"
    assert changed[1].last["diff"]["after"]["value"] == "(hidden, new value)"
    assert changed[1].last["secret"]["uuid"] == uuid
    assert secret.value() == second.encode()
    assert_not_leaked(first, runs + changed, log)
    assert_not_leaked(second, runs + changed, log)

    # a new description (no value given): redefined, the value kept; then removal by UUID
    # alone (both paths' check mode and idempotence are those of the runs above)
    run = playbook(
        [
            secret_task({**args, "description": "renamed"}, "redefine"),
            secret_task({**args, "description": "renamed"}, "again"),
        ]
    )
    assert run.task("redefine")["actions"] == ["redefine"] and not run.task("again")["changed"]
    assert "<description>renamed</description>" in secret.XMLDesc(0)
    assert secret.value() == second.encode()
    gone = playbook([secret_task({"uuid": uuid, "state": "absent"})])
    assert gone.last["actions"] == ["undefine"]
    with pytest.raises(libvirt.libvirtError):
        conn.secretLookupByUUIDString(uuid)


def test_private_secret_value_and_refusals(playbook, conn, name_prefix, made_secrets, tmp_path):
    usage = f"{name_prefix} vtpm key"
    value = f"vtpm-{secrets.token_hex(8)}"
    log = tmp_path / "ansible.log"
    values = {"value": value, "other": f"other-{secrets.token_hex(8)}"}
    args = {"usage_type": "vtpm", "usage_id": usage, "value": "{{ value }}"}
    runs = four_times(verbose(playbook, log, values), [secret_task(args)])
    uuid = runs[1].last["secret"]["uuid"]
    assert runs[1].last["secret"]["private"] is True  # the default

    # a private secret cannot be read: a new value is not seen with value_update=compare,
    # and is written (a change, every time) with always, in check mode too; refused before
    # any change: the usage of another UUID, a private secret made readable, a usage given
    # to a UUID that has another one, a relative volume path
    other = {**args, "value": "{{ other }}"}
    always = {**other, "value_update": "always"}
    other_uuid = "6d1f0c3e-5a4b-4c2d-8e9f-0a1b2c3d4e5f"
    run = verbose(playbook, log, values)(
        [
            secret_task(other, "unseen"),
            secret_task(always, "always"),
            secret_task({**args, "uuid": other_uuid}, "taken", ignore_errors=True),
            secret_task({**args, "private": False}, "readable", ignore_errors=True),
            secret_task(
                {"uuid": uuid, "usage_type": "tls", "usage_id": usage},
                "retyped",
                ignore_errors=True,
            ),
            secret_task({"usage_type": "volume", "usage_id": "a.img"}, "rel", ignore_errors=True),
        ],
    )
    check = verbose(playbook, log, values)([secret_task(always, "always")], check=True, diff=True)
    assert run.task("unseen")["changed"] is False
    for result in (run.task("always"), check.task("always")):
        assert result["changed"] is True and result["actions"] == ["set value"]
    assert f"belongs to secret {uuid}, not {other_uuid}" in failed(run, "taken")["msg"]
    assert "cannot make it readable" in failed(run, "readable")["msg"]
    assert "the usage of a secret cannot change" in failed(run, "retyped")["msg"]
    assert "absolute path" in failed(run, "rel")["msg"]
    assert_not_leaked(value, runs, log)
    assert_not_leaked(values["other"], [run, check], log)
    [left] = [s for s in conn.listAllSecrets(0) if name_prefix in s.usageID()]
    assert left.UUIDString() == uuid and "private='yes'" in left.XMLDesc(0)


def test_every_usage_type_and_secret_info(playbook, conn, name_prefix, made_secrets):
    ceph_key = base64.b64encode(secrets.token_bytes(16)).decode()
    wanted = {
        "volume": f"/var/lib/libvirt/images/{name_prefix}-luks.qcow2",
        "ceph": f"client.{name_prefix} secret",
        "iscsi": f"iqn.2026-12.test.virtops:{name_prefix}-all",
        "tls": f"{name_prefix} tls key",
        "vtpm": f"{name_prefix} vtpm",
    }
    tasks = [
        secret_task(
            {
                "usage_type": kind,
                "usage_id": usage,
                "value": ceph_key if kind == "ceph" else f"{kind}-{secrets.token_hex(4)}",
                "value_encoding": "base64" if kind == "ceph" else "plain",
                "private": False,
                "ephemeral": kind == "tls",
            },
            kind,
        )
        for kind, usage in wanted.items()
    ]
    info_tasks = [
        {"name": "info all", "virtops.kvm.secret_info": {}},
        {"name": "info ceph", "virtops.kvm.secret_info": {"usage_type": "ceph"}},
        {"name": "info one", "virtops.kvm.secret_info": {"usage_id": wanted["vtpm"]}},
    ]
    run = playbook(tasks + info_tasks)  # idempotence: the tests above, with the same code
    assert run.rc == 0, run.stdout[-3000:]
    made = {kind: run.task(kind)["secret"] for kind in wanted}
    ceph = conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_CEPH, wanted["ceph"])
    assert ceph.value() == base64.b64decode(ceph_key)  # stored decoded, as libvirt wants it
    assert made["tls"]["ephemeral"] is True and made["volume"]["ephemeral"] is False

    ours = [s for s in run.task("info all")["secrets"] if name_prefix in s["usage_id"]]
    assert {s["usage_type"]: s["usage_id"] for s in ours} == wanted
    assert {s["uuid"]: s for s in ours} == {s["uuid"]: s for s in made.values()}
    assert all(s["usage_type"] == "ceph" for s in run.task("info ceph")["secrets"])
    assert run.task("info one")["secrets"] == [made["vtpm"]]
    assert ceph_key not in run.stdout + json.dumps(run.results)


def test_secret_of_an_iscsi_pool(playbook, conn, name_prefix, made_secrets):
    """A pool type without typed options (iscsi) defined through xml with CHAP auth through a
    secret of this module; the secret is not removed while the pool names it."""
    target = f"iqn.2026-12.test.virtops:{name_prefix}-pool"
    pool = f"{name_prefix}-iscsi"
    secret = {"usage_type": "iscsi", "usage_id": target, "value": secrets.token_hex(8)}
    pool_xml = f"""
        <source>
          <host name="198.18.0.250"/>
          <device path="{target}"/>
          <auth type="chap" username="virtops"><secret usage="{target}"/></auth>
        </source>"""
    pool_task = {
        "name": "pool",
        "virtops.kvm.pool": {
            "name": pool,
            "type": "iscsi",
            "target": "/dev/disk/by-path",
            "active": False,  # no iSCSI target here: defined, not started
            "xml": pool_xml,
        },
    }
    try:
        runs = four_times(playbook, [secret_task(secret), pool_task])
        defined = runs[1].task("pool")
        assert defined["actions"] == ["define"]
        assert defined["pool"]["type"] == "iscsi" and defined["pool"]["active"] is False
        assert defined["pool"]["source"]["auth"] == {
            "type": "chap",
            "username": "virtops",
            "secret_usage": target,
        }
        uuid = runs[1].task("secret")["secret"]["uuid"]

        kept = playbook(
            [secret_task({"uuid": uuid, "state": "absent"}, ignore_errors=True)], check=True
        )
        result = failed(kept, "secret")
        assert result["users"] == [f"storage pool '{pool}'"]
        assert "Nothing was changed" in result["msg"]
        assert conn.secretLookupByUUIDString(uuid)

        forced = playbook([secret_task({"uuid": uuid, "state": "absent", "force": True})])
        assert forced.rc == 0 and forced.last["actions"] == ["undefine"]
        assert forced.last["users"] == [f"storage pool '{pool}'"]
    finally:
        remove_pool(conn, pool)


def test_secret_of_a_ceph_pool(playbook, conn, name_prefix, made_secrets):
    """A Ceph (rbd) pool naming a ceph secret of this module by usage: both converge (check,
    apply, check, apply) and the secret is not removed while the pool names it. There is no
    Ceph cluster here, so the pool is defined, not started (libvirt's RBD backend, Debian's
    libvirt-daemon-driver-storage-rbd, must be loaded to define one)."""
    usage = f"client.{name_prefix} secret"
    pool = f"{name_prefix}-ceph"
    key = base64.b64encode(secrets.token_bytes(16)).decode()
    secret = {"usage_type": "ceph", "usage_id": usage, "value": key, "value_encoding": "base64"}
    pool_task = {
        "name": "pool",
        "virtops.kvm.pool": {
            "name": pool,
            "type": "rbd",
            "active": False,
            "source": {
                "name": "vms",
                "hosts": ["198.18.0.5", "198.18.0.6:6789"],
                "auth": {"username": name_prefix, "secret_usage": usage},
            },
        },
    }
    try:
        runs = four_times(playbook, [secret_task(secret), pool_task])
        assert runs[1].task("pool")["actions"] == ["define"]
        uuid = runs[1].task("secret")["secret"]["uuid"]
        auth = etree.fromstring(conn.storagePoolLookupByName(pool).XMLDesc(0)).find("source/auth")
        assert (auth.get("type"), auth.get("username")) == ("ceph", name_prefix)
        assert auth.find("secret").get("usage") == usage
        assert key not in json.dumps([run.results for run in runs])

        kept = playbook([secret_task({"uuid": uuid, "state": "absent"}, ignore_errors=True)])
        result = failed(kept, "secret")
        assert result["users"] == [f"storage pool '{pool}'"]
        assert conn.secretLookupByUUIDString(uuid)
    finally:
        remove_pool(conn, pool)


def test_the_modules_examples_run(playbook, conn, name_prefix, made_secrets):
    """secret's and secret_info's EXAMPLES, with this test's names and a random UUID."""
    uuid = str(uuidlib.uuid4())
    text = (
        secret_module.EXAMPLES.replace("4a7b3c1e-3f2d-4c8a-9b1e-5d6f7a8b9c0d", uuid)
        .replace("client.libvirt secret", f"client.{name_prefix} secret")
        .replace("com.example:storage", f"com.example:{name_prefix}")
        .replace("/secure.qcow2", f"/{name_prefix}.qcow2")
        .replace("vtpm of web1", f"vtpm of {name_prefix}")
    )
    tasks = yaml.safe_load(text) + yaml.safe_load(secret_info.EXAMPLES)
    values = {
        "ceph_libvirt_key": base64.b64encode(secrets.token_bytes(16)).decode(),
        "chap_password": secrets.token_hex(8),
        "volume_passphrase": secrets.token_hex(8),
        "vtpm_key": secrets.token_hex(8),
    }
    run = playbook(tasks, extra_vars=values)
    assert run.rc == 0, run.stdout[-4000:]
    assert run.task("The Ceph key of client.libvirt, as in its keyring")["changed"] is True
    with pytest.raises(libvirt.libvirtError):
        conn.secretLookupByUUIDString(uuid)  # made, then removed by the last example
    ours = [s for s in run.task("The Ceph secrets")["secrets"] if name_prefix in s["usage_id"]]
    assert len(ours) == 1
    text = run.stdout + json.dumps(run.results)
    assert not [name for name, value in values.items() if value in text]
