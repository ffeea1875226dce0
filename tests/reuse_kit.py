"""Test kit for the compile memos (engine/compiler/reuse.py): a two-model catalog and a policy over it, written to a
folder, in; the folder out (tests/test_compile_reuse.py, tests/test_review25.py)."""

from __future__ import annotations

from pathlib import Path

CATALOG = """\
models:
  cheap-a:
    provider: acme
    context: 128k
    price: {input: 0.50, output: 1.50}
    latency_ms: 600
    capabilities: {CODING: 6}
  cheap-b:
    provider: betacorp
    context: 128k
    price: {input: 1.00, output: 2.00}
    latency_ms: 400
    capabilities: {CODING: 9}
"""

POLICY = """\
catalog "catalog.yaml"
task code = /def \\w+/, "stack trace"
when task is code prefer capability(CODING)
when tier == "pro" prefer fastest
otherwise prefer cheapest
"""


def policy_folder(root: Path) -> Path:
    """`root` with POLICY as main.route and CATALOG beside it."""
    (root / "catalog.yaml").write_text(CATALOG)
    (root / "main.route").write_text(POLICY)
    return root
