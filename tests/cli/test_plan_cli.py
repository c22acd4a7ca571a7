"""`k80s plan` on YAML cluster descriptions (the live-cluster path is tested end to end)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from k80s.cli import main

CLUSTER = """
nodes:
  - {shape: 2xK80, count: 2, name: gpu}
  - {shape: 1xK80, name: small, freeMiB: [11366, 3000]}
"""


def md(name: str, model: str, replicas: int, *, ctx: int = 4096, max_dies: int = 8, namespace: str = "default",
       runtime: str = "llamacpp", sharing: str | None = None) -> str:
    return (
        f"apiVersion: k80s.io/v1alpha1\nkind: ModelDeployment\nmetadata: {{name: {name}, namespace: {namespace}}}\n"
        f"spec:\n  model: {{name: \"{model}\"}}\n  runtime: {{kind: {runtime}}}\n  replicas: {replicas}\n"
        f"  maxDies: {max_dies}\n  options: {{numCtx: {ctx}}}\n" + (f"  sharing: {sharing}\n" if sharing else "")
    )


def run_plan(tmp_path: Path, manifests: str, *args: str, cluster: str = CLUSTER) -> tuple[int, Any, str]:
    (tmp_path / "cluster.yaml").write_text(cluster)
    (tmp_path / "mds.yaml").write_text(manifests)
    result = CliRunner().invoke(
        main, ["plan", "-f", str(tmp_path / "mds.yaml"), "--cluster", str(tmp_path / "cluster.yaml"), "--json", *args]
    )
    data = json.loads(result.stdout) if result.exit_code == 0 else None
    return result.exit_code, data, result.stderr


def test_two_die_replicas_take_whole_boards_and_small_models_fill_the_rest(tmp_path: Path) -> None:
    code, plan, _ = run_plan(tmp_path, md("g12", "gemma3:12b", 3) + "---\n" + md("g4", "gemma3:4b", 2, namespace="t"))
    assert code == 0 and plan["allPlaced"]
    got = [(p["modelDeployment"], p["node"], p["dieIndices"], p["tensorSplit"]) for p in plan["placements"]]
    assert got == [
        ("default/g12", "gpu-0", [0, 1], [1, 48]),
        ("default/g12", "gpu-0", [2, 3], [1, 48]),
        ("default/g12", "gpu-1", [0, 1], [1, 48]),
        ("t/g4", "gpu-1", [2], [35]),
        ("t/g4", "gpu-1", [3], [35]),
    ]


def test_unplaced_replicas_carry_the_reasons_and_scale_up_counts_nodes(tmp_path: Path) -> None:
    code, plan, _ = run_plan(tmp_path, md("g12", "gemma3:12b", 6), "--node-shape", "4xK80", "--max-nodes", "5")
    assert code == 0 and not plan["allPlaced"]
    assert len(plan["placements"]) == 4 and len(plan["unplaced"]) == 2
    reasons = plan["unplaced"][0]["reasons"]
    assert reasons["small"] == (
        "needs one die with > 8.6 GiB and one with > 3.3 GiB free; the dies it would get (0, 1) have 11.0, 2.9 GiB free"
    )
    assert plan["scaleUp"] == {"nodeShape": "4xK80", "nodeMode": "exclusive", "maxNodes": 5, "nodes": 1}


def test_a_model_that_fits_no_allowed_die_count_is_reported(tmp_path: Path) -> None:
    code, plan, _ = run_plan(tmp_path, md("huge", "deepseek-r1:32b", 1, max_dies=1))
    assert code == 0 and not plan["allPlaced"] and plan["placements"] == []
    (entry,) = plan["modelDeployments"]
    assert entry["fits"] is False and entry["estimate"]["layersOffloaded"] < entry["estimate"]["layersTotal"]


def test_scale_up_beyond_max_nodes_is_null(tmp_path: Path) -> None:
    code, plan, _ = run_plan(tmp_path, md("g12", "gemma3:12b", 20), "--node-shape", "2xK80", "--max-nodes", "2")
    assert code == 0 and plan["scaleUp"]["nodes"] is None


@pytest.mark.parametrize(
    ("cluster", "message"),
    [
        ("nodes: []", "non-empty list"),
        ("nodes: [{shape: 4xA100}]", "<boards>xK80"),
        ("nodes: [{shape: 1xK80, freeMiB: [1]}]", "freeMiB: expected 2 non-negative MiB values"),
        ("nodes: [{shape: 1xK80, unhealthy: [5]}]", "not a die index"),
        ("nodes: [{shape: 1xK80, name: a}, {shape: 1xK80, name: a}]", "node names repeat"),
    ],
)
def test_bad_cluster_files_are_one_clear_line(tmp_path: Path, cluster: str, message: str) -> None:
    code, _, err = run_plan(tmp_path, md("g", "gemma3:4b", 1), cluster=cluster)
    assert code == 1 and message in err and "Traceback" not in err


def test_unknown_model_is_reported_per_deployment(tmp_path: Path) -> None:
    code, plan, _ = run_plan(tmp_path, md("x", "nosuch:1b", 1), "--registry-url", "http://127.0.0.1:9")
    assert code == 0
    (entry,) = plan["modelDeployments"]
    assert entry["error"] and entry["fits"] is False


def test_human_output(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(CLUSTER)
    (tmp_path / "m.yaml").write_text(md("g12", "gemma3:12b", 5))
    result = CliRunner().invoke(main, ["plan", "-f", str(tmp_path / "m.yaml"), "--cluster", str(tmp_path / "c.yaml"),
                                       "--node-shape", "2xK80"])
    assert result.exit_code == 0
    assert "default/g12 replica 4 not placed" in result.stdout
    assert "1 more 2xK80 node would place every replica" in result.stdout


def test_nothing_to_plan_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(CLUSTER)
    result = CliRunner().invoke(main, ["plan", "--cluster", str(tmp_path / "c.yaml")])
    assert result.exit_code == 2 and "no ModelDeployments" in result.stderr


# -- shared pools -------------------------------------------------------------------------------------

POOLS = """
nodes:
  - {shape: 2xK80, name: ex}
  - {shape: 2xK80, name: sh, mode: shared}
"""


def test_shared_deployments_take_slots_on_the_shared_pool_and_the_rest_stays_exclusive(tmp_path: Path) -> None:
    manifests = md("g12", "gemma3:12b", 5, sharing="shared") + "---\n" + md("g4", "gemma3:4b", 1, runtime="ollama")
    code, plan, _ = run_plan(tmp_path, manifests, "--node-shape", "2xK80", "--max-nodes", "3", cluster=POOLS)
    assert code == 0 and not plan["allPlaced"]
    got = [(p["modelDeployment"], p["node"], p["sharing"], p["dieIndices"], p["slotMiB"]) for p in plan["placements"]]
    assert got == [
        ("default/g12", "sh", "shared", [0, 1], [663, 9971]),
        ("default/g12", "sh", "shared", [1, 0], [663, 9971]),
        ("default/g12", "sh", "shared", [2, 3], [663, 9971]),
        ("default/g12", "sh", "shared", [3, 2], [663, 9971]),
        ("default/g4", "ex", "exclusive", [0], None),
    ]
    assert [p["tensorSplit"] for p in plan["placements"]][:1] == [[1, 48]]
    assert [(d["node"], d["index"], d["reservedMiB"]) for d in plan["sharedDies"]] == [
        ("sh", i, 10634) for i in range(4)
    ]
    (left,) = plan["unplaced"]
    assert left["reasons"] == {
        "ex": "node pool is exclusive (k80s.io/mode=exclusive); shared pods need k80s.io/mode=shared",
        "sh": "needs 663 + 9971 MiB on two dies of one board; most room per die: 800, 800, 800, 800 MiB",
    }
    entry = {m["name"]: m for m in plan["modelDeployments"]}
    assert entry["default/g12"]["sharing"] == "shared" and entry["default/g12"]["slotMiB"] == [663, 9971]
    assert entry["default/g4"]["sharing"] == "exclusive" and entry["default/g4"]["slotMiB"] is None
    # Only shared replicas are left, so new nodes join the shared pool.
    assert plan["scaleUp"] == {"nodeShape": "2xK80", "nodeMode": "shared", "maxNodes": 3, "nodes": 1}


def test_shared_what_if_shares_every_llamacpp_deployment_on_every_node(tmp_path: Path) -> None:
    manifests = md("g12", "gemma3:12b", 4) + "---\n" + md("g4", "gemma3:4b", 2) + "---\n" + md(
        "o", "gemma3:4b", 1, runtime="ollama")
    code, plan, _ = run_plan(tmp_path, manifests, "--shared", cluster="nodes: [{shape: 2xK80, name: a}]")
    assert code == 0
    shared = [(p["modelDeployment"], p["dieIndices"], p["slotMiB"]) for p in plan["placements"]]
    # Four gemma3:12b fill the board pairs mirrored; 800 MiB per die is left, too little for gemma3:4b.
    assert shared == [("default/g12", [0, 1], [663, 9971]), ("default/g12", [1, 0], [663, 9971]),
                      ("default/g12", [2, 3], [663, 9971]), ("default/g12", [3, 2], [663, 9971])]
    reasons = {(r["modelDeployment"], r["replica"]): r for r in plan["unplaced"]}
    assert reasons[("default/g4", 0)]["reasons"]["a"] == (
        "needs 4785 MiB on one die; most room per die: 800, 800, 800, 800 MiB")
    ollama = reasons[("default/o", 0)]
    assert ollama["unresolvable"] and ollama["reasons"] == {
        "a": "node is in shared mode: it offers no k80s.io/die for a whole-die pod"}
    # Without --shared the same manifests are all exclusive: two gemma3:12b take both boards.
    code, plain, _ = run_plan(tmp_path, manifests, cluster="nodes: [{shape: 2xK80, name: a}]")
    assert code == 0 and all(p["sharing"] == "exclusive" for p in plain["placements"])
    assert len(plain["placements"]) == 2 and plain["sharedDies"] == []


def test_shared_human_output_shows_slots_and_a_slot_too_big_for_a_die(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(POOLS)
    (tmp_path / "m.yaml").write_text(md("g12", "gemma3:12b", 1, sharing="shared") + "---\n"
                                     + md("g27", "gemma3:27b", 1, sharing="shared"))
    result = CliRunner().invoke(main, ["plan", "-f", str(tmp_path / "m.yaml"), "--cluster", str(tmp_path / "c.yaml")])
    assert result.exit_code == 0, result.output
    assert "663 + 9971 MiB" in result.stdout
    assert "sh  0: 663, 1: 9971, 2: 0, 3: 0" in result.stdout
    assert "default/g27: cannot share: its slots (7570 + 12407 MiB" in result.stdout
    assert "exceed what one die offers (11434 MiB)" in result.stdout


@pytest.mark.parametrize(
    ("cluster", "manifest", "message"),
    [
        ("nodes: [{shape: 1xK80, mode: pooled}]", md("g", "gemma3:4b", 1), "nodes[0].mode: 'pooled' is not one of"),
        (CLUSTER, md("g", "gemma3:4b", 1, sharing="sometimes"), "spec.sharing: 'sometimes' is not one of"),
        (CLUSTER, md("g", "gemma3:4b", 1, runtime="ollama", sharing="shared"), "spec.sharing: shared needs runtime"),
    ],
)
def test_bad_modes_name_the_field(tmp_path: Path, cluster: str, manifest: str, message: str) -> None:
    code, plan, err = run_plan(tmp_path, manifest, cluster=cluster)
    if plan is not None:  # a bad ModelDeployment is reported per deployment, the others still planned
        (entry,) = plan["modelDeployments"]
        err = entry["error"]
    assert message in err and "Traceback" not in err


def test_a_partly_used_die_in_the_cluster_file_takes_no_slots(tmp_path: Path) -> None:
    cluster = "nodes: [{shape: 1xK80, name: old, freeMiB: [11366, 4000], mode: shared}]"
    code, plan, _ = run_plan(tmp_path, md("g12", "gemma3:12b", 1, sharing="shared"), cluster=cluster)
    assert code == 0 and plan["placements"] == []
    # 11441 − (4000 + 68) = 7373 MiB in use with nothing reserved: the extender's overuse rule skips it.
    assert plan["unplaced"][0]["reasons"]["old"].endswith("; die 1 overused (NVML 7373 MiB in use, ledger 0 MiB)")
