"""The Python functions and rankers tests/cases/*.yaml may name (`functions: [complexity]`, `rankers: [quality]` at
the top of a case file): what Engine.load(functions=..., rankers=...) gets for that file's policy."""

from __future__ import annotations

from typing import Any


def complexity(request: Any) -> int:
    """Words in the prompt."""
    return len(request.text.split())


def is_urgent(request: Any) -> bool:
    return request.attrs.get("priority") == "high"


def broken(request: Any) -> bool:
    raise RuntimeError("this function always fails")


def quality(request: Any, model: Any) -> float:
    """Higher is better: CODING points, minus a point per $1/1M of input price."""
    return float(model.capability("CODING") or 0) - model.input_price * 1e6


def flaky(request: Any, model: Any) -> float:
    if model.name == "gamma-flash":
        raise RuntimeError("no score for gamma-flash")
    return 1.0


FUNCTIONS = {"complexity": complexity, "is_urgent": is_urgent, "broken": broken}
RANKERS = {"quality": quality, "flaky": flaky}
