"""Model resolution over real HTTP: GGUF headers by growing Range windows, the Ollama registry
protocol (manifest, config, params, blob; token challenge; CDN redirect), caches, errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from k80s import catalogue
from k80s.core.errors import GgufFormatError, InvalidInput, InvalidSpec, UnknownModel
from k80s.core.gguf import parse_gguf_file
from k80s.core.modelfile import profile_from_gguf
from k80s.operator.resolve import OllamaName, ResolveUnavailable, Resolver, parse_ollama_name
from k80s.operator.spec import ModelSource
from tests.core.gguf_fixtures import DERIVED_270M, llama31_8b_model, real_gemma3_270m_path, write_with_gguf_writer
from tests.operator.fakes import Files, Registry, serve

MIB = 2**20
REAL_HEADER_BYTES = 6_525_112  # gemma-3-270m: llm-ecosystem.md §2


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def real_prefix() -> bytes:
    """The first 16 MiB of the real Gemma-3-270M file: the whole 6.5 MB header and some weights."""
    with open(real_gemma3_270m_path(), "rb") as f:
        return f.read(16 * MIB)


@pytest.fixture(scope="module")
def llama_fixture(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("gguf") / "llama31-8b.gguf"
    return write_with_gguf_writer(path, llama31_8b_model()).read_bytes()


def resolver(registry: str = "http://127.0.0.1:9", **kw: object) -> Resolver:
    return Resolver(registry_url=registry, timeout_s=5, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("gemma3:12b", OllamaName("registry.ollama.ai", "library", "gemma3", "12b")),
        ("gemma3", OllamaName("registry.ollama.ai", "library", "gemma3", "latest")),
        ("someone/model:q4", OllamaName("registry.ollama.ai", "someone", "model", "q4")),
        ("hf.co/bartowski/Qwen-GGUF:Q4_K_M", OllamaName("hf.co", "bartowski", "Qwen-GGUF", "Q4_K_M")),
        ("127.0.0.1:5000/library/tiny:1", OllamaName("127.0.0.1:5000", "library", "tiny", "1")),
    ],
)
def test_ollama_names(name: str, parsed: OllamaName) -> None:
    assert parse_ollama_name(name) == parsed


@pytest.mark.parametrize("bad", ["", "a//b", "a/b/c/d", "model:", ":tag"])
def test_bad_ollama_names(bad: str) -> None:
    with pytest.raises(InvalidSpec, match="spec.model.name"):
        parse_ollama_name(bad)


# -- GGUF over HTTP Range --------------------------------------------------------------------------

def test_real_header_is_read_in_doubling_range_windows(real_prefix: bytes) -> None:
    with serve(Files({"/gemma-3-270m.gguf": real_prefix})) as (url, served):
        model = resolver(header_window=2 * MIB).resolve(ModelSource(url=f"{url}/gemma-3-270m.gguf"))
    assert served.ranges("gemma") == [f"bytes=0-{2 * MIB - 1}", f"bytes={2 * MIB}-{6 * MIB - 1}",
                                      f"bytes={6 * MIB}-{14 * MIB - 1}"]
    expected = profile_from_gguf(parse_gguf_file(real_gemma3_270m_path()), name="gemma-3-270m.gguf")
    assert model.profile.to_dict() | {"source": ""} == expected.to_dict() | {"source": ""}
    assert (model.source, model.name, model.weights_url) == ("url", "gemma-3-270m.gguf", f"{url}/gemma-3-270m.gguf")
    assert model.profile.architecture == "gemma3" and model.profile.block_count == 18
    assert model.facts()["fileType"] == "Q4_K_M"


def test_a_server_without_range_is_streamed_and_closed_once_the_header_is_parsed(real_prefix: bytes) -> None:
    with serve(Files({"/m.gguf": real_prefix}, ranges=False)) as (url, served):
        model = resolver(header_window=1 * MIB).resolve(ModelSource(url=f"{url}/m.gguf"))
    assert model.profile.vocab_tokens == 262_144
    assert len([r for r in served.requests if r[1] == "/m.gguf"]) == 1  # one streamed GET


def test_header_cap_is_enforced(real_prefix: bytes) -> None:
    with serve(Files({"/m.gguf": real_prefix})) as (url, _served):
        with pytest.raises(GgufFormatError, match="cap"):
            resolver(header_window=1 * MIB, header_cap=4 * MIB).resolve(ModelSource(url=f"{url}/m.gguf"))


def test_a_short_file_ends_the_reads_cleanly() -> None:
    data = DERIVED_270M.read_bytes()  # 19.5 KB, smaller than one window
    with serve(Files({"/small.gguf": data})) as (url, served):
        model = resolver(header_window=1 * MIB).resolve(ModelSource(url=f"{url}/small.gguf"))
    assert model.profile.architecture == "gemma3"
    assert served.ranges("small") == [f"bytes=0-{MIB - 1}"]


def test_url_results_are_cached_for_the_ttl(real_prefix: bytes) -> None:
    clock = Clock()
    with serve(Files({"/m.gguf": DERIVED_270M.read_bytes()})) as (url, _served):
        r = resolver(name_ttl_s=60, clock=clock)
        first = r.resolve(ModelSource(url=f"{url}/m.gguf"))
        assert r.resolve(ModelSource(url=f"{url}/m.gguf")) is first and r.header_reads == 1
        clock.now += 61
        assert r.resolve(ModelSource(url=f"{url}/m.gguf")).digest == first.digest and r.header_reads == 2


def test_url_errors_are_permanent_or_transient() -> None:
    with serve(Files({})) as (url, _):
        with pytest.raises(UnknownModel, match="404"):
            resolver().resolve(ModelSource(url=f"{url}/missing.gguf"))
    with serve(Registry(fail_with=503)) as (url, _):
        with pytest.raises(ResolveUnavailable, match="503"):
            resolver().resolve(ModelSource(url=f"{url}/v2/x/y/blobs/sha256:00"))
    with pytest.raises(ResolveUnavailable, match="did not answer"):
        resolver().resolve(ModelSource(url="http://127.0.0.1:9/nothing.gguf"))
    with serve(Files({"/text.gguf": b"this is not a gguf file at all, sorry" * 3})) as (url, _):
        with pytest.raises(GgufFormatError, match="magic"):
            resolver().resolve(ModelSource(url=f"{url}/text.gguf"))


# -- the Ollama registry ----------------------------------------------------------------------------

@pytest.fixture
def registry(llama_fixture: bytes) -> Iterator[tuple[Registry, str, str]]:
    reg = Registry()
    digest = reg.add_model("library/tiny-llama:8b-q4", llama_fixture, params={"num_ctx": 8192, "stop": ["x"]})
    with serve(reg) as (url, _served):
        yield reg, url, digest


def test_registry_name_resolves_through_manifest_config_params_and_a_blob_range_read(
    registry: tuple[Registry, str, str]
) -> None:
    _reg, url, digest = registry
    r = resolver(url, header_window=256 * 1024)
    model = r.resolve(ModelSource(name="tiny-llama:8b-q4"))
    assert (model.source, model.digest, model.registry_name, model.params_num_ctx) == (
        "registry", digest, "tiny-llama:8b-q4", 8192)
    assert model.profile.architecture == "llama" and model.profile.block_count == 32
    assert model.profile.vocab_tokens == 128_256
    assert model.facts() == {"name": "tiny-llama:8b-q4", "digest": digest, "architecture": "llama",
                             "blockCount": 32, "contextLength": 131072, "fileType": "Q4_K_M"}


def test_registry_profiles_are_cached_by_digest_and_names_for_the_ttl(llama_fixture: bytes) -> None:
    reg = Registry()
    digest = reg.add_model("library/tiny:1", llama_fixture)
    reg.models["library/tiny:alias"] = reg.models["library/tiny:1"]  # two tags, one blob
    clock = Clock()
    with serve(reg) as (url, served):
        r = resolver(url, name_ttl_s=30, clock=clock)
        r.resolve(ModelSource(name="tiny:1"))
        manifests = len([p for _m, p, _r in served.requests if "/manifests/" in p])
        r.resolve(ModelSource(name="tiny:1"))
        assert len([p for _m, p, _r in served.requests if "/manifests/" in p]) == manifests  # name cached
        assert r.resolve(ModelSource(name="tiny:alias")).digest == digest
        assert r.header_reads == 1  # the second tag reuses the digest's profile
        clock.now += 31
        r.resolve(ModelSource(name="tiny:1"))
        assert len([p for _m, p, _r in served.requests if "/manifests/1" in p]) == 2  # re-resolved after the TTL
        assert r.header_reads == 1


def test_registry_with_a_token_challenge_and_a_cdn_redirect(llama_fixture: bytes) -> None:
    reg = Registry(token="s3cret", redirect_blobs=True)
    reg.add_model("someone/tiny:q4", llama_fixture)
    with serve(reg) as (url, served):
        model = resolver(url).resolve(ModelSource(name="someone/tiny:q4"))
    assert model.profile.architecture == "llama"
    assert any(p.startswith("/token?service=fake") for _m, p, _r in served.requests)
    assert any(p.startswith("/cdn/sha256:") and r.startswith("bytes=0-") for _m, p, r in served.requests)


def test_registry_refusals(llama_fixture: bytes) -> None:
    reg = Registry()
    reg.add_model("library/safetensors:1", llama_fixture, config={"model_format": "safetensors"})
    reg.models["library/nolayer:1"] = {"schemaVersion": 2, "layers": [{"mediaType": "x", "digest": "sha256:00"}]}
    with serve(reg) as (url, _):
        r = resolver(url)
        with pytest.raises(InvalidSpec, match="GGUF only"):
            r.resolve(ModelSource(name="safetensors:1"))
        with pytest.raises(InvalidSpec, match="not a GGUF model"):
            r.resolve(ModelSource(name="nolayer:1"))
        with pytest.raises(UnknownModel, match="not in the registry"):
            r.resolve(ModelSource(name="absent:1"))


def test_catalogue_first_needs_no_network_and_registry_first_falls_back_to_it() -> None:
    offline = resolver()  # nothing listens on port 9
    model = offline.resolve(ModelSource(name="gemma3:12b"))
    assert model.source == "catalogue" and model.profile == catalogue.lookup("gemma3:12b")
    assert offline.http.requests == 0
    with serve(Registry(fail_with=503)) as (url, _):
        fallback = resolver(url, registry_first=True).resolve(ModelSource(name="gemma3:12b"))
        assert fallback.source == "catalogue"
        with pytest.raises(ResolveUnavailable):
            resolver(url, registry_first=True).resolve(ModelSource(name="not-in-catalogue:1"))


def test_inline_profiles_full_and_shape() -> None:
    full = catalogue.lookup("llama3.1:8b").to_dict()
    model = resolver().resolve(ModelSource(profile=full))
    assert (model.source, model.name) == ("inline", "llama3.1:8b")
    shape = {"shape": {"name": "my-llama:8b", "architecture": "llama", "layers": 32, "embedding": 4096, "heads": 32,
                       "kv_heads": 8, "head_dim": 128, "feed_forward": 14336, "vocab_tokens": 128256}}
    assert resolver().resolve(ModelSource(profile=shape)).profile.block_count == 32
    with pytest.raises(InvalidInput, match="spec.model.profile"):
        resolver().resolve(ModelSource(profile={"architecture": "llama"}))


def test_error_kinds_for_the_handlers() -> None:
    assert issubclass(UnknownModel, InvalidInput) and issubclass(GgufFormatError, InvalidInput)
    assert not issubclass(ResolveUnavailable, InvalidInput)


def test_fixture_paths_exist() -> None:
    assert Path(DERIVED_270M).is_file()
