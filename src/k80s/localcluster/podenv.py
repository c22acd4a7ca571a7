"""A container's environment as kubelet builds it at container creation (reference/sharing.md F3/F4).

Owns the merge the simulated kubelet applies each time it (re)starts a container:
- the device plugin's Allocate envs come first (`GenerateRunContainerOptions` takes
  `containerManager.GetResources` first), then the pod spec's `env` in order; a name set twice
  keeps the **last** value (runc `prepareEnv` and the NVIDIA toolkit both let the last one win);
- `value` is literal, with `$(VAR)` expanded from the pod env defined before it;
- `valueFrom.fieldRef` is read from the pod object given, i.e. kubelet's current view: for
  `metadata.annotations['k']` / `metadata.labels['k']` a missing key gives "" (not an error), so a
  pod bound without the binder's annotations starts with `CUDA_VISIBLE_DEVICES=""` (F3, F5);
- `resourceFieldRef` as the runner does; `configMapKeyRef` / `secretKeyRef` / `envFrom` through a
  `lookup` the caller provides (the kubelet reads the API).

It refuses nothing a real kubelet accepts; what kubelet would fail with `CreateContainerConfigError`
(a missing ConfigMap key that is not optional, an unknown fieldPath) raises `EnvError`. No I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from k80s.core.errors import K80sError
from k80s.localcluster.runner import (
    RunnerError,
    expand_vars,
    field_value,
    resource_value,
)

Lookup = Callable[[str, str, bool], Mapping[str, str] | None]
"""(kind "configMap" | "secret", name, optional) → the object's data, None when it does not exist."""


class EnvError(K80sError):
    """A container's environment cannot be built (kubelet: CreateContainerConfigError)."""


def find_container(pod: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """An app, init or ephemeral container of the pod by name."""
    spec = pod.get("spec") or {}
    for group in ("initContainers", "containers", "ephemeralContainers"):
        for container in spec.get(group) or []:
            if container.get("name") == name:
                return dict(container)
    meta = pod.get("metadata") or {}
    raise EnvError(f"pod {meta.get('namespace')}/{meta.get('name')} has no container {name!r}")


def container_env(
    pod: Mapping[str, Any],
    container_name: str,
    plugin_envs: Mapping[str, str] | None = None,
    lookup: Lookup | None = None,
) -> dict[str, str]:
    """The environment kubelet gives `container_name` when it creates it from `pod` (see module)."""
    container = find_container(pod, container_name)
    env: dict[str, str] = dict(plugin_envs or {})
    spec_env: dict[str, str] = {}  # what $(VAR) may refer to: the pod's own env so far

    def put(name: str, value: str) -> None:
        env.pop(name, None)  # a later source wins, and sits where it was set
        env[name] = value
        spec_env[name] = value

    for source in container.get("envFrom") or []:
        prefix = str(source.get("prefix") or "")
        for kind in ("configMap", "secret"):
            ref = source.get(f"{kind}Ref")
            if ref is not None:
                data = _lookup(lookup, kind, str(ref.get("name")), bool(ref.get("optional")), f"envFrom {kind}Ref")
                for key, value in sorted((data or {}).items()):
                    put(prefix + key, value)
    for entry in container.get("env") or []:
        name = str(entry.get("name"))
        source = entry.get("valueFrom")
        if source is None:
            put(name, expand_vars(str(entry.get("value") or ""), spec_env))
        elif "fieldRef" in source:
            try:
                put(name, field_value(pod, str(source["fieldRef"].get("fieldPath"))))
            except RunnerError as exc:
                raise EnvError(f"env {name}: {exc}") from None
        elif "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            target = find_container(pod, ref["containerName"]) if ref.get("containerName") else container
            try:
                put(name, resource_value(target, ref))
            except (RunnerError, ValueError) as exc:
                raise EnvError(f"env {name}: {exc}") from None
        else:
            kind = "configMap" if "configMapKeyRef" in source else "secret" if "secretKeyRef" in source else ""
            if not kind:
                raise EnvError(f"env {name}: valueFrom {sorted(source)} is not supported")
            ref = source[f"{kind}KeyRef"]
            optional = bool(ref.get("optional"))
            data = _lookup(lookup, kind, str(ref.get("name")), optional, f"env {name}")
            key = str(ref.get("key"))
            if data is not None and key in data:
                put(name, data[key])
            elif not optional:
                raise EnvError(f"env {name}: key {key!r} not found in {kind} {ref.get('name')!r}")
    return env


def _lookup(lookup: Lookup | None, kind: str, name: str, optional: bool, what: str) -> Mapping[str, str] | None:
    if lookup is None:
        raise EnvError(f"{what}: {kind} {name!r} cannot be read (no API lookup given)")
    data = lookup(kind, name, optional)
    if data is None and not optional:
        raise EnvError(f"{what}: {kind} {name!r} not found")
    return data
