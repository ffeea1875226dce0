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
import threading
from collections import OrderedDict
from collections.abc import Callable

from engine.language import nodes as n
from engine.language.fastparse_lex import GRAMMAR_WORDS, GiveUp, literal_of, tokenize, unescape
from engine.language.fastparse_rules import ConditionsAndActions

__all__ = ["GRAMMAR_WORDS", "forget", "literal_of", "parse_fast", "unescape"]


class _Parser(ConditionsAndActions):
    """The statement forms the fast parser reads; the rule parts are ConditionsAndActions'."""

    # ---- statements
    def statements(self) -> tuple[n.Stmt, ...]:
        out: list[n.Stmt] = []
        while self.i < len(self.toks):
            t = self.toks[self.i]
            if t[0] != "NAME":
                raise GiveUp
            handler = self.STATEMENTS.get(t[1])
            if handler is None:
                raise GiveUp
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
                raise GiveUp
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
        """`limit NUMBER NAME [per NAME]` (the grammar's limit_stmt); a limit without its unit (`limit 60`,
        `limit 60 per key`: the grammar's limit_no_unit, an error the compiler reports) is left to lark."""
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

    def include_stmt(self) -> n.Stmt:
        """`include "path"` (the grammar's include_stmt)."""
        first = self.take("NAME", "include")
        path = self.take("STRING")
        return n.Include(unescape(self.toks[path][1][1:-1]), self.span(first, path))

    STATEMENTS: dict[str, Callable[[_Parser], n.Stmt]] = {
        "include": include_stmt,
        "model": model_stmt,
        "task": task_stmt,
        "limit": limit_stmt,
        "when": rule,
        "otherwise": otherwise,
    }


#: Where a statement can start: a line that starts with a statement keyword (parse.py cuts there too).
STMT_START = re.compile(
    r"^[ \t]*(?:when|otherwise|model|catalog|include|set|budget|limit|test"
    r"|task[ \t]+[A-Za-z_][\w.:\-]*[ \t]*=)(?![\w.:\-])",
    re.M,
)
#: The statements of the last text parsed from each of at most MEMO_FILES files, by piece (see parse_fast), and the
#: characters of those texts: a text longer than MEMO_CHARS is not kept, and the least recently parsed files go while
#: the texts kept hold more than MEMO_TOTAL_CHARS.
MEMO_FILES = 32
MEMO_CHARS = 1_000_000
MEMO_TOTAL_CHARS = 2_000_000
_last: OrderedDict[str, tuple[int, dict[tuple[str, int], tuple[n.Stmt, ...]]]] = OrderedDict()
_last_chars = [0]
_last_lock = threading.Lock()


def forget() -> None:
    """Drop the statements kept from earlier parses (engine/compiler/reuse.py's forget)."""
    with _last_lock:
        _last.clear()
        _last_chars[0] = 0


def parse_fast(source: str, file: str) -> tuple[n.Stmt, ...] | None:
    """The statements of `source` as the lark parser would give them, or None when the text holds anything this
    parser does not read (then parse with lark).

    The text is read one piece at a time, cut where a statement starts (with the comments and blank lines after
    it), so only one piece's tokens are alive at once. A piece that reads the same, from the same line, as a piece
    of the last text parsed from `file` gives the same statements, which are reused: a reload after a one-rule edit
    reads one statement, not the file. (A cut inside a statement leaves a piece that does not parse, and lark reads
    the file.)"""
    with _last_lock:
        before = _last.get(file, (0, {}))[1]
    keep = len(source) <= MEMO_CHARS
    pieces: dict[tuple[str, int], tuple[n.Stmt, ...]] = {}
    out: list[n.Stmt] = []
    cuts = [m.start() for m in STMT_START.finditer(source)]
    if not cuts or cuts[0] != 0:
        cuts.insert(0, 0)
    cuts.append(len(source))
    line = 1
    try:
        for begin, end in itertools.pairwise(cuts):
            key = (source[begin:end], line)
            stmts = before.get(key)
            if stmts is None:
                toks, comments = tokenize(source, begin, end, line, begin)
                stmts = _Parser(source, file, toks, comments).statements()
            out.extend(stmts)
            if keep:
                pieces[key] = stmts
            line += key[0].count("\n")
    except GiveUp:
        return None
    if keep:
        with _last_lock:
            gone = _last.pop(file, None)
            _last_chars[0] += len(source) - (gone[0] if gone else 0)
            _last[file] = (len(source), pieces)
            while len(_last) > MEMO_FILES or _last_chars[0] > MEMO_TOTAL_CHARS:
                _last_chars[0] -= _last.popitem(last=False)[1][0]
    return tuple(out)
