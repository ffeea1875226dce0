"""Fast parsing: .route source text in, the statements the lark parser (engine/language/parse.py) gives out, with
equal nodes, spans and rule texts, for the common statement forms; None as soon as it meets anything else.

The lark parser builds a parse tree, then our AST from it: about 1 s for a 10,000-rule file. This recursive
descent parser reads the same text in one pass for `model`, `task`, `limit`, `when` and `otherwise` statements with
`use` and `prefer` actions (every condition form, `where` and `fallback`). Anything else (another statement or
action, a syntax error, a word the grammar uses as a keyword where a name belongs, a character it does not
expect) makes it give up, and parse.py parses the text with lark, which also reports every problem. So it never
has to decide anything lark might decide differently: tests/test_fastparse.py checks that whenever it returns
statements they equal lark's, over generated and mutated policies and every policy file in the repository.

Positions follow lark's rules exactly: a node spans from its first token to its last, keywords included
(`when`, `not`, `use`); a parenthesized condition's own span leaves the parentheses out, but the span of what
contains it reaches to them.
"""

from __future__ import annotations

import itertools
import re
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from engine.language import nodes as n
from engine.language.literals import count_value, literal_value

__all__ = ["GRAMMAR_WORDS", "literal_of", "parse_fast", "unescape"]

#: Every word the grammar uses as a keyword (tests/test_fastparse.py checks it against the grammar): wherever a
#: name belongs and one of these appears, lark's contextual lexer may read it either way, so this parser gives up.
GRAMMAR_WORDS = frozenset(
    [
        "among",
        "and",
        "as",
        "balance",
        "best_of",
        "budget",
        "by",
        "cache",
        "capability",
        "catalog",
        "cheapest",
        "consensus",
        "context",
        "cost",
        "custom",
        "expect",
        "fallback",
        "fastest",
        "healthiest",
        "in",
        "include",
        "is",
        "judge",
        "latency",
        "least_busy",
        "like",
        "limit",
        "line",
        "min_agreement",
        "model",
        "nearest",
        "no",
        "not",
        "or",
        "otherwise",
        "overlay",
        "per",
        "plan",
        "prefer",
        "price",
        "provider",
        "race",
        "route",
        "rule",
        "score",
        "set",
        "split",
        "supports",
        "task",
        "test",
        "then",
        "tokens",
        "use",
        "when",
        "where",
        "with",
    ]
)

#: Grammar words that are keywords only inside an action (after `prefer`, a ranking or a split), so that where a
#: condition's operand or a value belongs lark's contextual lexer always reads them as names (`score >= 3`).
ACTION_ONLY_WORDS = frozenset(["among", "as", "cache", "custom", "healthiest", "score"])
_VALUE_WORDS = GRAMMAR_WORDS - ACTION_ONLY_WORDS

# The grammar's terminals (grammar/route.lark), highest priority first where two can match the same text.
_TOKEN = re.compile(
    r"""
     (?P<ws>[ \t\f\r\n]+)
    |(?P<comment>\#[^\n]*)
    |(?P<PRICE>\$[0-9]+(?:\.[0-9]+)?/(?:[0-9]+(?:\.[0-9]+)?[kM]?|[kM])(?![A-Za-z0-9_]))
    |(?P<MONEY>\$[0-9]+(?:\.[0-9]+)?(?![A-Za-z0-9_./]))
    |(?P<DURATION>[0-9]+(?:\.[0-9]+)?(?:ms|s|m|h)(?![A-Za-z0-9_]))
    |(?P<PERCENT>[0-9]+(?:\.[0-9]+)?%)
    |(?P<NUMBER>[0-9]+(?:\.[0-9]+)?[kM]?(?![A-Za-z0-9_]))
    |(?P<NAME>[A-Za-z_][A-Za-z0-9_]*(?:[.:\-][A-Za-z0-9_]+)*)
    |(?P<STRING>"(?:[^"\\\n]|\\.)*")
    |(?P<REGEX>/(?:[^/\\\n]|\\.)+/[a-z]*)
    |(?P<COMPARE>==|!=|<=|>=|<|>)
    |(?P<SIGN>[+\-])
    |(?P<PUNCT>[()\[\],=~*])
    """,
    re.X,
)
_UNIT_KINDS = {"DURATION": "duration", "MONEY": "money", "PRICE": "price", "PERCENT": "percent"}
_SCALARS = frozenset({"NUMBER", "DURATION", "PRICE", "MONEY", "PERCENT", "STRING", "NAME"})
_METRICS = frozenset({"latency", "price", "cost", "context"})
_SCORE_WORDS = frozenset(n.SCORE_FACTORS) - {"capability"}

Tok = tuple[str, str, int, int, int]  # (kind, text, start offset, line, column)


class _GiveUp(Exception):
    """Not a form this parser reads: lark parses the text instead."""


def unescape(body: str) -> str:
    out, i = [], 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            out.append({"n": "\n", "t": "\t", '"': '"', "\\": "\\"}.get(nxt, "\\" + nxt))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def literal_of(kind: str, text: str, span: n.Span) -> n.Literal:
    """A literal token (lark terminal `kind`) as a Literal, its value normalised; ValueError for a price per
    zero tokens."""
    if kind == "NUMBER":
        return n.Literal("count", count_value(text), text, span)
    if kind in _UNIT_KINDS:
        return n.Literal(_UNIT_KINDS[kind], literal_value(_UNIT_KINDS[kind], text), text, span)
    if kind == "STRING":
        return n.Literal("string", unescape(text[1:-1]), text, span)
    if text in ("true", "false"):
        return n.Literal("bool", text == "true", text, span)
    return n.Literal("name", text, text, span)


def _tokenize(source: str, pos: int, end: int, line: int, line_start: int) -> tuple[list[Tok], list[tuple[int, int]]]:
    """The tokens (and comment extents) of source[pos:end], which starts on `line` at offset `line_start`."""
    toks: list[Tok] = []
    comments: list[tuple[int, int]] = []
    match = _TOKEN.match
    while pos < end:
        m = match(source, pos, end)
        if m is None:
            raise _GiveUp
        kind, nxt = m.lastgroup, m.end()
        if kind == "ws":
            newlines = source.count("\n", pos, nxt)
            if newlines:
                line += newlines
                line_start = source.rindex("\n", pos, nxt) + 1
        elif kind == "comment":
            comments.append((pos, nxt))
        else:
            toks.append((kind, m.group(), pos, line, pos - line_start + 1))  # type: ignore[arg-type]
        pos = nxt
    return toks, comments


class _Parser:
    def __init__(self, source: str, file: str, toks: list[Tok], comments: list[tuple[int, int]]):
        self.source, self.file, self.toks, self.comments = source, file, toks, comments
        self.i = 0

    # ---- tokens and spans
    def peek(self, ahead: int = 0) -> Tok | None:
        j = self.i + ahead
        return self.toks[j] if j < len(self.toks) else None

    def word(self, text: str) -> bool:
        """Whether the next token is the keyword `text`."""
        t = self.peek()
        return t is not None and t[0] == "NAME" and t[1] == text

    def take(self, kind: str, text: str | None = None) -> int:
        t = self.peek()
        if t is None or t[0] != kind or (text is not None and t[1] != text):
            raise _GiveUp
        self.i += 1
        return self.i - 1

    def punct(self, text: str) -> bool:
        """Whether the next token is the punctuation `text`."""
        t = self.peek()
        return t is not None and t[0] == "PUNCT" and t[1] == text

    def name(self) -> int:
        """A NAME that is not a grammar word."""
        at = self.take("NAME")
        if self.toks[at][1] in GRAMMAR_WORDS:
            raise _GiveUp
        return at

    def span(self, first: int, last: int) -> n.Span:
        a, b = self.toks[first], self.toks[last]
        return n.Span(self.file, a[3], a[4], b[3], b[4] + len(b[1]))

    def tok_span(self, at: int) -> n.Span:
        return self.span(at, at)

    def text(self, first: int, last: int) -> str:
        """The statement as written, on one line, without comments (parse._ToAST._text)."""
        start, end = self.toks[first][2], self.toks[last][2] + len(self.toks[last][1])
        parts, pos = [], start
        k = bisect_left(self.comments, (start, -1))
        while k < len(self.comments) and self.comments[k][0] < end:
            c_start, c_end = self.comments[k]
            parts.append(self.source[pos:c_start])
            pos = c_end
            k += 1
        parts.append(self.source[pos:end])
        return " ".join("".join(parts).split())

    # ---- statements
    def statements(self) -> tuple[n.Stmt, ...]:
        out: list[n.Stmt] = []
        while self.i < len(self.toks):
            t = self.toks[self.i]
            if t[0] != "NAME":
                raise _GiveUp
            handler = self.STATEMENTS.get(t[1])
            if handler is None:
                raise _GiveUp
            out.append(handler(self))
        return tuple(out)

    def model_stmt(self) -> n.Stmt:
        first = self.take("NAME", "model")
        name = self.name()
        self.take("PUNCT", "=")
        ref = self.ref()
        return n.ModelAlias(self.toks[name][1], ref[0], self.tok_span(name), self.span(first, ref[1]))

    def task_stmt(self) -> n.Stmt:
        first = self.take("NAME", "task")
        name = self.name()
        self.take("PUNCT", "=")
        patterns: list[n.Pattern] = []
        likes: list[n.Like] = []
        while True:
            if self.word("like"):
                likes.append(self.like())
            else:
                patterns.append(self.pattern())
            if not self.punct(","):
                break
            self.i += 1
        last = self.i - 1
        return n.TaskDecl(
            self.toks[name][1], tuple(patterns), self.tok_span(name), self.span(first, last), tuple(likes)
        )

    def like(self) -> n.Like:
        """`like ["example", ...]` or `like "file"`, then `COMPARE (NUMBER | PERCENT)` or nothing."""
        first = self.take("NAME", "like")
        t = self.peek()
        if t is not None and t[0] == "STRING":
            self.i += 1
            examples: tuple[n.Example, ...] = ()
            file: str | None = unescape(t[1][1:-1])
            source_span = self.tok_span(self.i - 1)
        else:
            start = self.take("PUNCT", "[")
            items = []
            if not self.punct("]"):
                items.append(self.take("STRING"))
                while self.punct(","):
                    self.i += 1
                    items.append(self.take("STRING"))
            end = self.take("PUNCT", "]")
            examples = tuple(n.Example(unescape(self.toks[k][1][1:-1]), self.tok_span(k)) for k in items)
            file, source_span = None, self.span(start, end)
        op, threshold = ">=", None
        t = self.peek()
        if t is not None and t[0] == "COMPARE":
            self.i += 1
            v = self.peek()
            if v is None or v[0] not in ("NUMBER", "PERCENT"):
                raise _GiveUp
            self.i += 1
            op, threshold = t[1], literal_of(v[0], v[1], self.tok_span(self.i - 1))
        return n.Like(examples, file, threshold, self.span(first, self.i - 1), source_span, op)

    def rule(self) -> n.Stmt:
        first = self.take("NAME", "when")
        cond = self.cond()[0]
        action, last = self.action()
        return n.Rule(cond, action, self.span(first, last), self.text(first, last))

    def otherwise(self) -> n.Stmt:
        first = self.take("NAME", "otherwise")
        action, last = self.action()
        return n.Rule(None, action, self.span(first, last), self.text(first, last))

    def limit_stmt(self) -> n.Stmt:
        """`limit NUMBER NAME [per NAME]` (the grammar's limit_stmt)."""
        first = self.take("NAME", "limit")
        amount = self.take("NUMBER")
        unit = self.name()
        per = None
        if self.word("per"):
            self.i += 1
            per = self.name()
        return n.RateLimit(
            literal_of("NUMBER", self.toks[amount][1], self.tok_span(amount)),
            self.toks[unit][1],
            None if per is None else self.toks[per][1],
            self.tok_span(unit),
            self.span(first, self.i - 1),
            None if per is None else self.tok_span(per),
        )

    STATEMENTS: dict[str, Callable[[_Parser], n.Stmt]] = {
        "model": model_stmt,
        "task": task_stmt,
        "limit": limit_stmt,
        "when": rule,
        "otherwise": otherwise,
    }

    # ---- conditions: each returns (node, first token, last token) of the text it takes up: its own span, or for
    # a parenthesized one the parentheses too (lark's "container"), which is what a parent's span reaches to
    def cond(self) -> tuple[n.Cond, int, int]:
        parts = [self.and_cond()]
        while self.word("or"):
            self.i += 1
            parts.append(self.and_cond())
        return self.combine(n.Or, parts)

    def and_cond(self) -> tuple[n.Cond, int, int]:
        parts = [self.not_cond()]
        while self.word("and"):
            self.i += 1
            parts.append(self.not_cond())
        return self.combine(n.And, parts)

    def combine(self, kind: Any, parts: list[tuple[n.Cond, int, int]]) -> tuple[n.Cond, int, int]:
        if len(parts) == 1:
            return parts[0]
        first, last = parts[0][1], parts[-1][2]
        return kind(tuple(p[0] for p in parts), self.span(first, last)), first, last

    def not_cond(self) -> tuple[n.Cond, int, int]:
        if self.word("not"):
            first = self.i
            self.i += 1
            operand, _, last = self.not_cond()
            return n.Not(operand, self.span(first, last)), first, last
        return self.atom()

    def atom(self) -> tuple[n.Cond, int, int]:
        t = self.peek()
        if t is None:
            raise _GiveUp
        if t[1] == "(" and t[0] == "PUNCT":
            first = self.i
            self.i += 1
            inner = self.cond()[0]
            # the node keeps its own span; what contains it (a parent's span) reaches to the parentheses
            return inner, first, self.take("PUNCT", ")")
        if t[0] == "NAME" and t[1] == "task":
            first = self.i
            self.i += 1
            if self.peek() is not None and self.peek()[1] == "~":  # type: ignore[index]
                self.i += 1
                pattern = self.pattern()
                return n.TaskMatch(pattern, self.span(first, self.i - 1)), first, self.i - 1
            self.take("NAME", "is")
            name = self.name()
            return n.TaskIs(self.toks[name][1], self.tok_span(name), self.span(first, name)), first, name
        first = self.i
        if t[0] == "NAME" and t[1] == "tokens":
            self.i += 1
            operand, end = n.Operand("tokens", True, self.tok_span(first)), first
        else:
            end = self.take("NAME")
            if self.toks[end][1] in _VALUE_WORDS:
                raise _GiveUp
            if self.punct("("):  # `complexity()`: a Python function's value; `similarity(code)`: a task's
                self.i += 1
                if self.punct(")"):
                    end = self.take("PUNCT", ")")
                    operand = n.Operand(self.toks[first][1], False, self.span(first, end), True)
                else:
                    task = self.name()
                    end = self.take("PUNCT", ")")
                    fn, arg = self.toks[first][1], self.toks[task][1]
                    operand = n.Operand(fn, False, self.span(first, end), False, arg, self.tok_span(task))
            else:
                operand = n.Operand(self.toks[end][1], False, self.tok_span(end))
        t = self.peek()
        if t is not None and t[0] == "COMPARE":
            self.i += 1
            value, last = self.value()
            return n.Compare(operand, t[1], value, self.span(first, last)), first, last
        if t is not None and t[0] == "NAME" and t[1] == "in":
            self.i += 1
            items, last = self.list_lit()
            return n.InList(operand, items, self.span(first, last)), first, last
        return n.Truthy(operand, operand.span), first, end

    # ---- values
    def value(self) -> tuple[n.Value, int]:
        t = self.peek()
        if t is not None and t[0] == "PUNCT" and t[1] == "[":
            return self.list_lit()
        return self.scalar(), self.i - 1

    def scalar(self) -> n.Literal:
        t = self.peek()
        if t is None or t[0] not in _SCALARS or (t[0] == "NAME" and t[1] in _VALUE_WORDS):
            raise _GiveUp
        self.i += 1
        try:
            return literal_of(t[0], t[1], self.tok_span(self.i - 1))
        except ValueError:
            raise _GiveUp from None  # lark reports the bad literal

    def list_lit(self) -> tuple[n.ListLit, int]:
        first = self.take("PUNCT", "[")
        items: list[n.Literal] = []
        if not (self.peek() is not None and self.peek()[1] == "]"):  # type: ignore[index]
            items.append(self.scalar())
            while self.peek() is not None and self.peek()[1] == ",":  # type: ignore[index]
                self.i += 1
                items.append(self.scalar())
        last = self.take("PUNCT", "]")
        return n.ListLit(tuple(items), self.span(first, last)), last

    def pattern(self) -> n.Pattern:
        t = self.peek()
        if t is None or t[0] not in ("STRING", "REGEX"):
            raise _GiveUp
        self.i += 1
        span = self.tok_span(self.i - 1)
        if t[0] == "STRING":
            return n.Pattern(unescape(t[1][1:-1]), "", False, span)
        body, _, flags = t[1][1:].rpartition("/")
        return n.Pattern(body.replace("\\/", "/"), flags, True, span)

    def ref(self) -> tuple[n.ModelRef, int]:
        t = self.peek()
        if t is not None and t[0] == "STRING":
            self.i += 1
            return n.ModelRef(unescape(t[1][1:-1]), self.tok_span(self.i - 1)), self.i - 1
        at = self.name()
        return n.ModelRef(self.toks[at][1], self.tok_span(at)), at

    # ---- actions
    def action(self) -> tuple[n.Action, int]:
        first = self.i
        model: n.ModelRef | None = None
        rankings: list[n.Ranking] = []
        among: tuple[n.ModelRef, ...] = ()
        if self.word("use"):
            self.i += 1
            model, last = self.ref()
            kind = "use"
        elif self.word("prefer"):
            self.i += 1
            rankings.append(self.ranking())
            while self.word("then"):
                self.i += 1
                rankings.append(self.ranking())
            kind, last = "prefer", self.i - 1
            if self.word("among"):
                self.i += 1
                among = self.refs_list()
                last = self.i - 1
        else:
            raise _GiveUp  # balance, split, race, consensus, best_of: lark
        where: list[n.Constraint] = []
        if self.word("where"):
            self.i += 1
            where.append(self.constraint())
            while self.word("and"):
                self.i += 1
                where.append(self.constraint())
            last = self.i - 1
        fallbacks: list[n.ModelRef] = []
        if self.word("fallback"):
            self.i += 1
            fallbacks.append(self.ref()[0])
            while self.peek() is not None and self.peek()[1] == ",":  # type: ignore[index]
                self.i += 1
                fallbacks.append(self.ref()[0])
            last = self.i - 1
        cache: n.Literal | None = None
        if self.word("cache"):
            self.i += 1
            cache, last = self.scalar(), self.i - 1
        span = self.span(first, last)
        action = n.Action(kind, model, tuple(rankings), tuple(where), tuple(fallbacks), span, among=among, cache=cache)
        return action, last

    def refs_list(self) -> tuple[n.ModelRef, ...]:
        """`[a, b, c]`: one model reference or more."""
        self.take("PUNCT", "[")
        refs = [self.ref()[0]]
        while self.peek() is not None and self.peek()[1] == ",":  # type: ignore[index]
            self.i += 1
            refs.append(self.ref()[0])
        self.take("PUNCT", "]")
        return tuple(refs)

    def ranking(self) -> n.Ranking:
        first = self.i
        t = self.take("NAME")
        word = self.toks[t][1]
        if word == "capability":
            self.take("PUNCT", "(")
            name = self.name()
            last = self.take("PUNCT", ")")
            return n.Ranking("capability", self.toks[name][1], self.span(first, last))
        if word in ("cheapest", "fastest", "least_busy", "healthiest"):
            return n.Ranking(word, None, self.tok_span(first))
        if word == "custom":
            self.take("PUNCT", "(")
            name = self.name()
            last = self.take("PUNCT", ")")
            return n.Ranking("custom", None, self.span(first, last), ranker=self.toks[name][1])
        if word == "score":
            self.take("PUNCT", "(")
            terms = []
            sign = 1.0
            tok = self.peek()
            if tok is not None and tok[0] == "SIGN":
                sign = -1.0 if tok[1] == "-" else 1.0
                self.i += 1
            while True:
                terms.append(self.score_term(sign))
                tok = self.peek()
                if tok is None or tok[0] != "SIGN":
                    break
                sign = -1.0 if tok[1] == "-" else 1.0
                self.i += 1
            last = self.take("PUNCT", ")")
            return n.Ranking("score", None, self.span(first, last), tuple(terms))
        raise _GiveUp

    def score_term(self, sign: float) -> n.ScoreTerm:
        """`NUMBER * factor`, `factor * NUMBER` or `factor`, its coefficient times `sign`."""
        first = self.i
        t = self.peek()
        coef = 1.0
        if t is not None and t[0] == "NUMBER":
            self.i += 1
            coef = count_value(t[1])
            self.take("PUNCT", "*")
            factor = self.score_factor()
        else:
            factor = self.score_factor()
            t = self.peek()
            if t is not None and t[0] == "PUNCT" and t[1] == "*":
                self.i += 1
                coef = count_value(self.toks[self.take("NUMBER")][1])
        call = factor[2] if len(factor) == 3 else None
        return n.ScoreTerm(sign * coef, factor[0], factor[1], self.span(first, self.i - 1), call)

    def score_factor(self) -> tuple[str, str | None] | tuple[str, str | None, str]:
        at = self.take("NAME")
        word = self.toks[at][1]
        if word == "capability":
            self.take("PUNCT", "(")
            name = self.toks[self.name()][1]
            self.take("PUNCT", ")")
            return "capability", name
        if word in _SCORE_WORDS:
            return word, None
        if word in GRAMMAR_WORDS:
            raise _GiveUp
        if self.punct("("):  # `complexity()`: a Python function's value; `similarity(code)`: a task's
            self.i += 1
            if not self.punct(")"):
                task = self.toks[self.name()][1]
                self.take("PUNCT", ")")
                return "similarity", task, word
            self.take("PUNCT", ")")
            return "call", word
        return "attr", word

    def constraint(self) -> n.Constraint:
        first = self.i
        word = self.toks[self.take("NAME")][1]
        if word == "provider":
            self.take("NAME", "in")
            items, last = self.list_lit()
            t = self.toks[first]
            mspan = n.Span(self.file, t[3], t[4], t[3], t[4] + len("provider"))
            return n.Constraint("provider", "in", items, None, self.span(first, last), mspan)
        if word == "supports":
            at = self.name()
            feature = n.Literal("name", self.toks[at][1], self.toks[at][1], self.tok_span(at))
            span = self.span(first, at)
            return n.Constraint("supports", "has", feature, None, span, span)
        capability = None
        if word == "capability":
            self.take("PUNCT", "(")
            capability = self.toks[self.name()][1]
            mlast = self.take("PUNCT", ")")
        elif word in _METRICS:
            mlast = first
        else:
            raise _GiveUp
        op = self.toks[self.take("COMPARE")][1]
        value, last = self.value()
        return n.Constraint(word, op, value, capability, self.span(first, last), self.span(first, mlast))


#: Where a statement can start: a line that starts with a statement keyword (parse.py cuts there too).
STMT_START = re.compile(
    r"^[ \t]*(?:when|otherwise|model|catalog|include|set|budget|limit|test"
    r"|task[ \t]+[A-Za-z_][\w.:\-]*[ \t]*=)(?![\w.:\-])",
    re.M,
)
#: A big file is read this many characters at a time (cut where a statement starts), so only one piece's tokens
#: are alive at once. A cut inside a statement leaves a piece that does not parse, and lark reads the file.
CHUNK_CHARS = 32_000


def parse_fast(source: str, file: str) -> tuple[n.Stmt, ...] | None:
    """The statements of `source` as the lark parser would give them, or None when the text holds anything this
    parser does not read (then parse with lark)."""
    cuts = [0]
    if len(source) > 2 * CHUNK_CHARS:
        for m in STMT_START.finditer(source):
            if m.start() - cuts[-1] >= CHUNK_CHARS:
                cuts.append(m.start())
    cuts.append(len(source))
    out: list[n.Stmt] = []
    line = 1
    try:
        for begin, end in itertools.pairwise(cuts):
            toks, comments = _tokenize(source, begin, end, line, begin)
            out.extend(_Parser(source, file, toks, comments).statements())
            line += source.count("\n", begin, end)
    except _GiveUp:
        return None
    return tuple(out)
