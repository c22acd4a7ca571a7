"""Publishing the `k80s.io/dies` annotation and `k80s.io/*` labels (the Node patch is recorded
here; tests/plugin/test_e2e.py checks the real Node in the local control plane)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from typing import Any

from k80s._proto.podresources.v1 import api_pb2 as pr
from k80s.core.inventory import NodeInventory
from k80s.plugin.publisher import allocations_from_pods, carries_inventory, node_patch
from k80s.plugin.simulated import shape_identities
from tests.plugin.harness import harness, pod, wait_until


class Recorder:
    """The NodePatch seam: records each patch instead of sending it."""

    def __init__(self) -> None:
        self.patches: list[tuple[str, dict[str, Any]]] = []
        self.fail = False
        self._lock = threading.Lock()

    def __call__(self, name: str, body: Mapping[str, Any]) -> None:
        if self.fail:
            raise RuntimeError("API server unavailable")
        with self._lock:
            self.patches.append((name, json.loads(json.dumps(body))))

    def count(self) -> int:
        with self._lock:
            return len(self.patches)

    def last(self) -> NodeInventory:
        with self._lock:
            body = self.patches[-1][1]
        return NodeInventory.from_json(body["metadata"]["annotations"]["k80s.io/dies"])


def test_allocations_from_pod_resources() -> None:
    response = pr.ListPodResourcesResponse(pod_resources=[
        pr.PodResources(name="a", namespace="ns1", containers=[pr.ContainerResources(name="c", devices=[
            pr.ContainerDevices(resource_name="k80s.io/die", device_ids=["GPU-1"]),
            pr.ContainerDevices(resource_name="k80s.io/die", device_ids=["GPU-2"]),
            pr.ContainerDevices(resource_name="nvidia.com/gpu", device_ids=["GPU-9"])])]),
        pr.PodResources(name="b", namespace="ns2", containers=[pr.ContainerResources(name="c")]),
    ])
    assert allocations_from_pods(response, "k80s.io/die") == {"GPU-1": "ns1/a", "GPU-2": "ns1/a"}


def test_node_patch_shape() -> None:
    from k80s.core.inventory import simulated_dies

    inv = NodeInventory(dies=simulated_dies("n", 3), driver="470.256.02", updated="2026-11-25T12:00:00Z")
    body = node_patch(inv)
    assert body["metadata"]["labels"] == {"k80s.io/boards": "3", "k80s.io/dies": "6", "k80s.io/mode": "exclusive"}
    assert node_patch(inv, "shared")["metadata"]["labels"]["k80s.io/mode"] == "shared"
    text = body["metadata"]["annotations"]["k80s.io/dies"]
    assert " " not in text and json.loads(text)["version"] == 1
    assert NodeInventory.from_json(text) == inv


def test_publishes_idle_dies_then_allocations_and_health() -> None:
    recorder = Recorder()
    with harness("2xK80", node="node-p", node_patch=recorder) as h:
        wait_until(lambda: recorder.count() >= 1)
        assert recorder.patches[0][0] == "node-p"
        first = recorder.last()
        assert [(d.free_mib, d.nvml_free_mib, d.used_mib, d.health, d.allocated_to) for d in first.dies] == [
            (11366, 11434, 7, "Healthy", None)] * 4
        assert first.driver == "470.256.02" and recorder.patches[0][1]["metadata"]["labels"] == {
            "k80s.io/boards": "2", "k80s.io/dies": "4", "k80s.io/mode": "exclusive"}
        assert json.loads(recorder.patches[0][1]["metadata"]["annotations"]["k80s.io/dies"])["updated"].endswith("Z")

        admitted = h.kubelet.admit(pod("u1", 2, namespace="team"))
        t0 = time.monotonic()
        wait_until(lambda: any(d.allocated_to for d in recorder.last().dies), 5)
        assert time.monotonic() - t0 < 2.0  # Allocate triggers a pod-resources read
        owners = {d.uuid: d.allocated_to for d in recorder.last().dies}
        assert {u for u, o in owners.items() if o == "team/pod-u1"} == set(admitted.allocate["deviceIDs"])

        n = recorder.count()
        h.backend.inject_xid(0, 32)
        wait_until(lambda: recorder.last().dies[0].health == "Unhealthy", 2)
        assert recorder.count() == n + 1

        n = recorder.count()
        h.backend.set_used_mib(1, 7 + 60)  # a move below 64 MiB: not worth a patch
        time.sleep(0.5)
        assert recorder.count() == n
        h.backend.set_used_mib(1, 7 + 64)
        wait_until(lambda: recorder.last().dies[1].free_mib == 11366 - 64, 2)

        h.kubelet.release("u1")  # the pod ends: allocatedTo cleared on the next List
        h.plugin.publisher.after_allocate()  # (the kubelet does not tell the plugin; poll or nudge)
        wait_until(lambda: not any(d.allocated_to for d in recorder.last().dies), 5)


def test_a_node_carries_the_inventory_only_with_the_annotation_and_the_plugins_mode() -> None:
    published = {"metadata": {"annotations": {"k80s.io/dies": "{}"}, "labels": {"k80s.io/mode": "shared"}}}
    assert carries_inventory(published, "shared")
    assert not carries_inventory(published, "exclusive")
    assert not carries_inventory({"metadata": {"labels": {"k80s.io/mode": "shared"}}}, "shared")
    assert not carries_inventory({"metadata": {"annotations": {"k80s.io/dies": "{}"}}}, "shared")
    assert not carries_inventory({}, "shared")


def test_a_re_created_node_gets_the_unchanged_inventory_again() -> None:
    recorder = Recorder()
    with harness("1xK80", node_patch=recorder) as h:
        wait_until(lambda: recorder.count() == 1, 5)
        publisher = h.plugin.publisher
        assert publisher is not None
        publisher.node_seen(recorder.patches[0][1])  # the Node as published: nothing to do
        time.sleep(0.3)
        assert recorder.count() == 1
        publisher.node_seen({"metadata": {"name": "node-a", "labels": {"kubernetes.io/hostname": "node-a"}}})
        wait_until(lambda: recorder.count() == 2, 5)  # a bare Node: the same inventory, published again
        assert recorder.patches[1][1]["metadata"]["labels"] == recorder.patches[0][1]["metadata"]["labels"]
        first = NodeInventory.from_json(recorder.patches[0][1]["metadata"]["annotations"]["k80s.io/dies"])
        assert recorder.last().dies == first.dies
        time.sleep(0.3)
        assert recorder.count() == 2  # once


def test_patch_failures_are_retried_and_pod_resources_outage_keeps_allocations() -> None:
    recorder = Recorder()
    recorder.fail = True
    with harness("1xK80", node_patch=recorder) as h:
        time.sleep(0.3)
        assert recorder.count() == 0
        recorder.fail = False
        wait_until(lambda: recorder.count() == 1, 5)  # retried
        h.kubelet.admit(pod("u1", 1))
        wait_until(lambda: any(d.allocated_to for d in recorder.last().dies), 5)
        h.kubelet._stop_serving()  # pod-resources gone: the last allocations stay
        h.plugin.publisher.after_allocate()
        wait_until(lambda: h.plugin.publisher.pod_resources_error != "", 5)
        h.backend.inject_xid(1, 32)
        wait_until(lambda: recorder.last().dies[1].health == "Unhealthy", 2)
        assert recorder.last().dies[0].allocated_to == "ns/pod-u1"


def test_metric_allocated_follows_pod_resources() -> None:
    import urllib.request

    recorder = Recorder()
    with harness("1xK80", node_patch=recorder) as h:
        h.kubelet.admit(pod("u1", 1))
        wait_until(lambda: any(d.allocated_to for d in recorder.last().dies), 5)
        text = urllib.request.urlopen(f"http://127.0.0.1:{h.plugin.http.port}/metrics").read().decode()
        lines = [line for line in text.splitlines() if line.startswith("k80s_plugin_die_allocated{")]
        assert sorted(line.rsplit(" ", 1)[1] for line in lines) == ["0.0", "1.0"]
        assert 'k80s_plugin_node_patches_total{outcome="ok"}' in text


def test_simulated_identities_match_the_core_inventory() -> None:
    from k80s.core.inventory import simulated_dies

    assert [(d.uuid, d.board, d.index) for d in shape_identities("x", 2)] == [
        (d.uuid, d.board, d.index) for d in simulated_dies("x", 2)]
