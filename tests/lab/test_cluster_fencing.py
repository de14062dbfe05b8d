"""Fencing and cluster properties on the lab cluster (``lab_cluster``): the role
virtops.kvm.cluster with the lab fence agent as its stonith device, and the module
virtops.kvm.cluster_config run directly for check and diff mode. A dummy ``password`` (the lab
agent ignores it) must never show. The cluster is left as found: the device removed, the
properties restored."""

from __future__ import annotations

import json
import subprocess

import pytest
from lxml import etree

from tests.helpers import ROOT, run_playbook, wait_for

pytestmark = [pytest.mark.lab, pytest.mark.multihost, pytest.mark.timeout(900)]

DEVICE = "virtops-lab-fence-cfg"
SECRET = "Lab-Fence-Pw-0d1e"
OTHER_SECRET = "Lab-Fence-Pw-77aa"
CONFIG_TASK = "Set the cluster properties and the stonith devices"
PROPERTIES = {
    "stonith-enabled": True,
    "no-quorum-policy": "stop",
    "cluster-recheck-interval": "4min",
}


def on_node(node, cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        node.nsenter(cmd), capture_output=True, text=True, check=check, timeout=60
    )


def cib(node):
    return etree.fromstring(on_node(node, ["cibadmin", "--query"]).stdout.encode())


def configuration(node) -> bytes:
    return etree.tostring(cib(node).find("configuration"), method="c14n")


def bootstrap(node) -> dict[str, str]:
    return {
        p.get("name"): p.get("value")
        for p in cib(node).xpath(
            "configuration/crm_config/cluster_property_set[@id='cib-bootstrap-options']/nvpair"
        )
    }


def changed_tasks(run) -> list[str]:
    return sorted(
        {e["task"].split(" : ", 1)[-1] for e in run.results if e["result"].get("changed")}
    )


def device(names: list[str], secret: str = SECRET) -> dict:
    return {
        "name": DEVICE,
        "agent": "fence_virtopslab",
        "params": {"pcmk_host_check": "static-list"},
        "secret_params": {"password": secret},
        "hosts": names,
        "monitor_interval": 30,
    }


def shown(run) -> str:
    return run.stdout + run.stderr + json.dumps(run.results)


@pytest.fixture(scope="module")
def restored(lab_cluster):
    """The cluster as found afterwards: DEVICE deleted, the properties it had restored."""
    first = lab_cluster.nodes[0]
    before = bootstrap(first)
    yield lab_cluster
    on_node(
        first,
        ["cibadmin", "--delete-all", "--force", "--xpath", f"//primitive[@id='{DEVICE}']"],
        check=False,
    )
    for name in PROPERTIES:
        cmd = ["crm_attribute", "--type", "crm_config", "--name", name]
        if name in before:
            on_node(first, [*cmd, "--update", before[name]])
        else:
            on_node(first, [*cmd, "--delete"], check=False)
    assert bootstrap(first) == before


def device_started(node) -> bool:
    status = etree.fromstring(
        on_node(node, ["crm_mon", "--output-as=xml", "--inactive"]).stdout.encode()
    )
    found = status.xpath("resources//resource[@id=$id]", id=DEVICE)
    return bool(found) and found[0].get("role") == "Started" and found[0].get("failed") == "false"


def module_on(node, args: dict, tmp_path, *, check: bool = False, diff: bool = False):
    play = {
        "name": "cluster_config on a node",
        "hosts": "localhost",
        "gather_facts": False,
        "vars": {
            "ansible_connection": "virtops_lab_nsenter",
            "virtops_lab_holder_pid": node.holder_pid,
        },
        "tasks": [{"name": "config", "virtops.kvm.cluster_config": args, "register": "out"}],
    }
    env = {"ANSIBLE_CONNECTION_PLUGINS": str(ROOT / "tests" / "lab" / "connection_plugins")}
    return run_playbook(tmp_path, plays=[play], check=check, diff=diff, env=env, timeout=300)


def test_no_fencing_is_refused_before_any_change(restored):
    first = restored.nodes[0]
    before = configuration(first)
    run = restored.run_role(
        {"cluster_allow_no_fencing": False, "cluster_properties": {"stonith-enabled": False}}
    )
    assert run.rc != 0
    failed = [e for e in run.results if e["status"] == "failed"]
    assert {e["task"].split(" : ", 1)[-1] for e in failed} == {"Check the cluster's input"}
    msg = failed[0]["result"]["msg"]
    assert "cluster_properties sets stonith-enabled false" in msg
    assert "cluster_stonith_devices is empty" in msg
    assert changed_tasks(run) == []
    assert configuration(first) == before


def test_role_sets_fencing_then_changes_nothing(restored, record_property):
    first = restored.nodes[0]
    role_vars = {
        "cluster_allow_no_fencing": False,
        "cluster_properties": PROPERTIES,
        "cluster_stonith_devices": [device(restored.names)],
    }
    run = restored.run_role(role_vars)
    assert run.rc == 0, run.stdout[-3000:]
    assert changed_tasks(run) == [CONFIG_TASK]
    config = [e for e in run.results if e["task"].endswith(CONFIG_TASK)]
    assert len(config) == 1  # once per cluster
    assert SECRET not in shown(run)
    props = bootstrap(first)
    assert props["stonith-enabled"] == "true"
    assert props["no-quorum-policy"] == "stop"
    assert props["cluster-recheck-interval"] == "4min"
    prim = cib(first).xpath("configuration/resources/primitive[@id=$id]", id=DEVICE)[0]
    assert (prim.get("class"), prim.get("type")) == ("stonith", "fence_virtopslab")
    pairs = {p.get("name"): p.get("value") for p in prim.iter("nvpair")}
    assert pairs == {
        "pcmk_host_check": "static-list",
        "password": SECRET,
        "pcmk_host_list": " ".join(restored.names),
    }
    # Pacemaker accepts it: the fencer runs the device's monitor (the agent ignores password)
    wait_for(lambda: device_started(first), 60, f"{DEVICE} started", interval=1)
    registered = on_node(first, ["stonith_admin", "--list-registered"]).stdout
    assert DEVICE in registered

    again = restored.run_role(role_vars)
    assert again.rc == 0, again.stdout[-3000:]
    assert changed_tasks(again) == []
    assert SECRET not in shown(again)


def test_module_check_and_diff_mask_the_secret(restored, tmp_path):
    first = restored.nodes[0]
    if not cib(first).xpath("configuration/resources/primitive[@id=$id]", id=DEVICE):
        pytest.skip("needs the device of test_role_sets_fencing_then_changes_nothing")
    before = configuration(first)
    args = {
        "properties": {**PROPERTIES, "cluster-recheck-interval": "6min"},
        "stonith_devices": [device(restored.names, OTHER_SECRET)],
    }
    run = module_on(first, args, tmp_path, check=True, diff=True)
    assert run.rc == 0, run.stdout[-3000:]
    result = run.task("config")
    assert result["changed"] is True
    diff = result["diff"]
    assert diff["before"]["properties"]["cluster-recheck-interval"] == "4min"
    assert diff["after"]["properties"]["cluster-recheck-interval"] == "6min"
    [after] = [d for d in diff["after"]["stonith_devices"] if d["name"] == DEVICE]
    assert after["params"]["password"] == "******** (changed)"
    [before_dev] = [d for d in diff["before"]["stonith_devices"] if d["name"] == DEVICE]
    assert before_dev["params"]["password"] == "********"
    assert after["hosts"] == restored.names and after["monitor_interval"] == 30
    assert SECRET not in shown(run) and OTHER_SECRET not in shown(run)
    assert configuration(first) == before  # check mode wrote nothing

    same = module_on(
        first, {"properties": PROPERTIES, "stonith_devices": [device(restored.names)]}, tmp_path
    )
    assert same.rc == 0, same.stdout[-3000:]
    assert same.task("config")["changed"] is False
    assert SECRET not in shown(same)
    assert configuration(first) == before
