"""The simulated backend: idle dies exactly as design.md, files, and injected faults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from k80s.core.errors import DeviceError, InvalidSpec
from k80s.core.inventory import simulated_dies
from k80s.plugin.health import HealthPolicy, XidEvent
from k80s.plugin.monitor import DieMonitor
from k80s.plugin.settings import APPLICATION_XIDS, STICKY_XIDS
from k80s.plugin.simulated import SimulatedBackend, load_simulation, parse_simulation

EXAMPLE = Path(__file__).resolve().parents[2] / "plugin" / "examples" / "simulate-2xK80.yaml"


def monitor(backend: SimulatedBackend, recovery_s: float = 600.0) -> DieMonitor:
    return DieMonitor(backend, HealthPolicy(APPLICATION_XIDS, STICKY_XIDS, recovery_s), 68, poll_s=5.0)


def test_idle_simulated_die_is_exactly_the_design_numbers() -> None:
    m = monitor(SimulatedBackend.from_spec("4xK80", "node-a"))
    state = m.step(0)
    assert len(state.dies) == 8 and state.inventory().boards == 4
    for d in state.inventory().dies:
        assert (d.total_mib, d.nvml_free_mib, d.free_mib, d.used_mib) == (11441, 11434, 11366, 7)
        assert d.health == "Healthy" and d.compute_capability == "3.7" and d.allocated_to is None
    assert [d.uuid for d in state.inventory().dies] == [d.uuid for d in simulated_dies("node-a", 4)]
    assert state.driver.startswith("470.")


def test_context_reserve_is_subtracted() -> None:
    m = DieMonitor(SimulatedBackend.from_spec("1xK80", "n"), HealthPolicy(frozenset(), frozenset(), 1), 100, 5.0)
    assert m.step(0).dies[0].info.free_mib == 11434 - 100


def test_die_file_and_example(tmp_path: Path) -> None:
    ids, used, driver = load_simulation(str(EXAMPLE), "node-x")
    assert len(ids) == 4 and driver.startswith("470.")
    assert ids[0].board == ids[1].board != ids[2].board
    text = json.dumps({"driver": "470.1", "dies": [
        {"uuid": "GPU-x", "index": 1, "board": "B1", "usedMiB": 100},
        {"uuid": "GPU-y", "index": 0, "board": "B1", "totalMiB": 12000}]})
    ids, used, driver = parse_simulation(text, "n")
    assert [d.uuid for d in ids] == ["GPU-y", "GPU-x"] and used == {"GPU-x": 100, "GPU-y": 7}
    assert ids[0].total_mib == 12000 and driver == "470.1"
    assert len(parse_simulation("boards: 3", "n")[0]) == 6


@pytest.mark.parametrize(("text", "fragment"), [
    ("[1, 2]", "expected a mapping"),
    ("boards: 0", "boards"),
    ("dies: []", "non-empty"),
    ("dies: [{index: 0}]", "uuid"),
    ("dies: [{uuid: a, board: b}, {uuid: a, board: b}]", "unique"),
    ("dies: [{uuid: a, board: b, usedMiB: 99999}]", "usedMiB"),
    ("{{{", "not valid YAML"),
])
def test_bad_die_files_are_named(text: str, fragment: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        parse_simulation(text, "n", where="f.yaml")
    assert fragment in str(info.value) and "f.yaml" in str(info.value)


def test_bad_simulate_spec() -> None:
    with pytest.raises(InvalidSpec, match="neither a node shape"):
        load_simulation("3xV100", "n")


def test_injected_faults_take_the_xid_health_path() -> None:
    backend = SimulatedBackend.from_spec("2xK80", "node-a")
    seen: list[tuple[XidEvent, bool]] = []
    m = monitor(backend)
    m.on_xid = lambda event, critical, hit: seen.append((event, critical))
    m.step(0)
    backend.inject_xid(2, 31)  # application XID: counted, ignored
    backend.inject_xid(1, 32)
    state = m.step(1)
    assert [d.health.healthy for d in state.dies] == [True, False, True, True]
    assert [(e.xid, c) for e, c in seen] == [(31, False), (32, True)]
    backend.set_used_mib(0, 5000)
    state = m.step(1)
    assert state.dies[0].info.used_mib == 5000 and state.dies[0].info.free_mib == 11441 - 5000 - 68
    backend.set_query_error(3, "GPU is lost")
    assert not m.step(0).dies[3].health.healthy
    backend.set_query_error(3, None)
    backend.set_nvml_error("Driver Not Loaded")
    state = m.step(0)
    assert not any(d.health.healthy for d in state.dies) and not state.backend_ok
    with pytest.raises(DeviceError):
        backend.read()
    backend.set_nvml_error(None)
    state = m.step(0)
    assert state.backend_ok and [d.health.healthy for d in state.dies] == [True, False, True, True]


def test_faults_file_is_followed_and_bad_lines_skipped(tmp_path: Path) -> None:
    faults = tmp_path / "faults.jsonl"
    backend = SimulatedBackend.from_spec("2xK80", "node-a", str(faults))
    m = monitor(backend)
    uuid3 = m.step(0).dies[3].identity.uuid
    faults.write_text('{"die": 0, "xid": 79}\nnot json\n{"die": 99, "xid": 1}\n'
                      f'{{"die": "{uuid3}", "usedMiB": 1000}}\n{{"die": 2, "xid"')  # last line incomplete
    state = m.step(1)
    assert [d.health.healthy for d in state.dies] == [False, False, True, True]  # 79: whole board
    assert state.dies[3].info.used_mib == 1000
    with faults.open("a") as f:
        f.write(': 32}\n{"nvmlError": "boom"}\n')
    state = m.step(1)
    assert not any(d.health.healthy for d in state.dies)
    with faults.open("a") as f:
        f.write('{"nvmlError": null}\n')
    state = m.step(1)
    assert [d.health.healthy for d in state.dies] == [False, False, False, True]


def test_recovery_after_the_quiet_period() -> None:
    clock = [0.0]
    backend = SimulatedBackend.from_spec("1xK80", "n")
    m = DieMonitor(backend, HealthPolicy(APPLICATION_XIDS, STICKY_XIDS, 10.0), 68, 5.0, clock=lambda: clock[0])
    m.step(0)
    backend.inject_xid(0, 32)
    assert not m.step(0).dies[0].health.healthy
    clock[0] = 9.9
    assert not m.step(0).dies[0].health.healthy
    clock[0] = 10.0
    assert m.step(0).dies[0].health.healthy


def test_the_example_faults_file_applies_cleanly(caplog: object) -> None:
    import logging

    faults = EXAMPLE.parent / "faults.jsonl"
    backend = SimulatedBackend.from_spec("2xK80", "n", str(faults))
    m = monitor(backend)
    m.step(0)
    state = m.step(0.2)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "bad fault" in r.getMessage()]  # type: ignore[attr-defined]
    assert [d.health.healthy for d in state.dies] == [True, False, False, False]  # 79 on die 3: board 1; die 1 lost
    assert state.dies[0].info.used_mib == 9857 and state.backend_ok
