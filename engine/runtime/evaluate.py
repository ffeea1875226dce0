"""Evaluation: a CompiledPolicy and a Request in, the deciding rule and model out (fast), or a full trace (explain).

The fast path walks only the rules the index says can match: rules with no index guard, rules whose attribute
guard matches the request, and, once the prompt has been scanned (lazily, at most once, by one RE2 set),
rules guarded by a pattern that matched. The traced path evaluates every rule in order, atom by atom, and
records why each model won or lost; tests check that both always agree.
"""

from __future__ import annotations

from typing import Any

from engine.language import nodes as n
from engine.runtime.policy import MISSING, CompiledPolicy, CompiledRule, Entry, Request, Selector, get_attr, hard_reason
from engine.runtime.report import (
    Atom,
    Candidate,
    CandidateStatus,
    FallbackCheck,
    Report,
    RuleOutcome,
    RuleRef,
    RuleTrace,
)
from engine.runtime.units import fmt_value


def pattern_bits(policy: CompiledPolicy, matched: int) -> int:
    bits, rules = 0, policy.pattern_rules
    while matched:
        low = matched & -matched
        bits |= rules[low.bit_length() - 1]
        matched ^= low
    return bits


def decide(policy: CompiledPolicy, req: Request) -> tuple[CompiledRule, Entry, tuple[str, ...], int, bool] | None:
    """Fast path: (rule, model, fallbacks, matched-pattern mask, scanned) or None when nothing routes."""
    rules = policy.rules
    attrs, tokens = req.attrs, req.tokens
    m = policy.unguarded
    for name, table, every in policy.attr_index:
        v = attrs.get(name, MISSING) if "." not in name else get_attr(attrs, name)
        if v is not MISSING:
            try:
                bits = table.get(v)
            except TypeError:  # unhashable value: try every rule guarded on this attribute
                bits = every
            if bits:
                m |= bits
    matcher = policy.matcher
    scanned = matcher is None
    matched = 0
    first = policy.first_pattern_rule
    while True:
        if not m:
            if scanned:
                return None
            matched, scanned = matcher.scan(req.text), True  # type: ignore[union-attr]
            m = pattern_bits(policy, matched)
            continue
        low = m & -m
        i = low.bit_length() - 1
        rule = rules[i]
        if not scanned and (i >= first or rule.needs_scan):
            matched, scanned = matcher.scan(req.text), True  # type: ignore[union-attr]
            m |= pattern_bits(policy, matched)
            continue
        m ^= low
        cond = rule.cond
        if cond is not None:
            try:
                if not cond(matched, tokens, attrs):
                    continue
            except TypeError:  # a comparison between mismatched types: that comparison is false
                if not _cond_value(rule, rule.node.cond, matched, tokens, attrs, None, 0):
                    continue
        sel = rule.selector
        chosen = sel.pick(req)
        if chosen is None and req.unavailable and sel.fallbacks:
            chosen = promote_fallback(sel, req)
        if chosen is not None:
            fallbacks = sel.viable_fallbacks(req, chosen) if sel.fallbacks else ()
            return rule, chosen, fallbacks, matched, scanned


def promote_fallback(sel: Selector, req: Request) -> Entry | None:
    """When a rule's pick is only out because its circuit is open, its first viable fallback stands in."""
    free = Request(
        req.text,
        req.tokens,
        req.attrs,
        req.need_tools,
        req.need_vision,
        req.out_tokens,
        frozenset(),
        req.state,
        req.latency,
    )
    blocked = sel.pick(free) if not sel.stateful else next(iter(sel.rank(free)[0]), None)
    if blocked is None or blocked.name not in req.unavailable:
        return None
    for f in sel.fallbacks:
        if hard_reason(f, req) is None:
            return f
    return None


# ---- traced evaluation (explain) -------------------------------------------------------------------


def _cond_value(
    rule: CompiledRule,
    node: n.Cond | None,
    matched: int,
    tokens: int,
    attrs: Any,
    out: list[Atom] | None,
    depth: int,
    policy: CompiledPolicy | None = None,
    text: str = "",
) -> bool:
    """Evaluate a condition atom by atom (every atom, for a complete trace); append Atoms to `out`."""
    if node is None:
        return True
    if isinstance(node, (n.And, n.Or, n.Not)):
        slot = len(out) if out is not None else 0
        if out is not None:
            out.append(Atom(depth=depth, text="", value=False))
        parts = node.operands if not isinstance(node, n.Not) else (node.operand,)
        values = [_cond_value(rule, p, matched, tokens, attrs, out, depth + 1, policy, text) for p in parts]
        if isinstance(node, n.And):
            value, word = all(values), "all of"
        elif isinstance(node, n.Or):
            value, word = any(values), "any of"
        else:
            value, word = not values[0], "not"
        if out is not None:
            out[slot] = Atom(depth=depth, text=word, value=value)
        return value
    try:
        value = bool(rule.atoms[id(node)](matched, tokens, attrs))
        note = None
    except TypeError:
        value, note = False, "type mismatch: the comparison is false"
    if out is not None:
        shown, extra = _describe_atom(node, matched, tokens, attrs, policy, text)
        out.append(Atom(depth=depth, text=shown, value=value, note=note or extra))
    return value


def _describe_atom(
    node: n.Cond, matched: int, tokens: int, attrs: Any, policy: CompiledPolicy | None, text: str
) -> tuple[str, str | None]:
    if isinstance(node, n.TaskMatch):
        shown = f"task ~ {_pattern(node.pattern)}"
        hit = _first_hit(policy, node.pattern, text) if policy else None
        return shown, (f'matched "{hit}"' if hit is not None else None)
    if isinstance(node, n.TaskIs):
        note = None
        if policy is not None:
            mask = policy.tasks[node.name] & matched
            if mask:
                pid = (mask & -mask).bit_length() - 1
                hit = policy.matcher.first_match(pid, text) if policy.matcher else None
                note = f'{policy.pattern_text[pid]} matched "{hit}"'
        return f"task is {node.name}", note
    if isinstance(node, (n.Compare, n.InList, n.Truthy)):
        operand = node.operand if isinstance(node, n.Truthy) else node.left
        actual: Any = tokens if operand.builtin else get_attr(attrs, operand.name)
        shown_actual = "missing" if actual is MISSING else _show(actual)
        if isinstance(node, n.Truthy):
            return f"{operand.name} {shown_actual}", (f"{operand.name} was not passed" if actual is MISSING else None)
        if isinstance(node, n.Compare):
            right = fmt_value(node.right.kind, node.right.value) if not operand.builtin else f"{node.right.value:g}"  # type: ignore[union-attr]
            shown = f"{operand.name} {shown_actual} {node.op} {right}"
        else:
            items = ", ".join(fmt_value(i.kind, i.value) for i in node.right.items)
            shown = f"{operand.name} {shown_actual} in [{items}]"
        return shown, (
            f"{operand.name} was not passed: every comparison with it is false" if actual is MISSING else None
        )
    return str(node), None


def _first_hit(policy: CompiledPolicy, pattern: n.Pattern, text: str) -> str | None:
    shown = _pattern(pattern)
    if policy.matcher is None or shown not in policy.pattern_text:
        return None
    pid = policy.pattern_text.index(shown)
    if not policy.matcher.scan(text) >> pid & 1:
        return None
    return policy.matcher.first_match(pid, text)


def _pattern(p: n.Pattern) -> str:
    return f"/{p.source}/{p.flags}" if p.is_regex else f'"{p.source}"'


def _show(v: Any) -> str:
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    return repr(v)


def _candidates(rule: CompiledRule, req: Request, chosen: Entry | None, policy: CompiledPolicy) -> list[Candidate]:
    sel = rule.selector
    viable, rejected = sel.rank(req)
    out = []
    for rank, e in enumerate(viable, 1):
        status: CandidateStatus = "chosen" if e is chosen else "eligible"
        out.append(
            Candidate(
                model=e.name,
                provider=e.provider,
                status=status,
                rank=rank,
                scores=[r.shown(e, req) for r in sel.rankings],
            )
        )
    for e, why in [*rejected, *sel.static_rejects]:
        out.append(
            Candidate(
                model=e.name,
                provider=e.provider,
                status="rejected",
                reason=why,
                scores=[r.shown(e, req) for r in sel.rankings],
            )
        )
    if sel.kind == "use":
        named = sel.use.name if sel.use else ""
        for e in policy.models.values():
            if e.name != named:
                out.append(
                    Candidate(model=e.name, provider=e.provider, status="not named", reason=f"the rule uses {named}")
                )
    return out


def trace(
    policy: CompiledPolicy, req: Request, elapsed_us: float | None = None, chosen: tuple[int, str] | None = None
) -> Report:
    """Evaluate every rule in order, recording each condition atom and every model's fate.

    `chosen` is (rule index, model) of a decision already made: balance and split pick by state or chance,
    so the trace reports that pick instead of drawing again."""
    matched = policy.matcher.scan(req.text) if policy.matcher else 0
    tasks = [name for name, mask in policy.tasks.items() if mask & matched]
    traces: list[RuleTrace] = []
    decided: tuple[CompiledRule, Entry] | None = None
    for rule in policy.rules:
        atoms: list[Atom] = []
        ok = _cond_value(rule, rule.node.cond, matched, req.tokens, req.attrs, atoms, 0, policy, req.text)
        ref = RuleRef(index=rule.index, file=rule.file, line=rule.line, col=rule.span.col, text=rule.text)
        if not ok:
            traces.append(RuleTrace(rule=ref, matched=False, outcome="no match", conditions=atoms))
            continue
        sel = rule.selector
        if sel.stateful:
            viable, _ = sel.rank(req)
            pick = viable[0] if viable else None
            if pick is not None and chosen is not None and chosen[0] == rule.index:
                pick = policy.models[chosen[1]]
        else:
            pick = sel.pick(req)
        note = None
        if pick is None and req.unavailable and sel.fallbacks:
            pick = promote_fallback(sel, req)
            if pick is not None:
                note = f"its pick is unavailable (circuit open): fallback {pick.name} stands in"
        cands = _candidates(rule, req, pick, policy)
        outcome: RuleOutcome = "decided" if pick is not None else "no viable model"
        traces.append(RuleTrace(rule=ref, matched=True, outcome=outcome, conditions=atoms, candidates=cands, note=note))
        if pick is not None:
            decided = (rule, pick)
            break
    report = Report(
        policy=policy.entry,
        policy_version=policy.version,
        tokens=req.tokens,
        prompt_chars=len(req.text),
        tasks=tasks,
        attrs={k: _jsonable(v) for k, v in req.attrs.items()},
        rules=traces,
        rules_not_reached=len(policy.rules) - len(traces),
        elapsed_us=elapsed_us,
    )
    if decided is not None:
        rule, winner = decided
        sel = rule.selector
        report.model, report.provider = winner.name, winner.provider
        report.rule = traces[-1].rule
        report.ranking = [r.label for r in sel.rankings]
        report.strategy = sel.kind if sel.kind in ("race", "consensus", "best_of", "balance", "split") else None
        if sel.kind in ("race", "consensus", "best_of"):
            report.group = list(sel.group(req))
            report.judge = sel.judge.name if sel.judge is not None else None
        report.candidates = traces[-1].candidates
        report.fallbacks = list(sel.viable_fallbacks(req, winner))
        for f in sel.fallbacks:
            why = "is the chosen model" if f is winner else hard_reason(f, req)
            report.fallback_checks.append(FallbackCheck(model=f.name, status="skipped" if why else "kept", reason=why))
    return report


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return repr(v)
