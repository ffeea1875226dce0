"""Gateway overhead benchmark: one run of a bounded load (httpx async client, bounded concurrency and request
count, loopback) against the fake OpenAI upstream directly and through `modelroute serve`, in; per-request
latency p50 / p99 of both and the difference (the gateway's overhead) out, printed and saved to
bench/results/gateway.txt. The fake upstream and each gateway run in their own processes; direct and gateway
requests are interleaved in rounds so both see the same machine load.

Run: python bench/gateway_bench.py [--requests 3000] [--concurrency 1] [--redis] [--append]
(--redis adds a gateway whose state lives in a throwaway local redis-server.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from needs import require_modules, require_programs  # beside this file

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "gateway.txt"
BODY = {"model": "auto", "messages": [{"role": "user", "content": "Say hello in five words."}]}
UPSTREAM = """
import sys, time
from tests.fakeserver import FakeServer, Reply
server = FakeServer().start()
server.default = Reply(text="hello from the fake upstream", input_tokens=12, output_tokens=6)
print(server.base_url("openai"), flush=True)
sys.stdin.read()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited early")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not start")


def start_gateway(policy_dir: Path, env: dict[str, str], *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine.cli",
            "serve",
            "-p",
            str(policy_dir),
            "--port",
            str(port),
            "--log-level",
            "error",
            *extra,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=None,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/healthz", proc, "modelroute serve")
    return proc, url + "/v1/chat/completions"


async def measure(targets: dict[str, str], requests: int, concurrency: int, warmup: int) -> dict[str, list[float]]:
    """Latencies (seconds) per target; rounds of `concurrency` requests alternate between the targets."""
    out: dict[str, list[float]] = {name: [] for name in targets}
    limits = httpx.Limits(max_connections=concurrency * len(targets), max_keepalive_connections=concurrency * 4)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def one(url: str) -> float:
            t0 = time.perf_counter()
            r = await client.post(url, json=BODY)
            elapsed = time.perf_counter() - t0
            if r.status_code != 200:
                raise SystemExit(f"{url}: HTTP {r.status_code}: {r.text[:200]}")
            return elapsed

        for url in targets.values():  # warm connections, clients and caches
            await asyncio.gather(*(one(url) for _ in range(warmup)))
        done = 0
        while done < requests:
            n = min(concurrency, requests - done)
            for name, url in targets.items():
                out[name].extend(await asyncio.gather(*(one(url) for _ in range(n))))
            done += n
    return out


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=3000, help="requests per target (after warm-up)")
    ap.add_argument("--concurrency", type=int, default=1, help="requests in flight per round")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--redis", action="store_true", help="also measure a gateway with Redis-backed state")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--append", action="store_true", help="add to bench/results/gateway.txt instead of replacing it")
    args = ap.parse_args()
    # the gateway needs the serve extra; the fake upstream is tests/fakeserver.py, which imports pytest
    require_modules("gateway_bench.py", "uvicorn", "starlette", "pytest")
    if args.redis:
        require_modules("gateway_bench.py", "redis")
        require_programs("gateway_bench.py", "redis-server", install="e.g. apt-get install redis-server")

    import tempfile

    env = {**os.environ, "PYTHONPATH": str(REPO), "BENCH_KEY": "sk-bench"}
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            upstream = subprocess.Popen(
                [sys.executable, "-c", UPSTREAM],
                env=env,
                cwd=REPO,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            procs.append(upstream)
            base = upstream.stdout.readline().strip()  # type: ignore[union-attr]
            catalog = (REPO / "tests" / "fixtures" / "policies" / "catalog.yaml").read_text()
            Path(tmp, "catalog.yaml").write_text(
                catalog + f'\nproviders:\n  acme: {{kind: openai, base_url: "{base}", api_key_env: BENCH_KEY}}\n'
            )
            Path(tmp, "main.route").write_text('catalog "catalog.yaml"\notherwise use alpha-mini\n')
            targets = {"direct": base + "/chat/completions"}
            gw, targets["gateway"] = start_gateway(Path(tmp), env)
            procs.append(gw)
            redis_bin = shutil.which("redis-server")
            if args.redis and redis_bin is not None:
                port = free_port()
                procs.append(
                    subprocess.Popen(
                        [redis_bin, "--port", str(port), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL
                    )
                )
                time.sleep(0.3)
                gw2, targets["gateway+redis"] = start_gateway(Path(tmp), env, "--redis", f"redis://127.0.0.1:{port}/0")
                procs.append(gw2)
            t0 = time.perf_counter()
            lat = asyncio.run(measure(targets, args.requests, args.concurrency, args.warmup))
            wall = time.perf_counter() - t0
        finally:
            for p in reversed(procs):
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()

    lines = [
        "modelroute gateway overhead benchmark: python bench/gateway_bench.py "
        f"--requests {args.requests} --concurrency {args.concurrency}" + (" --redis" if args.redis else ""),
        f"python {platform.python_version()} on {sys.platform}, {os.cpu_count()} CPUs; fake OpenAI upstream, "
        "gateway(s) and load generator are separate processes on loopback",
        f"{args.requests} requests per target after {args.warmup} warm-up, {args.concurrency} in flight, "
        f"targets interleaved round by round; {wall:.1f}s in all",
        "",
        f"  {'target':<16}{'p50':>10}{'p99':>10}{'mean':>10}",
    ]
    for name, values in lat.items():
        lines.append(
            f"  {name:<16}{pct(values, 0.5):>8.3f}ms{pct(values, 0.99):>8.3f}ms"
            f"{statistics.fmean(values) * 1000:>8.3f}ms"
        )
    lines.append("")
    d = lat["direct"]
    for name in [n for n in lat if n != "direct"]:
        p50, p99 = pct(lat[name], 0.5) - pct(d, 0.5), pct(lat[name], 0.99) - pct(d, 0.99)
        paired = [g - x for g, x in zip(lat[name], d, strict=True)]  # same round: drift cancels
        verdict = "meets" if p50 < 1.0 else "MISSES"
        lines.append(
            f"  overhead of {name:<14} p50 {p50:+.3f}ms   p99 {p99:+.3f}ms   "
            f"({verdict} the p50 < 1 ms target; median of paired differences {pct(paired, 0.5):+.3f}ms)"
        )
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if not args.no_save:
        with RESULTS.open("a" if args.append else "w") as f:
            f.write(("\n" if args.append else "") + text)


if __name__ == "__main__":
    main()
