"""The installed package carries the canonical scheduler configuration byte for byte."""

from __future__ import annotations

from pathlib import Path

from k80s.extender import schedconfig

ROOT = Path(__file__).resolve().parents[2]


def test_packaged_copy_equals_the_charts_canonical_file() -> None:
    chart = (ROOT / "charts" / "k80s" / "files" / "scheduler-config.yaml").read_bytes()
    packaged = (ROOT / "src" / "k80s" / "deploy" / "scheduler-config.yaml").read_bytes()
    assert packaged == chart, "copy charts/k80s/files/scheduler-config.yaml to src/k80s/deploy/"
    assert schedconfig.canonical_path().read_bytes() == chart
