"""The committed stubs under src/k80s/_proto are exactly what grpcio-tools generates from proto/."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTOS = (
    "k80s/_proto/deviceplugin/v1beta1/api.proto",
    "k80s/_proto/podresources/v1/api.proto",
)
GENERATOR = "1.85.1"  # grpcio-tools the committed stubs were generated with (proto/README.md)


def test_committed_stubs_match_a_fresh_generation() -> None:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "grpc_tools.protoc", "-I", str(ROOT / "proto"),
               f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", *PROTOS]
        subprocess.run(cmd, check=True, cwd=ROOT)
        generated = sorted(p.relative_to(out) for p in Path(out).rglob("*") if p.is_file())
        assert generated, "protoc generated nothing"
        stale = [str(rel) for rel in generated
                 if not (ROOT / "src" / rel).is_file()
                 or (ROOT / "src" / rel).read_bytes() != (Path(out) / rel).read_bytes()]
    assert not stale, (
        f"stale generated stubs {stale}: regenerate with the command in proto/README.md "
        f"(committed with grpcio-tools {GENERATOR}, installed {version('grpcio-tools')})"
    )


@pytest.mark.parametrize("package", ["deviceplugin/v1beta1", "podresources/v1"])
def test_every_stub_package_has_an_init(package: str) -> None:
    parts = Path("src/k80s/_proto", package).parts
    for i in range(3, len(parts) + 1):
        assert (ROOT / Path(*parts[:i]) / "__init__.py").is_file()


def test_wire_names_are_kubelets() -> None:
    from k80s._proto.deviceplugin.v1beta1 import api_pb2 as dp
    from k80s._proto.podresources.v1 import api_pb2 as pr

    assert dp.DESCRIPTOR.package == "v1beta1"
    assert pr.DESCRIPTOR.package == "v1"
    assert [m.name for m in dp.DESCRIPTOR.services_by_name["DevicePlugin"].methods] == [
        "GetDevicePluginOptions", "ListAndWatch", "GetPreferredAllocation", "Allocate", "PreStartContainer"]
    fields = dp.ContainerAllocateResponse.DESCRIPTOR.fields_by_name
    assert {n: f.number for n, f in fields.items()} == {
        "envs": 1, "mounts": 2, "devices": 3, "annotations": 4, "cdi_devices": 5}
    assert pr.DynamicResource.DESCRIPTOR.fields_by_name["claim_name"].number == 2
    assert pr.ClaimResource.DESCRIPTOR.fields_by_name["share_id"].has_presence
