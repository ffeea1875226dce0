"""Async transport benchmark: sequential chat calls to the fake OpenAI upstream (its own process, loopback) in;
per-call latency p50 / p99 of each client variant and its ratio to httpx's AsyncClient out, printed and saved
to bench/results/transport.txt. The variants alternate call by call so all see the same machine load.

  httpx.AsyncClient      a bare httpx.AsyncClient.post (httpcore, h11, anyio): the baseline
  lean transport         LeanTransport.handle_async_request + aread (how streams are read)
  lean fetch             LeanTransport.fetch, as ProviderClient.achat reads a whole answer
  achat via httpx        ProviderClient.achat forced onto httpx.AsyncClient (async_transport given)
  achat via lean         ProviderClient.achat as it runs by default
  asyncio floor          one hand-written request on a kept-alive asyncio stream (no parsing to speak of)

Run: python bench/transport_bench.py [--calls 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from needs import require_modules  # beside this file

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results" / "transport.txt"
UPSTREAM = """
import sys
from tests.fakeserver import FakeServer, Reply
server = FakeServer().start()
server.default = Reply(text="hello from the fake upstream", input_tokens=12, output_tokens=6)
print(server.base_url("openai"), flush=True)
sys.stdin.read()
"""
BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "Say hello in five words."}]}).encode()
HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-bench"}


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] * 1e3


async def measure(base: str, calls: int, warmup: int) -> dict[str, list[float]]:
    import httpx

    from providers.catalog.models import ModelSpec, ProviderSpec
    from providers.clients import client_for
    from providers.clients.lean import LeanTransport
    from providers.types import ChatRequest, Message

    url = base + "/chat/completions"
    spec = ProviderSpec(name="acme", kind="openai", base_url=base, api_key_env="BENCH_KEY")
    model = ModelSpec(
        name="alpha-mini",
        provider="acme",
        id="alpha-mini",
        context=8000,
        latency_ms=300,
        input_price=0.15,
        output_price=0.6,
    )
    req = ChatRequest(messages=[Message.user("Say hello in five words.")])
    plain = httpx.AsyncClient()
    lean = LeanTransport()
    lean_url = httpx.URL(url)
    via_httpx = client_for(spec, async_transport=httpx.AsyncHTTPTransport())
    via_lean = client_for(spec, trust_env=False)
    assert via_lean.lean() is not None and via_httpx.lean() is None

    host, port = lean_url.host, lean_url.port
    reader, writer = await asyncio.open_connection(host, port)
    head = (
        f"POST {lean_url.raw_path.decode()} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer sk-bench\r\ncontent-length: {len(BODY)}\r\n\r\n"
    ).encode()

    async def floor() -> None:
        writer.write(head + BODY)
        raw = await reader.readuntil(b"\r\n\r\n")
        n = next(int(line.split(b":")[1]) for line in raw.split(b"\r\n") if line.lower().startswith(b"content-length"))
        await reader.readexactly(n)

    async def httpx_post() -> None:
        (await plain.post(url, content=BODY, headers=HEADERS)).raise_for_status()

    async def lean_post() -> None:
        r = await lean.handle_async_request(httpx.Request("POST", lean_url, content=BODY, headers=HEADERS))
        await r.aread()
        await r.aclose()

    async def achat_httpx() -> None:
        await via_httpx.achat(model, req)

    async def achat_lean() -> None:
        await via_lean.achat(model, req)

    async def lean_fetch() -> None:
        await lean.fetch(httpx.Request("POST", lean_url, content=BODY, headers=HEADERS))

    variants = {
        "httpx.AsyncClient": httpx_post,
        "lean transport": lean_post,
        "lean fetch": lean_fetch,
        "achat via httpx": achat_httpx,
        "achat via lean": achat_lean,
        "asyncio floor": floor,
    }
    out: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():
        for _ in range(warmup):
            await fn()
    for _ in range(calls):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            await fn()
            out[name].append(time.perf_counter() - t0)
    await plain.aclose()
    await lean.aclose()
    await via_httpx.aclose()
    await via_lean.aclose()
    writer.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=3000, help="calls per variant (after warm-up)")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    require_modules("transport_bench.py", "pytest")  # the fake upstream is tests/fakeserver.py, which imports it
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    os.environ["BENCH_KEY"] = "sk-bench"
    upstream = subprocess.Popen(
        [sys.executable, "-c", UPSTREAM], env=env, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        base = upstream.stdout.readline().strip()  # type: ignore[union-attr]
        t0 = time.perf_counter()
        lat = asyncio.run(measure(base, args.calls, args.warmup))
        wall = time.perf_counter() - t0
    finally:
        upstream.terminate()
        upstream.wait(10)
    base50 = pct(lat["httpx.AsyncClient"], 0.5)
    lines = [
        f"modelroute async transport benchmark: python bench/transport_bench.py --calls {args.calls}",
        f"python {platform.python_version()} on {sys.platform}, {os.cpu_count()} CPUs; fake OpenAI upstream in "
        f"its own process on loopback; variants alternate call by call; {wall:.1f}s in all",
        "",
        f"  {'variant':<20}{'p50':>10}{'p99':>10}   p50 vs httpx.AsyncClient",
    ]
    for name, values in lat.items():
        lines.append(
            f"  {name:<20}{pct(values, 0.5):>8.3f}ms{pct(values, 0.99):>8.3f}ms   {pct(values, 0.5) / base50:.2f}x"
        )
    floor = pct(lat["asyncio floor"], 0.5)
    lines += [
        "",
        "  client cost above the asyncio floor (p50): "
        + ", ".join(f"{name} +{pct(lat[name], 0.5) - floor:.3f}ms" for name in lat if name != "asyncio floor"),
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if not args.no_save:
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
