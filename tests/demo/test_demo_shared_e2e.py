"""`k80s demo --shared --no-live` end to end, as a person runs it: a subprocess on the cached
control-plane binaries, one simulated 2xK80 node whose device plugin runs in `--mode shared`, the
extender binding shared pods with their `k80s.io/assignment`, the k80s scheduler and the operator.

With --keep the settled view is printed once while the cluster still runs, so the test reads the
pods' assignments from the API server and checks the printed MiB per die and per pod, and the
summary's die counts, against them; then Ctrl-C stops every process."""

from __future__ import annotations

import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes.config
import pytest

from k80s.core.sharing import (
    ASSIGNMENT,
    SHARE_MARGIN_MIB,
    SHAREABLE_DIE_MIB,
    Assignment,
)
from tests.demo.test_demo_e2e import (  # noqa: F401 - fixture
    COMMAND,
    RUN_TIMEOUT_S,
    Running,
    run_demo,
    survivors,
)

pytestmark = pytest.mark.controlplane

MIX = ["--nodes", "1", "--shape", "2xK80", "--models", "gemma3:12b,gemma3:12b,gemma3:4b,gemma3:27b"]


def shared_die_lines(output: str) -> list[list[str]]:
    """Cells of the shared die table: node, board, die, reserved/offers, held by, layers, MiB, pod;
    node, board and die carried down to the lines of the other pods on the same die."""
    start = output.rindex("nodes → boards → dies (shared")
    rows: list[list[str]] = []
    node = board = die = room = ""
    for line in output[start:].splitlines()[4:]:
        if line.startswith("└"):
            break
        cells = [c.strip() for c in line.strip("│").split("│")]
        node, board = cells[0] or node, cells[1] or board
        if cells[2]:
            die, room = cells[2], cells[3]
        rows.append([node, board, die, room, *cells[4:]])
    return rows


def test_shared_demo_settles_shares_a_die_and_prints_the_assignments_mib(
    k8s_bins: Path, tmp_path: Path, run_demo: list[Running]  # noqa: F811
) -> None:
    workdir = tmp_path / "demo"
    process = subprocess.Popen([*COMMAND, "--shared", *MIX, "--keep", "--no-live", "--workdir", str(workdir),
                                "--bin-dir", str(k8s_bins), "--timeout", "150"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    run = Running(process)
    run_demo.append(run)
    threading.Thread(target=run.read, daemon=True).start()
    run.wait_for_line("the cluster keeps running", RUN_TIMEOUT_S)  # printed once every ModelDeployment settled
    out = run.output
    assert "1 simulated 2xK80 node with device-plugin processes (--mode shared)" in out
    assert "4 of 4 ModelDeployments settled" in out

    client = kubernetes.config.new_client_from_config(str(workdir / "kubeconfig"))
    try:
        core = kubernetes.client.CoreV1Api(client)
        node: Any = core.read_node("k80s-node-0")
        pods: Any = core.list_namespaced_pod("k80s-demo").items
        custom = kubernetes.client.CustomObjectsApi(client)
        mds: Any = custom.list_namespaced_custom_object("k80s.io", "v1alpha1", "k80s-demo", "modeldeployments")
    finally:
        client.close()
    assert node.metadata.labels["k80s.io/mode"] == "shared"
    assert "k80s.io/die" not in (node.status.allocatable or {})

    # What the binder wrote: die index → {pod: MiB}
    held: dict[str, dict[str, int]] = {}
    for pod in pods:
        assignment = Assignment.from_json(pod.metadata.annotations[ASSIGNMENT])
        assert assignment.node == pod.spec.node_name == "k80s-node-0"
        for d in assignment.dies:
            held.setdefault(str(d.index), {})[pod.metadata.name] = d.mib
    assert len(pods) == 3  # gemma3:27b cannot share: no pod
    assert any(len(on_die) >= 2 for on_die in held.values())  # a die shared by two pods

    lines = shared_die_lines(out)
    printed: dict[str, dict[str, int]] = {}
    rooms: dict[str, str] = {}
    for _node, _board, die, room, holder, _layers, mib, pod in lines:
        rooms[die] = room
        if holder != "free":
            printed.setdefault(die, {})[pod] = int(mib)
    assert printed == held
    assert sorted(rooms) == ["0", "1", "2", "3"]
    for die, room in rooms.items():
        assert room == f"{sum(held.get(die, {}).values())}/{SHAREABLE_DIE_MIB}"

    by_name = {m["metadata"]["name"]: m for m in mds["items"]}
    fits = {name: next(c for c in m["status"]["conditions"] if c["type"] == "Fits")["status"]
            for name, m in by_name.items()}
    assert fits == {"gemma3-12b": "True", "gemma3-12b-2": "True", "gemma3-4b": "True", "gemma3-27b": "False"}
    whole = sum(m["status"]["estimate"]["diesUsed"] for name, m in by_name.items() if fits[name] == "True")
    multi = sum(len(v) >= 2 for v in held.values())
    assert f"k80s placed 3 of 4 models on {len(held)} of 4 shared dies ({multi} hold{'s' if multi == 1 else ''} " in out
    assert f"whole-die (exclusive) placement of the same ModelDeployments would need {whole}: " in out
    assert f"+ {SHARE_MARGIN_MIB} MiB margin, assumed" in out
    assert "cannot share (a slot exceeds one die): gemma3-27b" in out

    process.send_signal(signal.SIGINT)
    assert process.wait(90) == 130, run.output
    assert survivors(workdir) == []
