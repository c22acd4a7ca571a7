"""Shared mode's pure pieces (capacity, the capacity patch, reservations from pods) and the plugin
in shared mode against a simulated kubelet device side: nothing registered, no socket.
tests/e2e/test_plugin_shared_e2e.py runs it against the real API server."""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import replace
from typing import Any

import pytest

from k80s.core.inventory import (
    UNHEALTHY,
    NodeInventory,
    needs_republish,
    simulated_dies,
)
from k80s.core.sharing import ASSIGNMENT, Assignment, DieShare
from k80s.localcluster.devices import PluginDeviceManager
from k80s.plugin.metrics import PluginMetrics
from k80s.plugin.publisher import node_patch
from k80s.plugin.server import PluginServer
from k80s.plugin.settings import load
from k80s.plugin.shared import (
    capacity_patch,
    node_reservations,
    shared_capacity,
    with_reservations,
)
from k80s.plugin.simulated import SimulatedBackend
from tests.plugin.harness import short_root, wait_until

VRAM, MAJOR = "k80s.io/vram-mib", "k80s.io/die-major"
NODE = "node-s"


def inventory(boards: int = 2) -> NodeInventory:
    return NodeInventory(dies=simulated_dies(NODE, boards), driver="470.256.02")


# ------------------------------------------------------------------------------------------------
# capacity
# ------------------------------------------------------------------------------------------------


def test_capacity_of_an_idle_2xk80_is_four_shareable_dies() -> None:
    assert shared_capacity(inventory()) == {VRAM: 4 * 11434, MAJOR: 4}


def test_unhealthy_dies_offer_nothing() -> None:
    inv = inventory()
    one_down = replace(inv, dies=tuple(replace(d, health=UNHEALTHY) if d.index == 2 else d for d in inv.dies))
    assert shared_capacity(one_down) == {VRAM: 3 * 11434, MAJOR: 3}
    all_down = replace(inv, dies=tuple(replace(d, health=UNHEALTHY) for d in inv.dies))
    assert shared_capacity(all_down) == {VRAM: 0, MAJOR: 0}
    assert shared_capacity(NodeInventory(dies=())) == {VRAM: 0, MAJOR: 0}


def test_capacity_counts_the_idle_die_not_its_current_free_memory() -> None:
    """A die in use by shares still offers 11434 to the node total; the ledger does the rest."""
    inv = inventory(1)
    busy = replace(inv, dies=tuple(replace(d, used_mib=9000, nvml_free_mib=2441, free_mib=2373) for d in inv.dies))
    assert shared_capacity(busy) == shared_capacity(inv) == {VRAM: 2 * 11434, MAJOR: 2}


def node(capacity: dict[str, str] | None, allocatable: dict[str, str] | None, version: str = "7") -> dict[str, Any]:
    status: dict[str, Any] = {}
    if capacity is not None:
        status["capacity"] = {"cpu": "16", **capacity}
    if allocatable is not None:
        status["allocatable"] = {"cpu": "16", **allocatable}
    return {"metadata": {"name": NODE, "resourceVersion": version}, "status": status}


WANTED = {VRAM: 45736, MAJOR: 4}
ASSERTED = {VRAM: "45736", MAJOR: "4"}


def test_capacity_patch_sets_both_fields_when_missing() -> None:
    assert capacity_patch(node(None, None), WANTED) == {"status": {"capacity": ASSERTED, "allocatable": ASSERTED}}
    assert capacity_patch({}, WANTED) == {"status": {"capacity": ASSERTED, "allocatable": ASSERTED}}


def test_capacity_patch_is_none_when_the_node_already_carries_it() -> None:
    assert capacity_patch(node(dict(ASSERTED), dict(ASSERTED)), WANTED) is None


@pytest.mark.parametrize(("capacity", "allocatable"), [
    ({VRAM: "0", MAJOR: "0"}, {VRAM: "0", MAJOR: "0"}),  # a re-registered kubelet zeroed them (F7)
    (ASSERTED, {}),                                       # allocatable lost only
    ({MAJOR: "4"}, ASSERTED),                             # one resource gone from capacity
    (ASSERTED, {VRAM: "34302", MAJOR: "3"}),              # stale after a health change
])
def test_capacity_patch_re_asserts_whatever_differs(capacity: dict[str, str], allocatable: dict[str, str]) -> None:
    assert capacity_patch(node(capacity, allocatable), WANTED) == {
        "status": {"capacity": ASSERTED, "allocatable": ASSERTED}}


# ------------------------------------------------------------------------------------------------
# reservations
# ------------------------------------------------------------------------------------------------


DIES = simulated_dies(NODE, 2)


def assignment(uid: str, *slots: tuple[int, int], node_name: str = NODE) -> Assignment:
    return Assignment(node=node_name, pod_uid=uid, dies=tuple(
        DieShare(slot=i, uuid=DIES[die].uuid, index=die, board=DIES[die].board, mib=mib)
        for i, (die, mib) in enumerate(slots)))


def pod(name: str, uid: str, text: str | None, phase: str = "Running", namespace: str = "ns") -> dict[str, Any]:
    annotations = {ASSIGNMENT: text} if text is not None else {}
    return {"metadata": {"name": name, "namespace": namespace, "uid": uid, "annotations": annotations},
            "status": {"phase": phase}}


def test_reservations_sum_slots_per_die_and_name_the_holders_sorted() -> None:
    pods = [
        pod("gemma-b", "u2", assignment("u2", (1, 934), (0, 10181)).to_json()),
        pod("gemma-a", "u1", assignment("u1", (0, 934), (1, 10181)).to_json()),
        pod("small", "u3", assignment("u3", (2, 2000)).to_json(), namespace="lab"),
        pod("plain", "u4", None),
    ]
    ledger, broken = node_reservations(pods, NODE)
    assert broken == {}
    assert [ledger.reserved_mib(d.uuid) for d in DIES] == [934 + 10181, 10181 + 934, 2000, 0]
    assert ledger.holders(DIES[0].uuid) == ("ns/gemma-a", "ns/gemma-b")
    assert ledger.holders(DIES[2].uuid) == ("lab/small",)

    inv = with_reservations(inventory(), ledger)
    by_index = {d.index: d for d in inv.dies}
    assert (by_index[0].reserved_mib, by_index[0].shared_by) == (11115, ("ns/gemma-a", "ns/gemma-b"))
    assert (by_index[3].reserved_mib, by_index[3].shared_by) == (0, ())
    published = json.loads(node_patch(inv, "shared")["metadata"]["annotations"]["k80s.io/dies"])["dies"]
    assert published[0]["reservedMiB"] == 11115 and published[0]["sharedBy"] == ["ns/gemma-a", "ns/gemma-b"]
    assert "reservedMiB" not in published[3]  # an unshared die keeps the exclusive-mode shape
    assert NodeInventory.from_json(node_patch(inv)["metadata"]["annotations"]["k80s.io/dies"]) == inv
    assert needs_republish(inventory(), inv) and not needs_republish(inv, inv)


def test_terminal_pods_hold_nothing_and_deleting_pods_still_do() -> None:
    text = assignment("u1", (0, 5000)).to_json()
    for phase in ("Succeeded", "Failed"):
        ledger, _ = node_reservations([pod("done", "u1", text, phase=phase)], NODE)
        assert ledger.reserved_mib(DIES[0].uuid) == 0
    deleting = pod("going", "u1", text)
    deleting["metadata"]["deletionTimestamp"] = "2026-11-25T12:00:00Z"
    ledger, _ = node_reservations([deleting, pod("pending", "u5", assignment("u5", (0, 100)).to_json(), "Pending")], NODE)
    assert ledger.reserved_mib(DIES[0].uuid) == 5100


@pytest.mark.parametrize(("text", "fragment"), [
    ("{not json", "k80s.io/assignment: not valid JSON"),
    ('{"version":2,"node":"node-s","podUID":"u1","dies":[]}', "k80s.io/assignment.version"),
    ('{"version":1,"node":"node-s","podUID":"u1","dies":[{"slot":0,"uuid":"GPU-x","index":0,"board":"b"}]}',
     "k80s.io/assignment.dies[0].mib"),
    (None, "names node 'elsewhere'"),
    ("uid", "is not this pod's UID 'u1'"),
])
def test_a_broken_assignment_is_skipped_with_a_reason_naming_the_field(text: str | None, fragment: str) -> None:
    if text is None:
        text = assignment("u1", (0, 934), node_name="elsewhere").to_json()
    elif text == "uid":
        text = assignment("someone-else", (0, 934)).to_json()
    good = pod("good", "u9", assignment("u9", (1, 3000)).to_json())
    ledger, broken = node_reservations([pod("bad", "u1", text), good], NODE)
    assert list(broken) == ["ns/bad"] and fragment in broken["ns/bad"], broken
    assert ledger.reserved_mib(DIES[0].uuid) == 0 and ledger.reserved_mib(DIES[1].uuid) == 3000


# ------------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------------


def test_shared_metrics_show_reservations_and_capacity_exclusive_ones_do_not() -> None:
    settings = load(["--simulate", "2xK80", "--node-name", NODE], {})
    server = PluginServer(settings, SimulatedBackend.from_spec("2xK80", NODE))
    server.monitor.step(0)
    ledger, _ = node_reservations([pod("gemma", "u1", assignment("u1", (0, 934), (1, 10181)).to_json())], NODE)
    shared = PluginMetrics(server.monitor, dict, lambda: ledger).render().decode()
    u0 = server.monitor.state().dies[0].identity
    assert f'k80s_plugin_die_reserved_mib{{board="{u0.board}",index="0",uuid="{u0.uuid}"}} 934.0' in shared
    assert f'k80s_plugin_die_shares{{board="{u0.board}",index="0",uuid="{u0.uuid}"}} 1.0' in shared
    assert 'k80s_plugin_shared_capacity{resource="k80s.io/vram-mib"} 45736.0' in shared
    assert 'k80s_plugin_shared_capacity{resource="k80s.io/die-major"} 4.0' in shared
    exclusive = PluginMetrics(server.monitor, dict).render().decode()
    assert "reserved_mib" not in exclusive and "shared_capacity" not in exclusive
    server.monitor.backend.close()


# ------------------------------------------------------------------------------------------------
# the plugin in shared mode, with a kubelet device side listening
# ------------------------------------------------------------------------------------------------


def test_shared_mode_registers_nothing_and_says_why_it_is_not_ready() -> None:
    root = short_root()
    registrations: list[tuple[int, int]] = []
    kubelet = PluginDeviceManager(root)
    kubelet.start(lambda c, a: registrations.append((c, a)))
    settings = load(["--mode", "shared", "--kubelet-root", str(root), "--simulate", "2xK80", "--node-name", NODE,
                     "--metrics-port", "0", "--metrics-address", "127.0.0.1", "--socket-check-s", "0.1"], {})
    plugin = PluginServer(settings, SimulatedBackend.from_spec("2xK80", NODE))  # no API: no capacity keeper
    plugin.start()
    try:
        base = f"http://127.0.0.1:{plugin.http.port}"
        wait_until(lambda: plugin.monitor.state().opened)
        time.sleep(0.5)  # five socket checks of an exclusive plugin: it would have registered by now
        assert kubelet.endpoint() is None and registrations == [] and kubelet.capacity() == 0
        assert not settings.plugin_socket.exists()
        assert urllib.request.urlopen(base + "/healthz").read() == b"ok\n"
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(base + "/readyz")
        assert info.value.code == 503 and b"Kubernetes API" in info.value.read()
        assert plugin.startup_gate()[1] == VRAM
    finally:
        plugin.stop()
        kubelet.stop()
        shutil.rmtree(root, ignore_errors=True)
