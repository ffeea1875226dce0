"""Formatting: .route source text in, the same policy in the one canonical layout (comments kept) out.

The layout: one statement per line, single spaces between tokens (none inside `(...)`, `[...]`, before `,`,
in `capability(X)` or in `with k=v`), `=` aligned across a run of consecutive `task` (or `model`) lines, at
most one blank line in a row, own-line comments at column 0 (two spaces of indent inside a `test` block),
trailing comments two spaces after the code, a newline at the end of the file. A line longer than WIDTH is
wrapped: a rule breaks its action onto an indented line (one clause per line if that is still too long) and a
too-long condition at its top-level `or` / `and`; a task declaration fills its patterns under the first one.
A comment inside a statement that is re-laid out moves to its own line just above the statement.

format_source() re-parses its output and checks that the AST is the same as the input's (modulo positions,
whitespace and comments); it never returns text that means something else.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import threading
from dataclasses import dataclass, field

from lark import Lark, Token, Tree

from engine.language import nodes as n
from engine.language.lark_grammar import build_parser
from engine.language.parse import parse, token_offsets

WIDTH = 100
INDENT = "    "
_NO_SPACE_BEFORE = frozenset({",", ")", "]"})
_NO_SPACE_AFTER = frozenset({"(", "["})
_CALLS = frozenset({"capability", "score", "custom"})  # words written with their `(` attached
_FUNCTION_CALLS = frozenset({"call_ref", "factor_call"})  # `complexity()`: written as one word
_TASK_CALLS = frozenset({"task_call_ref", "factor_task_call"})  # `similarity(code)`: one word too
_SIGNS = frozenset({"+", "-"})


class FmtError(Exception):
    """The formatter produced text that does not mean the same as its input (a bug: the file is left alone)."""


# ---- parsing with comments --------------------------------------------------------------------------------

_lock = threading.Lock()
_comments: list[Token] = []


@functools.lru_cache(maxsize=1)
def _parser() -> Lark:
    return build_parser(_comments.append, keep_all_tokens=True)


def parse_with_comments(source: str) -> tuple[Tree, list[Token]]:
    """The full Lark tree (every token kept) and the comment tokens, in source order."""
    with _lock:
        _comments.clear()
        try:
            tree = _parser().parse(source)
            return tree, list(_comments)
        finally:
            _comments.clear()


# ---- comment placement ------------------------------------------------------------------------------------


@dataclass
class _Item:
    """A statement (or a test expectation) with the comments that go with it, or a standalone comment."""

    node: Tree | None
    comment: str | None = None
    blank_before: bool = False
    hoisted: list[str] = field(default_factory=list)
    trailing: str | None = None
    children: list[_Item] = field(default_factory=list)  # test blocks: the expectations and inner comments
    header_trailing: str | None = None  # test blocks: a comment after `{`


def _is_trailing(source: str, tok: Token) -> bool:
    line_start = source.rfind("\n", 0, tok.start_pos) + 1
    return bool(source[line_start : tok.start_pos].strip())


def _has_blank(source: str, start: int, end: int) -> bool:
    """Whether source[start:end] (the text between two items) contains an empty line."""
    gap = source[start:end]
    return bool(re.search(r"\n[ \t]*\n", gap))


def _place(source: str, nodes: list[Tree], comments: list[Token], begin: int) -> list[_Item]:
    """Items for a sequence of sibling nodes; `comments` are those between `begin` and the end of the block."""
    items: list[_Item] = []
    by_node = {id(node): _Item(node) for node in nodes}
    inner: dict[int, list[Token]] = {}
    order: list[tuple[int, int, object]] = [(node.meta.start_pos, 1, node) for node in nodes]
    for c in comments:
        start = token_offsets(c)[0]
        owner = next((node for node in nodes if node.meta.start_pos < start < node.meta.end_pos), None)
        if owner is not None:
            inner.setdefault(id(owner), []).append(c)
            continue
        before = [node for node in nodes if node.meta.end_pos <= start]
        if _is_trailing(source, c) and before and not source[before[-1].meta.end_pos : start].count("\n"):
            by_node[id(before[-1])].trailing = str(c).rstrip()
            continue
        order.append((start, 0, c))
    order.sort(key=lambda x: (x[0], x[1]))
    last_end = begin
    for pos, _, thing in order:
        blank = bool(items) and _has_blank(source, last_end, pos)
        if isinstance(thing, Token):
            items.append(_Item(None, comment=str(thing).rstrip(), blank_before=blank))
            last_end = token_offsets(thing)[1]
        else:
            assert isinstance(thing, Tree)
            item = by_node[id(thing)]
            item.blank_before = blank
            _inner(source, item, inner.get(id(thing), []))
            items.append(item)
            last_end = thing.meta.end_pos
    return items


def _inner(source: str, item: _Item, comments: list[Token]) -> None:
    """Comments inside a statement: a test block places them among its expectations; others are hoisted."""
    node = item.node
    assert node is not None
    if node.data != "test_stmt":
        item.hoisted = [str(c).rstrip() for c in comments]
        return
    expects = [c for c in node.children if isinstance(c, Tree)]
    brace = next(t for t in node.children if isinstance(t, Token) and t.value == "{")
    brace_end = token_offsets(brace)[1]
    header_line_end = source.find("\n", brace_end)
    header_line_end = len(source) if header_line_end < 0 else header_line_end
    rest = []
    for c in comments:
        first = expects[0].meta.start_pos if expects else node.meta.end_pos
        start = token_offsets(c)[0]
        if start < first and start < header_line_end and _is_trailing(source, c):
            item.header_trailing = str(c).rstrip()
        else:
            rest.append(c)
    item.children = _place(source, expects, rest, brace_end)


# ---- rendering --------------------------------------------------------------------------------------------


def _tokens(node: Tree | Token) -> list[tuple[str, bool]]:
    """The node's tokens as (text, glued): glued tokens take no space on either side (`=` in `with k=v`)."""
    if isinstance(node, Token):
        return [(str(node), False)]
    if node.data in _FUNCTION_CALLS:
        return [(f"{node.children[0]}()", False)]
    if node.data in _TASK_CALLS:
        return [(f"{node.children[0]}({node.children[2]})", False)]
    out: list[tuple[str, bool]] = []
    for child in node.children:
        if node.data == "assign" and isinstance(child, Token) and child.value == "=":
            out.append(("=", True))
        else:
            out.extend(_tokens(child))
    return out


def _join(tokens: list[tuple[str, bool]]) -> str:
    out: list[str] = []
    prev, prev_glued, before = "", False, ""
    for text, glued in tokens:
        space = bool(out) and not (
            glued
            or prev_glued
            or text in _NO_SPACE_BEFORE
            or prev in _NO_SPACE_AFTER
            or (text == "(" and prev in _CALLS)
            or (prev in _SIGNS and before == "(")  # a leading sign in score(...): `score(-100 * cost)`
        )
        out.append((" " if space else "") + text)
        prev, prev_glued, before = text, glued, prev
    return "".join(out)


def render(node: Tree | Token) -> str:
    """One node on one line, canonically spaced."""
    return _join(_tokens(node))


def _split_at(node: Tree | Token, op: str) -> list[str]:
    """`a or b or c` -> ["a", "or b", "or c"] for a top-level or/and node, else [the node]."""
    if not isinstance(node, Tree) or node.data not in ("or_cond", "and_cond"):
        return [render(node)]
    parts: list[str] = []
    for child in node.children:
        if isinstance(child, Token) and child.value == op:
            parts.append(op)
        elif parts and parts[-1] == op:
            parts[-1] = f"{op} {render(child)}"
        else:
            parts.append(render(child))
    return parts


def _rule_lines(node: Tree) -> list[str]:
    head_tok, *rest = node.children
    action = rest[-1]
    cond = rest[0] if len(rest) == 2 else None
    head = str(head_tok) if cond is None else f"{head_tok} {render(cond)}"
    parts = [render(c) for c in action.children]
    one = f"{head} {' '.join(parts)}"
    if len(one) <= WIDTH:
        return [one]
    lines = [head]
    if len(head) > WIDTH and cond is not None and isinstance(cond, Tree) and cond.data in ("or_cond", "and_cond"):
        op = "or" if cond.data == "or_cond" else "and"
        first, *more = _split_at(cond, op)
        lines = [f"{head_tok} {first}", *(INDENT + m for m in more)]
    joined = INDENT + " ".join(parts)
    lines.extend([joined] if len(joined) <= WIDTH else [INDENT + p for p in parts])
    return lines


def _decl_lines(node: Tree, pad: int) -> list[str]:
    """`task NAME = p1, p2` / `model NAME = target`, the name padded to `pad`, patterns filled under the first; a
    `like [...]` too long for a line of its own gets one example per line (_like_lines)."""
    keyword, name, _eq, *values = node.children
    prefix = f"{keyword} {str(name).ljust(pad)} = "
    cont = " " * len(prefix)
    lines: list[str] = []
    line = ""
    for part in values:
        if isinstance(part, Token) and part.value == ",":
            continue
        item = render(part)
        if len(cont) + len(item) > WIDTH and isinstance(part, Tree) and part.data == "like":
            start = cont if (lines or line) else prefix
            if line:
                lines.append(line + ",")
            block = _like_lines(part, len(start))
            lines.extend([start + block[0], *block[1:-1]])
            line = block[-1] if len(block) > 1 else lines.pop()
        elif not line:
            line = (cont if lines else prefix) + item
        elif len(line) + 2 + len(item) + 1 > WIDTH:
            lines.append(line + ",")
            line = cont + item
        else:
            line += ", " + item
    lines.append(line)
    return lines


def _like_lines(node: Tree, col: int) -> list[str]:
    """`like ["a", "b"] >= 0.8` starting at column `col`, one example per line aligned after the `[` (the first
    line without its indent)."""
    source = next((c for c in node.children if isinstance(c, Tree) and c.data == "like_list"), None)
    after = " ".join(str(c) for c in node.children[2:] if isinstance(c, Token))
    if source is None:
        return [render(node)]
    examples = [str(c) for c in source.children if isinstance(c, Token) and c.type == "STRING"]
    if len(examples) < 2:
        return [render(node)]
    indent = " " * (col + len("like ["))
    tail = "]" + (" " + after if after else "")
    return [f"like [{examples[0]},", *(f"{indent}{e}," for e in examples[1:-1]), f"{indent}{examples[-1]}{tail}"]


def _stmt_lines(item: _Item, pad: int) -> list[str]:
    node = item.node
    assert node is not None
    if node.data in ("rule", "otherwise_rule"):
        return _rule_lines(node)
    if node.data in ("task_stmt", "model_stmt"):
        return _decl_lines(node, pad)
    if node.data == "test_stmt":
        head = render(Tree("test_head", node.children[:2])) + " {"
        if item.header_trailing:
            head += "  " + item.header_trailing
        body = _block(item.children, "  ")
        return [head, *body, "}"]
    return [render(node)]


def _kind(item: _Item) -> str | None:
    return item.node.data if item.node is not None and item.node.data in ("task_stmt", "model_stmt") else None


def _pads(items: list[_Item]) -> list[int]:
    """The name width of each declaration: the longest name in its run of same-kind declarations."""
    pads = [0] * len(items)
    i = 0
    while i < len(items):
        kind = _kind(items[i])
        if kind is None:
            i += 1
            continue
        j = i + 1
        while j < len(items) and _kind(items[j]) == kind and not items[j].blank_before and not items[j].hoisted:
            j += 1
        width = max(len(str(items[k].node.children[1])) for k in range(i, j))  # type: ignore[union-attr]
        for k in range(i, j):
            pads[k] = width
        i = j
    return pads


def _block(items: list[_Item], indent: str) -> list[str]:
    out: list[str] = []
    for item, pad in zip(items, _pads(items), strict=True):
        if item.blank_before and out:
            out.append("")
        if item.comment is not None:
            out.append(indent + item.comment)
            continue
        out.extend(indent + c for c in item.hoisted)
        lines = [indent + line if line else line for line in _stmt_lines(item, pad)]
        if item.trailing:
            lines[-1] += "  " + item.trailing
        out.extend(lines)
    return out


def layout(source: str) -> str:
    """The canonical layout of a source that parses (raises lark errors otherwise); no semantic check."""
    tree, comments = parse_with_comments(source)
    stmts = [c for c in tree.children if isinstance(c, Tree)]
    lines = _block(_place(source, stmts, comments, 0), "")
    return "\n".join(line.rstrip() for line in lines).strip("\n") + "\n" if lines else ""


# ---- checked formatting -----------------------------------------------------------------------------------


def format_source(source: str, file: str = "<string>") -> str:
    """The canonical layout of a policy file. Raises PolicyError when the source does not parse, FmtError when
    the output would not mean exactly what the input means."""
    source = source.removeprefix("\ufeff")  # a byte order mark: parse() ignores it, and so does the layout
    before = parse(source, file)  # syntax diagnostics, exactly as the compiler reports them
    out = layout(source)
    try:
        after = parse(out, file)
    except Exception as exc:  # any failure here is a formatter bug
        raise FmtError(f"{file}: the formatted text does not parse ({exc})") from None
    problem = compare_modules(before, after)
    if problem:
        raise FmtError(f"{file}: formatting would change the policy ({problem}); the file was left unchanged")
    return out


def strip_positions(value: object) -> object:
    """An AST value without spans (and without rule texts), for comparing two parses of a policy."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (
            type(value).__name__,
            *(
                strip_positions(getattr(value, f.name))
                for f in dataclasses.fields(value)
                if not (
                    f.name == "span" or f.name.endswith("_span") or (isinstance(value, n.Rule) and f.name == "text")
                )
            ),
        )
    if isinstance(value, (tuple, list)):
        return tuple(strip_positions(v) for v in value)
    return value


def _offsets(source: str) -> list[int]:
    return [0, *(m.end() for m in re.finditer("\n", source))]


def rule_texts(module: n.Module) -> list[str]:
    """Each rule's source text with comments and whitespace removed (all that formatting may change in it)."""
    _, comments = parse_with_comments(module.source)
    spans = [token_offsets(c) for c in comments]
    starts = _offsets(module.source)
    out = []
    for stmt in module.body:
        if isinstance(stmt, n.Rule):
            sp = stmt.span
            begin, end = starts[sp.line - 1] + sp.col - 1, starts[sp.end_line - 1] + sp.end_col - 1
            text = module.source[begin:end]
            for start, stop in reversed([(s, e) for s, e in spans if begin <= s < end]):
                text = text[: start - begin] + text[stop - begin :]
            out.append("".join(text.split()))
    return out


def compare_modules(a: n.Module, b: n.Module) -> str | None:
    """None when two parses mean the same policy, else what differs."""
    if len(a.body) != len(b.body):
        return f"{len(a.body)} statements became {len(b.body)}"
    for x, y in zip(a.body, b.body, strict=True):
        if strip_positions(x) != strip_positions(y):
            return f"the statement at {x.span} changed"
    for i, (old_text, new_text) in enumerate(zip(rule_texts(a), rule_texts(b), strict=True)):
        if old_text != new_text:
            return f"the text of rule {i + 1} changed"
    return None
