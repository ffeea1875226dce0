"""Engine options: the keyword arguments given to Engine(), Engine.load() and Engine.from_source() in; the
execution options checked by name (a TypeError naming the valid ones otherwise) and the Python extension points
(`functions=`, `rankers=`) checked and frozen as read-only mappings out."""

from __future__ import annotations

import inspect
import keyword
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from engine.diagnostics import did_you_mean

__all__ = ["EXECUTION_OPTIONS", "check_execution_options", "extension_functions"]

#: The execution options an Engine passes to its executor (providers.execution.Executor's keyword arguments; a
#: test checks the two lists agree).
EXECUTION_OPTIONS = (
    "providers",
    "api_keys",
    "transport",
    "async_transport",
    "limits",
    "sleep",
    "wall",
    "max_response_bytes",
)

#: What the routers people port call the things modelroute does another way (named in the TypeError).
_INSTEAD = {
    "custom_router": "routing code in Python is `functions=` (conditions, scores) or `rankers=` (prefer custom(...))",
    "strategy": "a strategy is written in the policy (prefer, balance, split, race, consensus, best_of)",
    "middleware": "middleware is registered with engine.use(mw)",
}


def check_execution_options(where: str, given: Mapping[str, Any], own: tuple[str, ...]) -> None:
    """TypeError for a keyword argument of `where` (e.g. "Engine.load()") that is neither one of its own (`own`)
    nor an execution option; the message names the valid ones."""
    unknown = [name for name in given if name not in EXECUTION_OPTIONS]
    if not unknown:
        return
    valid = sorted({*own, *EXECUTION_OPTIONS})
    name = unknown[0]
    hint = _INSTEAD.get(name) or did_you_mean(name, valid)
    raise TypeError(
        f"{where} got an unexpected keyword argument {name!r}"
        + (f" ({hint})" if hint else "")
        + f"; valid keyword arguments: {', '.join(valid)}"
    )


def extension_functions(kind: str, given: Mapping[str, Callable[..., Any]] | None) -> Mapping[str, Callable[..., Any]]:
    """`functions=` / `rankers=` (`kind`) checked: a mapping of identifier names to plain (sync) callables; returned
    as a read-only mapping. TypeError for a name that is not an identifier, a value that is not callable, or an
    async function (the decision is synchronous)."""
    if given is None:
        return MappingProxyType({})
    if not isinstance(given, Mapping):
        raise TypeError(f"{kind}= takes a mapping of names to functions, not {type(given).__name__}")
    out: dict[str, Callable[..., Any]] = {}
    for name, fn in given.items():
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise TypeError(f"{kind}=: {name!r} is not a name a policy can call (letters, digits and _)")
        if not callable(fn):
            raise TypeError(f"{kind}=: {name} must be a function, not {type(fn).__name__}")
        call = getattr(fn, "__call__", None)  # noqa: B004 - an object whose __call__ is async is async too
        if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(fn):
            raise TypeError(
                f"{kind}=: {name} is an async function; decide() is synchronous, so give a plain function "
                "(compute anything slow before the call and pass it as a request attribute)"
            )
        out[name] = fn
    return MappingProxyType(out)
