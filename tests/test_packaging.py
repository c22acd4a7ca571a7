"""What the installed package carries: the canonical deployment files, byte for byte.

A non-editable install (the image, `pip install k80s`) has no chart folder, so the scheduler
configuration and the CRD travel as package data in `k80s/deploy/`; the chart's files stay the
source of truth and this test keeps the copies identical.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from k80s.extender import schedconfig

ROOT = Path(__file__).resolve().parents[1]
COPIES = {
    "scheduler-config.yaml": ROOT / "charts/k80s/files/scheduler-config.yaml",
    "modeldeployments.k80s.io.yaml": ROOT / "charts/k80s/crds/modeldeployments.k80s.io.yaml",
}


@pytest.mark.parametrize("name", sorted(COPIES))
def test_packaged_copy_equals_the_chart_file(name: str) -> None:
    packaged = resources.files("k80s").joinpath(f"deploy/{name}").read_bytes()
    assert packaged == COPIES[name].read_bytes(), f"copy {COPIES[name].relative_to(ROOT)} to src/k80s/deploy/"


def test_the_extender_renders_from_the_canonical_file() -> None:
    assert schedconfig.canonical_path().read_bytes() == COPIES["scheduler-config.yaml"].read_bytes()
