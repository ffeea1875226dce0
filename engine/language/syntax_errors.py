"""Parsing, syntax errors: a lark parse error and the text it was found in, a Diagnostic (code, span, label, hint)
and where to resume out; parse() in engine/language/parse.py raises them all, from one place."""

from __future__ import annotations

import decimal
import functools
import re
import unicodedata

from lark import Token
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.lexer import PatternStr

from engine.diagnostics import Diagnostic
from engine.language import nodes as n
from engine.language.fastparse import STMT_START
from engine.language.lark_grammar import KEYWORDS, _parser, _tok_span, known

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


def _expected(names) -> str:
    shown = _terminal_names()
    items = sorted({shown.get(x, x) for x in names})
    if len(items) > 12:
        items = [*items[:12], "..."]
    if len(items) == 1:
        return f"expected {items[0]}"
    return "expected one of " + ", ".join(items)


def shown_char(ch: str) -> str:
    """A character as a message names it: in backticks when it can be seen, else by its code point and name
    (`U+00A0 NO-BREAK SPACE`), which a terminal would print as a blank or as a line break."""
    if ch.isprintable() and not ch.isspace():
        return f"`{ch}`"
    name = unicodedata.name(ch, "")
    return f"U+{ord(ch):04X}" + (f" {name}" if name else "")


def _syntax_diagnostic(exc: UnexpectedInput, text: str, file: str) -> tuple[Diagnostic, int]:
    line, col = max(exc.line, 1), max(exc.column, 1)
    lines = text.split("\n")  # lines as the parser counts them: only LF ends one (not VT, NEL or U+2028)
    line_text = lines[line - 1] if line <= len(lines) else ""
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
            exponent = re.fullmatch(r"[0-9]+(\.[0-9]+)?[eE][0-9]*", bad) is not None  # 1e-9 stops at `-`; 1e3 whole
            glued = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?[kM]?)([A-Za-z_]\w*)", bad)
            if exponent:
                full = re.match(r"[0-9]+(?:\.[0-9]+)?[eE][+-]?[0-9]+", text[pos:])
                plain = f"{decimal.Decimal(full.group(0)):f}" if full else "0.000000001"
                written = full.group(0) if full else "1e-9"
                advice = f"numbers are plain decimals, without an exponent: write {plain}, not {written}"
            elif glued and _limit_hint({"NUMBER"}, line_text[: col - 1]):
                advice = f"put a space between the number and the unit: `limit {glued[1]} {glued[2]}`; {LIMIT_FORM}"
            else:
                advice = (
                    "numbers take k or M (30k, 1M), durations ms, s, m or h (800ms, 2s, 5m, 1h), money $0.05, "
                    "prices $3/1M or $0.003/1k"
                )
            diag = Diagnostic("E105", f"bad literal `{bad}`", span, "not a number, duration or price", advice)
        else:
            hint = {
                "&": "write `and`",
                "|": "write `or`",
                "!": "write `not` (or `!=` to compare)",
                "'": 'strings use double quotes: "..."',
                "=": "compare with `==`",
            }.get(ch)
            diag = Diagnostic(
                "E104",
                f"unexpected character {shown_char(ch)}",
                span,
                "not valid here",
                hint or _expected(exc.allowed or ()),
            )
        return diag, pos
    if isinstance(exc, UnexpectedToken):
        tok = exc.token
        if tok.type == "$END":
            return _unfinished(exc, text, file, None), len(text) - 1
        cut = _cut_short(tok, text)
        if cut is not None:  # the statement before a line that starts one is unfinished: report it, resume there
            short, next_line = cut
            return _unfinished(short, text, file, next_line), known(short.token.start_pos)
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


def _unfinished(exc: UnexpectedToken, text: str, file: str, next_line: int | None) -> Diagnostic:
    """A statement that stops before it is complete, at the end of the file (`next_line` None) or at the end of a
    line when line `next_line` starts the next statement; lark puts the end at the statement's last token."""
    line, col = max(exc.line, 1), max(exc.column, 1)
    expected = set(getattr(exc, "accepts", None) or exc.expected)
    hint = _expected(expected)
    where = "end of file"
    if next_line is not None:
        where = "end of line"
        hint += f" (line {next_line} starts the next statement)"
    before = text[: (exc.token.start_pos or 0) + len(_word_at(text, exc.token.start_pos))]
    if (limit := _limit_hint(expected, before)) is not None:
        hint += f"; {limit}"
    return Diagnostic("E100", f"unexpected {where}", n.Span(file, line, col, line, col + 1), NOT_FINISHED, hint)


#: The label of a statement that stops before it is complete.
NOT_FINISHED = "the statement is not finished"


def _word_at(text: str, pos: int | None) -> str:
    """The token-like word that starts at `pos` (the last token lark read, where it puts the end of the input)."""
    m = re.match(r"[^\s#]*", text[pos or 0 :])
    return m.group(0) if m else ""


def _cut_short(tok: Token, text: str) -> tuple[UnexpectedToken, int] | None:
    """When lark's error is at or after the start of a line that starts a statement (engine/language/fastparse.py
    STMT_START) and the text before that line ends in an unfinished statement, the error is that statement's:
    lark read on into the next line, taking its keyword as a name (`model fast =` then `when ...`). Then lark's
    end-of-input error for the text up to that line, and the line's number; else None."""
    at = known(tok.start_pos)
    starts = [m.start() for m in STMT_START.finditer(text) if m.start() <= at]
    cut = starts[-1] if starts else 0
    if not text[:cut].strip():
        return None
    # lark read everything before the statement that ends at `cut` without error: parse that statement alone,
    # where it stands (what precedes it blanked, newlines kept, so positions are the text's own)
    begin = starts[-2] if len(starts) > 1 else 0
    try:
        _parser().parse(re.sub(r"[^\n]", " ", text[:begin]) + text[begin:cut])
    except UnexpectedToken as end:
        if end.token.type == "$END":
            return end, text.count("\n", 0, cut) + 1
        return None
    except UnexpectedInput:
        return None
    return None


#: The help for a `limit` statement that lacks its number.
LIMIT_FORM = "a rate limit is `limit NUMBER UNIT [per ATTRIBUTE]`, e.g. `limit 60 rpm per key`"


def _limit_hint(expected: set[str], before: str) -> str | None:
    """LIMIT_FORM when a number is expected right after the keyword `limit` (`limit rpm`, `limit` alone)."""
    if "NUMBER" in expected and re.search(r"(?:^|\s)limit\Z", before.rstrip()):
        return LIMIT_FORM
    return None


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


def _token_hint(tok: Token, expected: set[str], text: str = "") -> str:
    value = str(tok)
    before = text[: tok.start_pos].rstrip() if tok.start_pos is not None else ""
    if (limit := _limit_hint(expected, before)) is not None:
        return limit
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
    return _statement_form(before)


#: The form of each statement, for an error no more specific hint explains (one place: the grammar's statements).
STATEMENT_FORMS = {
    "when": "a rule is `when CONDITION ACTION`, e.g. `when task is code and tokens > 30k prefer capability(CODING)`",
    "otherwise": "the last rule is `otherwise ACTION`, e.g. `otherwise use gpt-4o-mini fallback claude-haiku-4-5`",
    "model": 'an alias is `model NAME = MODEL`, e.g. `model fast = "gpt-4o-mini"`',
    "task": 'a task is `task NAME = PATTERN, ...`, e.g. `task code = /```\\w+/, "stack trace", like ["..."]`',
    "limit": LIMIT_FORM,
    "test": 'a test is `test "NAME" { expect "PROMPT" [with ATTR=VALUE, ...] -> MODEL }`',
    "set": "a setting is `set NAME = VALUE`, e.g. `set cache.ttl = 1h`",
    "budget": "a budget is `budget PERIOD $AMOUNT [per ATTRIBUTE]`, e.g. `budget daily $50 per user`",
    "catalog": 'a catalog is `catalog [FORMAT] "FILE" [overlay "FILE"]`',
    "include": 'an include is `include "FILE.route"`',
}


def _statement_form(before: str) -> str:
    """The form of the statement the text `before` an error is in: the keyword of the last line that starts one."""
    for line in reversed(before.splitlines()):
        word = line.split("#", 1)[0].strip().split(" ", 1)[0]
        if word in STATEMENT_FORMS:
            return STATEMENT_FORMS[word]
    return "a policy is made of statements: " + ", ".join(f"`{k}`" for k in STATEMENT_FORMS)
