"""A runnable fallback demo: starts the fake provider server, scripts a 503 on the first model, routes one
request through a small policy with a fallback and prints the attempts and `engine.usage()`.

    python -m tests.demo_fallback

`engine_for(server, policy)` (an Engine whose providers all point at a FakeServer) is shared with the tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine import Engine
from providers.catalog import ProviderSpec, load_catalog
from tests.fakeserver import FakeServer, Fault, Reply

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


def provider_specs(server: FakeServer, **overrides: Any) -> dict[str, ProviderSpec]:
    """A ProviderSpec per fixture provider, pointing at `server` (keys from env TEST_<NAME>_KEY)."""
    return {
        name: ProviderSpec(
            name=name,
            kind=kind,
            base_url=server.base_url(kind),  # type: ignore[arg-type]
            api_key_env=f"TEST_{name.upper()}_KEY",
            timeout_s=5.0,
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


def main() -> None:
    with FakeServer() as server:
        server.script("alpha-mini", [Fault.server_error(503), Fault.server_error(503)])  # first try + one retry
        server.script("beta-chat", Reply(text="Paris is the capital of France.", input_tokens=12, output_tokens=8))
        with engine_for(server) as engine:
            print("policy:", *POLICY.strip().splitlines(), sep="\n  ")
            completion = engine.complete("What is the capital of France?")
            print(f"\nanswer: {completion.text!r} from {completion.model} ({completion.provider})")
            print("attempts:")
            for i, attempt in enumerate(completion.attempts, 1):
                print(f"  {i}. {attempt}")
            print("\nengine.usage():")
            usage = engine.usage()
            print(f"  {'':<22}{'calls':>6}{'failures':>9}{'success':>9}{'tokens in/out':>15}{'cost':>12}{'latency':>9}")
            for group in ("models", "providers"):
                for name, row in usage[group].items():
                    latency = f"{row['latency_ms']:.0f}ms" if row["latency_ms"] is not None else "-"
                    tokens, cost = f"{row['input_tokens']}/{row['output_tokens']}", f"${row['cost']:.6f}"
                    print(
                        f"  {group[:-1] + ' ' + name:<22}{row['calls']:>6}{row['failures']:>9}"
                        f"{row['success_rate']:>9.0%}{tokens:>15}{cost:>12}{latency:>9}"
                    )


if __name__ == "__main__":
    main()
