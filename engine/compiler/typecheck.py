"""Type pass: the rules' conditions, constraints and cache TTLs in, a diagnostic for every value of the wrong unit
or out of range out."""

from __future__ import annotations

from engine.compiler.actions import on_request
from engine.compiler.codegen import number
from engine.compiler.context import Context
from engine.language import nodes as n
from engine.runtime.units import EXAMPLES, KIND_NAMES, METRIC_KIND, fmt_seconds

#: The longest time an answer may stay in the response cache (`cache DURATION`, `set cache.ttl`), in seconds:
#: 30 days. Longer is surely a slip (`cache 7200h`), and an absurd one overflows a TTL in milliseconds.
MAX_CACHE_TTL = 30 * 24 * 3600.0


def _unit_error(ctx: Context, what: str, want: str, lit: n.Value, more: str = "") -> None:
    got = "list" if isinstance(lit, n.ListLit) else lit.kind
    ctx.error(
        "E400",
        f"{what} compares with {KIND_NAMES[want]}, not {KIND_NAMES[got]}",
        lit.span,
        f"this is {KIND_NAMES[got]}",
        f"write {EXAMPLES[want]}{more}",
    )


def pass_types(ctx: Context) -> None:
    for rule in ctx.rules:
        if rule.cond is not None:
            for node in n.walk_cond(rule.cond):
                if isinstance(node, n.Compare):
                    if isinstance(node.right, n.ListLit):
                        ctx.error(
                            "E400",
                            f"`{node.op}` compares with one value, not a list",
                            node.right.span,
                            "a list",
                            f"to test membership write `{node.left.name} in [...]`",
                        )
                    elif node.left.builtin and node.right.kind != "count":
                        _unit_error(ctx, "`tokens`", "count", node.right)
                    elif node.left.task is not None and node.right.kind not in ("count", "percent"):
                        _unit_error(ctx, f"`similarity({node.left.task})`", "fraction", node.right)
                elif isinstance(node, n.InList) and node.left.builtin:
                    for item in node.right.items:
                        if item.kind != "count":
                            _unit_error(ctx, "`tokens`", "count", item)
        for c in rule.action.where:
            if c.metric in METRIC_KIND and c.value is not None:
                want = METRIC_KIND[c.metric]
                if on_request(c):
                    if c.value.value == "tokens":  # type: ignore[union-attr]
                        attr = f"max_{c.metric}" if c.op.startswith("<") else f"min_{c.metric}"
                        ctx.error(
                            "E400",
                            f"`{c.metric} {c.op} tokens`: `tokens` is the request's size, not a request attribute",
                            c.value.span,
                            "not a request attribute",
                            "every model must already hold the request (a hard constraint); compare with "
                            f"{EXAMPLES[want]}, or an attribute the caller passes (`{c.metric} {c.op} {attr}`)",
                        )
                    continue  # a request attribute: read in the metric's unit when the request arrives
                if not isinstance(c.value, n.Literal) or c.value.kind != want:
                    attr = f"max_{c.metric}" if c.op.startswith("<") else f"min_{c.metric}"
                    more = f", or a request attribute's name (`{c.metric} {c.op} {attr}`)"
                    _unit_error(ctx, f"`{c.metric}`", want, c.value, more)
                elif c.metric == "capability" and not 0 <= number(c.value.value) <= 10:
                    ctx.error(
                        "E401",
                        f"capability scores run from 1 to 10, not {c.value.text}",
                        c.value.span,
                        "out of range",
                        "use a score between 1 and 10",
                    )
        _check_cache(ctx, rule.action.cache)


def _check_cache(ctx: Context, lit: n.Literal | None) -> None:
    """`cache 10m` or `cache off` on an action: a positive duration, or the word `off`."""
    hint = "write a duration such as `cache 10m`, or `cache off` to keep this rule's answers out of the cache"
    if lit is None or (lit.kind == "name" and lit.value == "off"):
        return
    if lit.kind != "duration":
        what = f"`{lit.text}`" if lit.kind == "name" else KIND_NAMES[lit.kind]
        ctx.error("E400", f"`cache` takes a duration or `off`, not {what}", lit.span, "not a duration", hint)
    elif not number(lit.value) > 0:
        ctx.error("E401", "a rule's cache TTL must be longer than 0", lit.span, "caches nothing", hint)
    else:
        check_cache_ttl(ctx, "`cache`", lit)


def check_cache_ttl(ctx: Context, what: str, lit: n.Literal) -> None:
    """A cache TTL (a duration above 0) longer than MAX_CACHE_TTL: E401 with the range allowed."""
    if number(lit.value) > MAX_CACHE_TTL:
        longest = fmt_seconds(MAX_CACHE_TTL)
        ctx.error(
            "E401",
            f"{what} keeps answers for {lit.text}; the longest cache TTL is {longest} (30 days)",
            lit.span,
            "too long",
            f"write a duration above 0 and at most {longest}, e.g. `10m` or `24h`",
        )
