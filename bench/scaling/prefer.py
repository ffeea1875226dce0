"""Prefer section of bench/scaling_bench.py: the bundled catalog and a 4,000-model one in, report lines out on
how long each `prefer` ranking takes over each."""

from __future__ import annotations

import random
from collections.abc import Callable

from needs import missing_data
from speed.inputs import BIG_CATALOG_SIZE, LITELLM_PRICES, big_catalog
from speed.timing import interleaved_cells

from engine import Engine
from providers.catalog.models import Catalog, ModelSpec, default_catalog
from scaling.shapes import filler_prompt

PREFERS = {
    "prefer cheapest": "otherwise prefer cheapest\n",
    "prefer capability(CODING)": "otherwise prefer capability(CODING)\n",
    "prefer capability(CODING) then cheapest": "otherwise prefer capability(CODING) then cheapest\n",
    "prefer least_busy": "otherwise prefer least_busy\n",
}


def synthetic_catalog(base: Catalog, total: int) -> Catalog:
    """A deterministic generated catalog of `total` models (when the shared LiteLLM file is not there)."""
    rng = random.Random(15)
    prices = [0.0, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 3.0, 5.0, 10.0, 15.0]
    specs = list(base.models.values())
    for i in range(total - len(specs)):
        ip = rng.choice(prices)
        specs.append(
            ModelSpec(
                name=f"gen-{i:05d}",
                provider=f"p{i % 40}",
                id=f"gen-{i:05d}",
                context=rng.choice([8_000, 32_000, 128_000, 1_000_000]),
                input_price=ip / 1e6,
                output_price=ip * rng.choice([1, 2, 4]) / 1e6,
                latency_ms=float(rng.randrange(200, 4000, 50)),
                capabilities={"CODING": float(rng.randint(1, 10)), "REASONING": float(rng.randint(1, 10))},
                supports=frozenset(rng.sample(["tools", "vision", "json"], rng.randint(0, 3))),
            )
        )
    return Catalog.from_models(specs)


def large_catalog() -> tuple[Catalog, str]:
    """bench/speed_bench.py's 4,000-model catalog from the shared LiteLLM file, else a generated one (and which)."""
    base = default_catalog()
    if not missing_data(LITELLM_PRICES):
        cat, k = big_catalog(base, BIG_CATALOG_SIZE)
        return cat, f"bundled + {k} LiteLLM chat models + variants"
    return synthetic_catalog(base, BIG_CATALOG_SIZE), "bundled + generated models (no shared LiteLLM file)"


def section_prefer(out: list[str], samples: int) -> None:
    from engine.runtime.state import MemoryStore

    big, how = large_catalog()
    small = default_catalog()
    out.append("")
    out.append(
        f"== rankings over the bundled catalog ({len(small.models)} models) and {len(big.models):,} models ({how})"
    )
    out.append("   200 B prompt; least_busy with 40 models in flight (the alphabetically first 20 among them)")
    out.append(
        f"  {'action':<42} {f'{len(small.models)} models us':>13} {f'{len(big.models):,} models us':>16} "
        f"{'ratio':>7}  target < 20 us"
    )
    prompt = filler_prompt("summarize the meeting notes")
    for label, text in PREFERS.items():
        cells: dict[str, Callable[[], object]] = {}
        for name, cat in (("small", small), ("big", big)):
            store = MemoryStore()
            names = sorted(cat.models)
            for m in names[:20] + random.Random(1).sample(names, 20):
                store.add_in_flight(m, 1 + len(m) % 3)
            engine = Engine.from_source(text, catalog=cat, state=store)
            d = engine.decide(prompt)
            assert d.model, label

            def cell(e: Engine = engine) -> object:
                return e.decide(prompt)

            cells[name] = cell
        med = interleaved_cells(cells, samples)
        ratio = med["big"] / med["small"]
        flag = "ok" if med["big"] < 20 else "MISSED"
        out.append(f"  {label:<42} {med['small']:13.2f} {med['big']:16.2f} {ratio:6.2f}x  {flag}")
