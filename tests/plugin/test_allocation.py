"""GetPreferredAllocation and Allocate as pure functions (k80s.plugin.allocation)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from k80s.core.errors import InvalidSpec
from k80s.core.inventory import simulated_dies
from k80s.core.placement import preferred_dies
from k80s.plugin.allocation import check_allocate, container_allocation, preferred_answer
from k80s.plugin.simulated import shape_identities

IDS = shape_identities("node-a", 8)  # 8xK80: 16 dies
INFOS = simulated_dies("node-a", 8)
UUIDS = [d.uuid for d in IDS]


@given(st.lists(st.sampled_from(UUIDS), min_size=1, max_size=16, unique=True), st.randoms())
def test_allocate_is_a_pure_function_of_the_id_set(ids: list[str], rnd: object) -> None:
    shuffled = list(ids)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    a, b = container_allocation(IDS, ids), container_allocation(IDS, shuffled)
    assert a == b
    by = {d.uuid: d for d in IDS}
    order = [(int(by[u].board), by[u].index) for u in a.device_ids]
    assert order == sorted(order)  # lower board, then lower index
    assert set(a.device_ids) == set(ids)


def test_allocate_order_is_preferred_dies_order_and_sets_env_and_devices() -> None:
    ids = [UUIDS[5], UUIDS[2], UUIDS[4], UUIDS[3]]
    a = container_allocation(IDS, ids)
    expected = tuple(d.uuid for d in preferred_dies(INFOS, set(UUIDS) - set(ids), 4, tuple(ids)))
    assert a.device_ids == expected == (UUIDS[2], UUIDS[3], UUIDS[4], UUIDS[5])
    visible = ",".join(expected)
    assert dict(a.envs) == {"CUDA_VISIBLE_DEVICES": visible, "NVIDIA_VISIBLE_DEVICES": visible,
                            "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    paths = [(n.container_path, n.host_path, n.permissions) for n in a.devices]
    assert paths == [("/dev/nvidia2", "/dev/nvidia2", "rw"), ("/dev/nvidia3", "/dev/nvidia3", "rw"),
                     ("/dev/nvidia4", "/dev/nvidia4", "rw"), ("/dev/nvidia5", "/dev/nvidia5", "rw"),
                     ("/dev/nvidiactl", "/dev/nvidiactl", "rw"), ("/dev/nvidia-uvm", "/dev/nvidia-uvm", "rw"),
                     ("/dev/nvidia-uvm-tools", "/dev/nvidia-uvm-tools", "rw")]


HEALTH = {u: (True, "") for u in UUIDS} | {UUIDS[1]: (False, "XID 79 (sticky until the GPU is reset)")}


@pytest.mark.parametrize(("ids", "fragment"), [
    ([], "is empty"),
    ([UUIDS[0], UUIDS[0]], "more than once"),
    (["GPU-nope"], "unknown device ID 'GPU-nope'"),
    (["x" * 10_000], "unknown device ID"),
    ([UUIDS[1]], "is Unhealthy (XID 79"),
])
def test_bad_allocate_requests_are_refused_clearly(ids: list[str], fragment: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        check_allocate(ids, HEALTH)
    assert fragment in str(info.value)
    assert len(str(info.value)) < 1000


def test_good_allocate_request_passes() -> None:
    check_allocate([UUIDS[0], UUIDS[2]], HEALTH)


def test_preferred_two_dies_are_one_whole_board() -> None:
    # board 0 half used (die 0 taken): a 2-die pod gets board 1, not die 1 + die 2
    available = UUIDS[1:6]
    assert preferred_answer(INFOS, available, [], 2) == (UUIDS[2], UUIDS[3])


def test_preferred_one_die_fills_a_half_used_board() -> None:
    available = [UUIDS[0], UUIDS[1], UUIDS[2], UUIDS[5], UUIDS[6], UUIDS[7]]  # board 1 and 2 half used
    assert preferred_answer(INFOS, available, [], 1) == (UUIDS[2],)


def test_preferred_honours_must_include() -> None:
    available = UUIDS[:8]
    got = preferred_answer(INFOS, available, [UUIDS[5]], 2)
    assert UUIDS[5] in got and got == (UUIDS[4], UUIDS[5])  # its board partner
    got = preferred_answer(INFOS, available, [UUIDS[7], UUIDS[0]], 3)
    assert {UUIDS[7], UUIDS[0]} <= set(got) and len(got) == 3


def test_preferred_ignores_unknown_ids_and_never_raises() -> None:
    assert preferred_answer(INFOS, ["GPU-nope", UUIDS[3]], [], 1) == (UUIDS[3],)
    assert preferred_answer(INFOS, [UUIDS[3]], [], 2) == ()  # cannot be met: kubelet chooses
    assert preferred_answer(INFOS, [], [], 0) == ()
