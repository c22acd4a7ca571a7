"""A cluster-autoscaler ProvisioningRequest for a ModelDeployment's pods (kubernetes.md §5.5).

cluster-autoscaler (≥ 1.30.1, `--enable-provisioning-requests`) reads a ProvisioningRequest that
points at a PodTemplate: `check-capacity.autoscaling.x-k8s.io` answers whether the cluster can
hold `count` such pods and books the room for a while; `best-effort-atomic-scale-up.autoscaling.
x-k8s.io` scales node groups up for all of them or none. The PodTemplate is exactly the model
pod of the ModelDeployment (its `k80s.io/die` request and annotations), so the autoscaler counts
dies the way the scheduler will. Pods consume the booking with the annotation
`autoscaling.x-k8s.io/consume-provisioning-request: <name>`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Final

CHECK_CAPACITY: Final = "check-capacity.autoscaling.x-k8s.io"
ATOMIC_SCALE_UP: Final = "best-effort-atomic-scale-up.autoscaling.x-k8s.io"
CLASSES: Final = (CHECK_CAPACITY, ATOMIC_SCALE_UP)
CONSUME_ANNOTATION: Final = "autoscaling.x-k8s.io/consume-provisioning-request"
API_VERSION: Final = "autoscaling.x-k8s.io/v1"


def provisioning_objects(
    name: str, namespace: str, pod_template: Mapping[str, Any], count: int, class_name: str = CHECK_CAPACITY
) -> list[dict[str, Any]]:
    """The PodTemplate and the ProvisioningRequest (in that order) for `count` model pods."""
    if class_name not in CLASSES:
        raise ValueError(f"provisioning class {class_name!r} is not one of {', '.join(CLASSES)}")
    if count < 1:
        raise ValueError(f"count {count} must be at least 1")
    template = copy.deepcopy(dict(pod_template))
    metadata = template.setdefault("metadata", {})
    metadata.setdefault("annotations", {})[CONSUME_ANNOTATION] = name
    labels = {"app.kubernetes.io/managed-by": "k80s", "k80s.io/provisioning-request": name}
    return [
        {"apiVersion": "v1", "kind": "PodTemplate",
         "metadata": {"name": name, "namespace": namespace, "labels": labels}, "template": template},
        {"apiVersion": API_VERSION, "kind": "ProvisioningRequest",
         "metadata": {"name": name, "namespace": namespace, "labels": labels},
         "spec": {"provisioningClassName": class_name, "podSets": [{"podTemplateRef": {"name": name}, "count": count}]}},
    ]
