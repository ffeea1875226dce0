"""Reload section of bench/scaling_bench.py: a generated 1,000-rule policy file in, the time from each save to
decide() answering with the new version out (bench/reload_bench.py's `latency`, run on that file)."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from reload_bench import compile_ms, latency

from engine import Engine

TARGET_MS = 200


def section_reload(out: list[str], text: str, rules: int, writes: int) -> None:
    """`text` is the policy (without `otherwise`); each write rewrites its `otherwise` line."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        main = root / "main.route"
        base = text + "otherwise use gpt-4o\n"  # each write names another model
        main.write_text(base)
        ms = compile_ms(root, main, base)
        with Engine.load(root, watch=True) as engine:
            time.sleep(0.3)  # let the watcher arm
            lat = [s * 1000 for s in latency(engine, main, base, writes)]
    med = statistics.median(lat)
    out.append("")
    out.append(f"== hot reload of a {rules:,}-rule file (the compile mix above; bench/reload_bench.py's latency)")
    out.append(f"   {writes} in-place writes; one compile of the file after an edit takes {ms:.1f} ms (median of 10)")
    out.append(
        f"  write -> new version answering decide(): median {med:.1f} ms, min {min(lat):.1f} ms, "
        f"max {max(lat):.1f} ms (target: median < {TARGET_MS} ms: {'ok' if med < TARGET_MS else 'MISSED'})"
    )
