"""The NVML backend against a stand-in libnvidia-ml.so.1 built here from tests/plugin/standin_nvml.c.

pynvml loads `CDLL("libnvidia-ml.so.1")`; each test runs in a subprocess whose LD_LIBRARY_PATH
points at the stand-in (or passes its path as --nvml-library), so the real ctypes binding code
runs, including the calls the stand-in lacks, as the R470 driver does.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from k80s.localcluster.devices import PluginDeviceManager
from tests.plugin.harness import build_standin, free_port, plugin_process, short_root, standin_env, stop_process, wait_until

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None, reason="no C compiler")


@pytest.fixture(scope="module")
def libs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("standin")
    return {"r470": build_standin(base / "r470").parent, "stripped": build_standin(base / "stripped", stripped=True).parent}


@pytest.fixture
def control(tmp_path: Path) -> Path:
    path = tmp_path / "nvml-control"
    path.write_text("dies 4\n")
    return path


def run_py(code: str, env: dict[str, str], timeout_s: float = 60) -> Any:
    """Run `code` in a fresh interpreter; it prints one JSON document last."""
    prelude = "import json, logging, sys\nlogging.basicConfig(level=logging.WARNING, stream=sys.stderr)\n"
    done = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=timeout_s)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_standin_is_loaded_by_pynvml_and_lacks_post_r470_calls(libs: dict[str, Path], control: Path) -> None:
    out = run_py("""
        import pynvml
        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        def outcome(call):
            try:
                call()
                return "ok"
            except Exception as exc:  # pynvml raises NVMLError or NVMLLibraryMismatchError
                return type(exc).__name__
        print(json.dumps({
            "count": pynvml.nvmlDeviceGetCount(),
            "name": pynvml.nvmlDeviceGetName(h),
            "v1_memory_total": pynvml.nvmlDeviceGetMemoryInfo(h).total,
            "memory_v2": outcome(lambda: pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)),
            "processes_v3": outcome(lambda: pynvml.nvmlDeviceGetComputeRunningProcesses(h)),
            "wait_v3": hasattr(pynvml.nvmlLib, "nvmlEventSetWait_v3"),
            "lib": pynvml.nvmlLib._name,
        }))
    """, standin_env(libs["r470"], control))
    assert out["count"] == 4 and out["name"] == "Tesla K80" and out["v1_memory_total"] == 11441 << 20
    # nvidia-ml-py 13 maps these to symbols added after R470: they fail, so the plugin never calls them
    assert out["memory_v2"] in ("NVMLError_FunctionNotFound", "NVMLLibraryMismatchError")
    assert out["processes_v3"] in ("NVMLError_FunctionNotFound", "NVMLLibraryMismatchError")
    assert out["wait_v3"] is False and out["lib"] == "libnvidia-ml.so.1"


BACKEND = """
        import os
        from k80s.plugin.health import HealthPolicy
        from k80s.plugin.monitor import DieMonitor
        from k80s.plugin.nvml import NvmlBackend
        from k80s.plugin.settings import APPLICATION_XIDS, STICKY_XIDS
        backend = NvmlBackend(os.environ.get("TEST_NVML_LIBRARY", ""))
        monitor = DieMonitor(backend, HealthPolicy(APPLICATION_XIDS, STICKY_XIDS, 600.0), 68, 5.0)
        control = os.environ["K80S_STANDIN_NVML"]
        def add(line):
            with open(control, "a") as f:
                f.write(line + "\\n")
        def health(state):
            return [d.health.healthy for d in state.dies]
"""


def test_backend_enumerates_k80_dies_with_r470_calls(libs: dict[str, Path], control: Path) -> None:
    control.write_text("dies 4\nused 1 500\n")
    out = run_py(BACKEND + """
        state = monitor.step(0)
        print(json.dumps({"dies": [d.info.to_dict() for d in state.dies], "minors": [d.identity.minor for d in state.dies],
                          "driver": state.driver, "events": state.events_supported,
                          "missing": sorted(backend.missing_symbols)}))
        backend.close()
    """, standin_env(libs["r470"], control))
    dies = out["dies"]
    assert [d["index"] for d in dies] == [0, 1, 2, 3] and out["minors"] == [0, 1, 2, 3]
    assert dies[0]["board"] == dies[1]["board"] == "0324016102900" != dies[2]["board"] == dies[3]["board"]
    assert all(d["computeCapability"] == "3.7" and d["totalMiB"] == 11441 for d in dies)
    assert (dies[0]["nvmlFreeMiB"], dies[0]["freeMiB"], dies[0]["usedMiB"]) == (11434, 11366, 7)
    assert (dies[1]["nvmlFreeMiB"], dies[1]["freeMiB"], dies[1]["usedMiB"]) == (10941, 10873, 500)
    assert dies[2]["pciBusId"] == "00000000:06:00.0" and dies[0]["uuid"].startswith("GPU-")
    assert out["driver"] == "470.256.02" and out["events"] is True and out["missing"] == []


def test_xid_events_drive_health(libs: dict[str, Path], control: Path) -> None:
    out = run_py(BACKEND + """
        monitor.step(0)
        add("xid 1 13")          # application XID: ignored
        s1 = monitor.step(2)
        add("xid 2 79")          # fallen off the bus: the whole board
        s2 = monitor.step(2)
        add("xid -1 62")         # an event without a device: every die
        s3 = monitor.step(2)
        print(json.dumps([health(s1), health(s2), health(s3), s2.dies[2].health.reason]))
        backend.close()
    """, standin_env(libs["r470"], control))
    assert out[0] == [True, True, True, True]
    assert out[1] == [True, True, False, False] and "XID 79" in out[3]
    assert out[2] == [False, False, False, False]


def test_without_event_support_health_is_polled(libs: dict[str, Path], control: Path) -> None:
    control.write_text("dies 4\nnoevents 1\n")
    out = run_py(BACKEND + """
        s0 = monitor.step(0)
        add("queryfail 0 15")    # GPU is lost, seen by the polling read
        t = __import__("time").monotonic()
        s1 = monitor.step(0.2)
        waited = __import__("time").monotonic() - t
        print(json.dumps([s0.events_supported, health(s0), health(s1), s1.dies[0].health.reason, waited]))
        backend.close()
    """, standin_env(libs["r470"], control))
    assert out[0] is False and out[1] == [True] * 4
    assert out[2] == [False, True, True, True] and "GPU is lost" in out[3]
    assert 0.15 <= out[4] < 2


def test_stripped_library_degrades_without_crashing(libs: dict[str, Path], control: Path) -> None:
    env = standin_env(Path("/nonexistent"), control) | {"TEST_NVML_LIBRARY": str(libs["stripped"] / "libnvidia-ml.so.1")}
    out = run_py(BACKEND + """
        state = monitor.step(0)
        print(json.dumps({"missing": sorted(backend.missing_symbols), "events": state.events_supported,
                          "boards": [d.info.board for d in state.dies], "minors": [d.identity.minor for d in state.dies],
                          "cc": [d.info.compute_capability for d in state.dies], "health": health(state)}))
        backend.close()
    """, env)
    assert {"nvmlDeviceGetBoardId", "nvmlDeviceGetMinorNumber", "nvmlDeviceGetCudaComputeCapability",
            "nvmlEventSetWait_v2"} <= set(out["missing"])
    assert out["events"] is False and out["health"] == [True] * 4
    assert out["minors"] == [0, 1, 2, 3]  # fallback: the index
    assert out["boards"][0] == out["boards"][1] != out["boards"][2]  # fallback: the board serial
    assert out["cc"] == [""] * 4


def test_nvml_failure_makes_every_die_unhealthy_and_recovers(libs: dict[str, Path], control: Path) -> None:
    out = run_py(BACKEND + """
        s0 = monitor.step(0)
        add("fail 9")            # driver not loaded
        s1 = monitor.step(0.1)
        open(control, "w").write("dies 4\\n")
        s2 = monitor.step(0.1)
        print(json.dumps([health(s0), health(s1), s1.error, s1.backend_ok, health(s2), s2.backend_ok]))
        backend.close()
    """, standin_env(libs["r470"], control))
    assert out[0] == [True] * 4 and out[1] == [False] * 4
    assert "Driver Not Loaded" in out[2] and out[3] is False
    assert out[4] == [True] * 4 and out[5] is True


def test_nvml_init_failure_is_a_clear_device_error(libs: dict[str, Path], control: Path) -> None:
    control.write_text("fail 9\n")
    out = run_py(BACKEND + """
        from k80s.core.errors import DeviceError
        try:
            backend.open()
            print(json.dumps("opened"))
        except DeviceError as exc:
            print(json.dumps(str(exc)))
    """, standin_env(libs["r470"], control))
    assert out.startswith("NVML init failed:") and "Driver Not Loaded" in out


@pytest.fixture
def kubelet() -> Iterator[PluginDeviceManager]:
    root = short_root()
    manager = PluginDeviceManager(root)
    manager.start(lambda c, a: None)
    yield manager
    manager.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("variant", ["r470", "stripped"])
def test_plugin_process_on_the_standin_reports_an_xid_to_the_kubelet(
        libs: dict[str, Path], control: Path, kubelet: PluginDeviceManager, variant: str, tmp_path: Path) -> None:
    args = ["--kubelet-root", str(kubelet.root), "--metrics-port", str(free_port()), "--memory-poll-s", "0.2"]
    env = standin_env(libs[variant], control)
    if variant == "stripped":  # also the --nvml-library path, without LD_LIBRARY_PATH
        args += ["--nvml-library", str(libs[variant] / "libnvidia-ml.so.1")]
        env["LD_LIBRARY_PATH"] = ""
    log = tmp_path / "plugin.log"
    proc = plugin_process(args, env, log)
    try:
        wait_until(lambda: kubelet.allocatable() == 4, 30)
        with control.open("a") as f:
            f.write("xid 3 48\n" if variant == "r470" else "queryfail 3 15\n")
        t0 = time.monotonic()
        wait_until(lambda: kubelet.allocatable() == 3, 5)
        elapsed = time.monotonic() - t0
        assert len(kubelet.unhealthy()) == 1
        assert elapsed < 1.0, f"fault reached the kubelet after {elapsed:.3f} s"
    finally:
        assert stop_process(proc) == 0, log.read_text()[-3000:]
    assert "symbol missing" in log.read_text() if variant == "stripped" else True
