"""`python -m k80s.operator.fetch`: the model pods' init container that puts the weights in place.

- `gguf --dest FILE (--name NAME | --url URL)`: one GGUF file for llama.cpp (`LLAMA_ARG_MODEL`):
  the registry's model blob of an Ollama name, or a GGUF URL.
- `ollama --models-dir DIR --name NAME`: an Ollama store, as `ollama pull` would leave it
  (`manifests/<host>/<ns>/<model>/<tag>` and `blobs/sha256-<hex>`, llm-ecosystem.md §3.5), so the
  runtime starts with the model present and never pulls.

Registry blobs are content-addressed: each is checked against its sha256 digest before it is
renamed into place. `--expect-digest sha256:…` pins the model layer the operator planned with: if
the tag now points elsewhere, the fetch fails instead of serving a model the plan did not size.
Progress goes to stderr, so `kubectl logs -c fetch-model` shows it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from k80s.core.errors import K80sError
from k80s.operator.resolve import MANIFEST_ACCEPT, MODEL_LAYER, Http, OllamaName, parse_ollama_name

CHUNK: Final = 1 << 20
PROGRESS_EVERY_S: Final = 10.0


class FetchError(K80sError):
    """The weights could not be put in place (the message says which and why)."""


def _say(message: str, **fields: Any) -> None:
    extra = " ".join(f"{k}={v}" for k, v in fields.items())
    print(f"fetch-model: {message}{' ' + extra if extra else ''}", file=sys.stderr, flush=True)


def download(http: Http, url: str, dest: Path, *, digest: str | None = None, size: int | None = None) -> Path:
    """Stream `url` to `dest` (via `dest.partial`), checking the sha256 `digest` when given.
    An existing `dest` of the right size (and digest) is kept."""
    if dest.exists() and (size is None or dest.stat().st_size == size) and (
            digest is None or _sha256(dest) == digest):
        _say("already present", path=dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    hasher = hashlib.sha256()
    done, last = 0, time.monotonic()
    with http.open(url, what=f"download {url}") as response, open(partial, "wb") as out:
        total = size or int(response.headers.get("Content-Length") or 0)
        while chunk := response.read(CHUNK):
            out.write(chunk)
            hasher.update(chunk)
            done += len(chunk)
            if time.monotonic() - last >= PROGRESS_EVERY_S:
                last = time.monotonic()
                _say("downloading", url=url, bytes=done, total=total or "?")
    if size is not None and done != size:
        partial.unlink(missing_ok=True)
        raise FetchError(f"{url}: got {done} bytes, the manifest says {size}")
    if digest is not None and f"sha256:{hasher.hexdigest()}" != digest:
        partial.unlink(missing_ok=True)
        raise FetchError(f"{url}: content hashes to sha256:{hasher.hexdigest()}, expected {digest}")
    os.replace(partial, dest)
    _say("done", path=dest, bytes=done)
    return dest


def _sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            hasher.update(chunk)
    return f"sha256:{hasher.hexdigest()}"


def _base(registry_url: str, ref: OllamaName) -> str:
    return registry_url.rstrip("/") if ref.host == "registry.ollama.ai" else f"https://{ref.host}"


def manifest(http: Http, registry_url: str, ref: OllamaName) -> Mapping[str, Any]:
    url = f"{_base(registry_url, ref)}/v2/{ref.namespace}/{ref.model}/manifests/{ref.tag}"
    doc = http.json(url, {"Accept": MANIFEST_ACCEPT}, what=f"manifest of {ref}")
    if not isinstance(doc, Mapping) or not isinstance(doc.get("layers"), list):
        raise FetchError(f"manifest of {ref}: no layers list")
    return doc


def _model_layer(doc: Mapping[str, Any], ref: OllamaName, expect_digest: str | None) -> Mapping[str, Any]:
    layer = next((l for l in doc["layers"] if isinstance(l, Mapping) and l.get("mediaType") == MODEL_LAYER), None)
    if layer is None:
        raise FetchError(f"manifest of {ref}: no {MODEL_LAYER} layer")
    if expect_digest and expect_digest.startswith("sha256:") and layer.get("digest") != expect_digest:
        raise FetchError(f"{ref} now points at {layer.get('digest')}, the plan was made for {expect_digest}; "
                         "re-apply the ModelDeployment to re-plan")
    return layer


def fetch_gguf(http: Http, dest: Path, *, registry_url: str, name: str | None = None, url: str | None = None,
               expect_digest: str | None = None) -> Path:
    if url is not None:
        return download(http, url, dest)
    assert name is not None
    ref = parse_ollama_name(name)
    layer = _model_layer(manifest(http, registry_url, ref), ref, expect_digest)
    blob = f"{_base(registry_url, ref)}/v2/{ref.namespace}/{ref.model}/blobs/{layer['digest']}"
    return download(http, blob, dest, digest=layer["digest"], size=int(layer.get("size") or 0) or None)


def fetch_ollama(http: Http, models_dir: Path, *, registry_url: str, name: str,
                 expect_digest: str | None = None) -> Path:
    """Every blob of the manifest (config included) into `blobs/`, then the manifest itself."""
    ref = parse_ollama_name(name)
    doc = manifest(http, registry_url, ref)
    _model_layer(doc, ref, expect_digest)
    descriptors = [l for l in doc["layers"] if isinstance(l, Mapping)]
    if isinstance(doc.get("config"), Mapping):
        descriptors.append(doc["config"])
    for d in descriptors:
        digest = str(d.get("digest") or "")
        if not digest.startswith("sha256:"):
            raise FetchError(f"manifest of {ref}: layer digest {digest!r} is not sha256")
        blob = f"{_base(registry_url, ref)}/v2/{ref.namespace}/{ref.model}/blobs/{digest}"
        download(http, blob, models_dir / "blobs" / digest.replace(":", "-"), digest=digest,
                 size=int(d.get("size") or 0) or None)
    target = models_dir / "manifests" / ref.host / ref.namespace / ref.model / ref.tag
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(doc))
    _say("manifest written", path=target)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m k80s.operator.fetch", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    gguf = sub.add_parser("gguf", help="one GGUF file for llama.cpp")
    gguf.add_argument("--dest", required=True, type=Path)
    source = gguf.add_mutually_exclusive_group(required=True)
    source.add_argument("--name")
    source.add_argument("--url")
    ollama = sub.add_parser("ollama", help="an Ollama model store")
    ollama.add_argument("--models-dir", required=True, type=Path)
    ollama.add_argument("--name", required=True)
    for p in (gguf, ollama):
        p.add_argument("--registry-url", default="https://registry.ollama.ai")
        p.add_argument("--expect-digest", default=None)
        p.add_argument("--timeout-s", type=float, default=60.0)
    args = parser.parse_args(argv)
    http = Http(args.timeout_s)
    try:
        if args.what == "gguf":
            fetch_gguf(http, args.dest, registry_url=args.registry_url, name=args.name, url=args.url,
                       expect_digest=args.expect_digest)
        else:
            fetch_ollama(http, args.models_dir, registry_url=args.registry_url, name=args.name,
                         expect_digest=args.expect_digest)
    except K80sError as exc:
        _say("failed", error=exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
