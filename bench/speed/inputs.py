"""Inputs of bench/speed_bench.py: real prompts and the shared LiteLLM price file in, sized requests, generated
policies and a ~4,000-model catalog out (bench/scaling_bench.py ranks over the same catalog)."""

from __future__ import annotations

import hashlib
import json

from decide_bench import sized
from needs import data_dir

from providers.catalog.models import Catalog, ModelSpec

LITELLM_PRICES = "litellm_model_prices.json"
SIZES = {"200 B": 200, "4 KB": 4_000, "100 KB": 100_000, "1 MB": 1_000_000}
KINDS = {"use": "use gemini-1.5-flash", "capability": "prefer capability(CODING)", "cheapest": "prefer cheapest"}
BIG_CATALOG_SIZE = 4_000

Case = tuple[str, dict]  # a prompt and the attributes decide() gets with it


def big_catalog(base: Catalog, total: int = BIG_CATALOG_SIZE) -> tuple[Catalog, int]:
    """The bundled models plus every LiteLLM chat model with prices and a context window, padded with
    deterministic variants (name~2, prices +10%) to `total`. Capability scores come from the price rank."""
    raw = json.loads((data_dir() / LITELLM_PRICES).read_text(encoding="utf-8"))
    taken = set(base.models) | set(base.aliases)
    rows = []
    for name, v in raw.items():
        if not isinstance(v, dict) or v.get("mode") != "chat" or name in taken:
            continue
        ip, op, ctx = v.get("input_cost_per_token"), v.get("output_cost_per_token"), v.get("max_input_tokens")
        if ip is None or op is None or not ctx:
            continue
        rows.append((name, v, float(ip), float(op), int(ctx)))
    from_litellm = len(rows)
    k = 0
    while len(rows) < total - len(base.models) and from_litellm:
        name, v, ip, op, ctx = rows[k % from_litellm]
        rows.append((f"{name}~{2 + k // from_litellm}", v, ip * 1.1, op * 1.1, ctx))
        k += 1
    by_price = sorted(range(len(rows)), key=lambda i: (rows[i][3], rows[i][0]))
    rank = {i: r / max(1, len(rows) - 1) for r, i in enumerate(by_price)}
    specs = list(base.models.values())
    for i, (name, v, ip, op, ctx) in enumerate(rows):
        jitter = int(hashlib.sha256(name.encode()).hexdigest()[:4], 16) / 0xFFFF  # deterministic, 0..1
        score = 1 + 8 * rank[i]  # pricier models score higher, as they tend to
        supports = set()
        if v.get("supports_function_calling"):
            supports.add("tools")
        if v.get("supports_vision"):
            supports.add("vision")
        if v.get("supports_response_schema"):
            supports.add("json")
        specs.append(
            ModelSpec(
                name=name,
                provider=str(v.get("litellm_provider") or "unknown"),
                id=name,
                context=ctx,
                input_price=ip,
                output_price=op,
                latency_ms=round(200 + 3000 * (1 - rank[i]) * jitter),
                capabilities={
                    "REASONING": round(score, 2),
                    "CODING": round(min(10.0, score + jitter), 2),
                    "CREATIVITY": round(1 + 9 * jitter, 2),
                    "SPEED": round(10 - 9 * rank[i], 2),
                },
                supports=frozenset(supports),
            )
        )
    return Catalog.from_models(specs), from_litellm


def generated_policy(n: int, kind: str) -> str:
    """n rules: n-1 keyword / tier+keyword rules with the given action kind, then `otherwise`."""
    action = KINDS[kind]
    lines = []
    for i in range(n - 1):
        if i % 2 == 0:
            lines.append(f"when task ~ /\\bkeyword{i}\\b/ {action}")
        else:
            lines.append(f'when tier == "t{i}" and task ~ /\\btopic{i}\\b/ {action}')
    lines.append(f"otherwise {action}")
    return "\n".join(lines) + "\n"


def cases_for(prompts: list[str], size: int, n_rules: int, count: int = 8) -> list[Case]:
    """Prompts of `size` bytes that contain the keyword of the rule in the middle of the policy."""
    mid = (n_rules // 2) & ~1
    out: list[Case] = []
    for p in sized(prompts, size, count):
        cut = max(0, size // 2)
        text = (p[:cut] + f" keyword{mid} " + p[cut:])[:size]
        if f"keyword{mid} " not in text:  # tiny prompts: put the keyword first
            text = (f"keyword{mid} " + p)[:size]
        out.append((text, {"tier": "pro"} if len(out) % 2 else {}))
    return out
