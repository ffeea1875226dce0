"""Provider error classes, and `classify_*` functions that turn HTTP statuses, error bodies and httpx
exceptions into them.

Every error carries `provider`, `model`, `status` (HTTP status or None), `retry_after` (seconds or None),
`transient` (worth retrying the same model) and `code` (the provider's error code/type, when given).
Messages are built only from provider error text and never from request headers, cut to MAX_MESSAGE characters
and redacted: every API key the process knows (`register_secret`; the clients register theirs) and the one a
caller passes as `secret` is removed, and so is any piece of 8 or more characters of one, in any letter case,
forwards or reversed (`redact`). `RedactingFilter` applies the same to log records.
"""

from __future__ import annotations

import email.utils
import json
import logging
import re
import threading
import time
from collections.abc import Mapping
from typing import Any

REDACTED = "***"
MIN_PIECE = 8  # a run of this many characters of a key (or of its reverse), in any case, is redacted
MAX_MESSAGE = 2000  # provider error text kept in an error's message, in characters (cut before redaction)
_GEMINI_DELAY = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")
_CONTEXT_HINTS = (
    "maximum context length",
    "context_length_exceeded",
    "prompt is too long",
    "context window",
    "input token count",
    "exceeds the maximum number of tokens",
    "input length and `max_tokens` exceed",
    "too many tokens",
)
# Anthropic error types (also used in streamed `error` events) and the HTTP status each one implies.
ANTHROPIC_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
GEMINI_STATUS_CODES = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


class ProviderError(Exception):
    """Base of every provider failure; `transient` says whether retrying the same model may help."""

    default_transient = False

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        model: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        transient: bool | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.model = model
        self.status = status
        self.retry_after = retry_after
        self.transient = self.default_transient if transient is None else transient
        self.code = code

    def __str__(self) -> str:
        where = "/".join(x for x in (self.provider, self.model) if x)
        status = f" [{self.status}]" if self.status is not None else ""
        return f"{where}{status}: {self.message}" if where else f"{self.message}{status}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(provider={self.provider!r}, model={self.model!r}, "
            f"status={self.status!r}, retry_after={self.retry_after!r}, transient={self.transient!r}, "
            f"message={self.message!r})"
        )


class RateLimited(ProviderError):
    default_transient = True


class Timeout(ProviderError):
    default_transient = True


class ConnectionFailed(ProviderError):
    default_transient = True


class ServerError(ProviderError):
    default_transient = True


class MalformedResponse(ProviderError):
    """The provider answered something unparseable or cut its stream short (a transient glitch)."""

    default_transient = True


class ContextTooLong(ProviderError):
    pass


class ContentFiltered(ProviderError):
    """The request or the answer was blocked; `response` holds any partial answer."""

    response: Any = None


class AuthError(ProviderError):
    pass


class BadRequest(ProviderError):
    pass


class ProviderUnavailable(ProviderError):
    """The provider cannot be used at all (e.g. no API key configured); raised before any network call."""


class ResponseTooLarge(ProviderError):
    """The provider's answer (a whole body, or a stream in total) was larger than the client's
    `max_response_bytes`; the connection was dropped. Not retried on the same model: the next plan entry is tried."""


# ---- redaction -----------------------------------------------------------------------------------------------
_secrets: frozenset[str] = frozenset()  # replaced, never changed in place: readers need no lock
_secrets_lock = threading.Lock()
_Pieces = tuple[frozenset[str], frozenset[str]]  # (8-character pieces, whole short keys), lower case
_compiled: dict[frozenset[str], _Pieces] = {}


def register_secret(secret: str | None) -> None:
    """Remember an API key so that `redact` removes it (and its pieces) from every text, whoever passes it."""
    global _secrets
    if secret and len(secret) >= 4 and secret not in _secrets:
        with _secrets_lock:
            _secrets = _secrets | {secret}


def _pieces(secrets: frozenset[str]) -> _Pieces:
    found = _compiled.get(secrets)
    if found is None:
        grams: set[str] = set()
        short: set[str] = set()
        for secret in secrets:
            for text in (secret.lower(), secret[::-1].lower()):
                if len(text) < MIN_PIECE:
                    short.add(text)
                else:
                    grams.update(text[i : i + MIN_PIECE] for i in range(len(text) - MIN_PIECE + 1))
        found = (frozenset(grams), frozenset(short))
        if len(_compiled) > 64:
            _compiled.clear()
        _compiled[secrets] = found
    return found


def _lower(text: str) -> str:
    """`text` in lower case, character for character (indexes stay aligned)."""
    low = text.lower()
    if len(low) != len(text):  # a few characters lower-case to two ("İ"): keep those as they are
        low = "".join(c if len(c.lower()) != 1 else c.lower() for c in text)
    return low


def redact(text: str, secret: str | None = None) -> str:
    """`text` without any registered key or `secret`: every run of MIN_PIECE or more characters of one (or of
    one reversed), in any letter case, becomes `***` (a key shorter than MIN_PIECE, of 4 characters or more, is
    removed whole)."""
    secrets = _secrets
    if secret and len(secret) >= 4 and secret not in secrets:
        secrets |= {secret}
    if not secrets or not text:
        return text
    grams, short = _pieces(secrets)
    low = _lower(text)
    spans: list[tuple[int, int]] = []
    if grams:
        for i in range(len(low) - MIN_PIECE + 1):
            if low[i : i + MIN_PIECE] in grams:
                spans.append((i, i + MIN_PIECE))
    for piece in short:
        start = low.find(piece)
        while start >= 0:
            spans.append((start, start + len(piece)))
            start = low.find(piece, start + 1)
    if not spans:
        return text
    spans.sort()
    out: list[str] = []
    end = 0
    cut_start, cut_end = spans[0]
    for s, e in spans[1:]:
        if s <= cut_end:
            cut_end = max(cut_end, e)
            continue
        out += [text[end:cut_start], REDACTED]
        end = cut_end
        cut_start, cut_end = s, e
    out += [text[end:cut_start], REDACTED, text[cut_end:]]
    return "".join(out)


def provider_text(message: str, secret: str | None = None) -> str:
    """Provider error text as kept in a ProviderError: cut to MAX_MESSAGE characters, then redacted."""
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + "..."
    return redact(message, secret)


class RedactingFilter(logging.Filter):
    """A logging filter (for handlers) that redacts every registered key from a record's message and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a record whose arguments do not format: let the handler report it
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def parse_retry_after(headers: Mapping[str, str], body: Any = None, *, now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms`, `retry-after` (seconds or HTTP-date) or a Gemini RetryInfo."""
    lowered = {k.lower(): v for k, v in headers.items()}
    ms = lowered.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                when = None
            if when is not None:
                return max(0.0, when.timestamp() - (time.time() if now is None else now))
    if isinstance(body, dict):  # Gemini: error.details[{"@type": ".../google.rpc.RetryInfo", "retryDelay": "13s"}]
        details = (body.get("error") or {}).get("details") if isinstance(body.get("error"), dict) else None
        for detail in details or []:
            if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("RetryInfo"):
                match = _GEMINI_DELAY.match(str(detail.get("retryDelay", "")))
                if match:
                    return float(match.group(1))
    return None


def _error_details(kind: str, body: Any) -> tuple[str | None, str]:
    """(code, message) from an error body in `kind`'s wire format."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return None, ""
    message = str(err.get("message") or "")
    if kind == "openai":
        code = err.get("code") or err.get("type")
    elif kind == "anthropic":
        code = err.get("type")
    else:
        code = err.get("status") or err.get("code")
    return (str(code) if code is not None else None), message


def _looks_context_too_long(code: str | None, message: str) -> bool:
    low = message.lower()
    return code == "context_length_exceeded" or any(h in low for h in _CONTEXT_HINTS)


def error_for(
    status: int | None,
    *,
    code: str | None,
    message: str,
    retry_after: float | None = None,
    provider: str | None = None,
    model: str | None = None,
) -> ProviderError:
    """The error class for an HTTP status plus the provider's error code and message."""
    kw: dict[str, Any] = {"provider": provider, "model": model, "status": status, "code": code}
    text = message or (f"HTTP {status}" if status is not None else "provider error")
    if code in ("content_filter", "content_policy_violation") or "content management policy" in text.lower():
        return ContentFiltered(text, **kw)
    if status in (400, 404, 413, 422) and _looks_context_too_long(code, text):
        return ContextTooLong(text, **kw)
    if status == 429 or code in ("rate_limit_error", "RESOURCE_EXHAUSTED", "rate_limit_exceeded"):
        # OpenAI's insufficient_quota is a 429 that no amount of waiting fixes.
        return RateLimited(text, retry_after=retry_after, transient=code != "insufficient_quota", **kw)
    if status in (401, 403):
        return AuthError(text, **kw)
    if status == 408:
        return Timeout(text, retry_after=retry_after, **kw)
    if status is not None and (status >= 500 or status == 409):
        return ServerError(text, retry_after=retry_after, **kw)
    return BadRequest(text, **kw)


def classify_http(
    kind: str,
    status: int,
    headers: Mapping[str, str],
    body: bytes | str | Any,
    *,
    provider: str | None = None,
    model: str | None = None,
    secret: str | None = None,
) -> ProviderError:
    """Classify a non-2xx response of wire format `kind` ("openai" | "anthropic" | "gemini")."""
    if isinstance(body, (bytes, str)):
        try:
            body = json.loads(body or b"null")
        except ValueError:
            text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
            body = {"error": {"message": text[:500]}}
    if isinstance(body, list) and body:  # Gemini sometimes wraps the error object in a list
        body = body[0]
    code, message = _error_details(kind, body)
    return error_for(
        status,
        code=code,
        message=provider_text(message, secret),
        retry_after=parse_retry_after(headers, body),
        provider=provider,
        model=model,
    )


def classify_stream_error(
    kind: str,
    payload: Any,
    *,
    provider: str | None = None,
    model: str | None = None,
    secret: str | None = None,
) -> ProviderError:
    """Classify an error delivered inside an SSE stream (status derived from the error type/code)."""
    code, message = _error_details(kind, payload)
    err = payload.get("error") if isinstance(payload, dict) else None
    status: int | None = None
    if kind == "anthropic":
        status = ANTHROPIC_ERROR_STATUS.get(code or "")
    elif isinstance(err, dict) and isinstance(err.get("code"), int):
        status = err["code"]
    elif kind == "gemini":
        status = GEMINI_STATUS_CODES.get(code or "")
    error = error_for(status, code=code, message=provider_text(message, secret), provider=provider, model=model)
    if status is None and type(error) is BadRequest:  # unknown mid-stream failure: treat as a server glitch
        error = ServerError(error.message, provider=provider, model=model, code=code)
    return error


def classify_exception(
    exc: BaseException, *, provider: str | None = None, model: str | None = None, secret: str | None = None
) -> ProviderError:
    """Map an httpx/transport/parsing exception to a ProviderError (returns it; the caller raises)."""
    import httpx  # here, so that importing the error classes never loads httpx (the decision core is pure)

    if isinstance(exc, ProviderError):
        return exc
    detail = provider_text(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, secret)
    kw: dict[str, Any] = {"provider": provider, "model": model}
    if isinstance(exc, httpx.TimeoutException):
        return Timeout(f"request timed out ({detail})", **kw)
    if isinstance(exc, httpx.ConnectError):
        return ConnectionFailed(f"could not connect ({detail})", **kw)
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.CloseError)):
        return ConnectionFailed(f"connection lost ({detail})", **kw)
    if isinstance(exc, httpx.DecodingError | ValueError | LookupError | TypeError | AttributeError):
        return MalformedResponse(f"unparseable response ({detail})", **kw)
    if isinstance(exc, (httpx.TransportError, OSError)):
        return ConnectionFailed(f"transport failure ({detail})", **kw)
    return ProviderError(detail, **kw)
