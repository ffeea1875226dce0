"""Policy settings: `set NAME = value` statements in, a typed, immutable Settings object out (defaults filled in)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

#: The judge prompt of `best_of` (`set judge.prompt` replaces it): `{question}` is the user's messages, `{answers}`
#: the numbered answers ("Answer 1:\n..."), `{count}` how many there are. Only these three placeholders are
#: replaced (no str.format: other braces are sent as written, so none are doubled here). The judge replies with
#: JSON; a reply that is not JSON is read for the number of the best answer (providers/execution/judging.py).
JUDGE_PROMPT = (
    "You are judging answers to the same request.\n\nRequest:\n{question}\n\n{answers}\n\n"
    "Score each of the {count} answers from 0 to 10 for correctness, completeness and helpfulness. Reply with "
    'JSON only, in this form: {"scores": [<one number per answer, in order>], "reasoning": "<why the best answer '
    'is best>"}'
)


class Spec(NamedTuple):
    """One setting: its literal kind, default (None: unset), what it does, and the words it accepts (kind name)."""

    kind: str
    default: Any
    doc: str
    choices: tuple[str, ...] = ()
    positive: bool = False  # a time bound: 0 would refuse every request, so the compiler asks for more than 0
    real: bool = False  # a count that may have a fraction (a weight): kept as a float, not made whole
    zero: str = "0 would end every request at once"  # (positive settings) what a 0 would do, the diagnostic's label
    minimum: float = 0.0  # the least value allowed above 0 (E401 below it), in the kind's unit (seconds)


#: name -> Spec. Durations are seconds, percentages fractions; a "fraction" is a number from 0 to 1 or a percentage.
#: The one list of settings: the compiler checks
#: `set` statements against it, docs/execution.md describes it, and Settings.defaults() comes from it.
SETTINGS: dict[str, Spec] = {
    "retry.attempts": Spec("count", 2, "retries of a transient failure on the same model before falling back"),
    "retry.backoff": Spec("duration", 0.2, "first retry delay; doubles each retry, with jitter"),
    "retry.max_backoff": Spec("duration", 5.0, "upper bound of a retry delay (also caps a Retry-After wait)"),
    "timeout": Spec(
        "duration", 60.0, "bound of one non-streamed attempt, connect to last byte (provider's if set)", positive=True
    ),
    "stream.first_token_timeout": Spec(
        "duration", None, "a stream's bound until its first chunk (unset: timeout)", positive=True
    ),
    "stream.idle_timeout": Spec(
        "duration", None, "the longest gap between a stream's chunks (unset: timeout)", positive=True
    ),
    "deadline": Spec(
        "duration", None, "bound of a whole request across retries and fallbacks (unset: none)", positive=True
    ),
    "failover.depth": Spec("count", 2, "ranked or group models the plan keeps after the chosen one (0: none)"),
    "circuit.failures": Spec("count", 5, "failures within circuit.window that open a model's circuit"),
    "circuit.window": Spec("duration", 60.0, "the window in which failures are counted"),
    "circuit.cooldown": Spec("duration", 30.0, "how long a circuit stays open before a half-open probe"),
    "circuit.when_all_open": Spec(
        "name", "probe", "every circuit of the plan open: probe the one opened longest ago, or fail", ("probe", "fail")
    ),
    "latency.min_samples": Spec("count", 20, "measured calls before `fastest` trusts measured over catalog latency"),
    "output_tokens": Spec("count", 500, "output tokens assumed for cost when a request has no max_tokens"),
    "budget.warn": Spec("percent", 0.8, "share of a budget spent that raises a budget warning event"),
    "budget.max_output_tokens": Spec(
        "count", 4096, "max_tokens sent when a budget applies and the request sets none (bounds the hold)"
    ),
    "budget.unknown_price_hold": Spec(
        "money", None, "held per call of a model without a known price under a budget (unset: refuse the request)"
    ),
    "overrides": Spec("bool", False, "whether a request may name a concrete catalog model (gateway)"),
    "adhoc_models": Spec(
        "bool", False, "whether `provider:model` may name a model the catalog does not list, for a configured provider"
    ),
    "health.window": Spec(
        "duration",
        300.0,
        "the window success rates are measured over (healthiest, balance weighted)",
        positive=True,
        zero="an empty window holds no call to measure",
    ),
    "health.interval": Spec(
        "duration",
        None,
        "active health checks: probe each model the policy uses this often, at least 1s (unset: no checks)",
        positive=True,
        zero="0 would probe every model without a pause",
        minimum=1.0,
    ),
    "health.concurrency": Spec("count", 4, "active health checks: probes in flight at once"),
    "health.success_weight": Spec("count", 0.7, "balance weighted: weight of a member's success rate", real=True),
    "health.latency_weight": Spec("count", 0.3, "balance weighted: weight of a member's latency score", real=True),
    "params.unsupported": Spec(
        "name",
        "drop",
        "a request field the chosen provider has no counterpart for: drop it (named in the "
        "x-modelroute-dropped-params header) or reject the request (400)",
        ("drop", "reject"),
    ),
    "n.fanout": Spec(
        "bool", True, "`n` > 1 on a provider without it (anthropic): n separate calls, or refuse the request (400)"
    ),
    "n.max": Spec(
        "count", 8, "the most separate calls `n` may take on a provider without it (anthropic); a larger n: 400"
    ),
    "consensus.compare": Spec(
        "name",
        "normalised",
        "how consensus compares answers: normalised (case, spaces, punctuation) or exact",
        ("normalised", "exact"),
    ),
    "judge.prompt": Spec(
        "string", JUDGE_PROMPT, "the best_of judge prompt: a template with {question}, {answers}, {count}"
    ),
    "cache.ttl": Spec(
        "duration", None, "how long an answer is served from the response cache (unset: no caching)", positive=True
    ),
    "cache.shared": Spec("bool", False, "whether gateway keys share cached answers (false: each key its own)"),
    "cache.sampled": Spec(
        "bool", False, "whether answers to sampled requests (temperature > 0, or unset: 1) are cached too"
    ),
    "cache.semantic": Spec(
        "fraction",
        None,
        "semantic cache: a request whose text is at least this similar (cosine, 0-1 or a percentage) to a cached "
        "one's, with the same plan, key scope and output-changing fields, is answered from the cache (unset: exact "
        "matches only)",
    ),
    "cache.max_bytes": Spec("count", 64 * 1024 * 1024, "bound of the in-memory response cache, in bytes (LRU)"),
    "tokens.estimator": Spec(
        "string",
        None,
        'exact text counting, "tiktoken:ENCODING" from local files (extra `tokens`; unset: one token per 4 chars)',
    ),
}


#: The units of a `limit` statement and what each counts, per minute: the one list (compiler, gateway, docs).
RATE_UNITS: dict[str, str] = {"rpm": "requests", "tpm": "tokens"}


@dataclass(frozen=True, slots=True)
class RateLimitSpec:
    """`limit 60 rpm per key`: the unit (a RATE_UNITS key), the whole number allowed per minute, the request
    attribute whose every value has its own limit (None: one limit for all requests), and where it is written."""

    unit: str
    limit: int
    per: str | None
    where: str

    @property
    def counts(self) -> str:
        """What the limit counts: "requests" or "tokens"."""
        return RATE_UNITS[self.unit]


@dataclass(frozen=True)
class Settings(Mapping[str, Any]):
    """Every setting with its effective value; `settings["circuit.failures"]` or `settings.get(...)`. `limits`: the
    policy's `limit` statements (rate limits, which the gateway enforces), in source order."""

    by_name: Mapping[str, Any]  # not `values`: that is Mapping.values()
    limits: tuple[RateLimitSpec, ...] = ()

    @classmethod
    def defaults(cls) -> Settings:
        return cls({name: spec.default for name, spec in SETTINGS.items()})

    def __getitem__(self, key: str) -> Any:
        return self.by_name[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.by_name)

    def __len__(self) -> int:
        return len(self.by_name)


def setting(settings: Mapping[str, Any] | None, name: str) -> Any:
    """A setting's effective value, or its default when there are no settings (a policy built by hand)."""
    if settings is None:
        return SETTINGS[name].default
    value = settings.get(name, SETTINGS[name].default)
    return value


def coerce(name: str, value: Any) -> Any:
    """The Python value of a setting (counts as int where the setting counts things)."""
    spec = SETTINGS[name]
    kind = spec.kind
    if kind == "count":
        return float(value) if spec.real else int(value)
    if kind in ("duration", "percent", "money", "fraction"):
        return float(value)
    return value
