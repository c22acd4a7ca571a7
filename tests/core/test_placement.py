from __future__ import annotations

from dataclasses import replace

from k80s.core.inventory import UNHEALTHY, DieInfo, simulated_dies
from k80s.core.placement import BoundPod, preferred_dies, taken_dies


def node(boards: int = 4) -> tuple[DieInfo, ...]:
    return simulated_dies("node-a", boards)


def idx(dies: tuple[DieInfo, ...]) -> list[int]:
    return [d.index for d in dies]


def uuids(inv: tuple[DieInfo, ...], *indices: int) -> set[str]:
    return {inv[i].uuid for i in indices}


def test_two_dies_take_a_whole_free_board() -> None:
    inv = node()
    assert idx(preferred_dies(inv, set(), 2)) == [0, 1]
    assert idx(preferred_dies(inv, uuids(inv, 0), 2)) == [2, 3]  # board 0 is half-used: skip it


def test_one_die_prefers_a_half_used_board() -> None:
    inv = node()
    assert idx(preferred_dies(inv, set(), 1)) == [0]
    assert idx(preferred_dies(inv, uuids(inv, 2), 1)) == [3]
    assert idx(preferred_dies(inv, uuids(inv, 2, 5), 1)) == [3]  # ties: the lower board
    assert idx(preferred_dies(inv, uuids(inv, 0, 1, 2, 3), 1)) == [4]


def test_more_than_two_go_board_by_board() -> None:
    inv = node()
    assert idx(preferred_dies(inv, set(), 4)) == [0, 1, 2, 3]
    assert idx(preferred_dies(inv, uuids(inv, 1), 3)) == [0, 2, 3]  # a whole board + the half-used die
    assert idx(preferred_dies(inv, uuids(inv, 1, 3), 4)) == [4, 5, 6, 7]  # whole boards before half-used dies


def test_two_dies_fall_back_to_half_used_boards() -> None:
    inv = node(2)
    assert idx(preferred_dies(inv, uuids(inv, 0, 3), 2)) == [1, 2]


def test_never_unhealthy_or_taken_and_empty_when_short() -> None:
    inv = list(node(2))
    inv[0] = replace(inv[0], health=UNHEALTHY)
    dies = tuple(inv)
    assert idx(preferred_dies(dies, set(), 2)) == [2, 3]
    assert idx(preferred_dies(dies, set(), 1)) == [1]  # its board-mate is unusable: half-used board
    assert preferred_dies(dies, uuids(dies, 2), 3) == ()
    assert preferred_dies(dies, set(), 0) == ()


def test_must_include_is_honoured_and_completed_on_its_board() -> None:
    inv = node()
    assert idx(preferred_dies(inv, set(), 2, must_include=[inv[5].uuid])) == [4, 5]
    assert idx(preferred_dies(inv, set(), 1, must_include=[inv[6].uuid])) == [6]
    assert idx(preferred_dies(inv, set(), 3, must_include=[inv[7].uuid])) == [0, 6, 7]


def test_result_is_in_cuda_order_even_when_boards_are_listed_out_of_order() -> None:
    inv = node(2)
    shuffled = (inv[3], inv[1], inv[2], inv[0])
    assert idx(preferred_dies(shuffled, set(), 4)) == [0, 1, 2, 3]


def test_taken_dies_counts_allocations_and_unnamed_bound_pods() -> None:
    inv = list(node(2))
    inv[0] = replace(inv[0], allocated_to="ns/running")
    dies = tuple(inv)
    pods = [BoundPod("ns/running", 1), BoundPod("ns/new", 1), BoundPod("ns/pair", 2)]
    # running is already named; new takes die 1 (half-used board 0); pair takes board 1.
    assert taken_dies(dies, pods) == uuids(dies, 0, 1, 2, 3)
    assert taken_dies(dies, [BoundPod("ns/pair", 2)]) == uuids(dies, 0, 2, 3)
