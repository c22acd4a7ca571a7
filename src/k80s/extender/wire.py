"""The kube-scheduler extender wire format (kubernetes.md §2.2), decoded and encoded exactly.

The scheduler's wrapper types have no JSON tags, so keys are Go field names (`Pod`, `Nodes`,
`NodeNames`, `FailedNodes`, `FailedAndUnresolvableNodes`, `Error`, `Host`, `Score`) and unset
pointers arrive as `null`. Go's decoder matches keys case-insensitively (an exact match first),
so this decoder does the same: `pod`, `nodenames` and `nodeNames` are all `NodeNames`. The
embedded Pod and Node objects are ordinary Kubernetes JSON (camelCase).

Both `nodeCacheCapable` modes: with `true` the request carries `NodeNames` and the answer must too;
with `false` it carries `Nodes` (a NodeList of full Node objects) and the answer returns the passing
Node objects in `Nodes`.

This module owns the shapes and the 8 MiB limit; it decides nothing about dies.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from json.encoder import encode_basestring
from typing import Any, Final

from k80s.core.errors import InvalidInput, InvalidSpec
from k80s.core.fit import effective_die_request

MAX_BODY_BYTES: Final = 8 * 1024 * 1024
"""Bodies above this are refused with HTTP 400 (design.md, Extender bad input)."""

DIE_RESOURCE: Final = "k80s.io/die"
DIES_ANNOTATION: Final = "k80s.io/dies"
TERMINAL_PHASES: Final = frozenset({"Succeeded", "Failed"})


class BadRequest(InvalidInput):
    """The body is not ExtenderArgs JSON (or is too large): the only HTTP 400."""


@dataclass(frozen=True, slots=True)
class ExtenderArgs:
    """A filter or prioritize request."""

    pod: Mapping[str, Any]
    node_names: tuple[str, ...] | None  # nodeCacheCapable: true
    nodes: tuple[Mapping[str, Any], ...] | None  # nodeCacheCapable: false (full Node objects)

    @property
    def node_cache_capable(self) -> bool:
        return self.nodes is None

    @property
    def names(self) -> tuple[str, ...]:
        """Candidate node names in the order the scheduler sent them."""
        if self.nodes is not None:
            return tuple(node_name(n) for n in self.nodes)
        return self.node_names or ()


@dataclass(frozen=True, slots=True)
class PodInfo:
    """What the extender needs from a Pod object."""

    namespace: str
    name: str
    uid: str
    node_name: str
    phase: str
    dies: int  # effective k80s.io/die request
    annotations: Mapping[str, str]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES


def go_field(obj: Mapping[str, Any], name: str) -> Any:
    """The value of Go field `name` in a decoded JSON object: exact key first, then any key equal
    to it ignoring case (Go's encoding/json rule). Missing → None."""
    if name in obj:
        return obj[name]
    lowered = name.lower()
    for key, value in obj.items():
        if isinstance(key, str) and key.lower() == lowered:
            return value
    return None


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    """A request body as a JSON object within the size limit; `BadRequest` otherwise."""
    if len(body) > MAX_BODY_BYTES:
        raise BadRequest(f"request body is {len(body)} bytes; the limit is {MAX_BODY_BYTES} (8 MiB)")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BadRequest(f"{what} must be a JSON object, got {type(data).__name__}")
    return data


def decode_args(body: bytes) -> ExtenderArgs:
    """ExtenderArgs from a request body; `BadRequest` naming what is wrong otherwise."""
    data = _json_object(body, "ExtenderArgs")
    pod = go_field(data, "Pod")
    if not isinstance(pod, dict):
        raise BadRequest("ExtenderArgs.Pod is required and must be a Pod object")
    if not isinstance(pod.get("metadata"), dict):
        raise BadRequest("ExtenderArgs.Pod.metadata is required")
    names = go_field(data, "NodeNames")
    node_list = go_field(data, "Nodes")
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise BadRequest("ExtenderArgs.NodeNames must be a list of node names or null")
    nodes: tuple[Mapping[str, Any], ...] | None = None
    if node_list is not None:
        if not isinstance(node_list, dict):
            raise BadRequest("ExtenderArgs.Nodes must be a NodeList object or null")
        items = node_list.get("items")
        if items is None:
            items = []
        if not isinstance(items, list) or not all(isinstance(n, dict) and isinstance(n.get("metadata"), dict) for n in items):
            raise BadRequest("ExtenderArgs.Nodes.items must be a list of Node objects")
        nodes = tuple(items)
    if nodes is not None and names is None:
        return ExtenderArgs(pod=pod, node_names=None, nodes=nodes)
    return ExtenderArgs(pod=pod, node_names=tuple(names or ()), nodes=None)


def node_name(node: Mapping[str, Any]) -> str:
    return str((node.get("metadata") or {}).get("name") or "")


def node_annotation(node: Mapping[str, Any], key: str = DIES_ANNOTATION) -> str | None:
    annotations = (node.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(key)
    return value if isinstance(value, str) else None


_SUFFIXES: Final = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
                    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_QUANTITY: Final = re.compile(r"^([+-]?)(\d+(?:\.\d*)?|\.\d+)(m|k|[MGTPE]i?|Ki|[eE][+-]?\d+)?$")


def parse_die_quantity(value: Any, where: str, unit: str = "dies") -> int:
    """A whole-number extended-resource quantity in any form the API server writes ('2', 2,
    '2000m', '1k' — the server canonicalises 1000 to '1k' —, '1Ki', '1e3')."""
    if isinstance(value, int) and not isinstance(value, bool):
        count = Fraction(value)
    else:
        match = _QUANTITY.match(value.strip()) if isinstance(value, str) else None
        if match is None:
            raise InvalidSpec(where, f"{value!r} is not a whole number of {unit}")
        sign, number, suffix = match.group(1), match.group(2), match.group(3) or ""
        count = Fraction(number)
        if suffix == "m":
            count /= 1000
        elif suffix not in _SUFFIXES:  # a decimal exponent, e.g. 1e3
            count *= Fraction(10) ** int(suffix[1:])
        else:
            count *= _SUFFIXES[suffix]
        if sign == "-":
            count = -count
    if count.denominator != 1:
        raise InvalidSpec(where, f"{value!r} is not a whole number of {unit}")
    if count < 0:
        raise InvalidSpec(where, f"{value!r} must not be negative")
    return int(count)


def _container_quantity(container: Mapping[str, Any], kind: str, index: int, resource: str, unit: str) -> int:
    resources = container.get("resources") or {}
    where = f"{kind}[{index}].resources"
    for part in ("limits", "requests"):  # requests default to limits for extended resources
        values = resources.get(part) or {}
        if resource in values:
            return parse_die_quantity(values[resource], f"{where}.{part}.{resource}", unit)
    return 0


def pod_resource_request(pod: Mapping[str, Any], resource: str = DIE_RESOURCE, unit: str = "dies") -> int:
    """The pod's effective request of an extended resource (kubelet's rule, `core.fit.effective_die_request`)."""
    spec = pod.get("spec") or {}
    app = [_container_quantity(c, "containers", i, resource, unit) for i, c in enumerate(spec.get("containers") or [])]
    init = [_container_quantity(c, "initContainers", i, resource, unit)
            for i, c in enumerate(spec.get("initContainers") or [])]
    return effective_die_request(app, init)


def pod_die_request(pod: Mapping[str, Any]) -> int:
    """The pod's effective `k80s.io/die` request."""
    return pod_resource_request(pod)


def pod_info(pod: Mapping[str, Any]) -> PodInfo:
    """Decode the fields the extender reads; `InvalidSpec` for an unreadable die request."""
    meta = pod.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    return PodInfo(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        node_name=str((pod.get("spec") or {}).get("nodeName") or ""),
        phase=str((pod.get("status") or {}).get("phase") or ""),
        dies=pod_die_request(pod),
        annotations={k: v for k, v in annotations.items() if isinstance(k, str) and isinstance(v, str)},
    )


@dataclass(frozen=True, slots=True)
class BindingArgs:
    """ExtenderBindingArgs: the pod the scheduler wants bound and the node it chose."""

    pod_name: str
    pod_namespace: str
    pod_uid: str
    node: str

    @property
    def key(self) -> str:
        return f"{self.pod_namespace}/{self.pod_name}"


def decode_binding_args(body: bytes) -> BindingArgs:
    """ExtenderBindingArgs `{"PodName", "PodNamespace", "PodUID", "Node"}` from a bind body;
    `BadRequest` naming the field otherwise (every field is required and a non-empty string)."""
    data = _json_object(body, "ExtenderBindingArgs")
    values = []
    for name in ("PodName", "PodNamespace", "PodUID", "Node"):
        value = go_field(data, name)
        if not isinstance(value, str) or not value:
            raise BadRequest(f"ExtenderBindingArgs.{name} is required and must be a non-empty string, got {value!r}")
        values.append(value)
    return BindingArgs(*values)


def binding_result(error: str = "") -> dict[str, Any]:
    """ExtenderBindingResult: an empty `Error` means bound."""
    return {"Error": error}


# ------------------------------------------------------------------------------------------------
# Answers
# ------------------------------------------------------------------------------------------------


def filter_result(
    passed: Sequence[str],
    failed: Mapping[str, str],
    unresolvable: Mapping[str, str],
    *,
    args: ExtenderArgs | None = None,
    error: str = "",
) -> dict[str, Any]:
    """ExtenderFilterResult in the form of the request: names for nodeCacheCapable, else Nodes."""
    names: list[str] | None = list(passed)
    nodes: dict[str, Any] | None = None
    if error:
        names = None
    elif args is not None and not args.node_cache_capable:
        wanted = set(passed)
        nodes = {"metadata": {}, "items": [n for n in args.nodes or () if node_name(n) in wanted]}
        names = None
    return {
        "Nodes": nodes,
        "NodeNames": names,
        "FailedNodes": dict(failed),
        "FailedAndUnresolvableNodes": dict(unresolvable),
        "Error": error,
    }


def host_priorities(scores: Mapping[str, int] | Iterable[tuple[str, int]]) -> list[dict[str, Any]]:
    """HostPriorityList: `[{"Host": name, "Score": 0..10}, …]`."""
    items = scores.items() if isinstance(scores, Mapping) else scores
    return [{"Host": host, "Score": int(score)} for host, score in items]


def encode_host_priorities(items: Iterable[tuple[str, int]]) -> bytes:
    """`encode(host_priorities(items))`, twice as fast: the prioritize answer for 10,000 nodes is
    on the scheduler's hot path. Names are escaped by the json module's own string encoder."""
    esc = encode_basestring
    return ("[" + ",".join(['{"Host":%s,"Score":%d}' % (esc(host), int(score)) for host, score in items]) + "]").encode()


def encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


# ------------------------------------------------------------------------------------------------
# Reading answers (tests, the benchmark client)
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FilterResult:
    node_names: tuple[str, ...] | None
    nodes: tuple[Mapping[str, Any], ...] | None
    failed: Mapping[str, str]
    unresolvable: Mapping[str, str]
    error: str


def decode_filter_result(data: Mapping[str, Any]) -> FilterResult:
    names = go_field(data, "NodeNames")
    node_list = go_field(data, "Nodes")
    return FilterResult(
        node_names=None if names is None else tuple(names),
        nodes=None if node_list is None else tuple(node_list.get("items") or ()),
        failed=dict(go_field(data, "FailedNodes") or {}),
        unresolvable=dict(go_field(data, "FailedAndUnresolvableNodes") or {}),
        error=str(go_field(data, "Error") or ""),
    )


def decode_priorities(data: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    return {str(go_field(item, "Host")): int(go_field(item, "Score")) for item in data}
