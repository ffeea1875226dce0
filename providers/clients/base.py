"""The shared provider HTTP client: a ProviderSpec plus a ChatRequest in, a ChatResponse or StreamEvents out.

`ProviderClient` owns one pooled `httpx.Client` and one `httpx.AsyncClient` (both created lazily), resolves
the API key, sends requests, times them, maps failures to `providers.errors` classes and drives SSE streams.
Subclasses only describe their wire format: URL, auth headers, JSON body, response parsing and a
`StreamParser` for their SSE events.  API keys live in a `SecretStr` and are never logged or shown; each is
registered for redaction (providers.errors.register_secret) when the client first holds it.

Answers are capped: a body (or a stream, in total) larger than `max_response_bytes` raises ResponseTooLarge and
drops its connection. The cap is the provider spec's `max_response_bytes`, else the client's own (constructor),
else the process default (`set_default_max_response_bytes`, 32 MiB unless changed; `modelroute serve
--max-response-bytes` changes it).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import ssl
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import httpx
from pydantic import SecretStr

from providers.clients.lean import LeanTransport, too_large
from providers.clients.params import FANOUT_KINDS, TRANSLATED, choices
from providers.clients.sse import SSEEvent, aiter_sse_bytes, iter_sse_bytes
from providers.errors import (
    BadRequest,
    ContentFiltered,
    MalformedResponse,
    ProviderError,
    ProviderUnavailable,
    ResponseTooLarge,
    classify_exception,
    classify_http,
    classify_stream_error,
    register_secret,
)
from providers.types import (
    ChatRequest,
    ChatResponse,
    Choice,
    FinishReason,
    StreamEvent,
    ToolCall,
    Usage,
    cost_of,
)

if TYPE_CHECKING:
    from providers.types import ModelSpecLike as ModelSpec
    from providers.types import ProviderSpecLike as ProviderSpec

log = logging.getLogger("modelroute.providers")
TimeoutArg = float | httpx.Timeout | None

DEFAULT_MAX_RESPONSE_BYTES = 32 << 20  # 33554432: the cap on an answer when nothing else sets one
_max_response_bytes = [DEFAULT_MAX_RESPONSE_BYTES]


def default_max_response_bytes() -> int:
    """The process-wide cap on a provider answer's size, in bytes, for providers whose spec sets none."""
    return _max_response_bytes[0]


def set_default_max_response_bytes(limit: int | None) -> int:
    """Set the process-wide cap (None: back to DEFAULT_MAX_RESPONSE_BYTES); returns the previous one. Applies to
    clients already created too (each call reads it)."""
    if limit is not None and limit < 1:
        raise ValueError(f"max_response_bytes must be at least 1, got {limit}")
    previous = _max_response_bytes[0]
    _max_response_bytes[0] = DEFAULT_MAX_RESPONSE_BYTES if limit is None else int(limit)
    return previous


@functools.cache
def _shared_ssl_context() -> ssl.SSLContext:
    """httpx's default verifying context, built once and shared by every client (building one is slow)."""
    return httpx.create_ssl_context()


def _environment_proxied() -> bool:
    """Whether the environment names an HTTP proxy (then the async path goes through httpx.AsyncClient)."""
    return any(k in ("http", "https", "all") for k in urllib.request.getproxies_environment())


# headers every request carries unless the catalog or the wire format sets them
DEFAULT_HEADERS = {"content-type": "application/json", "accept": "*/*", "user-agent": "modelroute"}


class RequestParts(NamedTuple):
    """One built request: what every transport path sends."""

    url: httpx.URL
    headers: list[tuple[bytes, bytes]]
    content: bytes
    timeouts: dict[str, float | None]


class _HeaderCache:
    """The built headers for the current API key (the key may change); its repr shows neither."""

    __slots__ = ("_entry",)

    def __init__(self) -> None:
        self._entry: tuple[str | None, list[tuple[bytes, bytes]]] | None = None

    def get(self, key: str | None) -> list[tuple[bytes, bytes]] | None:
        entry = self._entry  # one read: the key and its headers always belong together
        return entry[1] if entry is not None and entry[0] == key else None

    def set(self, key: str | None, headers: list[tuple[bytes, bytes]]) -> None:
        self._entry = (key, headers)

    def __repr__(self) -> str:
        return "_HeaderCache(...)"


@dataclass
class ParsedReply:
    """A parsed provider answer before timing and cost are attached."""

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    finish_reason: FinishReason = "stop"
    model_version: str | None = None
    choices: list[Choice] = field(default_factory=list)  # the answers after the first (`n` > 1)
    logprobs: Any = None  # OpenAI-shaped logprobs of the first answer
    service_tier: str | None = None  # the OpenAI service tier billed (echoed by the upstream, else requested)


class StreamParser:
    """Per-stream state: subclasses turn SSE events into StreamEvents and set `finished` when done."""

    def __init__(self, client: ProviderClient, model: ModelSpec) -> None:
        self.client = client
        self.model = model
        self.reply = ParsedReply(finish_reason="other")
        self.finished = False
        self.raw: Any = None
        self.pieces: list[str] = []  # the deltas' text, joined into `reply.text` at the end (`+=` is quadratic)

    def feed(self, event: SSEEvent) -> Iterable[StreamEvent]:
        raise NotImplementedError

    def delta(self, text: str) -> StreamEvent:
        self.pieces.append(text)
        return StreamEvent(kind="delta", text=text)

    def text(self) -> str:
        """The text streamed so far (into `reply.text`)."""
        if self.pieces:
            self.reply.text += "".join(self.pieces)
            self.pieces.clear()
        return self.reply.text

    def tool_call(self, call: ToolCall) -> StreamEvent:
        self.reply.tool_calls.append(call)
        return StreamEvent(kind="tool_call", tool_call=call)

    def stream_error(self, payload: Any) -> ProviderError:
        c = self.client
        return classify_stream_error(c.kind, payload, provider=c.spec.name, model=self.model.name, secret=c._secret())


class _Slices(httpx.SyncByteStream):
    """A body already in memory, handed to httpx's decoders in slices, so that a compressed answer is counted
    against the cap as it expands rather than after all of it has."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def __iter__(self) -> Iterator[bytes]:
        view = memoryview(self._body)
        for i in range(0, len(view), 16384):
            yield bytes(view[i : i + 16384])


def _valid_header_value(value: bytes) -> bool:
    """A header value that every transport sends unchanged: no control characters, no surrounding whitespace."""
    return value == value.strip() and not any(c < 0x20 or c == 0x7F for c in value)


class ProviderClient:
    """Base client for one provider; see the module docstring.  Use `client_for(spec)` to get a subclass."""

    kind: ClassVar[str] = ""
    #: whose error bodies the provider answers with (the format classify_http reads): its own kind unless set
    error_kind: ClassVar[str] = ""
    default_base_url: ClassVar[str] = ""
    stream_parser: ClassVar[type[StreamParser]] = StreamParser

    def __init__(
        self,
        spec: ProviderSpec,
        *,
        api_key: str | None = None,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
        limits: httpx.Limits | None = None,
        trust_env: bool = True,
        max_response_bytes: int | None = None,
    ) -> None:
        self.spec = spec
        self._api_key = SecretStr(api_key) if api_key else None
        register_secret(api_key)
        self._max_response = max_response_bytes
        self._transport = transport
        self._async_transport = async_transport
        self._limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20)
        self._trust_env = trust_env
        self._client: httpx.Client | None = None
        self._aclient: httpx.AsyncClient | None = None
        self._lean: LeanTransport | None = None
        self._urls: dict[str, httpx.URL] = {}
        self._timeouts: dict[float | None, dict[str, float | None]] = {}
        self._headers = _HeaderCache()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        key = "set" if self._secret() else "unset"
        return f"{type(self).__name__}(provider={self.spec.name!r}, base_url={self.base_url!r}, api_key={key})"

    # ---- configuration -------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return (self.spec.base_url or self.default_base_url).rstrip("/")

    @property
    def max_response_bytes(self) -> int:
        """The cap on one answer's size in bytes: the spec's, else this client's, else the process default."""
        return getattr(self.spec, "max_response_bytes", None) or self._max_response or _max_response_bytes[0]

    def _secret(self) -> str | None:
        if self._api_key is not None:
            return self._api_key.get_secret_value()
        env = self.spec.api_key_env
        key = (os.environ.get(env) or None) if env else None
        if key is not None:
            register_secret(key)  # a set lookup once known
        return key

    def _require_key(self) -> str | None:
        key = self._secret()
        if key is None and self.spec.api_key_env:
            raise ProviderUnavailable(
                f"no API key: environment variable {self.spec.api_key_env} is not set",
                provider=self.spec.name,
            )
        return key

    def _timeout(self, timeout: TimeoutArg) -> httpx.Timeout:
        if isinstance(timeout, httpx.Timeout):
            return timeout
        return httpx.Timeout(self.spec.timeout_s if timeout is None else timeout)

    # ---- the wire format (subclasses) -------------------------------------------------------------------
    def url(self, model: ModelSpec, *, stream: bool) -> str:
        raise NotImplementedError

    def auth_headers(self, key: str | None) -> dict[str, str]:
        raise NotImplementedError

    def build_body(self, model: ModelSpec, req: ChatRequest, *, stream: bool) -> dict[str, Any]:
        raise NotImplementedError

    def parse_reply(self, data: Any) -> ParsedReply:
        raise NotImplementedError

    # ---- pooled HTTP clients ----------------------------------------------------------------------------
    def http(self) -> httpx.Client:
        """The (lazily created, pooled) synchronous httpx client."""
        with self._lock:
            if self._client is None or self._client.is_closed:
                self._client = httpx.Client(
                    verify=_shared_ssl_context(),
                    transport=self._transport,
                    limits=self._limits,
                    trust_env=self._trust_env,
                    timeout=self._timeout(None),
                )
            return self._client

    def ahttp(self) -> httpx.AsyncClient:
        """The (lazily created, pooled) async httpx client; bound to the event loop that first uses it."""
        with self._lock:
            if self._aclient is None or self._aclient.is_closed:
                self._aclient = httpx.AsyncClient(
                    verify=_shared_ssl_context(),
                    transport=self._async_transport,
                    limits=self._limits,
                    trust_env=self._trust_env,
                    timeout=self._timeout(None),
                )
            return self._aclient

    def lean(self) -> LeanTransport | None:
        """The lean transport the async path sends through (providers/clients/lean.py), or None when a custom
        `async_transport` was given or the environment names a proxy: then `ahttp()` is used."""
        if self._lean is not None:
            return self._lean
        if self._async_transport is not None or (self._trust_env and _environment_proxied()):
            return None
        with self._lock:
            if self._lean is None:
                self._lean = LeanTransport(ssl_context=_shared_ssl_context(), limits=self._limits)
            return self._lean

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def aclose(self) -> None:
        if self._aclient is not None:
            await self._aclient.aclose()
            self._aclient = None
        if self._lean is not None:
            await self._lean.aclose()
            self._lean = None
        self.close()

    def __enter__(self) -> ProviderClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> ProviderClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- shared request/response plumbing ---------------------------------------------------------------
    def request_parts(self, model: ModelSpec, req: ChatRequest, stream: bool, timeout: TimeoutArg) -> RequestParts:
        """The one request builder every transport path sends: URL, headers, JSON body bytes and timeouts.

        Raises ProviderUnavailable (before anything touches the network) when the API key is missing or a
        header value holds a control character, surrounding spaces or non-ASCII text. Header names merge
        case-insensitively, so a catalog `headers: {Authorization: ...}` is sent once, overridden by the wire
        format's auth headers."""
        key = self._require_key()
        try:
            body = self.build_body(model, req, stream=stream)
            body.update(req.extra)
        except (ValueError, TypeError, RecursionError) as exc:
            raise self._unsendable(exc, model) from None
        headers = self._headers.get(key)
        if headers is None:  # checked once per key
            merged = httpx.Headers(DEFAULT_HEADERS)
            try:
                merged.update(self.spec.headers)
                merged.update(self.auth_headers(key))
            except UnicodeEncodeError:
                raise ProviderUnavailable(
                    "a header value (the API key or a catalog header) is not ASCII text", provider=self.spec.name
                ) from None
            headers = [(k, v) for k, v in merged.raw if k.lower() != b"content-length"]
            bad = next((k for k, v in headers if not _valid_header_value(v)), None)
            if bad is not None:
                raise ProviderUnavailable(
                    f"header {bad.decode(errors='replace')!r} is not a valid value: it holds a line break, NUL or "
                    "other control character, or starts or ends with a space (an API key read with its trailing "
                    "newline?)",
                    provider=self.spec.name,
                )
            self._headers.set(key, headers)
        url = self.url(model, stream=stream)
        parsed = self._urls.get(url)
        if parsed is None:
            parsed = self._urls[url] = httpx.URL(url)
        log.debug("POST %s provider=%s model=%s stream=%s", url, self.spec.name, model.name, stream)
        try:
            content = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        except (ValueError, TypeError, RecursionError) as exc:  # NaN, a lone surrogate, a non-JSON value
            raise self._unsendable(exc, model) from None
        return RequestParts(parsed, headers, content, self._timeout_dict(timeout))

    def _unsendable(self, exc: BaseException, model: ModelSpec) -> BadRequest:
        """A request this wire format cannot serialise: the request's fault, raised before any network call
        (BadRequest: not retried, not counted against the circuit)."""
        return BadRequest(
            f"the request cannot be serialised for {self.kind}: {type(exc).__name__}: {str(exc)[:200]}",
            provider=self.spec.name,
            model=model.name,
            code="unserialisable_request",
        )

    def _build(
        self,
        http: httpx.Client | httpx.AsyncClient,
        model: ModelSpec,
        req: ChatRequest,
        stream: bool,
        timeout: TimeoutArg,
    ) -> httpx.Request:
        """`request_parts` as a request of an httpx client (which adds its transport headers)."""
        parts = self.request_parts(model, req, stream, timeout)
        return http.build_request(
            "POST", parts.url, content=parts.content, headers=parts.headers, timeout=self._timeout(timeout)
        )

    def _timeout_dict(self, timeout: TimeoutArg) -> dict[str, float | None]:
        timeouts = self._timeouts.get(timeout) if not isinstance(timeout, httpx.Timeout) else None
        if timeouts is None:
            timeouts = self._timeout(timeout).as_dict()
            if not isinstance(timeout, httpx.Timeout):
                self._timeouts[timeout] = timeouts
        return timeouts

    def _build_lean(self, model: ModelSpec, req: ChatRequest, stream: bool, timeout: TimeoutArg) -> httpx.Request:
        """`request_parts` as a bare httpx.Request (for the lean transport's streams)."""
        parts = self.request_parts(model, req, stream, timeout)
        return httpx.Request(
            "POST", parts.url, content=parts.content, headers=parts.headers, extensions={"timeout": parts.timeouts}
        )

    def _fail(self, exc: BaseException, model: ModelSpec) -> ProviderError:
        error = classify_exception(exc, provider=self.spec.name, model=model.name, secret=self._secret())
        if error is exc:  # raised below the client (the size cap): say whose answer it was
            error.provider = error.provider or self.spec.name
            error.model = error.model or model.name
        log.info("provider call failed: %s (%s)", error, type(error).__name__)
        return error

    def _http_error(self, response: httpx.Response, model: ModelSpec, body: bytes | None = None) -> ProviderError:
        error = classify_http(
            self.error_kind or self.kind,
            response.status_code,
            response.headers,
            response.content if body is None else body,
            provider=self.spec.name,
            model=model.name,
            secret=self._secret(),
        )
        log.info("provider call failed: %s (%s)", error, type(error).__name__)
        return error

    # ---- reading answers within max_response_bytes ---------------------------------------------------------
    def _declared_too_large(self, response: httpx.Response, cap: int) -> ResponseTooLarge | None:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            return too_large(cap, f"Content-Length {int(declared):,}")
        return None

    def _read(self, response: httpx.Response) -> bytes:
        """A streamed httpx response's whole (decoded) body, closing it; ResponseTooLarge past the cap (the
        connection is then closed, not pooled)."""
        cap = self.max_response_bytes
        try:
            error = self._declared_too_large(response, cap)
            if error is not None:
                raise error
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > cap:
                    raise too_large(cap, f"more than {cap:,} bytes")
                chunks.append(chunk)
        finally:
            response.close()
        return b"".join(chunks)

    async def _aread(self, response: httpx.Response) -> bytes:
        """Async `_read`."""
        cap = self.max_response_bytes
        try:
            error = self._declared_too_large(response, cap)
            if error is not None:
                raise error
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > cap:
                    raise too_large(cap, f"more than {cap:,} bytes")
                chunks.append(chunk)
        finally:
            await response.aclose()
        return b"".join(chunks)

    def _owned(self, error: ProviderError, model: ModelSpec) -> None:
        """Fill in this provider and `model` on an error raised where they are not known (the size cap)."""
        if error.provider is None:
            error.provider = self.spec.name
            error.model = error.model or model.name
            log.info("provider call failed: %s (%s)", error, type(error).__name__)

    def _response(
        self,
        reply: ParsedReply,
        model: ModelSpec,
        started: float,
        raw: Any,
        first_token_s: float | None = None,
    ) -> ChatResponse:
        if reply.tool_calls and reply.finish_reason == "stop":
            reply.finish_reason = "tool_calls"
        response = ChatResponse(
            text=reply.text,
            tool_calls=reply.tool_calls,
            usage=reply.usage,
            finish_reason=reply.finish_reason,
            provider=self.spec.name,
            model=model.name,
            model_version=reply.model_version,
            latency_s=time.perf_counter() - started,
            first_token_s=first_token_s,
            cost=cost_of(model, reply.usage, reply.service_tier),
            raw=raw,
            choices=reply.choices,
            logprobs=reply.logprobs,
            service_tier=reply.service_tier,
        )
        usage = reply.usage
        log.debug("provider=%s model=%s finish=%s latency=%.3fs tokens=%d/%d", self.spec.name, model.name,
                  response.finish_reason, response.latency_s, usage.input_tokens, usage.output_tokens)  # fmt: skip
        if response.finish_reason == "content_filter":
            error = ContentFiltered(
                "response blocked by the provider's content filter", provider=self.spec.name, model=model.name
            )
            error.response = response
            raise error
        return response

    def _complete(
        self, response: httpx.Response, body: bytes, model: ModelSpec, started: float, tier: str | None = None
    ) -> ChatResponse:
        """The ChatResponse (or the classified error) from a response and its whole `body`, as `_read` gives it."""
        if response.status_code >= 400:
            raise self._http_error(response, model, body)
        return self._answer(lambda: json.loads(body), model, started, tier)

    def tier(self, req: ChatRequest) -> str | None:
        """The OpenAI `service_tier` `req` is sent with by this client (None where the kind drops it)."""
        tier = req.params.get("service_tier") if self.kind not in TRANSLATED else None
        return tier if isinstance(tier, str) else None

    def _answer(
        self, load: Callable[[], Any], model: ModelSpec, started: float, tier: str | None = None
    ) -> ChatResponse:
        """The ChatResponse from a successful answer's JSON (`load()` parses it); `tier` is the service tier
        asked for, billed unless the answer names the one it used."""
        try:
            data = load()
            reply = self.parse_reply(data)
            reply.service_tier = reply.service_tier or tier
        except ProviderError as error:
            error.model = error.model or model.name
            raise
        except Exception as exc:
            raise self._fail(exc, model) from exc
        return self._response(reply, model, started, data)

    def _stream_end(
        self, parser: StreamParser, model: ModelSpec, started: float, first: float | None
    ) -> Iterator[StreamEvent]:
        if not parser.finished:
            raise MalformedResponse(
                "stream ended before its terminal event (cut short)",
                provider=self.spec.name,
                model=model.name,
            )
        parser.text()
        response = self._response(parser.reply, model, started, parser.raw, first)
        yield StreamEvent(kind="usage", usage=response.usage)
        yield StreamEvent(kind="done", finish_reason=response.finish_reason, response=response)

    # ---- public API -------------------------------------------------------------------------------------
    def chat(self, model: ModelSpec, req: ChatRequest, *, timeout: TimeoutArg = None) -> ChatResponse:
        """Send `req` to `model` and wait for the whole answer (for `n` > 1 on a provider without `n`, n calls one
        after another, merged into one answer with n choices)."""
        n = choices(req.params)
        if n > 1 and self.kind in FANOUT_KINDS:
            return merge_answers([self._chat(model, req, timeout) for _ in range(n)])
        return self._chat(model, req, timeout)

    def _chat(self, model: ModelSpec, req: ChatRequest, timeout: TimeoutArg) -> ChatResponse:
        http = self.http()
        request = self._build(http, model, req, False, timeout)
        started = time.perf_counter()
        try:
            response = http.send(request, stream=True)
            body = self._read(response)
        except Exception as exc:
            raise self._fail(exc, model) from exc
        return self._complete(response, body, model, started, self.tier(req))

    async def achat(self, model: ModelSpec, req: ChatRequest, *, timeout: TimeoutArg = None) -> ChatResponse:
        """Async `chat` (the n calls of a fanned-out `n` run at the same time; when one fails the others are
        cancelled and its error raised: the try failed)."""
        n = choices(req.params)
        if n > 1 and self.kind in FANOUT_KINDS:
            calls = [asyncio.ensure_future(self._achat(model, req, timeout)) for _ in range(n)]
            try:
                return merge_answers(list(await asyncio.gather(*calls)))
            finally:
                for call in calls:
                    call.cancel()
                    if call.done() and not call.cancelled():
                        call.exception()  # retrieved: a second failure is not logged as never retrieved
        return await self._achat(model, req, timeout)

    async def _achat(self, model: ModelSpec, req: ChatRequest, timeout: TimeoutArg) -> ChatResponse:
        tier = self.tier(req)
        lean = self.lean()
        if lean is None:
            http = self.ahttp()
            request = self._build(http, model, req, False, timeout)
            started = time.perf_counter()
            try:
                response = await http.send(request, stream=True)
                body = await self._aread(response)
            except Exception as exc:
                raise self._fail(exc, model) from exc
            return self._complete(response, body, model, started, tier)
        parts = self.request_parts(model, req, False, timeout)
        started = time.perf_counter()
        try:
            status, raw, body = await lean.post(
                parts.url, parts.headers, parts.content, parts.timeouts, self.max_response_bytes
            )
        except Exception as exc:
            raise self._fail(exc, model) from exc
        if status >= 400 or any(k.lower() == b"content-encoding" for k, _ in raw):  # errors, and decoding: httpx
            response = httpx.Response(status, headers=raw, stream=_Slices(body))
            try:
                body = self._read(response)  # the decoded size counts too
            except Exception as exc:
                raise self._fail(exc, model) from exc
            return self._complete(response, body, model, started, tier)
        return self._answer(lambda: json.loads(body), model, started, tier)

    def stream(self, model: ModelSpec, req: ChatRequest, *, timeout: TimeoutArg = None) -> Iterator[StreamEvent]:
        """Stream the answer: deltas and tool calls as they arrive, then `usage` and `done`."""
        http = self.http()
        request = self._build(http, model, req, True, timeout)  # raises here, not on first next()
        return self._stream(http, request, model, self.tier(req))

    def _stream(
        self, http: httpx.Client, request: httpx.Request, model: ModelSpec, tier: str | None = None
    ) -> Iterator[StreamEvent]:
        parser = self.stream_parser(self, model)
        parser.reply.service_tier = tier
        started, first = time.perf_counter(), None
        try:
            response = http.send(request, stream=True)
            try:
                if response.status_code >= 400:
                    raise self._http_error(response, model, self._read(response))
                for sse in iter_sse_bytes(response.iter_bytes(), self.max_response_bytes):
                    for event in parser.feed(sse):
                        if first is None and event.kind in ("delta", "tool_call"):
                            first = time.perf_counter() - started
                        yield event
            finally:
                response.close()
        except ProviderError as error:
            self._owned(error, model)
            raise
        except Exception as exc:
            raise self._fail(exc, model) from exc
        yield from self._stream_end(parser, model, started, first)

    def astream(self, model: ModelSpec, req: ChatRequest, *, timeout: TimeoutArg = None) -> AsyncIterator[StreamEvent]:
        """Async `stream`."""
        lean = self.lean()
        if lean is not None:
            return self._astream(lean, self._build_lean(model, req, True, timeout), model, self.tier(req))
        http = self.ahttp()
        request = self._build(http, model, req, True, timeout)
        return self._astream(http, request, model, self.tier(req))

    async def _astream(
        self,
        http: httpx.AsyncClient | LeanTransport,
        request: httpx.Request,
        model: ModelSpec,
        tier: str | None = None,
    ) -> AsyncIterator[StreamEvent]:
        parser = self.stream_parser(self, model)
        parser.reply.service_tier = tier
        started, first = time.perf_counter(), None
        try:
            if isinstance(http, LeanTransport):
                response = await http.handle_async_request(request)
            else:
                response = await http.send(request, stream=True)
            try:
                if response.status_code >= 400:
                    raise self._http_error(response, model, await self._aread(response))
                async for sse in aiter_sse_bytes(response.aiter_bytes(), self.max_response_bytes):
                    for event in parser.feed(sse):
                        if first is None and event.kind in ("delta", "tool_call"):
                            first = time.perf_counter() - started
                        yield event
            finally:
                await response.aclose()
        except ProviderError as error:
            self._owned(error, model)
            raise
        except Exception as exc:
            raise self._fail(exc, model) from exc
        for event in self._stream_end(parser, model, started, first):
            yield event


def merge_answers(answers: list[ChatResponse]) -> ChatResponse:
    """The answers of n separate calls as one answer with n choices (the first is the answer, the rest its
    `choices`): usage and cost summed, the slowest call's latency."""
    first, rest = answers[0], answers[1:]
    usage = Usage(
        input_tokens=sum(a.usage.input_tokens for a in answers),
        output_tokens=sum(a.usage.output_tokens for a in answers),
        estimated=any(a.usage.estimated for a in answers),
    )
    costs = [a.cost for a in answers]
    return first.model_copy(
        update={
            "usage": usage,
            "cost": None if None in costs else sum(c for c in costs if c is not None),
            "latency_s": max(a.latency_s for a in answers),
            "choices": [
                Choice(text=a.text, tool_calls=a.tool_calls, finish_reason=a.finish_reason, logprobs=a.logprobs)
                for a in rest
            ],
        }
    )
