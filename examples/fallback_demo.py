"""A fallback demo: a policy and a catalog whose providers point at a local fake OpenAI-compatible server; the
first model answers 503 twice (the try and one retry), so the request falls back to the next model. Prints
the attempts and `engine.usage()`. No network, no API keys; needs only `python -m pip install .`.

    python examples/fallback_demo.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fake_openai import FakeOpenAI  # beside this file (Python puts the script's folder on sys.path)

from engine import Engine

# Two providers on the same local server (in real life: two vendors, or a cloud API and a local vLLM).
CATALOG = """\
providers:
  acme: {{kind: openai, base_url: "{base_url}", timeout_s: 5}}
  betacorp: {{kind: openai, base_url: "{base_url}", timeout_s: 5}}
models:
  alpha-mini:
    provider: acme
    context: 16k
    price: {{input: 0.15, output: 0.60}}
    latency_ms: 300
  beta-chat:
    provider: betacorp
    context: 32k
    price: {{input: 0.25, output: 0.50}}
    latency_ms: 500
  gamma-flash:
    provider: betacorp
    context: 32k
    price: {{input: 0.10, output: 0.40}}
    latency_ms: 400
"""

POLICY = """\
catalog "models.yaml"
set retry.attempts = 1
set retry.backoff = 10ms
otherwise use alpha-mini fallback beta-chat, gamma-flash
"""


def main() -> None:
    with FakeOpenAI() as server, tempfile.TemporaryDirectory() as tmp:
        server.script("alpha-mini", [503, 503])  # the first try and its one retry
        server.script("beta-chat", ["Paris is the capital of France."])
        Path(tmp, "models.yaml").write_text(CATALOG.format(base_url=server.base_url), encoding="utf-8")
        Path(tmp, "main.route").write_text(POLICY, encoding="utf-8")
        print(f"fake OpenAI-compatible server: {server.base_url}")
        print("policy (main.route):", *POLICY.strip().splitlines(), sep="\n  ")
        with Engine.load(Path(tmp, "main.route")) as engine:
            completion = engine.complete("What is the capital of France?")
            print(f"\nanswer: {completion.text!r} from {completion.model} ({completion.provider})")
            print("attempts:")
            for i, attempt in enumerate(completion.attempts, 1):
                print(f"  {i}. {attempt}")
            print("\nengine.usage():")
            print(f"  {'':<22}{'calls':>6}{'failures':>9}{'success':>9}{'tokens in/out':>15}{'cost':>12}")
            usage = engine.usage()
            for group in ("models", "providers"):
                for name, row in usage[group].items():
                    tokens, cost = f"{row['input_tokens']}/{row['output_tokens']}", f"${row['cost']:.6f}"
                    print(
                        f"  {group[:-1] + ' ' + name:<22}{row['calls']:>6}{row['failures']:>9}"
                        f"{row['success_rate']:>9.0%}{tokens:>15}{cost:>12}"
                    )


if __name__ == "__main__":
    main()
