"""LiteLLM section of bench/speed_bench.py: sized prompts and the bundled catalog in, report lines out comparing
decide() with LiteLLM's Router deployment selection (run in the Python that MODELROUTE_LITELLM_PYTHON names)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from decide_bench import engine_fn
from needs import missing_modules

from engine import Engine
from providers.catalog.models import Catalog
from speed.inputs import SIZES, cases_for, generated_policy
from speed.timing import median_us

_LITELLM_SCRIPT = textwrap.dedent("""
    import asyncio, json, logging, statistics, sys, time
    from litellm import Router
    logging.disable(logging.CRITICAL)
    spec = json.loads(sys.stdin.read())

    async def main():
        out = {}
        for strategy in ("simple-shuffle", "cost-based-routing"):
            dep = [{"model_name": "main", "litellm_params": {"model": m, "api_key": "x"}} for m in spec["models"]]
            router = Router(model_list=dep, routing_strategy=strategy)
            for label, prompt in spec["prompts"].items():
                msgs = [{"role": "user", "content": prompt}]
                # the async path is the one the Router uses per request (cost-based only works there)
                await router.async_get_available_deployment(model="main", messages=msgs, request_kwargs={})
                ts = []
                for _ in range(spec["samples"]):
                    t = time.perf_counter_ns()
                    for _ in range(spec["calls"]):
                        await router.async_get_available_deployment(model="main", messages=msgs, request_kwargs={})
                    ts.append((time.perf_counter_ns() - t) / spec["calls"] / 1000)
                out[f"{strategy}|{label}"] = statistics.median(ts)
        print(json.dumps(out))

    asyncio.run(main())
""")


def litellm(out: list[str], prompts: list[str], small: Catalog, samples: int) -> None:
    out.append("")
    out.append("== LiteLLM Router deployment selection (simple-shuffle, cost-based-routing)")
    python = os.environ.get("MODELROUTE_LITELLM_PYTHON")
    if python is None:
        if not missing_modules("litellm"):
            python = sys.executable
        else:
            out.append(
                "  litellm not installed: skipped. To run it: python -m venv /tmp/litellm-venv && "
                "/tmp/litellm-venv/bin/pip install litellm && MODELROUTE_LITELLM_PYTHON=/tmp/litellm-venv/"
                "bin/python python bench/speed_bench.py"
            )
            return
    labels = ("200 B", "4 KB", "100 KB")
    texts = {label: cases_for(prompts, SIZES[label], 50)[0][0] for label in labels}
    models = [
        f"{m.provider}/{m.id}"
        for m in small.models.values()
        if m.provider in ("openai", "anthropic", "groq", "mistral", "deepseek")
    ]
    spec = {"models": models, "prompts": texts, "samples": samples, "calls": 20}
    try:
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}  # no network fetch of the cost map
        proc = subprocess.run(
            [python, "-c", _LITELLM_SCRIPT],
            input=json.dumps(spec),
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired) as exc:
        err = proc.stderr.strip().splitlines()[-1:] if "proc" in locals() else []
        out.append(f"  litellm run failed: skipped ({type(exc).__name__}: {exc}; {' '.join(err)})")
        return
    engine = Engine.from_source(generated_policy(50, "cheapest"), catalog=small)
    out.append(f"  {len(models)} deployments; modelroute: 50-rule policy, prefer cheapest, bundled catalog")
    out.append(
        f"  {'prompt':>7} {'modelroute us':>14} {'shuffle us':>11} {'cost-based us':>14} {'vs cost-based':>14}"
        "  target >= 20x at 100 KB"
    )
    for label in labels:
        ours = median_us(engine_fn(engine), [(texts[label], {})], samples)
        shuffle, cost = theirs[f"simple-shuffle|{label}"], theirs[f"cost-based-routing|{label}"]
        out.append(f"  {label:>7} {ours:14.2f} {shuffle:11.2f} {cost:14.2f} {cost / ours:13.1f}x")
