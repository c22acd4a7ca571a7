"""The names `k80s.core` promises are exactly the ones it exports (httpx keeps the same check)."""

from __future__ import annotations

import k80s.core


def test_all_lists_exactly_the_public_names() -> None:
    public = {n for n in dir(k80s.core) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(k80s.core, n)).__name__ == "module"}
    assert set(k80s.core.__all__) == public - modules
    assert len(k80s.core.__all__) == len(set(k80s.core.__all__))


def test_the_seed_example_through_the_public_surface() -> None:
    from k80s import catalogue

    est = k80s.core.select_dies(
        catalogue.lookup("gemma3:12b"),
        [k80s.core.DieCapacity(11366 << 20, i) for i in range(2)],
        k80s.core.EstimateOptions(policy="reverse-order"),
    )
    assert est.tensor_split == (1, 48)
