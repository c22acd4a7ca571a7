"""Settings of the scheduler extender: one frozen dataclass, flags and environment variables 1:1.

Every field `some_name` is the flag `--some-name` and the environment variable
`K80S_EXTENDER_SOME_NAME`. Precedence: flag > environment > default. `load(argv, environ)` is
pure, so tests pass a list and a dict. Bad values raise `InvalidSpec` naming the flag and the
variable. `describe()` gives the table printed by `--help` and extender/README.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from k80s.core.errors import InvalidSpec
from k80s.settings import SettingsLoader
from k80s.settings import setting as _doc

ENV_PREFIX: Final = "K80S_EXTENDER_"
PROG: Final = "k80s-extender"


@dataclass(frozen=True, slots=True)
class ExtenderSettings:
    """Everything the extender can be told (field docs in `metadata["doc"]`)."""

    address: str = _doc(
        "Address of the extender API (filter, prioritize). Loopback: only the kube-scheduler "
        "container of the same pod calls it.", default="127.0.0.1")
    port: int = _doc(
        "Port of the extender API; 0 picks a free port (logged). The scheduler configuration's "
        "urlPrefix must name it.", default=8888)
    url_prefix: str = _doc(
        "Path prefix of the verbs: <prefix>/filter and <prefix>/prioritize (the scheduler's "
        "urlPrefix path).", default="/k80s")
    metrics_address: str = _doc(
        "Address of /healthz, /readyz and /metrics (kubelet probes, Prometheus).", default="0.0.0.0")
    metrics_port: int = _doc(
        "Port of /healthz, /readyz and /metrics; 0 picks a free port (logged).", default=8889)
    kubeconfig: str = _doc(
        "Kubeconfig for the informers (list/watch nodes and pods). Empty: in-cluster "
        "service-account credentials.", default="")
    memo_entries: int = _doc(
        "Decisions kept in the LRU cache keyed by (model digest, options, die count, free-die "
        "vector). One entry is a few hundred bytes; 100000 covers 10,000 nodes with many "
        "distinct free-die vectors and several models.", default=100_000)
    request_entries: int = _doc(
        "Decoded pod requests kept by annotation text (each holds a model profile, a few tens of "
        "KiB).", default=1024)
    workers: int = _doc(
        "Threads that run decisions off the event loop, so health probes and other calls are "
        "answered while a large request is decided.", default=4)
    watch_timeout_s: int = _doc(
        "Server-side timeout of each watch, in seconds; the watch is then reopened from the last "
        "resourceVersion (a relist only after 410 Gone or errors).", default=300)
    leader_lease: str = _doc(
        "The kube-scheduler's leader-election Lease that the bind verb follows: the extender binds "
        "only while its own scheduler (holder '<hostname>_…') holds it; with no such Lease the "
        "scheduler does not elect and every bind proceeds. Empty: no leadership check (one "
        "replica, development).", default="k80s-scheduler")
    leader_lease_namespace: str = _doc(
        "Namespace of that Lease. Empty: the pod's own namespace (service-account credentials), "
        "else kube-system (kube-scheduler's default).", default="")
    leader_identity: str = _doc(
        "This extender's identity, compared with the Lease holder's '<identity>_<uuid>'. Empty: "
        "the hostname (the pod name), which kube-scheduler uses too.", default="")
    log_format: str = _doc("Log format: 'text' or 'json'.", default="text")
    log_level: str = _doc(
        "Log level: DEBUG, INFO, WARNING or ERROR. Decisions are logged at INFO, one line per "
        "call.", default="INFO")


def _validate(s: ExtenderSettings) -> None:
    LOADER.check_port(s, "port")
    LOADER.check_port(s, "metrics_port")
    for name in ("memo_entries", "request_entries", "workers", "watch_timeout_s"):
        if getattr(s, name) < 1:
            raise InvalidSpec(LOADER.where(name), f"{getattr(s, name)} must be ≥ 1")
    if not s.url_prefix.startswith("/") or s.url_prefix.endswith("/"):
        raise InvalidSpec(LOADER.where("url_prefix"), f"{s.url_prefix!r} must start with '/' and not end with one")
    if not s.address:
        raise InvalidSpec(LOADER.where("address"), "must not be empty")
    LOADER.check_logging(s)


LOADER: Final = SettingsLoader(
    ExtenderSettings,
    prog=PROG,
    env_prefix=ENV_PREFIX,
    description="k80s scheduler extender: filter and prioritize verbs for kube-scheduler.",
    validate=_validate,
)
flag_name, env_name, describe, help_text, load = LOADER.flag, LOADER.env, LOADER.describe, LOADER.help_text, LOADER.load
