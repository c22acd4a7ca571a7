"""The `k80s` command line. Commands call the same core functions the services do."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from k80s import __version__, catalogue
from k80s.core.errors import InvalidSpec, K80sError
from k80s.core.estimate import DieCapacity, Estimate
from k80s.core.inventory import CONTEXT_RESERVE_MIB, IDLE_USED_MIB, K80_TOTAL_MIB, parse_node_shape
from k80s.core.options import KV_CACHE_TYPES, EstimateOptions
from k80s.core.policies import ALIASES, POLICIES
from k80s.core.selection import select_dies
from k80s.core.units import MIB
from k80s.estimate_view import render, render_comparison
from k80s.localcluster.cli import cluster
from k80s.resolve import resolve_local

IDLE_FREE_MIB = K80_TOTAL_MIB - IDLE_USED_MIB - CONTEXT_RESERVE_MIB  # 11366: what a runtime sees on an idle die


def console() -> Console:
    """Full width on a terminal; 120 columns when piped, so tables do not wrap into columns of words."""
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 120)


class _Group(click.Group):
    """Turns k80s errors into one clear line on stderr and exit 1, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except K80sError as exc:
            click.echo(f"k80s: error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="k80s")
def main() -> None:
    """k80s: serve LLMs on NVIDIA Tesla K80 clusters with Kubernetes.

    The estimator decides how many K80 dies a model needs and how its layers split across them,
    exactly as the ollama37 runtime (seed commit 241a0340) would.
    """


def _free_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of MiB values", param_hint="--free-mib") from None
    if not values or any(v < 0 for v in values):
        raise click.BadParameter("give one non-negative MiB value per die, e.g. 11366,11366", param_hint="--free-mib")
    return values


_POLICY_CHOICES = [*POLICIES, *ALIASES]


@main.command()
@click.argument("model")
@click.option("--dies", type=click.IntRange(1, 64), default=None, help="N idle dies (default 2, one K80 board).")
@click.option("--free-mib", "free_mib", default=None, help="Free MiB per die in CUDA order, e.g. 11366,9000.")
@click.option(
    "--die-free-mib", type=click.IntRange(0), default=IDLE_FREE_MIB, show_default=True,
    help="Free MiB of each idle die for --dies (NVML free minus the runtime's CUDA context).",
)
@click.option("--ctx", "num_ctx", type=click.IntRange(1), default=4096, show_default=True, help="Context tokens per sequence (num_ctx).")
@click.option("--batch", "num_batch", type=click.IntRange(0), default=512, show_default=True, help="num_batch.")
@click.option("--parallel", "num_parallel", type=click.IntRange(1), default=1, show_default=True, help="Parallel sequences (num_parallel).")
@click.option("--kv-cache-type", type=click.Choice(KV_CACHE_TYPES), default="f16", show_default=True, help="KV cache type (what-if only on K80).")
@click.option("--flash-attention/--no-flash-attention", default=False, show_default=True, help="What-if only: K80 has no flash attention.")
@click.option("--policy", type=click.Choice(_POLICY_CHOICES), default="seed-241a0340", show_default=True, help="Estimator policy (ollama/ollama37 build).")
@click.option("--graph-safety-multiplier", type=click.FloatRange(min=0, min_open=True), default=None, help="Graph multiplier (default: the policy's).")
@click.option("--secondary-graph-mib", type=click.IntRange(0), default=None, help="Seed family only: secondary-die graph (default 190).")
@click.option("--overhead-mib", type=click.IntRange(0), default=0, show_default=True, help="OLLAMA_GPU_OVERHEAD per die.")
@click.option("--compare", is_flag=True, help="Put reverse-order (seed) and round-robin (v0.11.4) side by side.")
@click.option("--json", "as_json", is_flag=True, help="Print the Estimate object(s) as JSON.")
def estimate(
    model: str,
    dies: int | None,
    free_mib: str | None,
    die_free_mib: int,
    num_ctx: int,
    num_batch: int,
    num_parallel: int,
    kv_cache_type: str,
    flash_attention: bool,
    policy: str,
    graph_safety_multiplier: float | None,
    secondary_graph_mib: int | None,
    overhead_mib: int,
    compare: bool,
    as_json: bool,
) -> None:
    """What the runtime would do with MODEL on the given dies.

    MODEL is a catalogue tag (see `k80s models`), a GGUF file (only its header is read) or a
    profile file. The policy's die-selection rule applies, so fewer dies than given may be used.
    Exits 1 when the model does not fit.
    """
    if dies is not None and free_mib is not None:
        raise click.UsageError("give either --dies or --free-mib, not both")
    free = _free_list(free_mib) if free_mib is not None else [die_free_mib] * (dies or 2)
    die_list = [DieCapacity(free_bytes=f * MIB, index=i) for i, f in enumerate(free)]
    if flash_attention or kv_cache_type != "f16":
        click.echo(
            "k80s: warning: K80 (compute 3.7) has no flash attention and runs f16 KV only; "
            "this estimate is a what-if for other hardware",
            err=True,
        )
    profile = resolve_local(model)
    policies = ["seed-241a0340", "upstream-v0.11.4"] if compare else [policy]
    results: list[Estimate] = []
    for pol in policies:
        opts = EstimateOptions(
            policy=pol,
            num_ctx=num_ctx,
            num_batch=num_batch,
            num_parallel=num_parallel,
            kv_cache_type=kv_cache_type,
            flash_attention=flash_attention,
            graph_safety_multiplier=graph_safety_multiplier,
            secondary_graph_mib=secondary_graph_mib if POLICIES[ALIASES.get(pol, pol)].secondary_graph else None,
            overhead_mib=overhead_mib,
        )
        results.append(select_dies(profile, die_list, opts))
    if secondary_graph_mib is not None and not compare and not POLICIES[ALIASES.get(policy, policy)].secondary_graph:
        raise InvalidSpec("--secondary-graph-mib", f"only applies to seed-family policies, not {policy}")
    if as_json:
        payload: Any = [r.to_dict() for r in results] if compare else results[0].to_dict()
        click.echo(json.dumps(payload, indent=2))
    else:
        out = console()
        for r in results:
            render(out, r)
            out.print()
        if compare:
            render_comparison(out, results)
    if not results[0].fits:
        sys.exit(1)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the catalogue as JSON.")
def models(as_json: bool) -> None:
    """List the bundled model catalogue with confidence grades.

    Grades: A = confirmed by an Ollama/ollama37 log or reproduced exactly; B = the model's
    published config; C = widely published but unverified, or derived (see the notes).
    """
    rows: list[dict[str, Any]] = []
    for e in catalogue.entries():
        p = e.profile
        rows.append(
            {
                "name": e.name,
                "architecture": p.architecture,
                "layers": p.block_count,
                "weightsGB": round(p.weight_bytes() / 1e9, 2),
                "contextLength": p.context_length,
                "grade": e.grade,
                "notes": e.shape.notes,
                "derivation": e.derivation,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="k80s model catalogue (Ollama Q4_K_M tags)", title_justify="left")
    for col in ("model", "arch", "layers", "weights GB", "train ctx", "grade", "notes"):
        table.add_column(col, no_wrap=col != "notes")
    for r in rows:
        table.add_row(
            r["name"], r["architecture"], str(r["layers"]), f"{r['weightsGB']:.2f}", str(r["contextLength"]),
            r["grade"], r["notes"] or ("derived, see below" if r["derivation"] else ""),
        )
    out = console()
    out.print(table)
    for r in rows:
        if r["derivation"]:
            out.print(f"[bold]{r['name']}[/]: {r['derivation']}")


@main.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def inspect(path: str, as_json: bool) -> None:
    """Summarise the header of a GGUF file (tensor data is never read)."""
    from k80s.core.gguf import parse_gguf_file
    from k80s.core.modelfile import describe_header

    try:
        header = parse_gguf_file(path)
    except OSError as exc:
        raise InvalidSpec(path, f"cannot read file ({exc.strerror or exc})") from None
    summary = describe_header(header)
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
        return
    table = Table(title=f"GGUF header: {path}", title_justify="left", show_header=False)
    table.add_column("key")
    table.add_column("value")
    for key, value in summary.items():
        table.add_row(str(key), _short(value))
    console().print(table)


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    if isinstance(value, Sequence) and not isinstance(value, str):
        return ", ".join(str(v) for v in value)
    return str(value)


@main.command()
@click.option("-f", "--filename", "files", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="ModelDeployment manifests (repeatable; other kinds are skipped).")
@click.option("--cluster", "cluster_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A YAML description of the nodes instead of the live cluster.")
@click.option("--kubeconfig", type=click.Path(dir_okay=False), default=None,
              help="Kubeconfig of the live cluster (default: $KUBECONFIG or ~/.kube/config).")
@click.option("--from-cluster", is_flag=True, help="Also plan the ModelDeployments in the cluster (missing replicas).")
@click.option("--node-shape", default=None, help="Report how many more nodes of this shape (e.g. 4xK80) place everything.")
@click.option("--max-nodes", type=click.IntRange(0), default=64, show_default=True, help="Most extra nodes to try.")
@click.option("--node-labels", default="", help="Labels new --node-shape nodes carry, e.g. pool=k80,zone=a (for nodeSelectors).")
@click.option("--node-mode", type=click.Choice(["exclusive", "shared"]), default=None,
              help="Pool mode of new --node-shape nodes [default: shared when every unplaced replica shares].")
@click.option("--shared", "shared_all", is_flag=True,
              help="What-if: every node in a shared pool, every llamacpp ModelDeployment with sharing: shared.")
@click.option("--registry-url", default=None, help="Ollama registry base URL for models not in the catalogue.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(
    files: tuple[Path, ...],
    cluster_file: Path | None,
    kubeconfig: str | None,
    from_cluster: bool,
    node_shape: str | None,
    max_nodes: int,
    node_labels: str,
    node_mode: str | None,
    shared_all: bool,
    registry_url: str | None,
    as_json: bool,
) -> None:
    """Where each replica of the ModelDeployments would go, what does not fit and why.

    Uses the operator's plan for each ModelDeployment and the scheduler extender's fit rule and
    ranking, replica by replica; on shared nodes (docs/sharing.md), the extender's slot rule for
    ModelDeployments with spec.sharing: shared. Nodes come from --cluster FILE or the live cluster.
    """
    from k80s import planner
    from k80s.operator.resolve import Resolver
    from k80s.operator.settings import OperatorSettings

    if node_shape is not None:
        parse_node_shape(node_shape)
    if cluster_file is not None and from_cluster:
        raise click.UsageError("--from-cluster reads the live cluster; it cannot go with --cluster")
    settings = OperatorSettings()
    resolver = Resolver(registry_url=registry_url or settings.registry_url)
    running: dict[str, list[tuple[str, str]]] = {}
    deployments = planner.deployments_from_files(list(files))
    if cluster_file is not None:
        nodes = planner.nodes_from_file(cluster_file)
    else:
        core, custom = _kube_clients(kubeconfig)
        nodes, running = planner.nodes_from_api(core)
        if from_cluster:
            deployments += planner.deployments_from_api(custom)
    if not deployments:
        raise click.UsageError("no ModelDeployments to plan: give -f FILE or --from-cluster")
    if shared_all:
        nodes = planner.all_shared(nodes)
    workloads = planner.build_workloads(deployments, running, settings, resolver, shared_all=shared_all)
    report = planner.make_report(workloads, nodes, node_shape, max_nodes, _labels(node_labels), node_mode)
    if as_json:
        click.echo(planner.report_json(report))
    else:
        render_plan(console(), report)


@main.command("provisioning-request")
@click.argument("name", required=False)
@click.option("-n", "--namespace", default="default", show_default=True, help="Namespace of the ModelDeployment.")
@click.option("-f", "--filename", "manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Plan from a ModelDeployment manifest instead of the live cluster.")
@click.option("--kubeconfig", type=click.Path(dir_okay=False), default=None, help="Kubeconfig of the live cluster.")
@click.option("--class", "class_name", default="check-capacity.autoscaling.x-k8s.io", show_default=True,
              type=click.Choice(["check-capacity.autoscaling.x-k8s.io", "best-effort-atomic-scale-up.autoscaling.x-k8s.io"]),
              help="check-capacity: book room if it exists; best-effort-atomic-scale-up: scale up for all or none.")
@click.option("--replicas", type=click.IntRange(1), default=None, help="Pods to provision (default: spec.replicas).")
def provisioning_request(
    name: str | None, namespace: str, manifest: Path | None, kubeconfig: str | None, class_name: str, replicas: int | None
) -> None:
    """Print a PodTemplate + ProvisioningRequest for a ModelDeployment's pods (pipe to kubectl apply -f -).

    With NAME, the pod template is copied from the ModelDeployment's Deployment in the cluster;
    with -f, it is built from the manifest exactly as the operator would build it.
    """
    import yaml

    from k80s.provisioning import provisioning_objects

    if (name is None) == (manifest is None):
        raise click.UsageError("give a ModelDeployment NAME (live cluster) or -f MANIFEST, not both")
    if manifest is not None:
        md_name, md_namespace, template, count = _template_from_manifest(manifest)
    else:
        assert name is not None
        md_name, md_namespace = name, namespace
        template, count = _template_from_cluster(kubeconfig, name, namespace)
    objects = provisioning_objects(f"{md_name}-capacity", md_namespace, template, replicas or count, class_name)
    click.echo(yaml.safe_dump_all(objects, sort_keys=False), nl=False)


def _template_from_manifest(path: Path) -> tuple[str, str, dict[str, Any], int]:
    from k80s import planner
    from k80s.operator.children import Owner, PodSettings, pod_template
    from k80s.operator.plan import make_plan
    from k80s.operator.resolve import Resolver
    from k80s.operator.settings import OperatorSettings
    from k80s.operator.spec import parse_spec

    deployments = planner.deployments_from_files([path])
    if len(deployments) != 1:
        raise InvalidSpec(str(path), f"expected exactly one ModelDeployment, found {len(deployments)}")
    key, raw = deployments[0]
    namespace, md_name = key.split("/", 1)
    settings = OperatorSettings()
    spec = parse_spec(raw)
    model = Resolver(registry_url=settings.registry_url).resolve(spec.model)
    image = settings.ollama_image if spec.runtime_kind == "ollama" else settings.llamacpp_image
    plan_ = make_plan(spec, model, default_image=image, default_free_mib=settings.die_free_mib)
    if not plan_.fits:
        raise InvalidSpec(f"{key}.spec.maxDies", f"the model does not fit {spec.max_dies} idle dies; nothing to provision")
    owner = Owner(md_name, namespace, uid="")
    pod_settings = PodSettings(settings.scheduler_name, settings.fetcher_image, settings.registry_url)
    return md_name, namespace, pod_template(owner, spec, plan_, pod_settings), spec.replicas


def _template_from_cluster(kubeconfig: str | None, name: str, namespace: str) -> tuple[dict[str, Any], int]:
    from kubernetes.client import AppsV1Api
    from kubernetes.client.exceptions import ApiException

    core, _ = _kube_clients(kubeconfig)
    apps = AppsV1Api(core.api_client)
    try:
        deployment = apps.read_namespaced_deployment(name, namespace)
    except ApiException as exc:
        raise InvalidSpec(f"{namespace}/{name}", f"no Deployment of that ModelDeployment ({exc.status} {exc.reason})") from None
    template = core.api_client.sanitize_for_serialization(deployment.spec.template)
    return template, int(deployment.spec.replicas or 1)


def _labels(text: str) -> dict[str, str]:
    labels = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{part!r} is not key=value", param_hint="--node-labels")
        labels[key] = value
    return labels


def _kube_clients(kubeconfig: str | None) -> tuple[Any, Any]:
    from kubernetes import client, config

    try:
        config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    except Exception as exc:  # the client raises several unrelated types for a missing/bad file
        raise InvalidSpec("--kubeconfig", f"cannot load a kubeconfig ({exc})") from None
    api = client.ApiClient()
    return client.CoreV1Api(api), client.CustomObjectsApi(api)


def render_plan(out: Console, report: Any) -> None:
    from k80s import planner
    from k80s.core.sharing import SHAREABLE_DIE_MIB, slot_text
    from k80s.operator.plan import smallest_fit

    shared = any(p.shares is not None for p in report.result.placed)
    table = Table(title="placements", title_justify="left")
    for col in ("modeldeployment", "replica", "node", "shape", "dies", "split", "per-die GiB"):
        table.add_column(col)
    if shared:
        table.add_column("slot MiB")  # what each die of a shared replica holds for it, in slot order
    for w in report.workloads:
        for pod, node in w.running:
            table.add_row(w.key, pod, node, report.shapes.get(node, ""), "(running)", "", "", *([""] if shared else []))
    for p in report.result.placed:
        est = planner.placement_estimate(report, p)
        table.add_row(
            p.replica.workload, str(p.replica.index), p.node, report.shapes.get(p.node, ""),
            ",".join(str(d.index) for d in p.dies),
            ",".join(map(str, est.tensor_split)) if est else "",
            " ".join(f"{b / 2**30:.2f}" for b in est.per_die_bytes) if est else "",
            *([slot_text(p.shares.slot_mib) if p.shares is not None else "whole dies"] if shared else []),
        )
    out.print(table)
    dies = planner.shared_dies(report.result.nodes)
    if dies:
        by_node: dict[str, list[str]] = {}
        for d in dies:
            by_node.setdefault(d["node"], []).append(f"{d['index']}: {d['reservedMiB']}")
        out.print(f"shared dies, MiB reserved of {SHAREABLE_DIE_MIB} per die:")
        for node, held in by_node.items():
            if any(d["node"] == node and d["reservedMiB"] for d in dies):  # idle shared nodes: --json lists them
                out.print(f"  {node}  {', '.join(held)}")
    for w in report.workloads:
        if w.error:
            out.print(f"[red]{w.key}: cannot plan: {w.error}[/]")
        elif w.plan is not None and w.plan.estimate.fits and w.plan.shares is not None and not w.plan.fits:
            out.print(f"[red]{w.key}: cannot share: its slots ({slot_text(w.plan.shares.slot_mib)}, plan + context "
                      f"{w.plan.shares.context_mib} + margin {w.plan.shares.margin_mib} MiB each) exceed what one "
                      f"die offers ({SHAREABLE_DIE_MIB} MiB); keep it exclusive or lower numCtx[/]")
        elif w.plan is not None and not w.plan.fits:
            e, n = w.plan.estimate, w.plan.max_dies
            wider = smallest_fit(w.plan, 64)
            hint = f"; it needs {wider} dies (raise spec.maxDies)" if wider else "; no die count up to 64 holds it"
            out.print(f"[red]{w.key}: does not fit {n} idle {'die' if n == 1 else 'dies'} (spec.maxDies {n}): "
                      f"{e.layers_offloaded} of {e.layers_total} layers{hint}; no node can take it[/]")
    for r in report.result.refused:
        reasons: dict[str, list[str]] = {}
        for node, why in r.reasons.items():
            reasons.setdefault(why, []).append(node)
        out.print(f"[yellow]{r.replica.workload} replica {r.replica.index} not placed"
                  f"{' (no node could ever hold it)' if r.unresolvable else ''}:[/]")
        for why, nodes in sorted(reasons.items(), key=lambda kv: -len(kv[1])):
            out.print(f"  {len(nodes)} node{'s' if len(nodes) != 1 else ''} ({', '.join(nodes[:3])}"
                      f"{', …' if len(nodes) > 3 else ''}): {why}")
    if report.node_shape is not None:
        pool = " shared" if report.node_mode == "shared" else ""
        if report.extra_nodes is None:
            out.print(f"[red]even {report.max_nodes} more {report.node_shape}{pool} nodes would not place every replica[/]")
        elif report.extra_nodes == 0:
            which = "every placeable replica" if not report.all_placed else "every replica"
            out.print(f"{which} fits the cluster as it is; no more {report.node_shape} nodes needed")
        else:
            out.print(f"{report.extra_nodes} more {report.node_shape}{pool} node{'s' if report.extra_nodes != 1 else ''} "
                      "would place every replica")
    elif report.all_placed:
        out.print("[green]every replica is placed[/]")


@main.command()
@click.option("--nvml-library", default="", envvar="K80S_GUARD_NVML_LIBRARY", show_envvar=True,
              help="Path of libnvidia-ml.so.1 (default: the one the loader finds).")
def guard(nvml_library: str) -> None:
    """Check a shared pod's dies before its runtime starts (the k80s-guard init container).

    Reads K80S_ASSIGNMENT, CUDA_VISIBLE_DEVICES and NVIDIA_VISIBLE_DEVICES and NVML's free memory
    (no CUDA context). Prints one line per die and exits 0, or names every problem and exits 1.
    """
    import os

    from k80s import guard as guard_check

    result = guard_check.check(os.environ, guard_check.read_free_mib(nvml_library))
    for die in result.dies:
        click.echo(die.line())
    for problem in result.problems:
        click.echo(f"k80s guard: {problem}", err=True)
    if not result.ok:
        sys.exit(1)


main.add_command(cluster)

from k80s.demo import demo  # noqa: E402 - registered last, like `cluster`

main.add_command(demo)
