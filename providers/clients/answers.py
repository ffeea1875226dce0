"""Answer handling for the provider clients: an httpx response (or its body, or a finished stream) in, a
ChatResponse or the classified `providers.errors` error out.

`ClientAnswers` is the layer of ProviderClient (providers/clients/base.py) that reads bodies within
`max_response_bytes`, maps failures to error classes, and turns a ParsedReply into a timed, costed ChatResponse.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import httpx

from providers.clients.connection import ClientConnection
from providers.clients.lean_conn import too_large
from providers.clients.params import TRANSLATED
from providers.errors import (
    ContentFiltered,
    MalformedResponse,
    ProviderError,
    ResponseTooLarge,
    classify_exception,
    classify_http,
)
from providers.types import ChatRequest, ChatResponse, StreamEvent, cost_of

if TYPE_CHECKING:
    from providers.clients.reply import ParsedReply, StreamParser
    from providers.types import ModelSpecLike as ModelSpec

log = logging.getLogger("modelroute.providers")


class _Slices(httpx.SyncByteStream):
    """A body already in memory, handed to httpx's decoders in slices, so that a compressed answer is counted
    against the cap as it expands rather than after all of it has."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def __iter__(self) -> Iterator[bytes]:
        view = memoryview(self._body)
        for i in range(0, len(view), 16384):
            yield bytes(view[i : i + 16384])


class ClientAnswers(ClientConnection):
    """The answer readers and error mapping of a provider client (see the module docstring)."""

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
