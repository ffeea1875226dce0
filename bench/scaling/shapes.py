"""Generated policies of bench/scaling_bench.py: a condition shape and a rule count in, the policy text and the
request aimed at a given rule out (the shapes, compile and reload sections use them)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

MODELS = ("gpt-4o-mini", "claude-3-5-haiku", "gemini-1.5-flash", "deepseek-chat", "gpt-4o")
FILLER = (
    "Please read the following request carefully and answer it in plain words, with an example where it helps. "
    "The context: a small team maintains a service and wants advice. "
)

Request = tuple[str, dict]


@dataclass(frozen=True)
class Shape:
    """A condition shape: the condition of rule i of n, and a request that makes rule `at` of n decide."""

    name: str
    cond: Callable[[int, int], str]
    request: Callable[[int, int], Request]
    decides: Callable[[int, int], int] = lambda at, n: at  # the rule that decides (when `at`'s own cond fails)


def filler_prompt(*words: str) -> str:
    """The filler text with the given words and a closing word: a prompt of about 200 B."""
    return FILLER + " ".join(words) + " thanks."


def _down(i: int, n: int) -> int:
    """Thresholds that fall with the rule index: rule i holds for `x > _down(i)` exactly when i >= the target."""
    return 10 * (n - i)


SHAPES: tuple[Shape, ...] = (
    Shape("task ~ kw", lambda i, n: f'task ~ "zq{i}x"', lambda at, n: (filler_prompt(f"zq{at}x"), {})),
    Shape("tier == v", lambda i, n: f'tier == "x{i}"', lambda at, n: (filler_prompt(), {"tier": f"x{at}"})),
    Shape(
        "tokens > N",
        lambda i, n: f"tokens > {_down(i, n)}",
        lambda at, n: (filler_prompt(), {"tokens": _down(at, n) + 1}),
    ),
    Shape(
        "max_tokens < N",
        lambda i, n: f"max_tokens < {10 * (i + 1)}",
        lambda at, n: (filler_prompt(), {"max_tokens": 10 * (at + 1) - 1}),
    ),
    Shape("score >= N", lambda i, n: f"score >= {n - i}", lambda at, n: (filler_prompt(), {"score": n - at})),
    Shape(
        "tier in [..]",
        lambda i, n: f'tier in ["a{i}", "b{i}", "c{i}"]',
        lambda at, n: (filler_prompt(), {"tier": f"b{at}"}),
    ),
    Shape(
        "user.plan == v",
        lambda i, n: f'user.plan == "p{i}"',
        lambda at, n: (filler_prompt(), {"user": {"plan": f"p{at}"}}),
    ),
    Shape(
        "task ~ kw or tokens > N",
        lambda i, n: f'task ~ "kw{i}q" or tokens > {_down(i, n)}',
        # the middle rule by its keyword, the last one by its threshold
        lambda at, n: (
            (filler_prompt(f"kw{at}q"), {"tokens": 5})
            if at < n - 1
            else (filler_prompt(), {"tokens": _down(at, n) + 1})
        ),
    ),
    Shape(
        "tier == v or task ~ kw",
        lambda i, n: f'tier == "v{i}" or task ~ "kw{i}q"',
        lambda at, n: (filler_prompt(), {"tier": f"v{at}"}) if at < n - 1 else (filler_prompt(f"kw{at}q"), {}),
    ),
    Shape(
        "not task ~ kw and tokens > N",
        lambda i, n: f'not task ~ "kw{i}q" and tokens > {_down(i, n)}',
        # rules from `at` on hold by tokens; the prompt names rule at's keyword, so the rule after it decides
        lambda at, n: (filler_prompt(f"kw{at}q"), {"tokens": _down(at, n) + 1}),
        lambda at, n: at + 1,
    ),
    Shape(
        "(u.plan in [..] and rg == N) or (o.t == v and task ~ kw)",
        lambda i, n: f'(u.plan in ["free", "pro"] and rg == {i}) or (o.t == "t{i}" and task ~ "kw{i}q")',
        lambda at, n: (
            (filler_prompt(), {"u": {"plan": "pro"}, "rg": at})
            if at < n - 1
            else (filler_prompt(f"kw{at}q"), {"o": {"t": f"t{at}"}})
        ),
    ),
)


ALIASES = "".join(f'model m{k} = "{m}"\n' for k, m in enumerate(MODELS))  # short names keep 10,000 rules < 1 MB


def policy_text(shape: Shape, n: int) -> str:
    """n rules of one shape, each using one of the aliased models, without `otherwise`."""
    return ALIASES + "".join(f"when {shape.cond(i, n)} use m{i % len(MODELS)}\n" for i in range(n))


def mixed_text(n: int) -> str:
    """A policy of n rules cycling through every shape (the compile and reload sections), without `otherwise`."""
    return ALIASES + "".join(f"when {SHAPES[i % len(SHAPES)].cond(i, n)} use m{i % len(MODELS)}\n" for i in range(n))


def positions(shape: Shape, n: int) -> dict[str, int]:
    """The rule each request is aimed at: the middle one and the last one (one before it when the rule after
    the aimed one decides)."""
    last = n - 1 if shape.decides(0, n) == 0 else n - 2
    return {"middle": n // 2, "last": last}
