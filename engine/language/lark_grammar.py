"""Parsing, the grammar: grammar/route.lark in, the one cached lark parser out, with its tokens' positions and
literals."""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable
from pathlib import Path

from lark import Lark, Token

from engine.language import nodes as n
from engine.language.fastparse import literal_of

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


def build_parser(on_comment: Callable[[Token], object], *, keep_all_tokens: bool = False) -> Lark:
    """A lark LALR parser for the one grammar, handing each comment token to on_comment as it is lexed."""
    return Lark(
        grammar_path().read_text(encoding="utf-8"),
        parser="lalr",
        lexer="contextual",
        propagate_positions=True,
        maybe_placeholders=False,
        keep_all_tokens=keep_all_tokens,
        lexer_callbacks={"COMMENT": on_comment},
    )


@functools.lru_cache(maxsize=1)
def _parser() -> Lark:
    return build_parser(_on_comment)


def _tok_span(tok: Token, file: str) -> n.Span:
    return n.Span(file, known(tok.line), known(tok.column), known(tok.end_line), known(tok.end_column))


def literal(tok: Token, file: str) -> n.Literal:
    try:
        return literal_of(tok.type, str(tok), _tok_span(tok, file))
    except ValueError as exc:
        raise _LiteralError(tok, str(exc)) from None


class _LiteralError(Exception):
    def __init__(self, tok: Token, message: str):
        self.tok, self.message = tok, message
