"""Policy graphs: a CompiledPolicy in, its decision chain as a Mermaid flowchart or a Graphviz DOT digraph out.

The chain: request -> rule 1's condition; `yes` -> the rule's selector (use / prefer / group, its `where`
constraints and candidate pool); a selector picks a model or, when no candidate is viable, passes on to the
next rule; `no` -> the next rule; after the last rule, `no route`. Fallbacks hang off the selector as dashed
edges to model nodes (one node per model, shared by every rule that names it).
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field

from engine.language.load import display_name
from engine.runtime.policy import CompiledPolicy, CompiledRule
from engine.runtime.selectors import Selector

LABEL_WIDTH = 48
POOL_SHOWN = 3


@dataclass
class Node:
    id: str
    kind: str  # start | cond | otherwise | action | model | end
    lines: list[str]


@dataclass
class Edge:
    src: str
    dst: str
    label: str = ""
    dashed: bool = False


@dataclass
class Graph:
    nodes: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)


def _span_text(policy: CompiledPolicy, span) -> str:
    """The source text of a span, whitespace collapsed."""
    text = policy.sources.texts.get(span.file, "") if policy.sources is not None else ""
    lines = text.splitlines()
    if not lines or span.line > len(lines):
        return ""
    if span.line == span.end_line:
        chunk = lines[span.line - 1][span.col - 1 : span.end_col - 1]
    else:
        chunk = "\n".join(
            [
                lines[span.line - 1][span.col - 1 :],
                *lines[span.line : span.end_line - 1],
                lines[span.end_line - 1][: span.end_col - 1],
            ]
        )
    return " ".join(chunk.split())


def _selector_lines(policy: CompiledPolicy, rule: CompiledRule) -> list[str]:
    sel: Selector = rule.selector
    action = rule.node.action
    if sel.kind == "use":
        head = f"use {sel.use.name}" if sel.use is not None else "use"
    elif sel.kind == "prefer":
        head = "prefer " + " then ".join(r.label for r in sel.rankings)
    else:
        head = f"{sel.kind}" + (f" {sel.mode}" if sel.mode else "")
    lines = [head]
    if action.where:
        lines.append("where " + " and ".join(_span_text(policy, c.span) for c in action.where))
    if sel.kind == "prefer":
        count = len(sel.pool)
        if count == 0:
            lines.append("no candidate passes `where`")
        else:
            shown = [e.name for e in sel.pool[:POOL_SHOWN]] if sel.ordered else []
            more = f" (+{count - len(shown)} more)" if shown and count > len(shown) else ""
            word = "candidate" if count == 1 else "candidates"
            lines.append(f"{count} {word}" + (": " + ", ".join(shown) + more if shown else ""))
    elif not sel.pool:
        lines.append("never viable: `where` excludes it")
    if sel.judge is not None:
        lines.append(f"judge {sel.judge.name}")
    if getattr(sel, "min_agreement", 1) > 1:
        lines.append(f"min_agreement {sel.min_agreement}")  # type: ignore[attr-defined]
    return lines


def build(policy: CompiledPolicy) -> Graph:
    """The decision structure as nodes and edges (format-independent)."""
    g = Graph()
    models: dict[str, str] = {}

    def model(name: str) -> str:
        if name not in models:
            models[name] = f"m{len(models) + 1}"
            g.nodes.append(Node(models[name], "model", [name]))
        return models[name]

    g.nodes.append(Node("req", "start", ["request"]))
    prev, prev_label = "req", ""
    pending_noviable: str | None = None
    for rule in policy.rules:
        i = rule.index + 1
        where = f"{i}. {display_name_of(rule.file)}:{rule.line}"
        rid, aid = f"r{i}", f"a{i}"
        if rule.node.cond is None:
            g.nodes.append(Node(rid, "otherwise", [where, "otherwise"]))
        else:
            g.nodes.append(Node(rid, "cond", [where, _span_text(policy, rule.node.cond.span)]))
        g.edges.append(Edge(prev, rid, prev_label))
        if pending_noviable is not None:
            g.edges.append(Edge(pending_noviable, rid, "no viable model"))
        g.nodes.append(Node(aid, "action", _selector_lines(policy, rule)))
        g.edges.append(Edge(rid, aid, "yes" if rule.node.cond is not None else ""))
        sel = rule.selector
        targets = [sel.use] if sel.kind == "use" and sel.use is not None else list(sel.pool) if sel.grouped else []
        for e in targets:
            label = ""
            if sel.kind == "split" and sel.weights:
                label = f"{sel.weights[sel.pool.index(e)] * 100:g}%"
            g.edges.append(Edge(aid, model(e.name), label))
        for k, f in enumerate(sel.fallbacks, 1):
            g.edges.append(Edge(aid, model(f.name), f"fallback {k}", dashed=True))
        pending_noviable = aid
        prev, prev_label = (rid, "no") if rule.node.cond is not None else (None, "")  # type: ignore[assignment]
    g.nodes.append(Node("noroute", "end", ["no route"]))
    if prev is not None:
        g.edges.append(Edge(prev, "noroute", prev_label))
    if pending_noviable is not None:
        g.edges.append(Edge(pending_noviable, "noroute", "no viable model"))
    return g


def display_name_of(file: str) -> str:
    from pathlib import Path

    return display_name(Path(file)) if file and not file.startswith("<") else file


def _wrap(lines: list[str]) -> list[str]:
    out: list[str] = []
    for line in lines:
        out.extend(textwrap.wrap(line, LABEL_WIDTH, break_long_words=True, break_on_hyphens=False) or [""])
    return out


# ---- Mermaid ----------------------------------------------------------------------------------------------

_MERMAID_SHAPES = {
    "start": ('(["', '"])'),
    "cond": ('{"', '"}'),
    "otherwise": ('(["', '"])'),
    "action": ('["', '"]'),
    "model": ('("', '")'),
    "end": ('(["', '"])'),
}


def _mermaid_escape(text: str) -> str:
    out = text.replace("#", "#35;").replace("&", "#amp;").replace('"', "#quot;")
    return out.replace("<", "#lt;").replace(">", "#gt;").replace("`", "#96;").replace("|", "#124;")


def to_mermaid(policy: CompiledPolicy) -> str:
    g = build(policy)
    lines = ["flowchart TD"]
    for node in g.nodes:
        left, right = _MERMAID_SHAPES[node.kind]
        label = "<br/>".join(_mermaid_escape(x) for x in _wrap(node.lines))
        lines.append(f"    {node.id}{left}{label}{right}")
    for e in g.edges:
        arrow = "-.->" if e.dashed else "-->"
        label = f"|{_mermaid_escape(e.label)}|" if e.label else ""
        lines.append(f"    {e.src} {arrow}{label} {e.dst}")
    # class names avoid `end`, which Mermaid reserves
    lines += [
        "    classDef condition fill:#fff8c5,stroke:#9a6700",
        "    classDef model fill:#dafbe1,stroke:#1a7f37",
        "    classDef stop fill:#ffebe9,stroke:#cf222e",
    ]
    for kind, css in (("cond", "condition"), ("model", "model"), ("end", "stop")):
        ids = [n.id for n in g.nodes if n.kind == kind]
        if ids:
            lines.append(f"    class {','.join(ids)} {css}")
    return "\n".join(lines) + "\n"


# ---- DOT --------------------------------------------------------------------------------------------------

_DOT_SHAPES = {
    "start": "oval",
    "cond": "diamond",
    "otherwise": "oval",
    "action": "box",
    "model": "ellipse",
    "end": "octagon",
}
_DOT_FILL = {"cond": "#fff8c5", "model": "#dafbe1", "end": "#ffebe9"}


def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def to_dot(policy: CompiledPolicy) -> str:
    g = build(policy)
    name = re.sub(r"[^A-Za-z0-9_]", "_", display_name_of(policy.entry)) or "policy"
    lines = [
        f'digraph "{_dot_escape(name)}" {{',
        "    rankdir=TB;",
        '    node [fontname="Helvetica", fontsize=10];',
        '    edge [fontname="Helvetica", fontsize=9];',
    ]
    for node in g.nodes:
        label = "\\n".join(_dot_escape(x) for x in _wrap(node.lines))
        style = f', style=filled, fillcolor="{_DOT_FILL[node.kind]}"' if node.kind in _DOT_FILL else ""
        lines.append(f'    {node.id} [label="{label}", shape={_DOT_SHAPES[node.kind]}{style}];')
    for e in g.edges:
        attrs = [f'label="{_dot_escape(e.label)}"'] if e.label else []
        if e.dashed:
            attrs.append("style=dashed")
        lines.append(f"    {e.src} -> {e.dst}" + (f" [{', '.join(attrs)}]" if attrs else "") + ";")
    lines.append("}")
    return "\n".join(lines) + "\n"
