"""Rate limits at the gateway: a request (its gateway key, attributes, policy and token estimate) in; admitted, with
`ratelimit.left` set for the policy and OpenAI's `x-ratelimit-*` headers for the answer, or refused with a 429
ApiError carrying `Retry-After` (the endpoint's wire renders it in its own error shape) out; the tokens charged
from the estimate are corrected with the request's real usage when it ends.

Limits come from the policy's `limit` statements (`limit 60 rpm per key`: one bucket per value of the attribute;
a request without the attribute is not limited by it, as with budgets) and from the gateway key's `rpm` / `tpm`
(keys file). Each is a GCRA bucket (providers/state/ratelimit.py, which documents the accuracy), in memory or,
with `--redis`, shared by every replica. A request takes 1 from each rpm bucket and, from each tpm bucket, its
estimate: the input tokens the engine counts (messages and tools) plus its `max_tokens`, or without one the policy's
`budget.max_output_tokens` (within the smallest tpm limit, so such a request still fits a full bucket), or for an
endpoint without output (embeddings) the count it gives (providers/gateway/embeddings.py, input_tokens); the
difference with the usage the upstream reports (input plus output tokens, every attempt) is given back or taken
when the answer, or the stream, ends.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.runtime.settings import RATE_UNITS, setting
from providers.gateway.closing import closing
from providers.gateway.openai_wire import ApiError
from providers.state.ratelimit import Check, Limiter, Verdict, limiter_for

if TYPE_CHECKING:
    from starlette.responses import Response

    from engine import Engine
    from providers.execution import Run
    from providers.gateway.app import Gateway
    from providers.gateway.keys import GatewayKey
    from providers.gateway.openai_wire import ChatCall

__all__ = ["Ticket", "admit", "duration", "rate_headers", "settle", "settle_stream"]

#: What each unit counts, as OpenAI's header names say it (`x-ratelimit-limit-requests`, `...-tokens`).
COUNTS = RATE_UNITS  # "rpm" -> "requests", "tpm" -> "tokens": the one list, engine/runtime/settings.py


@dataclass
class Ticket:
    """One admitted request's limits: its checks and verdicts, the tokens it was charged, whether it is settled."""

    limiter: Limiter
    checks: list[tuple[str, Check]]  # (unit, check)
    verdicts: list[Verdict]
    estimate: int
    settled: bool = field(default=False)

    def headers(self) -> dict[str, str]:
        return _headers(self.checks, self.verdicts)


def duration(seconds: float) -> str:
    """A reset time as OpenAI writes it: `20ms`, `1s`, `1.5s`, `6m0s`."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    total = math.ceil(seconds * 1000) / 1000
    minutes, rest = divmod(total, 60)
    secs = f"{round(rest, 3):g}s"
    return f"{int(minutes)}m{secs}" if minutes else secs


def _headers(checks: list[tuple[str, Check]], verdicts: list[Verdict]) -> dict[str, str]:
    """The x-ratelimit-* headers: for requests and for tokens, the tightest limit (the one refusing, if any)."""
    out: dict[str, str] = {}
    for unit, counts in COUNTS.items():
        mine = [v for (u, _c), v in zip(checks, verdicts, strict=True) if u == unit]
        if not mine:
            continue
        v = min(mine, key=lambda x: (x.admitted, x.remaining, x.reset))  # the fewest left; ties: the first reset
        out[f"x-ratelimit-limit-{counts}"] = str(v.limit)
        out[f"x-ratelimit-remaining-{counts}"] = str(v.remaining)
        out[f"x-ratelimit-reset-{counts}"] = duration(v.reset)
    return out


def rate_headers(ticket: Ticket | None) -> dict[str, str]:
    """The headers of an answer (none without limits)."""
    return {} if ticket is None else ticket.headers()


def _estimate(engine: Engine, call: ChatCall, cap: int) -> int:
    """The tokens charged up front: the input plus `max_tokens`, or without one the policy's
    `budget.max_output_tokens` (an unbounded answer is not free), that default kept within `cap` (the smallest tpm
    limit) so a request without max_tokens is still admitted when a bucket is full."""
    counted = int(engine.count_tokens(messages=call.messages, tools=call.options.get("tools")).worst)
    max_tokens = call.options.get("max_tokens")
    if max_tokens:
        return counted + int(max_tokens)
    default = int(setting(engine.policy.settings, "budget.max_output_tokens"))
    return max(counted, min(counted + default, cap))


def _bucket_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 200 else text[:200] + "#" + hashlib.sha256(text.encode()).hexdigest()[:16]


def checks_for(
    engine: Engine, policy_name: str, key: GatewayKey | None, attrs: Mapping[str, Any]
) -> list[tuple[str, int, str]]:
    """(unit, limit, bucket) of every limit that applies to a request: the policy's, then the key's."""
    out: list[tuple[str, int, str]] = []
    settings = engine.policy.settings
    for spec in settings.limits if settings is not None else ():
        if spec.per is None:
            out.append((spec.unit, spec.limit, f"policy:{policy_name}:{spec.unit}"))
            continue
        value = attrs.get(spec.per)
        if value is not None:
            out.append((spec.unit, spec.limit, f"policy:{policy_name}:{spec.unit}:{spec.per}={_bucket_value(value)}"))
    if key is not None:
        for unit in COUNTS:
            limit = getattr(key, unit, None)
            if limit:
                out.append((unit, int(limit), f"key:{key.name}:{unit}"))
    return out


def admit(
    gw: Gateway,
    engine: Engine,
    policy_name: str,
    call: ChatCall,
    key: GatewayKey | None,
    attrs: dict[str, Any],
    *,
    tokens: int | None = None,
) -> Ticket | None:
    """Take the request from every limit that applies and set `ratelimit.left` in `attrs`; None when no limit
    applies. `tokens`: the whole count of a request without output (embeddings), else estimated from the messages
    and max_tokens. Raises ApiError 429 (with Retry-After and the x-ratelimit-* headers) when one refuses it; one
    that no bucket could ever admit (its tokens above a tpm limit) has `x-should-retry: false` instead of
    Retry-After, which the openai and anthropic SDKs obey."""
    found = checks_for(engine, policy_name, key, attrs)
    if not found:
        return None
    tpm = [limit for unit, limit, _b in found if unit == "tpm"]
    estimate = 0 if not tpm else tokens if tokens is not None else _estimate(engine, call, min(tpm))
    checks = [(unit, Check(bucket, limit, 1.0 if unit == "rpm" else float(estimate))) for unit, limit, bucket in found]
    limiter = limiter_for(gw.engine.state)
    ok, verdicts = limiter.acquire([c for _u, c in checks])
    if not ok:
        raise _refused(checks, verdicts, estimate)
    attrs["ratelimit.left"] = min(v.left for v in verdicts)
    return Ticket(limiter, checks, verdicts, estimate)


def _refused(checks: list[tuple[str, Check]], verdicts: list[Verdict], estimate: int) -> ApiError:
    denied = [(unit, c, v) for (unit, c), v in zip(checks, verdicts, strict=True) if not v.admitted]
    unit, check, v = max(denied, key=lambda d: d[2].retry_after)
    where = check.bucket.split(":", 1)[0]
    source = "the gateway key's" if where == "key" else "the policy's"
    hdrs = _headers(checks, verdicts)
    if v.too_large:  # it can never pass: no Retry-After, and the official SDKs told not to retry it
        hdrs["x-should-retry"] = "false"
        message = (
            f"this request needs about {estimate} tokens, more than {source} limit of {check.limit} tokens per "
            "minute allows at once: send fewer tokens or a lower max_tokens"
        )
        return ApiError(429, message, type="tokens", code="rate_limit_exceeded", headers=hdrs)
    wait = max(v.retry_after for _u, _c, v in denied)
    hdrs["retry-after"] = str(max(1, math.ceil(wait)))
    hdrs["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
    message = (
        f"rate limit reached: {source} limit of {check.limit} {COUNTS[unit]} per minute"
        f" ({v.remaining} left); retry in {duration(wait)}"
    )
    return ApiError(429, message, type=COUNTS[unit], code="rate_limit_exceeded", headers=hdrs)


def settle(ticket: Ticket | None, run: Run | None = None) -> None:
    """Correct the tokens charged with the request's real usage (none: nothing was used), once."""
    if ticket is None or ticket.settled:
        return
    ticket.settled = True
    used = 0 if run is None else run.input_tokens + run.output_tokens
    delta = used - ticket.estimate
    if delta:
        for unit, check in ticket.checks:
            if unit == "tpm":
                ticket.limiter.adjust(check, float(delta))


def settle_stream(response: Response, ticket: Ticket | None, run: Run) -> None:
    """A streamed answer: add the headers now, and settle once it is done being sent (or the client goes, even
    before its body began: providers/gateway/closing.py)."""
    if ticket is None:
        return
    response.headers.update(ticket.headers())
    closing(response).on_close(lambda: settle(ticket, run))
