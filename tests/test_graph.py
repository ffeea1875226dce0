"""`modelroute graph` (engine/graph.py): Mermaid and DOT output is well formed and follows the rule chain."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from engine.api import Engine
from engine.tools.graph import build, to_dot, to_mermaid

POLICY = Path(__file__).resolve().parent / "fixtures" / "policies"
NODE = re.compile(r'^    (\w+)(\(\["|\{"|\["|\(")(.*?)("\]\)|"\}|"\]|"\))$')
EDGE = re.compile(r"^    (\w+) (-->|-\.->)(\|[^|]*\|)? (\w+)$")


@pytest.fixture(scope="module")
def policy():
    return Engine.load(POLICY).policy


def test_mermaid_is_well_formed(policy) -> None:
    text = to_mermaid(policy)
    lines = text.splitlines()
    assert lines[0] == "flowchart TD"
    defined, used = set(), set()
    for line in lines[1:]:
        if m := NODE.match(line):
            defined.add(m.group(1))
            assert '"' not in m.group(3) and "<" not in m.group(3).replace("<br/>", "")
        elif m := EDGE.match(line):
            used.update((m.group(1), m.group(4)))
        else:
            assert re.match(r"^    (classDef \w+ [\w:#,]+|class [\w,]+ \w+)$", line), line
    assert used <= defined and defined - used == set()
    assert "end" not in defined and not re.search(r"\bclass(Def)? .*\bend\b", text)  # `end` is reserved


def test_chain_follows_rule_order(policy) -> None:
    g = build(policy)
    n = len(policy.rules)
    conds = [node.id for node in g.nodes if node.kind in ("cond", "otherwise")]
    assert conds == [f"r{i}" for i in range(1, n + 1)]
    edges = {(e.src, e.dst, e.label) for e in g.edges}
    assert ("req", "r1", "") in edges
    for i in range(1, n):
        assert (f"a{i}", f"r{i + 1}", "no viable model") in edges
        if policy.rules[i - 1].node.cond is not None:
            assert (f"r{i}", f"r{i + 1}", "no") in edges
    assert (f"a{n}", "noroute", "no viable model") in edges
    fallbacks = [e for e in g.edges if e.dashed]
    assert fallbacks and all(e.label.startswith("fallback ") for e in fallbacks)


def _parse_dot(text: str) -> tuple[set[str], set[tuple[str, str]]]:
    """A minimal DOT reader for what to_dot writes: node statements and edges, quotes balanced."""
    assert text.startswith("digraph ") and text.rstrip().endswith("}")
    nodes, edges = set(), set()
    for line in text.splitlines()[1:-1]:
        stripped = re.sub(r'"(?:[^"\\]|\\.)*"', '""', line.strip())  # blank out strings
        assert stripped.endswith(";"), line
        if m := re.match(r"^(\w+) -> (\w+)( \[.*\])?;$", stripped):
            edges.add((m.group(1), m.group(2)))
        elif m := re.match(r"^(\w+) \[.*\];$", stripped):
            nodes.add(m.group(1))
        else:
            assert re.match(r"^(rankdir=\w+|node \[.*\]|edge \[.*\]);$", stripped), line
    return nodes, edges


def test_dot_is_well_formed(policy) -> None:
    text = to_dot(policy)
    nodes, edges = _parse_dot(text)
    assert {a for a, _ in edges} | {b for _, b in edges} <= nodes
    assert '\\"pro\\"' in text  # quotes inside labels are escaped
    if shutil.which("dot"):
        r = subprocess.run(["dot", "-Tsvg"], input=text, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr


def test_groups_and_split_weights(fixture_catalog) -> None:
    eng = Engine.from_source(
        'when tier == "a" split 30% alpha-mini, 70% beta-chat\notherwise race [alpha-mini, gamma-flash]\n',
        catalog=fixture_catalog,
    )
    text = to_mermaid(eng.policy)
    assert "-->|30%|" in text and "-->|70%|" in text
    assert "noroute" in text
    _parse_dot(to_dot(eng.policy))


def test_cli(cli) -> None:
    r = cli("graph", str(POLICY))
    assert r.returncode == 0 and r.stdout.startswith("flowchart TD")
    r = cli("graph", str(POLICY), "--format", "dot")
    assert r.returncode == 0 and r.stdout.startswith("digraph")
    r = cli("graph", "nope/")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert cli("graph", "--help").stdout.count("modelroute graph") >= 2
