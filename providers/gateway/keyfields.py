"""Gateway key fields beyond the digest: a keys file entry's `expires`, `rpm`, `tpm` and `models` values in, checked
values (an expiry instant, limits, a model allow-list) out; plus the 401 `key_expired` error and the model
allow-list applied to a decision's failover plan (403 `model_not_allowed` when nothing of it is allowed).

`expires` is an ISO 8601 date or datetime: a date means the end of that day UTC (the key works through
23:59:59 UTC of that day), a datetime without an offset is UTC. `rpm` / `tpm` are checked here and enforced by
the gateway's rate limiter (providers/gateway/ratelimits.py)."""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from providers.gateway.jsonbody import ApiError

if TYPE_CHECKING:
    from engine import Decision

__all__ = [
    "KeyExpired",
    "allowed_plan",
    "canonical_models",
    "expires_text",
    "model_names",
    "not_allowed",
    "parse_expires",
    "per_minute",
]

UTC = datetime.timezone.utc


class KeyExpired(ApiError):
    """A presented gateway key matched an entry whose `expires` has passed: 401 `key_expired`."""

    def __init__(self, name: str, expired_at: float):
        super().__init__(
            401,
            f"gateway key `{name}` expired at {expires_text(expired_at)}: ask the gateway's operator for a new key",
            type="authentication_error",
            code="key_expired",
        )


def parse_expires(value: Any) -> float:
    """The instant (Unix seconds) from which a key is refused: a date (or date text, `YYYY-MM-DD` or `YYYYMMDD`) is
    the end of that day UTC, a datetime (or ISO 8601 text) that instant, UTC when it has no offset. Raises
    ValueError with the reason."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = _iso_date(text)
        except ValueError:
            raise ValueError(
                f"`{value}` is not an ISO 8601 date or datetime (like 2026-12-31 or 2026-12-31T18:00:00Z)"
            ) from None
    if isinstance(value, datetime.datetime):
        return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, datetime.date):
        # the start of the next day, computed in seconds: `value + 1 day` overflows for 9999-12-31
        return datetime.datetime.combine(value, datetime.time(), tzinfo=UTC).timestamp() + 86400.0
    raise ValueError("must be an ISO 8601 date or datetime, like 2026-12-31 or 2026-12-31T18:00:00Z")


def _iso_date(text: str) -> datetime.date:
    """ISO 8601 text as a date when it is one (in either form, 2027-03-01 or 20270301), else as a datetime."""
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        return datetime.datetime.fromisoformat(text)


def expires_text(instant: float) -> str:
    """An expiry instant as ISO 8601 UTC text (`2027-01-01T00:00:00Z`); an instant past year 9999 (the end of
    9999-12-31) is shown as `9999-12-31T23:59:59.999999Z`, one before year 1 as `0001-01-01T00:00:00Z`."""
    try:
        when = datetime.datetime.fromtimestamp(instant, UTC)
    except (OverflowError, OSError, ValueError):
        when = (datetime.datetime.max if instant > 0 else datetime.datetime.min).replace(tzinfo=UTC)
    return when.isoformat().replace("+00:00", "Z")


def per_minute(value: Any, what: str) -> int:
    """A positive whole number of requests (`rpm`) or tokens (`tpm`) per minute; raises ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a whole number of at least 1 (per minute), like {what}: 60")
    return value


def model_names(value: Any) -> frozenset[str]:
    """A key's `models:` allow-list: a non-empty list of model names; raises ValueError."""
    if not (isinstance(value, list) and value and all(isinstance(m, str) and m.strip() for m in value)):
        raise ValueError("models must be a non-empty list of model names, like [gpt-4o-mini, claude-haiku]")
    return frozenset(m.strip() for m in value)


def not_allowed(name: str, wanted: Iterable[str], allowed: frozenset[str]) -> ApiError:
    """403 `model_not_allowed`: the models a request would need that key `name` may not use."""
    need = ", ".join(dict.fromkeys(wanted)) or "none"
    return ApiError(
        403,
        f"gateway key `{name}` may not use model(s) {need}; it may use: {', '.join(sorted(allowed))}",
        type="permission_error",
        code="model_not_allowed",
        param="model",
    )


def canonical_models(models: frozenset[str], policy: Any) -> frozenset[str]:
    """A key's `models` with catalog aliases replaced by the model names they stand for (a key may list either)."""
    catalog = getattr(policy, "catalog", None)
    aliases = catalog.aliases if catalog is not None else {}
    return frozenset(aliases.get(m, m) for m in models)


def allowed_plan(name: str, allowed: frozenset[str] | None, decision: Decision) -> Decision:
    """`decision` with its failover plan restricted to the key's `models` (a hard filter: the plan's other models
    are dropped, the order kept). A race / consensus / best_of calls its group (and judge) together, so it is not
    filtered: every member must be allowed. Raises ApiError 403 `model_not_allowed` when the plan keeps nothing,
    or a group needs a model the key may not use. `allowed=None`: every model, `decision` unchanged."""
    if allowed is None:
        return decision
    allowed = canonical_models(allowed, decision.policy)
    if decision.strategy != "single":
        needed = [*decision.group, *([decision.judge] if decision.judge else [])]
        refused = [m for m in needed if m not in allowed]
        if refused:
            raise not_allowed(name, refused, allowed)
    plan = decision.plan  # the decision's own list (built once, then cached): filtered in place
    kept = [step for step in plan if step.model in allowed]
    if not kept:
        raise not_allowed(name, (step.model for step in plan), allowed)
    if len(kept) != len(plan):
        plan[:] = kept
    return decision
