"""Model references → model profiles, without downloading weights (design.md, Model resolution).

- `name` (`[host/][namespace/]model[:tag]`): the bundled catalogue, or the Ollama registry: the
  manifest (`name:tag` → the `application/vnd.ollama.image.model` layer's digest and size), the
  config blob (`model_format` must be gguf), the params blob (`num_ctx`), then the GGUF header of
  the model blob by HTTP Range reads (llm-ecosystem.md §3). Which comes first is a setting.
- `url`: the GGUF header of a file served over http(s), by HTTP Range reads.
- `profile`: an inline profile (`k80s.resolve.profile_from_document`: full profile or shape).

Range reads start with a window of `header_window` bytes and double it until the streaming
parser (`k80s.core.gguf`) has the whole header, up to `header_cap`. A server that ignores Range
(answers 200) is read as a stream and the connection closed once the header is parsed.

Caches: a digest's profile forever (blobs are content-addressed); `name:tag` → manifest and
`url` → profile for `name_ttl_s` (tags and URLs can move). Errors: `InvalidInput` subclasses for
what retrying cannot fix (unknown model, not a GGUF, a malformed header), `ResolveUnavailable`
for what it may (network, HTTP 5xx, 429).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.client import HTTPResponse
from typing import Any, Final

from k80s import catalogue
from k80s.core.annotations import profile_digest
from k80s.core.errors import InvalidInput, InvalidSpec, K80sError, UnknownModel
from k80s.core.gguf import parse_gguf_header
from k80s.core.modelfile import profile_from_gguf
from k80s.core.profile import ModelProfile
from k80s.operator.plan import ResolvedModel
from k80s.operator.spec import ModelSource
from k80s.resolve import profile_from_document

DEFAULT_REGISTRY_HOST: Final = "registry.ollama.ai"
MANIFEST_ACCEPT: Final = "application/vnd.docker.distribution.manifest.v2+json"
MODEL_LAYER: Final = "application/vnd.ollama.image.model"
PARAMS_LAYER: Final = "application/vnd.ollama.image.params"
USER_AGENT: Final = "ollama/0.11.4 (amd64 linux) Go/go1.24.5 k80s-operator/0.1.0"
"""The registry has answered 412 to clients without an Ollama-style User-Agent (§3.3)."""
SMALL_BLOB_LIMIT: Final = 1 << 20


class ResolveUnavailable(K80sError):
    """A registry or file server did not answer usefully now; retrying later may work."""


# -- names ------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class OllamaName:
    host: str
    namespace: str
    model: str
    tag: str

    def __str__(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"


def parse_ollama_name(name: str) -> OllamaName:
    """`gemma3:12b` → registry.ollama.ai/library/gemma3:12b; `user/m` → …/user/m:latest;
    `host/ns/m:tag` sets the host (llm-ecosystem.md §3.1)."""
    text = name.strip()
    parts = text.split("/")
    if not text or len(parts) > 3 or any(not p for p in parts):
        raise InvalidSpec("spec.model.name", f"{name!r} is not [host/][namespace/]model[:tag]")
    last = parts[-1]
    model, _, tag = last.partition(":")
    if not model or (":" in last and not tag):
        raise InvalidSpec("spec.model.name", f"{name!r} has an empty model or tag")
    host = parts[0] if len(parts) == 3 else DEFAULT_REGISTRY_HOST
    namespace = parts[-2] if len(parts) >= 2 else "library"
    return OllamaName(host=host, namespace=namespace, model=model, tag=tag or "latest")


# -- HTTP -----------------------------------------------------------------------------------------

class _NoRedirectOnAuth(urllib.request.HTTPRedirectHandler):
    """Follow redirects (the registry sends blobs to a CDN with 307) but drop Authorization on a
    foreign host."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(newurl).netloc != urllib.parse.urlsplit(req.full_url).netloc:
            new.headers.pop("Authorization", None)
            new.unredirected_hdrs.pop("Authorization", None)
        return new


_OPENER = urllib.request.build_opener(_NoRedirectOnAuth())

Opener = Callable[[urllib.request.Request, float], HTTPResponse]


def _default_open(request: urllib.request.Request, timeout_s: float) -> HTTPResponse:
    return _OPENER.open(request, timeout=timeout_s)  # type: ignore[no-any-return]


def _bearer_challenge(header: str) -> dict[str, str] | None:
    """`Bearer realm="…",service="…",scope="…"` → its parameters (None if not a Bearer challenge)."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    params: dict[str, str] = {}
    for item in rest.split(","):
        key, sep, value = item.strip().partition("=")
        if sep:
            params[key.strip().lower()] = value.strip().strip('"')
    return params if "realm" in params else None


class Http:
    """Blocking GETs with the registry's conventions: User-Agent, one Bearer-token retry on 401,
    error mapping (404 → not found, 5xx/429/network → `ResolveUnavailable`)."""

    def __init__(self, timeout_s: float, opener: Opener = _default_open) -> None:
        self.timeout_s = timeout_s
        self._open = opener
        self._tokens: dict[str, str] = {}  # scope → bearer token
        self.requests = 0  # for tests and metrics

    def open(self, url: str, headers: Mapping[str, str] | None = None, *, what: str) -> HTTPResponse:
        base_headers = {"User-Agent": USER_AGENT, **(headers or {})}
        for attempt in range(2):
            request = urllib.request.Request(url, headers=base_headers)
            token = self._tokens.get(_scope_key(url))
            if token:
                request.add_header("Authorization", f"Bearer {token}")
            self.requests += 1
            try:
                return self._open(request, self.timeout_s)
            except urllib.error.HTTPError as exc:
                challenge = _bearer_challenge(exc.headers.get("WWW-Authenticate", "")) if exc.code == 401 else None
                exc.close()
                if challenge is not None and attempt == 0:
                    self._tokens[_scope_key(url)] = self._fetch_token(challenge)
                    continue
                raise _http_error(exc.code, url, what) from None
            except (urllib.error.URLError, OSError) as exc:
                raise ResolveUnavailable(f"{what}: {url} did not answer ({getattr(exc, 'reason', exc)})") from None
        raise ResolveUnavailable(f"{what}: {url} kept asking for authentication")

    def json(self, url: str, headers: Mapping[str, str] | None = None, *, what: str) -> Any:
        with self.open(url, headers, what=what) as response:
            body = response.read(SMALL_BLOB_LIMIT + 1)
        if len(body) > SMALL_BLOB_LIMIT:
            raise InvalidSpec(what, f"{url} is larger than {SMALL_BLOB_LIMIT} bytes")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise InvalidSpec(what, f"{url} is not JSON ({exc})") from None

    def _fetch_token(self, challenge: Mapping[str, str]) -> str:
        query = {k: v for k, v in challenge.items() if k in ("service", "scope")}
        url = challenge["realm"] + ("?" + urllib.parse.urlencode(query) if query else "")
        data = self.json(url, what="registry token")
        token = data.get("token") or data.get("access_token") if isinstance(data, Mapping) else None
        if not isinstance(token, str) or not token:
            raise ResolveUnavailable(f"registry token: {challenge['realm']} returned no token")
        return token


def _scope_key(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    segments = parts.path.split("/")
    return f"{parts.netloc}/{'/'.join(segments[:4])}"  # /v2/<ns>/<model>


def _http_error(code: int, url: str, what: str) -> K80sError:
    if code == 404:
        return UnknownModel(f"{what}: {url} was not found (HTTP 404)")
    if code in (401, 403):
        return InvalidInput(f"{what}: {url} refused access (HTTP {code}); private models need credentials")
    if code == 429 or code >= 500:
        return ResolveUnavailable(f"{what}: {url} answered HTTP {code}")
    return InvalidInput(f"{what}: {url} answered HTTP {code}")


# -- Range reads ---------------------------------------------------------------------------------------

class RangeReader:
    """A `read(n)` stream over an HTTP resource, fetched in growing Range windows.

    Windows start at `window` bytes and double; nothing past `cap` bytes is requested. A server
    that answers 200 instead of 206 is read as one stream (and closed by `close()`).
    """

    def __init__(self, http: Http, url: str, *, window: int, cap: int, what: str,
                 headers: Mapping[str, str] | None = None) -> None:
        self._http, self.url, self._what = http, url, what
        self._headers = dict(headers or {})
        self._window, self._cap = window, cap
        self._buf = bytearray()
        self._next = 0  # offset of the first byte not yet fetched
        self._eof = False
        self._stream: HTTPResponse | None = None
        self.ranges: list[tuple[int, int]] = []  # the windows asked for (tests, logs)
        self.total_size: int | None = None

    def read(self, n: int, /) -> bytes:
        while len(self._buf) < n and not self._eof:
            self._fetch(n - len(self._buf))
        chunk = bytes(self._buf[:n])
        del self._buf[:n]
        return chunk

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def __enter__(self) -> RangeReader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _fetch(self, need: int) -> None:
        if self._stream is not None:  # the server ignored Range: keep streaming
            data = self._stream.read(max(need, 1 << 16))
            self._take(data)
            return
        if self._next >= self._cap:
            self._eof = True
            return
        size = min(max(self._window, need), self._cap - self._next)
        start, end = self._next, self._next + size - 1
        self.ranges.append((start, end))
        headers = {**self._headers, "Range": f"bytes={start}-{end}"}
        try:
            response = self._http.open(self.url, headers, what=self._what)
        except InvalidInput as exc:
            if "HTTP 416" in str(exc):  # asked past the end: the resource is shorter
                self._eof = True
                return
            raise
        if response.status == 206:
            self._check_content_range(response.headers.get("Content-Range", ""), start)
            with response:
                data = response.read(size + 1)
            self._take(data[:size])
            if len(data) < size:
                self._eof = True
            self._window = min(self._window * 2, self._cap)
            return
        # 200: the whole resource from byte 0; skip what was already consumed.
        self._stream = response
        skip = start
        while skip:
            got = response.read(min(skip, 1 << 20))
            if not got:
                break
            skip -= len(got)
        self._take(response.read(max(need, 1 << 16)))

    def _take(self, data: bytes) -> None:
        if not data:
            self._eof = True
            return
        self._buf += data
        self._next += len(data)

    def _check_content_range(self, header: str, start: int) -> None:
        # "bytes 0-2097151/5173390144"
        try:
            unit, _, rest = header.partition(" ")
            span, _, total = rest.partition("/")
            first = int(span.split("-")[0])
            if total and total != "*":
                self.total_size = int(total)
        except ValueError:
            raise ResolveUnavailable(f"{self._what}: {self.url} sent an unreadable Content-Range {header!r}") from None
        if unit != "bytes" or first != start:
            raise ResolveUnavailable(f"{self._what}: {self.url} answered range {header!r} to bytes={start}-")


# -- the resolver ----------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Manifest:
    digest: str
    size: int
    params_num_ctx: int | None


class Resolver:
    """Resolves `spec.model` with caches; safe to call from several threads."""

    def __init__(
        self,
        *,
        registry_url: str,
        registry_first: bool = False,
        timeout_s: float = 15.0,
        header_window: int = 2 << 20,
        header_cap: int = 64 << 20,
        name_ttl_s: float = 300.0,
        opener: Opener = _default_open,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry_url = registry_url.rstrip("/")
        self.registry_first = registry_first
        self.http = Http(timeout_s, opener)
        self.header_window, self.header_cap = header_window, header_cap
        self.name_ttl_s = name_ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._profiles: dict[str, ModelProfile] = {}  # blob digest → profile (forever)
        self._manifests: dict[str, tuple[float, _Manifest]] = {}  # name → (expires, manifest)
        self._urls: dict[str, tuple[float, ResolvedModel]] = {}  # url → (expires, model)
        self.header_reads = 0  # GGUF headers actually fetched (cache misses)

    def resolve(self, source: ModelSource) -> ResolvedModel:
        if source.profile is not None:
            return self._inline(source.profile)
        if source.url is not None:
            return self._url(source.url)
        assert source.name is not None
        return self._name(source.name)

    # -- sources --

    def _inline(self, data: Mapping[str, Any]) -> ResolvedModel:
        profile = profile_from_document(dict(data), "spec.model.profile")
        return ResolvedModel(name=profile.name or "inline", digest=profile_digest(profile), profile=profile,
                             source="inline")

    def _name(self, name: str) -> ResolvedModel:
        entry = catalogue.find(name)
        if entry is not None and not self.registry_first:
            return self._from_catalogue(name, entry.profile)
        try:
            return self._from_registry(name)
        except ResolveUnavailable:
            if entry is None:
                raise
            return self._from_catalogue(name, entry.profile)
        except UnknownModel:
            if entry is None:
                raise
            return self._from_catalogue(name, entry.profile)

    @staticmethod
    def _from_catalogue(name: str, profile: ModelProfile) -> ResolvedModel:
        return ResolvedModel(name=name, digest=profile_digest(profile), profile=profile, source="catalogue",
                             registry_name=name)

    def registry_base(self, ref: OllamaName) -> str:
        return self.registry_url if ref.host == DEFAULT_REGISTRY_HOST else f"https://{ref.host}"

    def blob_url(self, ref: OllamaName, digest: str) -> str:
        return f"{self.registry_base(ref)}/v2/{ref.namespace}/{ref.model}/blobs/{digest}"

    def _from_registry(self, name: str) -> ResolvedModel:
        ref = parse_ollama_name(name)
        manifest = self._manifest(name, ref)
        with self._lock:
            profile = self._profiles.get(manifest.digest)
        if profile is None:
            url = self.blob_url(ref, manifest.digest)
            profile = self._read_header(url, display=name, source=f"registry:{ref}", what=f"model blob of {name}")
            with self._lock:
                self._profiles[manifest.digest] = profile
        return ResolvedModel(name=name, digest=manifest.digest, profile=profile, source="registry",
                             registry_name=name, params_num_ctx=manifest.params_num_ctx)

    def _manifest(self, name: str, ref: OllamaName) -> _Manifest:
        now = self._clock()
        with self._lock:
            cached = self._manifests.get(name)
        if cached is not None and cached[0] > now:
            return cached[1]
        base = self.registry_base(ref)
        url = f"{base}/v2/{ref.namespace}/{ref.model}/manifests/{ref.tag}"
        try:
            doc = self.http.json(url, {"Accept": MANIFEST_ACCEPT}, what=f"manifest of {name}")
        except UnknownModel:
            raise UnknownModel(f"model {name!r} is not in the registry {base} ({url}: HTTP 404)") from None
        layers = doc.get("layers") if isinstance(doc, Mapping) else None
        if not isinstance(layers, list):
            raise InvalidSpec(f"manifest of {name}", "has no layers list")
        model_layer = next((l for l in layers if isinstance(l, Mapping) and l.get("mediaType") == MODEL_LAYER), None)
        if model_layer is None or not isinstance(model_layer.get("digest"), str):
            raise InvalidSpec(f"manifest of {name}", f"has no {MODEL_LAYER} layer (not a GGUF model)")
        config = doc.get("config") if isinstance(doc.get("config"), Mapping) else None
        if config and isinstance(config.get("digest"), str):
            info = self.http.json(self.blob_url(ref, config["digest"]), what=f"config of {name}")
            fmt = info.get("model_format") if isinstance(info, Mapping) else None
            if fmt not in (None, "gguf"):
                raise InvalidSpec(f"config of {name}", f"model_format {fmt!r}: K80 runtimes load GGUF only")
        params_ctx = None
        params = next((l for l in layers if isinstance(l, Mapping) and l.get("mediaType") == PARAMS_LAYER), None)
        if params is not None and isinstance(params.get("digest"), str):
            values = self.http.json(self.blob_url(ref, params["digest"]), what=f"params of {name}")
            raw = values.get("num_ctx") if isinstance(values, Mapping) else None
            params_ctx = raw if isinstance(raw, int) and not isinstance(raw, bool) else None
        manifest = _Manifest(digest=model_layer["digest"], size=int(model_layer.get("size") or 0),
                             params_num_ctx=params_ctx)
        with self._lock:
            self._manifests[name] = (now + self.name_ttl_s, manifest)
        return manifest

    def _url(self, url: str) -> ResolvedModel:
        now = self._clock()
        with self._lock:
            cached = self._urls.get(url)
        if cached is not None and cached[0] > now:
            return cached[1]
        display = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]) or url
        profile = self._read_header(url, display=display, source=f"url:{url}", what="spec.model.url")
        model = ResolvedModel(name=display, digest=profile_digest(profile), profile=profile, source="url",
                              weights_url=url)
        with self._lock:
            self._urls[url] = (now + self.name_ttl_s, model)
        return model

    def _read_header(self, url: str, *, display: str, source: str, what: str) -> ModelProfile:
        self.header_reads += 1
        with RangeReader(self.http, url, window=self.header_window, cap=self.header_cap, what=what) as stream:
            header = parse_gguf_header(stream, max_header_bytes=self.header_cap)
        return profile_from_gguf(header, name=display, source=source)
