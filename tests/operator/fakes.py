"""Local HTTP servers the operator's tests talk to: a file server with Range support, an Ollama
registry (manifests, blobs, an optional Bearer-token challenge and CDN redirect), and fake
runtimes (Ollama `/api/ps`, llama.cpp `/props`). Real HTTP on 127.0.0.1, no mocks."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL_LAYER = "application/vnd.ollama.image.model"
PARAMS_LAYER = "application/vnd.ollama.image.params"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Served:
    """What a fake server saw: request paths and Range headers, for assertions."""

    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, range)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, method: str, path: str, range_header: str) -> None:
        with self.lock:
            self.requests.append((method, path, range_header))

    def ranges(self, path_part: str) -> list[str]:
        with self.lock:
            return [r for _m, p, r in self.requests if path_part in p and r]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *_args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.server.served.record("GET", self.path, self.headers.get("Range", ""))
        self.server.app.get(self)

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.served.record("POST", self.path, "")
        self.server.app.post(self, body)

    # -- helpers for apps --

    def send_bytes(self, data: bytes, *, status: int = 200, content_type: str = "application/octet-stream",
                   headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading once it had the header: expected

    def send_json(self, obj: Any, status: int = 200) -> None:
        self.send_bytes(json.dumps(obj).encode(), status=status, content_type="application/json")

    def send_ranged(self, data: bytes, *, ranges: bool = True) -> None:
        """200 with everything, or 206 for a `Range: bytes=a-b` request (416 past the end)."""
        header = self.headers.get("Range", "")
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", header.strip())
        if not ranges or not match:
            self.send_bytes(data, headers={"Accept-Ranges": "bytes" if ranges else "none"})
            return
        start = int(match.group(1))
        end = min(int(match.group(2)) if match.group(2) else len(data) - 1, len(data) - 1)
        if start >= len(data):
            self.send_bytes(b"", status=416, headers={"Content-Range": f"bytes */{len(data)}"})
            return
        self.send_bytes(data[start:end + 1], status=206,
                        headers={"Content-Range": f"bytes {start}-{end}/{len(data)}", "Accept-Ranges": "bytes"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, app: Any) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.app = app
        self.served = Served()


@contextmanager
def serve(app: Any) -> Iterator[tuple[str, Served]]:
    """Run `app` (an object with get(handler) / post(handler, body)) on a free port."""
    server = _Server(app)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.served
    finally:
        server.shutdown()
        server.server_close()


# -- a file server ------------------------------------------------------------------------------------

@dataclass
class Files:
    files: dict[str, bytes]
    ranges: bool = True

    def get(self, h: _Handler) -> None:
        data = self.files.get(h.path.split("?")[0])
        if data is None:
            h.send_bytes(b"not found", status=404)
            return
        h.send_ranged(data, ranges=self.ranges)

    def post(self, h: _Handler, _body: bytes) -> None:
        h.send_bytes(b"", status=405)


# -- an Ollama registry -----------------------------------------------------------------------------------

@dataclass
class Registry:
    """`/v2/<ns>/<model>/manifests/<tag>` and `/v2/<ns>/<model>/blobs/<digest>`.

    `token`: when set, every /v2 request needs `Authorization: Bearer <token>`; a 401 names the
    realm `/token` on this server. `redirect_blobs`: blobs answer 307 to `/cdn/<digest>`.
    """

    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # "ns/model:tag" → manifest
    blobs: dict[str, bytes] = field(default_factory=dict)
    token: str | None = None
    redirect_blobs: bool = False
    fail_with: int | None = None  # answer every /v2 request with this status

    def add_model(self, name: str, gguf: bytes, *, params: Mapping[str, Any] | None = None,
                  config: Mapping[str, Any] | None = None) -> str:
        """Add `ns/model:tag` with a model layer (and config / params blobs); returns the model digest."""
        layers = [self._blob(gguf, MODEL_LAYER)]
        if params is not None:
            layers.append(self._blob(json.dumps(params).encode(), PARAMS_LAYER))
        config_blob = json.dumps(config or {"model_format": "gguf", "model_family": "gemma3"}).encode()
        self.models[name] = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": self._blob(config_blob, CONFIG_TYPE),
            "layers": layers,
        }
        return str(layers[0]["digest"])

    def _blob(self, data: bytes, media_type: str) -> dict[str, Any]:
        digest = sha256(data)
        self.blobs[digest] = data
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def get(self, h: _Handler) -> None:
        path = h.path.split("?")[0]
        if path == "/token":
            h.send_json({"token": self.token})
            return
        if path.startswith("/cdn/"):
            data = self.blobs.get(path.removeprefix("/cdn/"))
            h.send_ranged(data) if data is not None else h.send_bytes(b"", status=404)
            return
        if self.fail_with is not None:
            h.send_bytes(b"failing", status=self.fail_with)
            return
        if self.token is not None and h.headers.get("Authorization") != f"Bearer {self.token}":
            realm = f"http://{h.headers.get('Host')}/token"
            h.send_bytes(b"", status=401, headers={
                "WWW-Authenticate": f'Bearer realm="{realm}",service="fake",scope="repository:x:pull"'})
            return
        match = re.fullmatch(r"/v2/([^/]+)/([^/]+)/(manifests|blobs)/(.+)", path)
        if match is None:
            h.send_bytes(b"", status=404)
            return
        ns, model, kind, ref = match.groups()
        if kind == "manifests":
            manifest = self.models.get(f"{ns}/{model}:{ref}")
            if manifest is None:
                h.send_json({"errors": [{"code": "MANIFEST_UNKNOWN"}]}, status=404)
            else:
                h.send_bytes(json.dumps(manifest).encode(), content_type=str(manifest.get("mediaType", "application/json")))
            return
        data = self.blobs.get(ref)
        if data is None:
            h.send_bytes(b"", status=404)
        elif self.redirect_blobs:
            h.send_bytes(b"", status=307, headers={"Location": f"/cdn/{ref}"})
        else:
            h.send_ranged(data)

    def post(self, h: _Handler, _body: bytes) -> None:
        h.send_bytes(b"", status=405)


# -- runtimes -----------------------------------------------------------------------------------------------

@dataclass
class OllamaRuntime:
    """`/api/ps` lists `loaded`; `POST /api/generate` loads `on_load` (if set)."""

    loaded: list[dict[str, Any]] = field(default_factory=list)
    on_load: dict[str, Any] | None = None

    def get(self, h: _Handler) -> None:
        if h.path == "/api/ps":
            h.send_json({"models": self.loaded})
        elif h.path == "/":
            h.send_bytes(b"Ollama is running", content_type="text/plain")
        else:
            h.send_bytes(b"", status=404)

    def post(self, h: _Handler, body: bytes) -> None:
        if h.path == "/api/generate" and self.on_load is not None:
            request = json.loads(body or b"{}")
            if request.get("model") == self.on_load["name"]:
                self.loaded.append(self.on_load)
            h.send_json({"model": request.get("model"), "done": True, "done_reason": "load"})
        else:
            h.send_bytes(b"", status=404)


@dataclass
class LlamaServer:
    props: dict[str, Any]

    def get(self, h: _Handler) -> None:
        if h.path == "/props":
            h.send_json(self.props)
        elif h.path == "/health":
            h.send_json({"status": "ok"})
        elif h.path == "/metrics":
            h.send_bytes(b"# TYPE llamacpp:requests_processing gauge\nllamacpp:requests_processing 0\n",
                         content_type="text/plain")
        else:
            h.send_bytes(b"", status=404)

    def post(self, h: _Handler, _body: bytes) -> None:
        h.send_bytes(b"", status=405)
