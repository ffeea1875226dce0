"""The shared provider HTTP client: a ProviderSpec plus a ChatRequest in, a ChatResponse or StreamEvents out.

`ProviderClient` owns one pooled `httpx.Client` and one `httpx.AsyncClient` (both created lazily), resolves
the API key, sends requests, times them, maps failures to `providers.errors` classes and drives SSE streams.
Subclasses only describe their wire format: URL, auth headers, JSON body, response parsing and a
`StreamParser` for their SSE events.  API keys live in a `SecretStr` and are never logged or shown; each is
registered for redaction (providers.errors.register_secret) when the client first holds it.

This module holds the calls (`chat`, `achat`, `stream`, `astream`); the layers below them live in
providers/clients/connection.py (state, configuration, pooled clients, the response-size cap),
providers/clients/request.py (request building), providers/clients/answers.py (reading answers, error mapping)
and providers/clients/reply.py (ParsedReply, StreamParser).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, ClassVar

import httpx

from providers.clients.answers import ClientAnswers, _Slices
from providers.clients.connection import TimeoutArg
from providers.clients.lean import LeanTransport
from providers.clients.params import FANOUT_KINDS, choices
from providers.clients.reply import StreamParser, merge_answers
from providers.clients.request import ClientRequests
from providers.clients.sse import aiter_sse_bytes, iter_sse_bytes
from providers.errors import ProviderError
from providers.types import ChatRequest, ChatResponse, StreamEvent

if TYPE_CHECKING:
    from providers.types import ModelSpecLike as ModelSpec


class ProviderClient(ClientRequests, ClientAnswers):
    """Base client for one provider; see the module docstring.  Use `client_for(spec)` to get a subclass."""

    stream_parser: ClassVar[type[StreamParser]] = StreamParser

    def __enter__(self) -> ProviderClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> ProviderClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

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
