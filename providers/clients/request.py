"""Request building for the provider clients: a model and a ChatRequest in, the `RequestParts` (URL, headers, JSON
body bytes, timeouts) every transport path sends out.

`ClientRequests` is the layer of ProviderClient (providers/clients/base.py) that builds them, checks header
values and refuses a request its wire format cannot serialise before anything touches the network.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, NamedTuple

import httpx

from providers.clients.connection import ClientConnection, TimeoutArg
from providers.errors import BadRequest, ProviderUnavailable

if TYPE_CHECKING:
    from providers.types import ChatRequest
    from providers.types import ModelSpecLike as ModelSpec

log = logging.getLogger("modelroute.providers")

# headers every request carries unless the catalog or the wire format sets them
DEFAULT_HEADERS = {"content-type": "application/json", "accept": "*/*", "user-agent": "modelroute"}


class RequestParts(NamedTuple):
    """One built request: what every transport path sends."""

    url: httpx.URL
    headers: list[tuple[bytes, bytes]]
    content: bytes
    timeouts: dict[str, float | None]


def _valid_header_value(value: bytes) -> bool:
    """A header value that every transport sends unchanged: no control characters, no surrounding whitespace."""
    return value == value.strip() and not any(c < 0x20 or c == 0x7F for c in value)


class ClientRequests(ClientConnection):
    """The request builders of a provider client (see the module docstring)."""

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
