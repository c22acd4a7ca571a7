"""Kubelet's extended-resource admission arithmetic (reference/sharing.md F7), without a cluster."""

from __future__ import annotations

from typing import Any

from k80s.core.sharing import DIE_MAJOR_RESOURCE, VRAM_RESOURCE
from k80s.localcluster.devicemanager import DIE_RESOURCE
from k80s.localcluster.resources import (
    Shortfall,
    first_shortfall,
    is_extended_resource,
    pod_requests,
    zeroed_extended_resources,
)


def container(name: str, limits: dict[str, str], restart: str | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "resources": {"limits": dict(limits)}}
    if restart:
        c["restartPolicy"] = restart
    return c


def test_extended_resource_names_follow_kubelet() -> None:
    assert is_extended_resource(VRAM_RESOURCE) and is_extended_resource(DIE_MAJOR_RESOURCE)
    assert is_extended_resource(DIE_RESOURCE) and is_extended_resource("nvidia.com/gpu")
    for native in ("cpu", "memory", "pods", "hugepages-2Mi", "kubernetes.io/something", "requests.k80s.io/x"):
        assert not is_extended_resource(native), native


def test_pod_request_is_max_of_init_and_sum_of_app_containers() -> None:
    pod = {"spec": {
        "initContainers": [container("guard", {VRAM_RESOURCE: "12000"}),
                           container("sidecar", {VRAM_RESOURCE: "100"}, restart="Always")],
        "containers": [container("a", {VRAM_RESOURCE: "9000", DIE_MAJOR_RESOURCE: "1"}),
                       container("b", {VRAM_RESOURCE: "1115"})],
    }}
    assert pod_requests(pod) == {VRAM_RESOURCE: 12000, DIE_MAJOR_RESOURCE: 1}
    pod["spec"]["initContainers"][0]["resources"]["limits"][VRAM_RESOURCE] = "5000"
    assert pod_requests(pod)[VRAM_RESOURCE] == 9000 + 1115 + 100  # the sidecar keeps running
    plain = {"spec": {"containers": [{"name": "x", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}]}}
    assert pod_requests(plain) == {}


def test_shortfall_has_kubelets_reason_and_numbers() -> None:
    found = first_shortfall({VRAM_RESOURCE: 11115, DIE_MAJOR_RESOURCE: 1}, {VRAM_RESOURCE: 12000},
                            {VRAM_RESOURCE: "22868", DIE_MAJOR_RESOURCE: "2"})
    assert found == Shortfall(VRAM_RESOURCE, 11115, 12000, 22868)
    assert found.reason == "OutOfk80s.io/vram-mib"
    assert found.message == ("Pod was rejected: Node didn't have enough resource: k80s.io/vram-mib, "
                             "requested: 11115, used: 12000, capacity: 22868")
    assert first_shortfall({VRAM_RESOURCE: 10868}, {VRAM_RESOURCE: 12000}, {VRAM_RESOURCE: "22868"}) is None  # exactly full


def test_zero_rejects_but_a_resource_the_node_does_not_list_is_not_checked() -> None:
    # removeMissingExtendedResources: absent = maybe an extender's resource; present as 0 = none left.
    assert first_shortfall({VRAM_RESOURCE: 1}, {}, {"cpu": "16"}) is None
    zero = first_shortfall({VRAM_RESOURCE: 1}, {}, {VRAM_RESOURCE: "0"})
    assert zero is not None and zero.capacity == 0 and zero.reason == "OutOfk80s.io/vram-mib"
    assert first_shortfall({DIE_RESOURCE: 3}, {}, {DIE_RESOURCE: "2"}, skip=[DIE_RESOURCE]) is None


def test_lost_checkpoint_zeroes_every_extended_resource_and_nothing_else() -> None:
    status = {"capacity": {"cpu": "16", "pods": "110", DIE_RESOURCE: "4", VRAM_RESOURCE: "45736"},
              "allocatable": {"cpu": "16", DIE_RESOURCE: "3", VRAM_RESOURCE: "45736", DIE_MAJOR_RESOURCE: "4"}}
    patch = zeroed_extended_resources(status)
    zero = {DIE_RESOURCE: "0", VRAM_RESOURCE: "0", DIE_MAJOR_RESOURCE: "0"}
    assert patch == {"status": {"capacity": zero, "allocatable": zero}}
