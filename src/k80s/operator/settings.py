"""Settings of the ModelDeployment operator: one frozen dataclass, flags and environment 1:1.

Every field `some_name` is the flag `--some-name` and the environment variable
`K80S_OPERATOR_SOME_NAME`. Precedence: flag > environment > default. `load(argv, environ)` is
pure, so tests pass a list and a dict. Bad values raise `InvalidSpec` naming the flag and the
variable. operator/README.md prints the table `describe()` returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from k80s.core.errors import InvalidSpec
from k80s.core.inventory import CONTEXT_RESERVE_MIB, IDLE_USED_MIB, K80_TOTAL_MIB
from k80s.core.policies import resolve_policy
from k80s.core.sharing import SHARE_CONTEXT_MIB, SHARE_MARGIN_MIB
from k80s.settings import SettingsLoader
from k80s.settings import setting as _doc

ENV_PREFIX: Final = "K80S_OPERATOR_"

IDLE_DIE_FREE_MIB: Final = K80_TOTAL_MIB - IDLE_USED_MIB - CONTEXT_RESERVE_MIB
"""11366 MiB: what a runtime starting on an idle K80 die sees (design.md, `freeMiB`)."""

DEFAULT_LLAMACPP_IMAGE: Final = "k80s/llama-server:sm37-cuda11.4"
DEFAULT_OLLAMA_IMAGE: Final = "k80s/ollama37:241a0340"
DEFAULT_FETCHER_IMAGE: Final = "k80s/k80s:0.1.0"
"""Image names docs/runtimes.md builds; the chart overrides all three."""
DEFAULT_SHARED_PRIORITY_CLASS: Final = "k80s-shared"
"""The chart's PriorityClass for shared pods (preemptionPolicy Never)."""


@dataclass(frozen=True, slots=True)
class OperatorSettings:
    """Everything the operator can be told. Field docs live in `metadata["doc"]`: they are what
    `--help` and operator/README.md print."""

    kubeconfig: str = _doc("Kubeconfig file. Empty: in-cluster service-account credentials.", default="")
    namespaces: tuple[str, ...] = _doc(
        "Comma-separated namespaces to serve. Empty: all namespaces (needs the ClusterRole).", default=())
    die_free_mib: int = _doc(
        "Free MiB of one idle die to plan with when spec.options.planFreeMiB is null. 11366 = "
        "11441 total - 7 used idle - 68 runtime CUDA context, the value the seed's logs show.",
        default=IDLE_DIE_FREE_MIB)
    scheduler_name: str = _doc("schedulerName of model pods: the kube-scheduler profile running the "
                               "k80s extender.", default="k80s")
    llamacpp_image: str = _doc("Runtime image for runtime.kind llamacpp when spec.runtime.image is empty.",
                               default=DEFAULT_LLAMACPP_IMAGE)
    ollama_image: str = _doc("Runtime image for runtime.kind ollama when spec.runtime.image is empty.",
                             default=DEFAULT_OLLAMA_IMAGE)
    fetcher_image: str = _doc(
        "Image of the init container that fetches weights (python -m k80s.operator.fetch): the k80s image.",
        default=DEFAULT_FETCHER_IMAGE)
    share_context_mib: int = _doc(
        "CUDA context MiB each shared slot is charged on its die (every process opening a die pays "
        "its own; 68 as freeMiB assumes).", default=SHARE_CONTEXT_MIB)
    share_margin_mib: int = _doc(
        "Safety MiB each shared slot is charged on top of the plan's physical bytes (cuBLAS "
        "workspace, split rounding); to be tuned from K80 measurements.", default=SHARE_MARGIN_MIB)
    shared_priority_class: str = _doc(
        "priorityClassName of shared model pods: a PriorityClass with preemptionPolicy Never (the "
        "chart ships k80s-shared), because no share-aware preemption exists yet. Empty: none.",
        default=DEFAULT_SHARED_PRIORITY_CLASS)
    unhealthy_die_deletes_per_min: int = _doc(
        "Most model pods deleted per minute because a die they hold turned Unhealthy (in bursts of "
        "as many), so their Deployments recreate them on healthy dies; the rest wait for the next "
        "re-check. 0: never delete them.", default=30)
    runtime_policies: tuple[tuple[str, str], ...] = _doc(
        "Extra image-glob=policy rules, comma-separated, tried before the built-in table "
        "(docs/runtimes.md), e.g. 'registry.local/ollama37:*=ollama37-2026'.", default=())
    registry_url: str = _doc(
        "Base URL that stands for registry.ollama.ai (the Ollama registry; a mirror or a test server).",
        default="https://registry.ollama.ai")
    registry_first: bool = _doc(
        "Resolve model names in the registry first (exact header of the blob the runtime pulls); "
        "the bundled catalogue answers when the registry cannot. Default: catalogue first (offline).",
        default=False)
    http_timeout_s: float = _doc("Timeout of one registry or GGUF HTTP request.", default=15.0)
    header_window_mib: int = _doc(
        "First HTTP Range window of a GGUF header read; each further window doubles.", default=2)
    header_cap_mib: int = _doc(
        "Most bytes a GGUF header may take (llm-ecosystem.md §1.6: Gemma 3's is 6.5 MB).", default=64)
    name_ttl_s: float = _doc(
        "Seconds a name:tag -> digest or URL -> profile answer is reused. Profiles of a digest are "
        "cached for the process's life (content-addressed).", default=300.0)
    recheck_s: float = _doc(
        "Seconds between the timer's re-checks of each ModelDeployment (status, parity, stuck pods).",
        default=30.0)
    parity_probe: bool = _doc(
        "Ask Ready replicas what they loaded (Ollama /api/ps, llama.cpp /props) for PlanParity.",
        default=True)
    parity_timeout_s: float = _doc("Timeout of one parity probe request.", default=2.0)
    parity_tolerance_mib: int = _doc(
        "Largest difference between the runtime's reported VRAM and the plan that still counts as "
        "parity.", default=64)
    ollama_load: bool = _doc(
        "Load the model of a Ready Ollama replica once (POST /api/generate, keep_alive -1), so "
        "/api/ps reports it without waiting for a first request.", default=True)
    health_address: str = _doc("Address of the /healthz, /readyz and /metrics server.", default="0.0.0.0")
    health_port: int = _doc("Port of the /healthz, /readyz and /metrics server; 0 picks a free port "
                            "(logged, and written to --port-file).", default=8080)
    port_file: str = _doc("If set, the health server's port is written to this file once it listens.",
                          default="")
    leader_elect: bool = _doc("Run only while holding the Lease (one active replica).", default=True)
    leader_election_namespace: str = _doc(
        "Namespace of the Lease (the release namespace). Empty: the service account's namespace, "
        "else the kubeconfig context's, else 'default'.", default="")
    leader_election_id: str = _doc("Name of the Lease.", default="k80s-operator")
    lease_duration_s: float = _doc("Seconds a leader's Lease is valid without renewal.", default=15.0)
    renew_deadline_s: float = _doc("Seconds the leader keeps trying to renew before it steps down (exits).",
                                   default=10.0)
    retry_period_s: float = _doc("Seconds between Lease acquire/renew attempts.", default=2.0)
    log_format: str = _doc("Log format: 'text' or 'json'.", default="text")
    log_level: str = _doc("Log level: DEBUG, INFO, WARNING or ERROR.", default="INFO")

    @property
    def header_window_bytes(self) -> int:
        return self.header_window_mib << 20

    @property
    def header_cap_bytes(self) -> int:
        return self.header_cap_mib << 20


def _policy_rules(text: str) -> tuple[tuple[str, str], ...]:
    rules = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        glob, sep, policy = item.rpartition("=")
        if not sep or not glob:
            raise ValueError(f"{item!r} is not IMAGE_GLOB=POLICY")
        rules.append((glob.strip(), resolve_policy(policy.strip()).id))
    return tuple(rules)


def _validate(s: OperatorSettings) -> None:
    def bad(name: str, problem: str) -> InvalidSpec:
        return InvalidSpec(LOADER.where(name), problem)

    if not 1 <= s.die_free_mib <= K80_TOTAL_MIB:
        raise bad("die_free_mib", f"{s.die_free_mib} is outside 1..{K80_TOTAL_MIB}")
    for name in ("share_context_mib", "share_margin_mib"):
        if not 0 <= getattr(s, name) <= K80_TOTAL_MIB:
            raise bad(name, f"{getattr(s, name)} is outside 0..{K80_TOTAL_MIB}")
    if s.unhealthy_die_deletes_per_min < 0:
        raise bad("unhealthy_die_deletes_per_min", f"{s.unhealthy_die_deletes_per_min} must be >= 0")
    LOADER.check_port(s, "health_port")
    for name in ("http_timeout_s", "recheck_s", "parity_timeout_s", "lease_duration_s", "renew_deadline_s",
                 "retry_period_s", "name_ttl_s"):
        if getattr(s, name) <= 0:
            raise bad(name, "must be > 0")
    if not 1 <= s.header_window_mib <= s.header_cap_mib:
        raise bad("header_window_mib", f"must be between 1 and header_cap_mib ({s.header_cap_mib})")
    if s.renew_deadline_s >= s.lease_duration_s:
        raise bad("renew_deadline_s", f"{s.renew_deadline_s} must be below lease_duration_s ({s.lease_duration_s})")
    LOADER.check_logging(s)
    if not s.scheduler_name:
        raise bad("scheduler_name", "must not be empty")


LOADER: Final = SettingsLoader(
    OperatorSettings,
    prog="k80s-operator",
    env_prefix=ENV_PREFIX,
    description="The k80s ModelDeployment operator.",
    converters={"runtime_policies": _policy_rules},
    validate=_validate,
)
flag_name, env_name, describe, help_text, load = LOADER.flag, LOADER.env, LOADER.describe, LOADER.help_text, LOADER.load
