"""Parsing: .route source text in, an engine.nodes.Module out; every syntax diagnostic is raised from here."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import gc
import itertools
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.lexer import PatternStr

from engine.diagnostics import Diagnostic, PolicyError, Sources
from engine.language import nodes as n
from engine.language.fastparse import STMT_START, literal_of, parse_fast, unescape

#: Names that cannot be used for tasks or model aliases.
KEYWORDS = frozenset(
    {
        "when",
        "otherwise",
        "task",
        "model",
        "include",
        "catalog",
        "and",
        "or",
        "not",
        "is",
        "in",
        "use",
        "prefer",
        "then",
        "where",
        "fallback",
        "true",
        "false",
        "tokens",
        "capability",
        "cheapest",
        "fastest",
        "set",
        "budget",
        "limit",
        "test",
        "expect",
        "overlay",
        "balance",
        "split",
        "race",
        "consensus",
        "best_of",
        "judge",
        "least_busy",
        "min_agreement",
        "plan",
        "among",
        "healthiest",
        "score",
        "as",
    }
)

MAX_ERRORS = 50

_STMT_START = STMT_START

_FRIENDLY = {
    "NAME": "a name",
    "STRING": 'a string "..."',
    "REGEX": "a regex /.../",
    "NUMBER": "a number",
    "DURATION": "a duration (800ms, 2s, 5m, 1h)",
    "MONEY": "an amount ($0.05)",
    "PRICE": "a price ($3/1M)",
    "PERCENT": "a percentage",
    "COMPARE": "a comparison (== != < <= > >=)",
    "SIGN": "a sign (+ or -)",
    "$END": "end of file",
}


def grammar_path() -> Path:
    """The one grammar: shipped inside the package when installed, at the repo top in a checkout."""
    engine_dir = Path(__file__).resolve().parent.parent
    for candidate in (engine_dir / "_grammar" / "route.lark", engine_dir.parent / "grammar" / "route.lark"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("grammar/route.lark not found: modelroute is not installed correctly")


_comments: contextvars.ContextVar[list[tuple[int, int]]] = contextvars.ContextVar("route_comments")


def known(pos: int | None) -> int:
    """A position lark types as optional but always sets on what its lexer produces (tokens, UnexpectedCharacters)."""
    if pos is None:
        raise ValueError("lark gave no source position")
    return pos


def token_offsets(tok: Token) -> tuple[int, int]:
    """A lexed token's start and end offsets in the text."""
    return known(tok.start_pos), known(tok.end_pos)


def _on_comment(tok: Token) -> Token:
    found = _comments.get(None)
    if found is not None:
        found.append(token_offsets(tok))
    return tok


@functools.lru_cache(maxsize=1)
def _parser() -> Lark:
    return Lark(
        grammar_path().read_text(encoding="utf-8"),
        parser="lalr",
        lexer="contextual",
        propagate_positions=True,
        maybe_placeholders=False,
        lexer_callbacks={"COMMENT": _on_comment},
    )


@functools.lru_cache(maxsize=1)
def _terminal_names() -> dict[str, str]:
    names = {}
    for term in _parser().terminals:
        if isinstance(term.pattern, PatternStr):
            names[term.name] = f"`{term.pattern.value}`"
        else:
            names[term.name] = _FRIENDLY.get(term.name, term.name)
    names["$END"] = _FRIENDLY["$END"]
    return names


# ---- literal conversion --------------------------------------------------------------------------


def literal(tok: Token, file: str) -> n.Literal:
    try:
        return literal_of(tok.type, str(tok), _tok_span(tok, file))
    except ValueError as exc:
        raise _LiteralError(tok, str(exc)) from None


class _LiteralError(Exception):
    def __init__(self, tok: Token, message: str):
        self.tok, self.message = tok, message


def _tok_span(tok: Token, file: str) -> n.Span:
    return n.Span(file, known(tok.line), known(tok.column), known(tok.end_line), known(tok.end_column))


# ---- tree -> AST ---------------------------------------------------------------------------------


class _ToAST:
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

    # actions
    def action(self, meta, children):
        kind, model, rankings, extra = children[0]
        where, fallbacks, cache = (), (), None
        for part in children[1:]:
            if part[0] == "where":
                where = part[1]
            elif part[0] == "cache":
                cache = part[1]
            else:
                fallbacks = part[1]
        return n.Action(kind, model, rankings, where, fallbacks, self._span(meta), cache=cache, **extra)

    def use(self, meta, children):
        return ("use", self._ref(children[0]), (), {})

    def prefer(self, meta, children):
        rankings = tuple(c for c in children if isinstance(c, n.Ranking))
        among = next((c[1] for c in children if isinstance(c, tuple) and c[0] == "among"), ())
        return ("prefer", None, rankings, {"among": among} if among else {})

    def among_clause(self, meta, children):
        return ("among", children[0])

    def model_list(self, meta, children):
        return tuple(self._ref(c) for c in children)

    def balance(self, meta, children):
        mode, members = children
        return ("balance", None, (), {"members": members, "mode": literal(mode, self.file)})

    def split_item(self, meta, children):
        return (literal(children[0], self.file), self._ref(children[1]))

    def split(self, meta, children):
        items = [c for c in children if isinstance(c, tuple)]
        extra: dict[str, Any] = {"members": tuple(c[1] for c in items), "weights": tuple(c[0] for c in items)}
        named = [c for c in children if isinstance(c, Token)]
        if named:
            extra["experiment"] = literal(named[0], self.file)
        return ("split", None, (), extra)

    def race(self, meta, children):
        return ("race", None, (), {"members": children[0]})

    def consensus(self, meta, children):
        extra = {"min_agreement": literal(children[1], self.file)} if len(children) > 1 else {}
        return ("consensus", None, (), {"members": children[0], **extra})

    def best_of(self, meta, children):
        return ("best_of", None, (), {"members": children[0], "judge": self._ref(children[1])})

    def rank_least_busy(self, meta, children):
        return n.Ranking("least_busy", None, self._span(meta))

    def rank_healthiest(self, meta, children):
        return n.Ranking("healthiest", None, self._span(meta))

    def rank_score(self, meta, children):
        return n.Ranking("score", None, self._span(meta), children[0])

    def score_sum(self, meta, children):
        terms: list[n.ScoreTerm] = []
        sign = 1.0
        for c in children:
            if isinstance(c, Token):
                sign = -1.0 if str(c) == "-" else 1.0
            else:
                terms.append(n.ScoreTerm(sign * c.coef, c.factor, c.name, c.span, c.call))
                sign = 1.0
        return tuple(terms)

    def term_scaled(self, meta, children):
        coef, factor = children
        return self._term(literal(coef, self.file).value, factor, meta)

    def term_scaled_after(self, meta, children):
        factor, coef = children
        return self._term(literal(coef, self.file).value, factor, meta)

    def term_plain(self, meta, children):
        return self._term(1.0, children[0], meta)

    def _term(self, coef: Any, factor: tuple, meta) -> n.ScoreTerm:
        """A score term from its factor: (kind, name) or, for `similarity(code)`, (kind, task, function name)."""
        call = factor[2] if len(factor) > 2 else None
        return n.ScoreTerm(float(coef), factor[0], factor[1], self._span(meta), call)

    def factor_capability(self, meta, children):
        return ("capability", str(children[0]))

    def factor_cost(self, meta, children):
        return ("cost", None)

    def factor_price(self, meta, children):
        return ("price", None)

    def factor_latency(self, meta, children):
        return ("latency", None)

    def factor_context(self, meta, children):
        return ("context", None)

    def factor_tokens(self, meta, children):
        return ("tokens", None)

    def factor_call(self, meta, children):
        return ("call", str(children[0]))

    def factor_task_call(self, meta, children):
        return ("similarity", str(children[1]), str(children[0]))

    def factor_attr(self, meta, children):
        return ("attr", str(children[0]))

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

    def rank_capability(self, meta, children):
        return n.Ranking("capability", str(children[0]), self._span(meta))

    def rank_custom(self, meta, children):
        return n.Ranking("custom", None, self._span(meta), ranker=str(children[0]))

    def rank_cheapest(self, meta, children):
        return n.Ranking("cheapest", None, self._span(meta))

    def rank_fastest(self, meta, children):
        return n.Ranking("fastest", None, self._span(meta))

    def where_clause(self, meta, children):
        return ("where", tuple(children))

    def fallback_clause(self, meta, children):
        return ("fallback", tuple(self._ref(c) for c in children))

    def cache_clause(self, meta, children):
        return ("cache", literal(children[0], self.file))

    def constraint_compare(self, meta, children):
        (metric, cap, mspan), op, value = children
        return n.Constraint(metric, str(op), self._value(value), cap, self._span(meta), mspan)

    def constraint_provider(self, meta, children):
        mspan = n.Span(self.file, meta.line, meta.column, meta.line, meta.column + len("provider"))
        return n.Constraint("provider", "in", children[0], None, self._span(meta), mspan)

    def constraint_supports(self, meta, children):
        tok = children[0]
        value = n.Literal("name", str(tok), str(tok), _tok_span(tok, self.file))
        return n.Constraint("supports", "has", value, None, self._span(meta), self._span(meta))

    def metric_latency(self, meta, children):
        return ("latency", None, self._span(meta))

    def metric_price(self, meta, children):
        return ("price", None, self._span(meta))

    def metric_cost(self, meta, children):
        return ("cost", None, self._span(meta))

    def metric_context(self, meta, children):
        return ("context", None, self._span(meta))

    def metric_capability(self, meta, children):
        return ("capability", str(children[0]), self._span(meta))


#: Grammar rule name -> the _ToAST method that converts it (every public method but transform).
_METHODS: dict[str, Callable[..., Any]] = {
    name: f for name, f in vars(_ToAST).items() if callable(f) and not name.startswith("_") and name != "transform"
}


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: building a big policy allocates hundreds of thousands of objects
    and none of them is garbage yet, so collections would only walk them again and again (about a third of
    the time of parsing a 10,000-rule file). Nests; leaves the collector as it found it."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


# ---- entry point -----------------------------------------------------------------------------------


def parse(source: str, file: str = "<string>", *, fast: bool = True) -> n.Module:
    """Parse one file. Raises PolicyError with every syntax diagnostic in the file, in order.

    The common statement forms are read by engine/language/fastparse.py, which gives the same statements;
    anything else (and every file with a problem) by the lark grammar. `fast=False` always uses lark."""
    if source.startswith("\ufeff"):  # a UTF-8 byte order mark some editors write: invisible, so ignore it
        source = " " + source[1:]
    if fast:
        with gc_paused():
            quick = parse_fast(source, file)
        if quick is not None and not _check_names(quick):
            return n.Module(file, source, quick)
    if len(source) > 2 * CHUNK_CHARS:
        chunked = _parse_chunked(source, file)
        if chunked is not None:
            return n.Module(file, source, chunked)
    text = source
    diags: list[Diagnostic] = []
    while True:
        comments: list[tuple[int, int]] = []
        token = _comments.set(comments)
        try:
            with gc_paused():
                tree = _parser().parse(text)
                body = _ToAST(file, source, comments).transform(tree)
        except _LiteralError as err:  # a literal that lexed but cannot be converted
            _comments.reset(token)
            span = _tok_span(err.tok, file)
            diags.append(Diagnostic("E105", f"bad literal `{err.tok}`", span, "here", err.message))
            text = _blank_statement(text, _offset(text, span.line, span.col))
        except UnexpectedInput as exc:
            _comments.reset(token)
            diag, offset = _syntax_diagnostic(exc, text, file)
            diags.append(diag)
            if len(diags) >= MAX_ERRORS:
                break
            blanked = _blank_statement(text, offset)
            if blanked == text:
                break
            text = blanked
            continue
        else:
            _comments.reset(token)
            body = tuple(body)
            diags.extend(_check_names(body))
            if not diags:
                return n.Module(file, source, body)
            break
    diags.sort(key=lambda d: (d.span.line, d.span.col) if d.span else (0, 0))
    sources = Sources()
    sources.add(file, source)
    raise PolicyError(diags, sources)


#: Big files are parsed this many characters at a time (cut at statement starts): lark's parse tree of a whole
#: 1 MB file is ~60 MB, freed right after, but the process keeps that memory; a chunk's tree is small and reused.
CHUNK_CHARS = 32_000


def _parse_chunked(source: str, file: str) -> tuple[n.Stmt, ...] | None:
    """A big file's statements, parsed chunk by chunk; None when any chunk has a problem (then parse() parses the
    whole file again, which finds and reports every problem exactly as for a small file).

    Every statement starts with a keyword that can appear nowhere else, so cutting before a line that starts with
    one cuts between statements; a cut anywhere else makes a chunk fail to parse, and the whole file is parsed
    instead. Each chunk is preceded by as many newlines as the lines before it, so lines and columns are the
    file's own; character offsets, which _ToAST uses to cut out a rule's text and its comments, are the chunk's."""
    starts = [m.start() for m in _STMT_START.finditer(source)]
    cuts = [0]
    for pos in starts:
        if pos - cuts[-1] >= CHUNK_CHARS:
            cuts.append(pos)
    cuts.append(len(source))
    body: list[n.Stmt] = []
    lines_before = 0
    for begin, end in itertools.pairwise(cuts):
        chunk = "\n" * lines_before + source[begin:end]
        comments: list[tuple[int, int]] = []
        token = _comments.set(comments)
        try:
            with gc_paused():
                tree = _parser().parse(chunk)
                part = _ToAST(file, chunk, comments).transform(tree)
        except (UnexpectedInput, _LiteralError):
            return None
        finally:
            _comments.reset(token)
        body.extend(part)
        lines_before += source.count("\n", begin, end)
    out = tuple(body)
    return None if _check_names(out) else out


def _check_names(body: tuple[n.Stmt, ...]) -> list[Diagnostic]:
    diags = []
    for stmt in body:
        if isinstance(stmt, (n.TaskDecl, n.ModelAlias)) and stmt.name in KEYWORDS:
            what = "task" if isinstance(stmt, n.TaskDecl) else "model alias"
            diags.append(
                Diagnostic(
                    "E103",
                    f"`{stmt.name}` is a keyword and cannot name a {what}",
                    stmt.name_span,
                    "keyword",
                    f"pick another name, e.g. `{stmt.name}_{what.split()[0]}`",
                )
            )
    return diags


def _offset(text: str, line: int, col: int) -> int:
    pos = 0
    for _ in range(line - 1):
        nl = text.find("\n", pos)
        if nl < 0:
            return len(text)
        pos = nl + 1
    return min(pos + col - 1, len(text))


def _blank_statement(text: str, offset: int) -> str:
    """Blank out (keeping newlines) the statement that contains offset, so parsing can resume."""
    starts = [m.start() for m in _STMT_START.finditer(text)]
    begin = max((s for s in starts if s <= offset), default=0)
    end = min((s for s in starts if s > offset), default=len(text))
    if end <= begin:
        end = len(text)
    chunk = re.sub(r"[^\n]", " ", text[begin:end])
    return text[:begin] + chunk + text[end:]


def _expected(names) -> str:
    shown = _terminal_names()
    items = sorted({shown.get(x, x) for x in names})
    if len(items) > 12:
        items = [*items[:12], "..."]
    if len(items) == 1:
        return f"expected {items[0]}"
    return "expected one of " + ", ".join(items)


def _syntax_diagnostic(exc: UnexpectedInput, text: str, file: str) -> tuple[Diagnostic, int]:
    line, col = max(exc.line, 1), max(exc.column, 1)
    line_text = text.splitlines()[line - 1] if text.splitlines()[line - 1 : line] else ""
    if isinstance(exc, UnexpectedCharacters):
        pos = known(exc.pos_in_stream)
        ch = text[pos] if pos < len(text) else ""
        span = n.Span(file, line, col, line, col + 1)
        rest = line_text[col:]
        if ch == '"' and '"' not in rest:
            end = n.Span(file, line, col, line, len(line_text) + 1)
            diag = Diagnostic(
                "E101", "unterminated string", end, "this string never ends", 'close it with `"` on the same line'
            )
        elif ch in "/*" and _inside_score(line_text[: col - 1]):
            diag = Diagnostic(
                "E104",
                f"unexpected character `{ch}` in a score",
                span,
                "a score only multiplies a term by a number",
                "write the coefficient as a number: `0.5 * cost` rather than `cost / 2`; " + SCORE_HINT,
            )
        elif ch == "/" and "/" not in rest:
            end = n.Span(file, line, col, line, len(line_text) + 1)
            diag = Diagnostic(
                "E102",
                "unterminated regex",
                end,
                "this regex never ends",
                "close it with `/`; write a literal slash inside as `\\/`",
            )
        elif ch.isdigit() or ch == "$":
            word = re.match(r"[\w.$/%]+", text[pos:])
            bad = word.group(0) if word else ch
            span = n.Span(file, line, col, line, col + len(bad))
            exponent = re.fullmatch(r"[0-9]+(\.[0-9]+)?[eE]", bad) is not None
            diag = Diagnostic(
                "E105",
                f"bad literal `{bad}`",
                span,
                "not a number, duration or price",
                "numbers are plain decimals, without an exponent: write 0.000000001, not 1e-9"
                if exponent
                else "numbers take k or M (30k, 1M), durations ms, s, m or h (800ms, 2s, 5m, 1h), money $0.05, "
                "prices $3/1M or $0.003/1k",
            )
        else:
            hint = {
                "&": "write `and`",
                "|": "write `or`",
                "!": "write `not` (or `!=` to compare)",
                "'": 'strings use double quotes: "..."',
                "=": "compare with `==`",
            }.get(ch)
            diag = Diagnostic(
                "E104", f"unexpected character `{ch}`", span, "not valid here", hint or _expected(exc.allowed or ())
            )
        return diag, pos
    if isinstance(exc, UnexpectedToken):
        tok = exc.token
        if tok.type == "$END":
            span = n.Span(file, line, col, line, col + 1)
            diag = Diagnostic(
                "E100",
                "unexpected end of file",
                span,
                "the statement is not finished",
                _expected(getattr(exc, "accepts", None) or exc.expected),
            )
            return diag, len(text) - 1
        span = _tok_span(tok, file)
        expected = set(getattr(exc, "accepts", None) or exc.expected)
        label = _expected(expected)
        hint = _token_hint(tok, expected, text)
        diag = Diagnostic("E100", f"unexpected {_describe(tok)}", span, label, hint)
        return diag, tok.start_pos
    if isinstance(exc, UnexpectedEOF):
        span = n.Span(file, line, col, line, col + 1)
        return Diagnostic("E100", "unexpected end of file", span, "", _expected(exc.expected)), len(text) - 1
    raise exc


def _describe(tok: Token) -> str:
    if tok.type in ("NAME",) and str(tok) in KEYWORDS:
        return f"keyword `{tok}`"
    kind = _terminal_names().get(tok.type, tok.type)
    if kind.startswith("`"):
        return f"`{tok}`"
    kind = kind.split(" (")[0].removeprefix("a ").removeprefix("an ")
    return f"{kind} `{tok}`"


#: The help of a syntax error inside `score(...)`.
SCORE_HINT = (
    "a score is terms joined by + or -, each NUMBER * TERM or TERM: capability(NAME), cost, price, latency, context, "
    "tokens, a request attribute or a function call name(); e.g. score(3 * capability(CODING) - 100 * cost)"
)


def _inside_score(line_before: str) -> bool:
    """Whether a position follows `score(` with no `)` closing it on its line."""
    at = line_before.rfind("score(")
    if at < 0:
        return False
    rest = line_before[at + len("score(") :]
    return rest.count("(") >= rest.count(")")


def _token_hint(tok: Token, expected: set[str], text: str = "") -> str | None:
    value = str(tok)
    before = text[: tok.start_pos].rstrip() if tok.start_pos is not None else ""
    if tok.type == "EQUAL" and "COMPARE" in expected:
        return "compare with `==`; `=` only declares tasks and models"
    if tok.type == "NAME" and re.search(r'[,\s]"$', before) and "STRING" not in expected:
        return f'did a `"` close the string before `{value}` too early?'
    if {"TOKENS", "COST"} <= expected or ("SIGN" in expected and before.endswith("score(")):
        return SCORE_HINT
    if tok.type == "SIGN" and expected & {"NUMBER", "DURATION", "MONEY"}:
        return f"a value cannot be negative here: write `{value}` only between the terms of a score(...)"
    if expected & {"LATENCY", "PRICE", "COST", "CONTEXT", "PROVIDER", "SUPPORTS"}:
        return (
            "constraints are latency, price, cost, context, capability(NAME), provider in [...], "
            "supports tools|vision|json"
        )
    if "USE" in expected and "PREFER" in expected:
        return (
            "a rule needs an action: `use MODEL`, `prefer RANKING` (capability(NAME), cheapest, fastest, "
            "least_busy, healthiest, score(...), custom(NAME)), `balance`, `split`, `race`, `consensus` or `best_of`"
        )
    if expected & {"CAPABILITY", "CHEAPEST", "FASTEST"} and "NAME" not in expected:
        return (
            f"`{value}` is not a ranking: use capability(NAME), cheapest, fastest, least_busy, healthiest, score(...) "
            "or custom(NAME)"
        )
    if "NAME" in expected and value in KEYWORDS:
        return f"`{value}` is a keyword; pick another name"
    return None
