"""Linting: a compiled policy (and its re-parsed statements) in, warnings (severity "warning", codes W100+) out."""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterator

from engine.compiler.actions import static_reason
from engine.compiler.advice import ADVICE_CODES, advise
from engine.compiler.passes import as_date
from engine.compiler.ratelimits import LIMIT_CODES, limit_warnings
from engine.diagnostics import Diagnostic
from engine.language import nodes as n
from engine.runtime.matcher import to_re2
from engine.runtime.policy import CompiledPolicy, CompiledRule, Entry
from engine.runtime.qualified import resolve_qualified
from engine.runtime.units import fmt_count
from engine.tools.conditions import Facts, dnf, holds
from engine.tools.testing import aliases, statements

#: Stable lint codes. Never renumber; add new ones at the end.
LINT_CODES: dict[str, str] = {
    "W100": "rule shadowed by an earlier rule",
    "W101": "rule only reached when an earlier rule has no viable model",
    "W102": "rule after an unconditional rule",
    "W103": "no model can satisfy the rule",
    "W104": "fallback violates the rule's constraints",
    "W105": "fallback can never be used",
    "W106": "unused task detector",
    "W107": "unused model alias",
    "W108": "model deprecated within 30 days",
    "W109": "ranking by a capability no candidate scores",
    **ADVICE_CODES,  # W110, W111: written with their checks in engine/compiler/advice.py
    **LIMIT_CODES,  # W112: written with the limit checks in engine/compiler/ratelimits.py
}
DEPRECATION_WINDOW = datetime.timedelta(days=30)
CIRCUIT_NOTE = "circuit breakers aside: an open circuit makes a model unavailable and lets evaluation go on"


# ---- the linter ---------------------------------------------------------------------------------------------


class Linter:
    def __init__(self, policy: CompiledPolicy, today: datetime.date | None = None):
        self.p, self.today = policy, as_date(today)
        self.stmts = statements(policy)
        self.aliases = aliases(policy, self.stmts)
        self.out: list[Diagnostic] = []
        pid_of = {src: i for i, src in enumerate(policy.matcher.sources)} if policy.matcher else {}
        self.pids: dict[int, frozenset[int]] = {}
        self.terms: list[list[Facts] | None] = []  # per rule: its condition's satisfiable conjunctions
        semantic = self.semantic = frozenset(policy.semantic)
        for rule in policy.rules:
            for node in n.walk_cond(rule.node.cond) if rule.node.cond else ():
                if isinstance(node, n.TaskMatch):
                    self.pids[id(node)] = frozenset({pid_of[to_re2(node.pattern)]})
                elif isinstance(node, n.TaskIs):
                    mask = policy.tasks[node.name]
                    self.pids[id(node)] = frozenset(i for i in range(mask.bit_length()) if mask >> i & 1)
            terms = dnf(rule.node.cond)
            facts = (
                None if terms is None else [f for f in (Facts(t, self.pids, semantic) for t in terms) if not f.empty()]
            )
            self.terms.append(facts)

    def warn(self, code: str, message: str, span: n.Span | None, label: str, hint: str, *notes: str) -> None:
        self.out.append(Diagnostic(code, message, span, label, hint, notes, severity="warning"))

    def entry(self, ref: n.ModelRef) -> Entry | None:
        name = self.aliases.get(ref.name, ref.name)
        spec = self.p.catalog.resolve(name) or resolve_qualified(self.p.catalog, name)
        return self.p.models.get(spec.name) if spec is not None else None

    def run(self) -> list[Diagnostic]:
        self.reachability()
        for rule, terms in zip(self.p.rules, self.terms, strict=True):
            self.satisfiable(rule, terms)
            self.fallbacks(rule, terms)
            pool = rule.selector.pool
            for r in rule.node.action.rankings:  # W109
                if r.kind == "capability" and pool and not any(r.capability in e.spec.capabilities for e in pool):
                    self.warn(
                        "W109",
                        f"no model rule {rule.index + 1} may pick scores {r.capability}: this ranking has no effect",
                        r.span,
                        "no scores",
                        "rank by a capability these models score, or add "
                        "scores to the catalog (an overlay can add them)",
                    )
        self.unused()
        self.deprecated()
        self.out += advise([r.node for r in self.p.rules], self.entry)
        self.out += limit_warnings(s for s in self.stmts if isinstance(s, n.RateLimit))
        order = {f: i for i, f in enumerate(self.p.files)}
        key = lambda d: (order.get(d.span.file, len(order)), d.span.line, d.span.col, d.code)  # noqa: E731
        return sorted(self.out, key=lambda d: key(d) if d.span else (-1, 0, 0, d.code))

    def always_viable(self, rule: CompiledRule, terms: list[Facts]) -> bool:
        """The rule has a viable model for every request described by `terms` (circuit breakers aside)."""
        sel = rule.selector
        if sel.cost_limits or not sel.pool:
            return False
        for f in terms:
            hi = _tokens(f)[1]
            tools, images = f.vars.get("tools"), f.vars.get("images")
            no_tools, no_images = bool(tools and tools.truthy is False), bool(images and images.truthy is False)
            if not any(e.context >= hi and (e.tools or no_tools) and (e.vision or no_images) for e in sel.pool):
                return False
        return True

    def reachability(self) -> None:  # W100 W101 W102
        always: CompiledRule | None = None
        for i, rule in enumerate(self.p.rules):
            terms, span = self.terms[i], rule.node.cond.span if rule.node.cond else rule.span
            if always is not None:
                first = always.index + 1
                proved = terms is not None and self.always_viable(always, terms)
                what = "can never decide" if proved else f"decides only when rule {first} has no viable model"
                self.warn(
                    "W102",
                    f"rule {i + 1} comes after rule {first}, whose condition always holds, so this rule {what}",
                    span,
                    "after an unconditional rule",
                    "make the earlier condition specific, or turn the catch-all into the final `otherwise`",
                    f"rule {first} is at {always.span}",
                    *((CIRCUIT_NOTE,) if proved else ()),
                )
                continue
            if rule.node.cond is None or not terms:
                continue
            if holds(Facts([], self.pids, self.semantic), rule.node.cond) is True:
                always = rule
                continue
            for e in self.p.rules[:i]:
                if e.node.cond is None or not all(holds(f, e.node.cond) for f in terms):
                    continue
                ref, note = f"rule {e.index + 1} ({e.span})", f"rule {e.index + 1}: {e.text}"
                if self.always_viable(e, terms):
                    self.warn(
                        "W100",
                        f"rule {i + 1} can never decide: {ref} matches every request it matches and "
                        "always has a viable model",
                        span,
                        "shadowed",
                        f"move this rule above rule {e.index + 1}, or remove it",
                        note,
                        CIRCUIT_NOTE,
                    )
                else:
                    self.warn(
                        "W101",
                        f"rule {i + 1} decides only when {ref} has no viable model: that rule "
                        "matches every request this one matches",
                        span,
                        "partly shadowed",
                        f"if this rule is the more specific one, move it above rule {e.index + 1}",
                        note,
                    )
                break

    def satisfiable(self, rule: CompiledRule, terms: list[Facts] | None) -> None:  # W103
        sel, act = rule.selector, rule.node.action
        if not sel.pool:
            shown = [f"{e.name}: {why}" for e, why in sel.static_rejects[:4]]
            more = len(sel.static_rejects) - len(shown)
            self.warn(
                "W103",
                f"no catalog model meets the constraints of rule {rule.index + 1}: it can never decide",
                _where_span(act) or act.span,
                "no model passes",
                "relax the `where` constraints, or check the catalog",
                *shown,
                *((f"and {more} more",) if more > 0 else ()),
            )
            return
        reasons = [why for f in terms or () if (why := _never_fits(sel.pool, f))]
        if terms and len(reasons) == len(terms):
            self.warn(
                "W103",
                f"no model rule {rule.index + 1} may pick can serve the requests it matches: {reasons[0]}",
                act.span,
                "never viable",
                "a rule without a viable model does not decide; pick models that can serve these requests",
            )

    def fallbacks(self, rule: CompiledRule, terms: list[Facts] | None) -> None:  # W104 W105
        act, sel = rule.node.action, rule.selector
        static = [c for c in act.where if c.metric != "cost"]
        for ref in act.fallbacks:
            e = self.entry(ref)
            if e is None:
                continue
            why = next((bad for c in static if (bad := static_reason(e, c))), None)
            if why:
                self.warn(
                    "W104",
                    f"fallback `{ref.name}` does not meet the `where` constraints of rule {rule.index + 1}: {why}",
                    ref.span,
                    "violates `where`",
                    "fallbacks are only checked "
                    "against hard constraints (context, tools, vision); pick one that meets the constraints",
                )
            never = None
            if sel.kind == "use" and sel.use is e:
                never = "it is the model the rule uses, and the chosen model is never its own fallback"
            elif terms:
                reasons = [r for f in terms if (r := _never_fits((e,), f))]
                never = reasons[0] if len(reasons) == len(terms) else None
            if never:
                self.warn(
                    "W105",
                    f"fallback `{ref.name}` can never be used: {never}",
                    ref.span,
                    "never used",
                    "remove it, or pick a fallback that can serve the requests this rule matches",
                )

    def unused(self) -> None:  # W106 W107
        used_tasks = {
            x.name for r in self.p.rules if r.node.cond for x in n.walk_cond(r.node.cond) if isinstance(x, n.TaskIs)
        }
        used_tasks |= {  # `similarity(X)` in a condition or a score uses X too
            str(x.left.task if isinstance(x, (n.Compare, n.InList)) else x.operand.task)
            for r in self.p.rules
            if r.node.cond
            for x in n.walk_cond(r.node.cond)
            if isinstance(x, (n.Compare, n.InList, n.Truthy))
            and (x.left if isinstance(x, (n.Compare, n.InList)) else x.operand).task is not None
        }
        used_tasks |= {
            str(t.name)
            for r in self.p.rules
            for k in r.node.action.rankings
            for t in k.terms
            if t.factor == "similarity"
        }
        used = {ref.name for r in self.p.rules for ref in _refs(r.node.action)}
        used |= {
            r.name
            for t in self.p.tests
            for e in t.expects
            for r in (e.model, *(e.fallbacks or ()), *(e.plan or ()))
            if r
        }
        used |= {s.target.name for s in self.stmts if isinstance(s, n.ModelAlias)}
        for s in self.stmts:
            if isinstance(s, n.TaskDecl) and s.name not in used_tasks:
                self.warn(
                    "W106",
                    f"task `{s.name}` is never used by a rule",
                    s.name_span,
                    "unused",
                    f"use it (`when task is {s.name} ...`) or remove it; Decision.tasks still reports it",
                )
            elif isinstance(s, n.ModelAlias) and s.name not in used:
                self.warn("W107", f"model alias `{s.name}` is never used", s.name_span, "unused", "use it or remove it")

    def deprecated(self) -> None:  # W108
        seen: set[str] = set()
        for ref in (ref for rule in self.p.rules for ref in _refs(rule.node.action)):
            e = self.entry(ref)
            date = e.spec.deprecation_date if e is not None else None
            if e is None or e.name in seen or date is None or date > self.today + DEPRECATION_WINDOW:
                continue
            seen.add(e.name)
            days = (date - self.today).days
            when = (
                f"is deprecated on {date} (in {days} day{'s' if days != 1 else ''})"
                if days > 0
                else "is deprecated today"
                if days == 0
                else f"was deprecated on {date}"
            )
            named = f"`{ref.name}`" + (f" ({e.name})" if ref.name != e.name else "")
            self.warn(
                "W108",
                f"model {named} {when}",
                ref.span,
                "deprecated",
                "move to a successor model before the provider stops serving it",
                f"deprecation_date comes from the catalog entry for {e.name}",
            )


def _tokens(f: Facts) -> tuple[float, float]:
    """The least and the greatest token count a conjunction allows."""
    tok = f.vars.get("\0tokens")
    if tok is None:
        return 0, math.inf
    nums = [x for x in tok.allowed or () if isinstance(x, (int, float))]
    return (max(tok.lo, min(nums)), min(tok.hi, max(nums))) if nums else (tok.lo, tok.hi)


def _never_fits(pool: tuple[Entry, ...], f: Facts) -> str | None:
    """Why no model of `pool` can serve any request described by `f` (tokens, tools, images), or None."""
    lo = _tokens(f)[0]
    tools, images = (bool((v := f.vars.get(k)) and v.truthy) for k in ("tools", "images"))
    if all(e.context < lo for e in pool):
        shown = ", ".join(f"{e.name} ({fmt_count(e.context)})" for e in pool[:3]) + (", ..." if len(pool) > 3 else "")
        return f"the rule only matches requests of {int(lo):,} tokens or more, more than the context of {shown}"
    if tools and not any(e.tools for e in pool):
        return "the rule only matches requests with tools, and none of its models supports tools"
    if images and not any(e.vision for e in pool):
        return "the rule only matches requests with images, and none of its models supports vision"
    if all(e.context < lo or (tools and not e.tools) or (images and not e.vision) for e in pool):
        return "no model meets the request's size, tools and images together"
    return None


def _refs(act: n.Action) -> Iterator[n.ModelRef]:
    yield from (ref for ref in (act.model, *act.members, *act.among, act.judge, *act.fallbacks) if ref is not None)


def _where_span(act: n.Action) -> n.Span | None:
    a, b = (act.where[0].span, act.where[-1].span) if act.where else (None, None)
    return None if a is None or b is None else n.Span(a.file, a.line, a.col, b.end_line, b.end_col)


def lint(policy: CompiledPolicy, *, today: datetime.date | None = None) -> list[Diagnostic]:
    """Every lint warning for a compiled policy, in file order. `today` anchors the deprecation window: pass the
    date the policy was compiled with (None: the date now, as a compile without a date uses)."""
    return Linter(policy, today).run()
