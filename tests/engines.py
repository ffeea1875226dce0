"""Test helpers for the execution and gateway tests: a FakeServer and a policy in, `engine_for(server, policy)`,
an Engine over the fixture catalog whose providers all point at that tests.fakeserver.FakeServer, out (with the
provider settings it uses). Helpers only: no tests here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine import Engine
from providers.catalog.loader import load_catalog
from providers.catalog.models import ProviderSpec
from tests.fakeserver import FakeServer

CATALOG = Path(__file__).resolve().parent / "fixtures" / "policies" / "catalog.yaml"
#: The fixture catalog's providers, each given one of the three wire formats so every format is exercised.
KINDS = {"acme": "openai", "betacorp": "anthropic", "gammalabs": "gemini", "deltaio": "openai", "local": "openai"}
TEST_KEY = "sk-test-demo-key"

POLICY = """
set retry.attempts = 1
set retry.backoff = 10ms
when tier == "pro" use alpha-large fallback beta-coder
otherwise use alpha-mini fallback beta-chat, gamma-flash
"""


def provider_specs(server: FakeServer, *, timeout_s: float | None = 5.0, **overrides: Any) -> dict[str, ProviderSpec]:
    """A ProviderSpec per fixture provider, pointing at `server` (keys from env TEST_<NAME>_KEY). `timeout_s=None`
    leaves the providers' timeout unset, so the policy's `set timeout` applies."""
    if timeout_s is not None:
        overrides["timeout_s"] = timeout_s
    return {
        name: ProviderSpec(
            name=name,
            kind=kind,  # type: ignore[arg-type]
            base_url=server.base_url(kind),
            api_key_env=f"TEST_{name.upper()}_KEY",
            **overrides,
        )
        for name, kind in KINDS.items()
    }


def engine_for(
    server: FakeServer,
    policy: str = POLICY,
    *,
    api_keys: dict[str, str] | None = None,
    specs: dict[str, ProviderSpec] | None = None,
    **kw: Any,
) -> Engine:
    """An Engine over the fixture catalog whose providers all call `server`. Every provider gets TEST_KEY
    unless `api_keys` says otherwise (a provider missing from an explicit `api_keys` has no key)."""
    keys = {name: TEST_KEY for name in KINDS} if api_keys is None else api_keys
    return Engine.from_source(
        policy, catalog=load_catalog(CATALOG), providers=specs or provider_specs(server), api_keys=keys, **kw
    )


class Engines:
    """A factory for `make` fixtures: `engine_for(server, policy)` with `policy` defaulting to `default`, and with
    provider specs without timeout_s when `provider_timeouts` is False (so a policy's `set timeout` applies);
    `close()` closes every engine made."""

    def __init__(self, server: FakeServer, *, default: Any = POLICY, provider_timeouts: bool = True) -> None:
        self.server, self.default, self.made = server, default, list[Engine]()
        self.specs = None if provider_timeouts else provider_specs(server, timeout_s=None)

    def __call__(self, policy: Any = None, **kw: Any) -> Engine:
        if self.specs is not None:
            kw.setdefault("specs", self.specs)
        engine = engine_for(self.server, self.default if policy is None else policy, **kw)
        self.made.append(engine)
        return engine

    def close(self) -> None:
        for engine in self.made:
            engine.close()


def outcomes(completion_or_error: Any) -> list[tuple[str, str]]:
    """(model, error or outcome) of each attempt of a Completion or a RoutingError."""
    return [(a.model, a.error or a.outcome) for a in completion_or_error.attempts]


def called(server: FakeServer) -> list[str]:
    """The model of each request `server` received, in order."""
    return [r.model for r in server.requests]


def idle(engine: Any) -> bool:
    """Whether no model of the engine's policy has a request in flight."""
    return all(engine.state.in_flight(m) == 0 for m in engine.policy.models)


def settled(engine: Any) -> tuple[float, float]:
    """(spent, still reserved) today: the reservation is released once a request ends, however it ends."""
    return engine.state.spent(engine.budget_book.day_key())
