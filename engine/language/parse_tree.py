"""Parsing, tree to AST: lark's parse tree of a file in, our AST's statements (engine/language/nodes.py) out;
the actions' rules are in engine/language/parse_actions.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lark import Token, Tree

from engine.language import nodes as n
from engine.language.fastparse import unescape
from engine.language.lark_grammar import _tok_span, literal
from engine.language.parse_actions import ActionRules

# ---- tree -> AST ---------------------------------------------------------------------------------


class _ToAST(ActionRules):
    """Lark's parse tree in, our AST out: one method per grammar rule, called with the rule's position (meta)
    and its converted children. `transform` walks the tree itself: lark's Transformer wraps every call to a
    `v_args(meta=True)` method anew, which cost more than the conversion on big files."""

    def __init__(self, file: str, source: str, comments: list[tuple[int, int]] | None = None):
        self.file, self.source = file, source
        self.comments = comments if comments is not None else []

    def transform(self, tree: Tree) -> Any:
        """Convert a parse tree bottom-up; raises _LiteralError for a literal that lexed but cannot be converted."""
        table = _METHODS
        children = [self.transform(c) if type(c) is Tree else c for c in tree.children]
        method = table.get(tree.data)
        if method is None:  # a rule with no conversion (none in the grammar today): keep lark's node
            return Tree(tree.data, children, tree.meta)
        return method(self, tree.meta, children)

    def _span(self, meta) -> n.Span:
        return n.Span(self.file, meta.line, meta.column, meta.end_line, meta.end_column)

    def _ref(self, tok: Token) -> n.ModelRef:
        name = unescape(tok[1:-1]) if tok.type == "STRING" else str(tok)
        return n.ModelRef(name, _tok_span(tok, self.file))

    def _pattern(self, tok: Token) -> n.Pattern:
        span = _tok_span(tok, self.file)
        if tok.type == "STRING":
            return n.Pattern(unescape(tok[1:-1]), "", False, span)
        body, _, flags = tok[1:].rpartition("/")
        return n.Pattern(body.replace("\\/", "/"), flags, True, span)

    # statements
    def start(self, meta, children):
        return tuple(children)

    def include_stmt(self, meta, children):
        return n.Include(unescape(children[0][1:-1]), self._span(meta))

    def catalog_stmt(self, meta, children):
        fmt = str(children[0]) if children[0].type == "NAME" else None
        paths = [unescape(c[1:-1]) for c in children if c.type == "STRING"]
        return n.CatalogRef(paths[0], self._span(meta), fmt, paths[1] if len(paths) > 1 else None)

    def model_stmt(self, meta, children):
        name, target = children
        return n.ModelAlias(str(name), self._ref(target), _tok_span(name, self.file), self._span(meta))

    def task_stmt(self, meta, children):
        name, *items = children
        pats = tuple(self._pattern(p) for p in items if isinstance(p, Token))
        likes = tuple(x for x in items if isinstance(x, n.Like))
        return n.TaskDecl(str(name), pats, _tok_span(name, self.file), self._span(meta), likes)

    def like(self, meta, children):
        source, *rest = children
        if isinstance(source, Token):  # `like "examples.txt"`
            examples: tuple[n.Example, ...] = ()
            file: str | None = unescape(source[1:-1])
            source_span = _tok_span(source, self.file)
        else:
            examples, source_span = source
            file = None
        op, threshold = (str(rest[0]), literal(rest[1], self.file)) if rest else (">=", None)
        return n.Like(examples, file, threshold, self._span(meta), source_span, op)

    def like_list(self, meta, children):
        examples = tuple(n.Example(unescape(t[1:-1]), _tok_span(t, self.file)) for t in children)
        return examples, self._span(meta)

    def rule(self, meta, children):
        cond, action = children
        return n.Rule(cond, action, self._span(meta), self._text(meta))

    def otherwise_rule(self, meta, children):
        return n.Rule(None, children[0], self._span(meta), self._text(meta))

    def _text(self, meta) -> str:
        """The rule as written, on one line, without comments."""
        start, end = meta.start_pos, meta.end_pos
        parts, pos = [], start
        for c_start, c_end in self.comments:
            if start <= c_start < end:
                parts.append(self.source[pos:c_start])
                pos = c_end
        parts.append(self.source[pos:end])
        return " ".join("".join(parts).split())

    # conditions
    def or_cond(self, meta, children):
        return n.Or(tuple(children), self._span(meta))

    def and_cond(self, meta, children):
        return n.And(tuple(children), self._span(meta))

    def negate(self, meta, children):
        return n.Not(children[0], self._span(meta))

    def task_match(self, meta, children):
        return n.TaskMatch(self._pattern(children[0]), self._span(meta))

    def task_is(self, meta, children):
        tok = children[0]
        return n.TaskIs(str(tok), _tok_span(tok, self.file), self._span(meta))

    def compare(self, meta, children):
        left, op, right = children
        return n.Compare(left, str(op), self._value(right), self._span(meta))

    def in_list(self, meta, children):
        return n.InList(children[0], children[1], self._span(meta))

    def truthy(self, meta, children):
        return n.Truthy(children[0], self._span(meta))

    def tokens_ref(self, meta, children):
        return n.Operand("tokens", True, self._span(meta))

    def call_ref(self, meta, children):
        return n.Operand(str(children[0]), False, self._span(meta), True)

    def task_call_ref(self, meta, children):
        fn, task = children
        return n.Operand(str(fn), False, self._span(meta), False, str(task), _tok_span(task, self.file))

    def attr_ref(self, meta, children):
        return n.Operand(str(children[0]), False, self._span(meta))

    # values
    def _value(self, item):
        return item if isinstance(item, n.ListLit) else literal(item, self.file)

    def list(self, meta, children):
        # never empty: lark places the node by its `[` and `]` too, so `[]` has a span
        return n.ListLit(tuple(literal(c, self.file) for c in children), self._span(meta))

    # settings, budgets, tests
    def set_stmt(self, meta, children):
        name, value = children
        return n.Setting(str(name), self._value(value), _tok_span(name, self.file), self._span(meta))

    def budget_stmt(self, meta, children):
        period, amount, *per = children
        return n.Budget(
            str(period),
            literal(amount, self.file),
            str(per[0]) if per else None,
            _tok_span(period, self.file),
            self._span(meta),
        )

    def limit_stmt(self, meta, children):
        amount, unit, *per = children
        return n.RateLimit(
            literal(amount, self.file),
            str(unit),
            str(per[0]) if per else None,
            _tok_span(unit, self.file),
            self._span(meta),
            _tok_span(per[0], self.file) if per else None,
        )

    def limit_no_unit(self, meta, children):
        """`limit 60` or `limit 60 per key`: the unit is left empty ("") and spans the amount; the compiler reports
        it (E315, naming the units a limit takes)."""
        amount, *per = children
        return n.RateLimit(
            literal(amount, self.file),
            "",
            str(per[0]) if per else None,
            _tok_span(amount, self.file),
            self._span(meta),
            _tok_span(per[0], self.file) if per else None,
        )

    def test_stmt(self, meta, children):
        name, *expects = children
        return n.TestBlock(unescape(name[1:-1]), tuple(expects), self._span(meta))

    def assign(self, meta, children):
        name, value = children
        return n.Assign(str(name), self._value(value), self._span(meta))

    def with_clause(self, meta, children):
        return ("with", tuple(children))

    def by_rule(self, meta, children):
        return ("by", ("rule", int(float(children[0]))))

    def by_line(self, meta, children):
        return ("by", ("line", int(float(children[0]))))

    def expect_fallbacks(self, meta, children):
        return ("fallbacks", tuple(self._ref(c) for c in children))

    def expect_plan(self, meta, children):
        return ("plan", tuple(self._ref(c) for c in children))

    def expect_tasks(self, meta, children):
        return ("tasks", tuple(self._ref(c) for c in children))

    def expect_nearest(self, meta, children):
        task, example = children
        return ("nearest", ((self._ref(task), unescape(example[1:-1])),))

    def expect_model(self, meta, children):
        model, *rest = children
        out: dict[str, Any] = {"model": self._ref(model), "by": None, "fallbacks": None, "plan": None}
        out["tasks"], out["nearest"] = (), ()
        for kind, value in rest:
            out[kind] = out[kind] + value if kind == "nearest" else value
        return out

    def expect_no_route(self, meta, children):
        return {"model": None, "by": None, "fallbacks": None, "plan": None, "tasks": (), "nearest": ()}

    def expect(self, meta, children):
        prompt, *rest = children
        attrs: tuple = ()
        outcome = rest[-1]
        if len(rest) == 2:
            attrs = rest[0][1]
        return n.Expect(
            unescape(prompt[1:-1]),
            attrs,
            outcome["model"],
            outcome["by"],
            outcome["fallbacks"],
            self._span(meta),
            outcome["plan"],
            outcome["tasks"],
            outcome["nearest"],
        )


#: Grammar rule name -> the _ToAST method that converts it (every public method but transform).
_METHODS: dict[str, Callable[..., Any]] = {
    name: f
    for cls in reversed(_ToAST.__mro__)
    for name, f in vars(cls).items()
    if callable(f) and not name.startswith("_") and name != "transform"
}
