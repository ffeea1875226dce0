"""Python extension points at decide time: the functions and rankers given to Engine.load (`functions=`,
`rankers=`) and a Request in, each call's value (one call per function, or per ranker and model, per request),
the read-only view of the request they see, and the rank key of `prefer custom(NAME)` out.

A function `fn(request)` returns a bool or a number. When it raises, or returns anything else, the call has no
value: a condition on it is false, a `score(...)` with it is unknown (the model ranks last), and explain shows
why. A ranker `fn(request, model) -> float` ranks candidates, higher first; when it raises (or returns no finite
number) for a model, that model ranks last. Each failure is logged once per function (or ranker) per compiled
policy, so a failing function does not flood the log; explain shows it on every request.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from engine.runtime.policy import MISSING, RankKey

if TYPE_CHECKING:
    from engine.runtime.policy import Entry, Request

__all__ = ["CustomRank", "Failed", "Function", "Ranker", "RequestView", "call_value", "number_of"]

log = logging.getLogger("modelroute.functions")


class RequestView:
    """What a policy function or ranker sees of a request, read-only: `text` (the prompt, or the messages' text),
    `messages` (the messages as given, or the prompt as one user message), `tokens` (the input token count the
    policy uses) and `attrs` (the request attributes, with the counts and budget values the engine derived)."""

    __slots__ = ("_req",)

    def __init__(self, req: Request):
        self._req = req

    @property
    def text(self) -> str:
        return self._req.text

    @property
    def tokens(self) -> int:
        return self._req.tokens

    @property
    def attrs(self) -> Mapping[str, Any]:
        return MappingProxyType(dict(self._req.attrs))

    @property
    def messages(self) -> tuple[Mapping[str, Any], ...]:
        given: Sequence[Any] | None = self._req.messages
        if given is None:
            return (MappingProxyType({"role": "user", "content": self._req.text}),)
        return tuple(MappingProxyType(dict(m)) if isinstance(m, Mapping) else m for m in given)

    def __repr__(self) -> str:
        return f"RequestView(tokens={self.tokens}, attrs={dict(self._req.attrs)!r})"


class Failed:
    """A call with no value: what it raised, or what it returned instead of a bool or a number."""

    __slots__ = ("why",)

    def __init__(self, why: str):
        self.why = why

    def __repr__(self) -> str:
        return f"Failed({self.why!r})"


def _memo(req: Request) -> dict[Any, Any]:
    memo = req.calls
    if memo is None:
        memo = req.calls = {}
    return memo


class _Logged:
    """Logs a callable's first failure (per compiled policy: each compile makes new ones)."""

    __slots__ = ("logged", "name")

    def __init__(self, name: str):
        self.name = name
        self.logged = False

    def _failed(self, what: str, exc: BaseException | None, why: str, consequence: str) -> Failed:
        if not self.logged:
            self.logged = True
            log.warning(
                "%s %s; %s (logged once per policy version; explain shows it on every request)",
                what,
                why,
                consequence,
                exc_info=exc is not None,
            )
        return Failed(why)


def _why_raised(exc: BaseException) -> str:
    text = str(exc)
    return f"raised {type(exc).__name__}: {text}" if text else f"raised {type(exc).__name__}"


class Function(_Logged):
    """One `functions=` entry as a compiled policy calls it."""

    __slots__ = ("fn",)

    def __init__(self, name: str, fn: Callable[[RequestView], Any]):
        super().__init__(name)
        self.fn = fn

    def value(self, req: Request) -> Any:
        """The call's value for this request (a bool or a number), or Failed; computed once per request."""
        memo = _memo(req)
        got = memo.get(self.name, memo)
        if got is memo:
            got = memo[self.name] = self._call(req)
        return got

    def _call(self, req: Request) -> Any:
        what = f"policy function {self.name}()"
        try:
            value = self.fn(RequestView(req))
        except Exception as exc:  # a user's function: any exception makes the condition false
            return self._failed(what, exc, _why_raised(exc), "conditions on it are false, scores with it unknown")
        if isinstance(value, (bool, int, float)):
            return value
        why = f"returned {type(value).__name__}, not a bool or a number"
        return self._failed(what, None, why, "conditions on it are false, scores with it unknown")

    def __repr__(self) -> str:
        return f"Function({self.name!r})"


def call_value(req: Request | None, function: Function) -> Any:
    """A function call in a condition (generated code calls it as `_c(R, fn)`): its value, or MISSING when it has
    none (every comparison with MISSING is false); MISSING too without a request (a caller of the old form)."""
    if req is None:
        return MISSING
    value = function.value(req)
    return MISSING if type(value) is Failed else value


def number_of(req: Request, function: Function) -> float | Failed:
    """A function call in `score(...)`: its value as a finite number (a bool counts 1 or 0), or Failed."""
    value = function.value(req)
    if type(value) is Failed:
        return value
    number = float(value)
    return number if math.isfinite(number) else Failed(f"returned {value!r}, not a finite number")


class Ranker(_Logged):
    """One `rankers=` entry as a compiled policy calls it: `fn(request, model) -> float`, higher is better."""

    __slots__ = ("fn",)

    def __init__(self, name: str, fn: Callable[[RequestView, Any], Any]):
        super().__init__(name)
        self.fn = fn

    def value(self, req: Request, e: Entry) -> float | Failed:
        """The ranker's number for one model and this request, or Failed; computed once per request and model."""
        memo = _memo(req)
        key = (self.name, e.name)
        got: float | Failed | None = memo.get(key)
        if got is None:
            got = memo[key] = self._call(req, e)
        return got

    def _call(self, req: Request, e: Entry) -> float | Failed:
        what = f"ranker {self.name} (model {e.name})"
        try:
            value = self.fn(RequestView(req), e.spec)
        except Exception as exc:  # a user's ranker: any exception ranks that model last
            return self._failed(what, exc, _why_raised(exc), "that model ranks last")
        if isinstance(value, (bool, int, float)) and math.isfinite(value):
            return float(value)
        return self._failed(what, None, f"returned {value!r}, not a finite number", "that model ranks last")

    def __repr__(self) -> str:
        return f"Ranker({self.name!r})"


@dataclass(frozen=True, slots=True)
class CustomRank(RankKey):
    """`prefer custom(NAME)`: the rank key is minus the ranker's number (lower keys rank first); a model the
    ranker fails on ranks after every other."""

    name: str = ""
    ranker: Ranker | None = field(default=None, compare=False, hash=False)

    @property
    def label(self) -> str:
        return f"custom({self.name})"

    def key(self, e: Entry, req: Request | None) -> float:
        if req is None or self.ranker is None:
            return 0.0
        value = self.ranker.value(req, e)
        return math.inf if isinstance(value, Failed) else -value

    def shown(self, e: Entry, req: Request) -> str:
        if self.ranker is None:
            return f"{self.label} not provided"
        value = self.ranker.value(req, e)
        if isinstance(value, Failed):
            return f"{self.label} {value.why} (ranks last)"
        return f"{self.label} {value:g}"
