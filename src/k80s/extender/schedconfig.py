"""The k80s kube-scheduler configuration: load the canonical file and apply the allowed overrides.

The canonical file is `charts/k80s/files/scheduler-config.yaml` (design.md, Endpoints and ports).
The tests and `k80s demo` run a real kube-scheduler on it, changing only (kubernetes.md §3):

- `clientConnection.kubeconfig`;
- the port of `extenders[0].urlPrefix` (host and path stay);
- `leaderElection.leaderElect` and, when electing, `leaderElection.resourceNamespace`;
- the backoff: `podInitialBackoffSeconds`, `podMaxBackoffSeconds`.

`render` applies exactly those; `changed_paths` lists where two configurations differ, so a test
can assert nothing else moved.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import yaml

from k80s.core.errors import InvalidSpec

CHART_FILE: Final = Path("charts/k80s/files/scheduler-config.yaml")
PACKAGE_DATA: Final = ("k80s", "deploy/scheduler-config.yaml")
"""Where an installed package would carry its byte-identical copy (pyproject's `deploy/*.yaml`)."""

ALLOWED_PATHS: Final = frozenset({
    ("clientConnection", "kubeconfig"),
    ("extenders", 0, "urlPrefix"),
    ("leaderElection", "leaderElect"),
    ("leaderElection", "resourceNamespace"),
    ("podInitialBackoffSeconds",),
    ("podMaxBackoffSeconds",),
})

Path_ = tuple[str | int, ...]


def canonical_path() -> Path:
    """The canonical file: the packaged copy when installed with it, else the repository's."""
    packaged = resources.files(PACKAGE_DATA[0]).joinpath(PACKAGE_DATA[1])
    if packaged.is_file():
        return Path(str(packaged))
    repo = Path(__file__).resolve().parents[3] / CHART_FILE
    if repo.is_file():
        return repo
    raise FileNotFoundError(f"scheduler configuration not found: neither package data {'/'.join(PACKAGE_DATA)} "
                            f"nor {repo}")


def load(path: Path | None = None) -> dict[str, Any]:
    data = yaml.safe_load((path or canonical_path()).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("kind") != "KubeSchedulerConfiguration":
        raise InvalidSpec(str(path), "is not a KubeSchedulerConfiguration")
    return data


def render(
    base: Path | Mapping[str, Any] | None,
    kubeconfig: Path | str,
    extender_port: int,
    *,
    leader_elect: bool = False,
    lease_namespace: str | None = None,
    backoff: tuple[int, int] = (1, 2),
) -> dict[str, Any]:
    """The canonical configuration with only the allowed overrides applied.

    `base`: the file (default: `canonical_path()`) or an already loaded dict (not modified).
    `backoff`: (podInitialBackoffSeconds, podMaxBackoffSeconds); tests use fast retries.
    """
    config = copy.deepcopy(dict(base)) if isinstance(base, Mapping) else load(base)
    config.setdefault("clientConnection", {})["kubeconfig"] = str(kubeconfig)
    extender = config["extenders"][0]
    url = urlsplit(extender["urlPrefix"])
    extender["urlPrefix"] = urlunsplit(url._replace(netloc=f"{url.hostname}:{int(extender_port)}"))
    election = config.setdefault("leaderElection", {})
    election["leaderElect"] = bool(leader_elect)
    if leader_elect and lease_namespace:
        election["resourceNamespace"] = lease_namespace
    initial, maximum = backoff
    if not 1 <= initial <= maximum:
        raise InvalidSpec("backoff", f"{backoff} must satisfy 1 ≤ initial ≤ max seconds")
    config["podInitialBackoffSeconds"], config["podMaxBackoffSeconds"] = int(initial), int(maximum)
    return config


def changed_paths(a: Any, b: Any, prefix: Path_ = ()) -> set[Path_]:
    """Paths (keys and list indices) at which `a` and `b` differ."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out: set[Path_] = set()
        for key in set(a) | set(b):
            if key not in a or key not in b:
                out.add((*prefix, key))
            else:
                out |= changed_paths(a[key], b[key], (*prefix, key))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = set()
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            out |= changed_paths(x, y, (*prefix, i))
        return out
    return set() if a == b else {prefix}


def write(config: Mapping[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False), encoding="utf-8")
    return path
