"""The init container's fetcher against a local registry and file server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from k80s.operator.fetch import FetchError, fetch_gguf, fetch_ollama, main
from k80s.operator.resolve import Http
from tests.operator.fakes import Files, Registry, serve, sha256

WEIGHTS = b"GGUF" + bytes(range(256)) * 64


def test_gguf_by_name_is_the_verified_model_blob(tmp_path: Path) -> None:
    reg = Registry(redirect_blobs=True)
    digest = reg.add_model("library/tiny:1", WEIGHTS, params={"num_ctx": 2048})
    with serve(reg) as (url, _):
        dest = fetch_gguf(Http(5), tmp_path / "models/model.gguf", registry_url=url, name="tiny:1",
                          expect_digest=digest)
        assert dest.read_bytes() == WEIGHTS
        again = fetch_gguf(Http(5), dest, registry_url=url, name="tiny:1")  # present: kept
        assert again == dest and not (tmp_path / "models/model.gguf.partial").exists()


def test_a_retagged_model_is_refused(tmp_path: Path) -> None:
    reg = Registry()
    reg.add_model("library/tiny:1", WEIGHTS)
    with serve(reg) as (url, _):
        with pytest.raises(FetchError, match="the plan was made for sha256:00"):
            fetch_gguf(Http(5), tmp_path / "m.gguf", registry_url=url, name="tiny:1",
                       expect_digest="sha256:" + "00" * 32)


def test_a_corrupt_blob_is_not_renamed_into_place(tmp_path: Path) -> None:
    reg = Registry()
    digest = reg.add_model("library/tiny:1", WEIGHTS)
    reg.blobs[digest] = WEIGHTS[:-1] + b"x"
    with serve(reg) as (url, _):
        with pytest.raises(FetchError, match="hashes to"):
            fetch_gguf(Http(5), tmp_path / "m.gguf", registry_url=url, name="tiny:1")
    assert not list(tmp_path.iterdir())


def test_gguf_by_url(tmp_path: Path) -> None:
    with serve(Files({"/w.gguf": WEIGHTS})) as (url, _):
        assert fetch_gguf(Http(5), tmp_path / "w.gguf", registry_url="", url=f"{url}/w.gguf").read_bytes() == WEIGHTS


def test_ollama_store_layout(tmp_path: Path) -> None:
    reg = Registry()
    digest = reg.add_model("library/tiny:1", WEIGHTS, params={"num_ctx": 2048})
    with serve(reg) as (url, _):
        manifest = fetch_ollama(Http(5), tmp_path, registry_url=url, name="tiny:1", expect_digest=digest)
    assert manifest == tmp_path / "manifests/registry.ollama.ai/library/tiny/1"
    doc = json.loads(manifest.read_text())
    blobs = {p.name for p in (tmp_path / "blobs").iterdir()}
    wanted = {d["digest"].replace(":", "-") for d in [*doc["layers"], doc["config"]]}
    assert blobs == wanted and len(blobs) == 3
    assert (tmp_path / "blobs" / digest.replace(":", "-")).read_bytes() == WEIGHTS
    assert sha256(WEIGHTS) == digest


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reg = Registry()
    reg.add_model("library/tiny:1", WEIGHTS)
    with serve(reg) as (url, _):
        assert main(["gguf", "--dest", str(tmp_path / "m.gguf"), "--name", "tiny:1", "--registry-url", url]) == 0
        assert main(["ollama", "--models-dir", str(tmp_path / "o"), "--name", "absent:1", "--registry-url", url]) == 1
    assert "fetch-model: failed" in capsys.readouterr().err
