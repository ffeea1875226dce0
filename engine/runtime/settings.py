"""Policy settings: `set NAME = value` statements in, a typed, immutable Settings object out (defaults filled in)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

#: name -> (literal kind, default, what it does). Durations are seconds, percentages fractions.
SETTINGS: dict[str, tuple[str, Any, str]] = {
    "retry.attempts": ("count", 2, "retries of a transient failure on the same model before falling back"),
    "retry.backoff": ("duration", 0.2, "first retry delay; doubles each retry, with jitter"),
    "retry.max_backoff": ("duration", 5.0, "upper bound of a retry delay (also caps a Retry-After wait)"),
    "timeout": ("duration", 60.0, "per-attempt timeout when the provider sets none"),
    "circuit.failures": ("count", 5, "failures within circuit.window that open a model's circuit"),
    "circuit.window": ("duration", 60.0, "the window in which failures are counted"),
    "circuit.cooldown": ("duration", 30.0, "how long a circuit stays open before a half-open probe"),
    "latency.min_samples": ("count", 20, "measured calls before `fastest` trusts measured over catalog latency"),
    "output_tokens": ("count", 500, "output tokens assumed for cost when a request has no max_tokens"),
    "budget.warn": ("percent", 0.8, "share of a budget spent that raises a budget warning event"),
    "overrides": ("bool", False, "whether a request may name a concrete catalog model (gateway)"),
}


@dataclass(frozen=True)
class Settings(Mapping[str, Any]):
    """Every setting with its effective value; `settings["circuit.failures"]` or `settings.get(...)`."""

    by_name: Mapping[str, Any]  # not `values`: that is Mapping.values()

    @classmethod
    def defaults(cls) -> Settings:
        return cls({name: spec[1] for name, spec in SETTINGS.items()})

    def __getitem__(self, key: str) -> Any:
        return self.by_name[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.by_name)

    def __len__(self) -> int:
        return len(self.by_name)


def coerce(name: str, value: Any) -> Any:
    """The Python value of a setting (counts as int where the setting counts things)."""
    kind = SETTINGS[name][0]
    if kind == "count":
        return int(value)
    if kind in ("duration", "percent"):
        return float(value)
    return value
