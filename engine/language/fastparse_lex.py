"""Fast parsing, lexing: .route source text in, tokens (and comment extents) out, plus the token cursor the fast
parser's rules read them through (engine/language/fastparse.py)."""

from __future__ import annotations

import re
from bisect import bisect_left

from engine.language import nodes as n
from engine.language.literals import count_value, literal_value

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


class GiveUp(Exception):
    """Not a form this parser reads: lark parses the text instead."""


#: How deep a condition may nest, parentheses and `not` counted together. The parsers recurse once per level and
#: the compiled condition nests one level per level (Python refuses 200); no policy needs a tenth of this.
MAX_NESTING = 100


class TooDeep(Exception):
    """A condition nested deeper than MAX_NESTING: the span of the parenthesis or `not` that went past it."""

    def __init__(self, span: n.Span):
        super().__init__(span)
        self.span = span


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


def tokenize(source: str, pos: int, end: int, line: int, line_start: int) -> tuple[list[Tok], list[tuple[int, int]]]:
    """The tokens (and comment extents) of source[pos:end], which starts on `line` at offset `line_start`."""
    toks: list[Tok] = []
    comments: list[tuple[int, int]] = []
    match = _TOKEN.match
    while pos < end:
        m = match(source, pos, end)
        if m is None:
            raise GiveUp
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


class Cursor:
    """The fast parser's tokens and spans: peek, take and the spans and rule texts of the tokens taken."""

    def __init__(self, source: str, file: str, toks: list[Tok], comments: list[tuple[int, int]]):
        self.source, self.file, self.toks, self.comments = source, file, toks, comments
        self.i = 0
        self.depth = 0  # parentheses and `not`s open around the condition being read

    def deeper(self, at: int) -> None:
        """One more level of nesting, opened by token `at`; TooDeep past MAX_NESTING."""
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise TooDeep(self.tok_span(at))

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
            raise GiveUp
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
            raise GiveUp
        return at

    def span(self, first: int, last: int) -> n.Span:
        a, b = self.toks[first], self.toks[last]
        return n.Span(self.file, a[3], a[4], b[3], b[4] + len(b[1]))

    def tok_span(self, at: int) -> n.Span:
        return self.span(at, at)

    def text(self, first: int, last: int) -> str:
        """The statement as written, on one line, without comments (parse_tree._ToAST._text)."""
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
