"""Parsing: .route source text in, an engine.nodes.Module out; every syntax diagnostic is raised from here."""

from __future__ import annotations

import contextlib
import gc
import itertools
import re
import threading
from collections.abc import Iterator

from lark.exceptions import UnexpectedInput

from engine.diagnostics import Diagnostic, PolicyError, Sources
from engine.language import nodes as n
from engine.language.fastparse import STMT_START, parse_fast
from engine.language.fastparse_lex import MAX_NESTING, TooDeep
from engine.language.lark_grammar import KEYWORDS, _comments, _LiteralError, _parser, _tok_span
from engine.language.lark_grammar import grammar_path as grammar_path
from engine.language.lark_grammar import known as known
from engine.language.lark_grammar import literal as literal
from engine.language.lark_grammar import token_offsets as token_offsets
from engine.language.parse_tree import _ToAST
from engine.language.syntax_errors import SCORE_HINT as SCORE_HINT
from engine.language.syntax_errors import _syntax_diagnostic

MAX_ERRORS = 50

_STMT_START = STMT_START


_gc_lock = threading.Lock()
_gc_pauses = [0, False]  # how many gc_paused blocks are open in any thread; whether the collector was on before


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: building a big policy allocates hundreds of thousands of objects
    and none of them is garbage yet, so collections would only walk them again and again (about a third of
    the time of parsing a 10,000-rule file). Nests, also across threads (two reloads compiling at once): the
    first block to open saves the collector's state and the last to close restores it."""
    with _gc_lock:
        if _gc_pauses[0] == 0:
            _gc_pauses[1] = gc.isenabled()
            gc.disable()
        _gc_pauses[0] += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses[0] -= 1
            if _gc_pauses[0] == 0 and _gc_pauses[1]:
                gc.enable()


# ---- entry point -----------------------------------------------------------------------------------


def parse(source: str, file: str = "<string>", *, fast: bool = True) -> n.Module:
    """Parse one file. Raises PolicyError with every syntax diagnostic in the file, in order.

    The common statement forms are read by engine/language/fastparse.py, which gives the same statements;
    anything else (and every file with a problem) by the lark grammar. `fast=False` always uses lark."""
    if source.startswith("\ufeff"):  # a UTF-8 byte order mark some editors write: invisible, so ignore it
        source = " " + source[1:]
    text = source
    diags: list[Diagnostic] = []
    if fast:
        while True:
            try:
                with gc_paused():
                    quick = parse_fast(text, file)
            except TooDeep as deep:  # one diagnostic, then the rest of the file without that statement
                diags.append(_too_deep(deep.span))
                text = _blank_statement(text, _offset(text, deep.span.line, deep.span.col))
                continue
            break
        if quick is not None and not diags and not _check_names(quick):
            return n.Module(file, source, quick)
    if len(source) > 2 * CHUNK_CHARS and not diags:
        chunked = _parse_chunked(source, file)
        if chunked is not None:
            return n.Module(file, source, chunked)
    while (at := _deepest(text)) is not None:  # the fast parser's limit, for the text lark reads too
        diags.append(_too_deep(_point(text, at, file)))
        blanked = _blank_statement(text, at)
        if blanked == text:
            break
        text = blanked
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
        except RecursionError:  # nesting lark's tree walk cannot follow: where the fast parser would have stopped
            _comments.reset(token)
            offset = _deepest(text) or 0
            diags.append(_too_deep(_point(text, offset, file)))
            blanked = _blank_statement(text, offset)
            if blanked == text or len(diags) >= MAX_ERRORS:
                break
            text = blanked
            continue
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


def _too_deep(span: n.Span) -> Diagnostic:
    return Diagnostic(
        "E107",
        f"condition nested more than {MAX_NESTING} levels deep",
        span,
        f"level {MAX_NESTING + 1}",
        "parentheses and `not` count together; split the condition over several rules, or name a part of it as a "
        "task (`task NAME = ...`) and test `task is NAME`",
    )


_NOTS = re.compile(rf"(?:\bnot\s+){{{MAX_NESTING + 1}}}")


def _point(text: str, offset: int, file: str) -> n.Span:
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return n.Span(file, line, col, line, col + 1)


def _deepest(text: str) -> int | None:
    """Where a condition first nests past MAX_NESTING, roughly (strings skipped; a `(` inside a regex counts): the
    opening parenthesis or the first of a run of `not`s; None when neither is found. Only text with that many
    parentheses is scanned."""
    if text.count("(") <= MAX_NESTING:
        found = _NOTS.search(text)
        return found.start() if found else None
    depth, in_string = 0, False
    for i, ch in enumerate(text):
        if ch == '"' and (i == 0 or text[i - 1] != "\\"):
            in_string = not in_string
        elif in_string:
            continue
        elif ch == "(":
            depth += 1
            if depth > MAX_NESTING:
                return i
        elif ch == ")":
            depth = max(0, depth - 1)
        elif ch == "\n":
            depth, in_string = 0, False
    found = _NOTS.search(text)
    return found.start() if found else None


def _blank_statement(text: str, offset: int) -> str:
    """Blank out (keeping newlines) the statement that contains offset, so parsing can resume."""
    starts = [m.start() for m in _STMT_START.finditer(text)]
    begin = max((s for s in starts if s <= offset), default=0)
    end = min((s for s in starts if s > offset), default=len(text))
    if end <= begin:
        end = len(text)
    chunk = re.sub(r"[^\n]", " ", text[begin:end])
    return text[:begin] + chunk + text[end:]
