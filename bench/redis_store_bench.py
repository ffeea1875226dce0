"""RedisStore per-request cost: N plain successful request sequences (unavailable, latency_ms, allow,
add_in_flight +1, add_in_flight -1, record "ok") against a throwaway local redis-server in; blocking Redis round
trips per request (counted on the calling thread), round trips the background sender made per request (off the
request path) and latency per request (p50 / p99 / mean) out.

Run: python bench/redis_store_bench.py [--requests 5000] [--store DIR]
(--store times another version of the code: DIR holds its engine/ and providers/, e.g. from
`mkdir DIR && git archive COMMIT engine providers | tar -x -C DIR`; they are imported instead of this checkout's.)
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from needs import require_modules, require_programs  # beside this file

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_store():
    from providers.state import redis_store

    print(f"RedisStore from {Path(redis_store.__file__).resolve().parent.parent.parent}")
    return redis_store.RedisStore


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--store", help="a folder with another version's engine/ and providers/ to time instead")
    args = ap.parse_args()
    if args.store:  # before anything imports engine or providers
        if not (Path(args.store) / "providers" / "state" / "redis_store.py").is_file():
            ap.error(f"--store {args.store}: no providers/state/redis_store.py there")
        sys.path.insert(0, str(Path(args.store).resolve()))
    require_modules("redis_store_bench.py", "redis")
    require_programs("redis_store_bench.py", "redis-server", install="e.g. apt-get install redis-server")
    redis_bin = shutil.which("redis-server")
    assert redis_bin is not None

    import redis.connection

    from engine.runtime.state import CircuitConfig

    trips, background = [0], [0]
    main_thread = threading.current_thread()
    send = redis.connection.Connection.send_packed_command

    def counted(self, *a, **kw):  # one send per round trip (a pipeline sends all its commands at once)
        if threading.current_thread() is main_thread:
            trips[0] += 1
        else:
            background[0] += 1
        return send(self, *a, **kw)

    redis.connection.Connection.send_packed_command = counted  # type: ignore[method-assign]
    port = free_port()
    proc = subprocess.Popen(
        [redis_bin, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        store = load_store()(f"redis://127.0.0.1:{port}/0", prefix="bench:")
        cfg = CircuitConfig()

        def one() -> None:
            store.unavailable()
            store.latency_ms()
            assert store.allow("m")
            store.add_in_flight("m", 1)
            store.add_in_flight("m", -1)
            store.record("m", "p", "ok", cfg, latency_ms=12.0, input_tokens=10, output_tokens=5, cost=0.0001)

        for _ in range(200):  # warm up (script loading, connections)
            one()
        store.flush()
        trips[0] = background[0] = 0
        times = []
        for _ in range(args.requests):
            t0 = time.perf_counter()
            one()
            times.append(time.perf_counter() - t0)
        n = args.requests
        blocking, sent = trips[0], background[0]
        store.flush()  # what the sender still holds (not counted above)
        times.sort()
        print(f"{n} requests")
        print(f"  blocking round trips per request {blocking / n:.2f}  (background sender: {sent} round trips)")
        print(
            f"  latency per request  p50 {times[n // 2] * 1e6:.0f}us  p99 {times[int(n * 0.99)] * 1e6:.0f}us  "
            f"mean {statistics.fmean(times) * 1e6:.0f}us"
        )
        assert store.in_flight("m") == 0 and store.stats()["m"].calls == n + 200
        store.close()
    finally:
        proc.kill()
        proc.wait(5)


if __name__ == "__main__":
    main()
