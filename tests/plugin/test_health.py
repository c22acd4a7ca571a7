"""Die health rules: pure `die_health` and the XID record (kubernetes.md §4.3)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from k80s.plugin.health import DieObservation, HealthPolicy, HealthRecord, XidEvent, die_health
from k80s.plugin.settings import APPLICATION_XIDS, STICKY_XIDS

POLICY = HealthPolicy(APPLICATION_XIDS, STICKY_XIDS, recovery_s=600.0)
DIES = ("GPU-a0", "GPU-a1", "GPU-b0", "GPU-b1")
BOARDS = {"GPU-a0": "A", "GPU-a1": "A", "GPU-b0": "B", "GPU-b1": "B"}


def verdicts(record: HealthRecord, now: float, **kw: object) -> dict[str, bool]:
    return {u: die_health(record.observe(u, now, **kw), POLICY).healthy for u in DIES}  # type: ignore[arg-type]


def test_a_quiet_die_is_healthy() -> None:
    assert die_health(DieObservation(now_s=0), POLICY).healthy


@given(st.lists(st.sampled_from(sorted(APPLICATION_XIDS)), max_size=20), st.lists(st.sampled_from(DIES), min_size=20, max_size=20))
def test_application_xids_never_make_a_die_unhealthy(xids: list[int], dies: list[str]) -> None:
    record = HealthRecord(POLICY)
    for xid, die in zip(xids, dies):
        assert record.record(XidEvent(xid, die), 1.0, DIES, BOARDS) == ()
    assert all(verdicts(record, 2.0).values())


def test_ignored_xids_are_configurable() -> None:
    policy = HealthPolicy(frozenset({32}), frozenset(), 600.0)
    record = HealthRecord(policy)
    assert record.record(XidEvent(32, "GPU-a0"), 0.0, DIES, BOARDS) == ()
    assert record.record(XidEvent(13, "GPU-a0"), 0.0, DIES, BOARDS) == ("GPU-a0",)


def test_a_critical_xid_makes_only_its_die_unhealthy_then_it_recovers() -> None:
    record = HealthRecord(POLICY)
    record.record(XidEvent(32, "GPU-a1"), 100.0, DIES, BOARDS)
    at_once = verdicts(record, 100.0)
    assert at_once == {"GPU-a0": True, "GPU-a1": False, "GPU-b0": True, "GPU-b1": True}
    health = die_health(record.observe("GPU-a1", 100.0), POLICY)
    assert "XID 32" in health.reason and health.recheck_at_s == 700.0
    assert not verdicts(record, 699.9)["GPU-a1"]
    assert verdicts(record, 700.0)["GPU-a1"]


def test_a_repeat_restarts_the_quiet_period() -> None:
    record = HealthRecord(POLICY)
    record.record(XidEvent(38, "GPU-b0"), 0.0, DIES, BOARDS)
    record.record(XidEvent(38, "GPU-b0"), 500.0, DIES, BOARDS)
    assert not verdicts(record, 1000.0)["GPU-b0"]
    assert verdicts(record, 1100.0)["GPU-b0"]


def test_recovery_needs_the_die_queries_to_succeed() -> None:
    record = HealthRecord(POLICY)
    record.record(XidEvent(32, "GPU-a0"), 0.0, DIES, BOARDS)
    h = die_health(record.observe("GPU-a0", 10_000.0, query_error="GPU is lost"), POLICY)
    assert not h.healthy and "GPU is lost" in h.reason


def test_sticky_xids_never_recover() -> None:
    record = HealthRecord(POLICY)
    record.record(XidEvent(48, "GPU-b1"), 0.0, DIES, BOARDS)
    assert not verdicts(record, 1e9)["GPU-b1"]
    assert "sticky" in die_health(record.observe("GPU-b1", 1e9), POLICY).reason


def test_xid_79_takes_the_whole_board() -> None:
    record = HealthRecord(POLICY)
    assert set(record.record(XidEvent(79, "GPU-a0"), 0.0, DIES, BOARDS)) == {"GPU-a0", "GPU-a1"}
    assert verdicts(record, 1e9) == {"GPU-a0": False, "GPU-a1": False, "GPU-b0": True, "GPU-b1": True}


def test_an_xid_that_names_no_die_hits_every_die() -> None:
    record = HealthRecord(POLICY)
    assert set(record.record(XidEvent(62, None), 0.0, DIES, BOARDS)) == set(DIES)
    assert not any(verdicts(record, 1.0).values())


def test_nvml_failure_makes_every_die_unhealthy() -> None:
    record = HealthRecord(POLICY)
    out = {u: die_health(record.observe(u, 0.0, nvml_ok=False, nvml_error="Driver Not Loaded"), POLICY) for u in DIES}
    assert not any(h.healthy for h in out.values())
    assert all("Driver Not Loaded" in h.reason for h in out.values())


def test_zero_recovery_means_healthy_again_at_once() -> None:
    policy = HealthPolicy(APPLICATION_XIDS, STICKY_XIDS, 0.0)
    record = HealthRecord(policy)
    record.record(XidEvent(32, "GPU-a0"), 5.0, DIES, BOARDS)
    assert die_health(record.observe("GPU-a0", 5.0), policy).healthy


def test_die_health_of_an_observation_alone_uses_the_default_policy() -> None:
    from k80s.plugin.health import DEFAULT_POLICY

    assert DEFAULT_POLICY == POLICY
    assert die_health(DieObservation(now_s=10, last_xid=32, last_xid_at_s=0)).healthy is False
    assert die_health(DieObservation(now_s=601, last_xid=32, last_xid_at_s=0)).healthy is True
