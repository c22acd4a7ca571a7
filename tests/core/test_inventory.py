from __future__ import annotations

import json
from dataclasses import replace

import pytest

from k80s.core.errors import InvalidSpec
from k80s.core.inventory import (
    NodeInventory,
    needs_republish,
    parse_node_shape,
    simulated_dies,
    with_allocations,
)


def test_simulated_idle_die_is_exactly_the_design_values() -> None:
    dies = simulated_dies("gpu-1", 2)
    assert len(dies) == 4
    for d in dies:
        assert (d.total_mib, d.nvml_free_mib, d.free_mib, d.used_mib) == (11441, 11434, 11366, 7)
        assert d.health == "Healthy" and d.allocated_to is None and d.compute_capability == "3.7"
    assert dies[0].board == dies[1].board != dies[2].board
    assert len({d.uuid for d in dies + simulated_dies("gpu-2", 2)}) == 8


def test_annotation_json_round_trip_and_shape() -> None:
    inv = NodeInventory(dies=simulated_dies("n", 1), driver="470.256.02", updated="2026-11-25T12:00:00Z")
    data = json.loads(inv.to_json())
    assert data["version"] == 1 and data["driver"] == "470.256.02"
    assert set(data["dies"][0]) == {
        "uuid", "index", "board", "pciBusId", "totalMiB", "nvmlFreeMiB", "freeMiB", "usedMiB", "health",
        "computeCapability", "allocatedTo",
    }
    assert NodeInventory.from_json(inv.to_json()) == inv


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("nope", "not valid JSON"),
        ('{"version":2,"dies":[]}', "version"),
        ('{"version":1}', "dies"),
        ('{"version":1,"dies":[{"uuid":"x","index":0,"board":"b","health":"Healthy"}]}', r"dies\[0\].freeMiB"),
        ('{"version":1,"dies":[{"uuid":"x","index":"0","board":"b","freeMiB":1,"health":"Healthy"}]}', "index"),
    ],
)
def test_bad_annotations_name_the_field(text: str, where: str) -> None:
    with pytest.raises(InvalidSpec, match=where):
        NodeInventory.from_json(text)


def test_unknown_keys_are_ignored() -> None:
    d = json.loads(NodeInventory(dies=simulated_dies("n", 1)).to_json())
    d["future"] = 1
    d["dies"][0]["reservedMiB"] = 3
    assert NodeInventory.from_dict(d).dies[0].free_mib == 11366


def test_republish_rules() -> None:
    base = NodeInventory(dies=simulated_dies("n", 1))
    assert needs_republish(None, base)
    small = replace(base, dies=(replace(base.dies[0], free_mib=11366 - 63), base.dies[1]))
    assert not needs_republish(base, small)
    big = replace(base, dies=(replace(base.dies[0], free_mib=11366 - 64), base.dies[1]))
    assert needs_republish(base, big)
    assert needs_republish(base, with_allocations(base, {base.dies[1].uuid: "ns/p"}))
    assert needs_republish(base, replace(base, dies=(replace(base.dies[0], health="Unhealthy"), base.dies[1])))


def test_node_shapes() -> None:
    assert parse_node_shape("4xK80") == 4
    assert parse_node_shape("1xk80") == 1
    for bad in ("4xA100", "x K80", "0xK80", "four"):
        with pytest.raises(InvalidSpec, match="<boards>xK80"):
            parse_node_shape(bad)
