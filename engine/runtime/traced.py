"""Traced evaluation (explain): a CompiledPolicy and a Request in, a Report of every rule's conditions, atom by atom,
and every model's fate out.

It evaluates every rule in order and records why each model won or lost; tests check it always agrees with the
fast path, engine/runtime/evaluate.py `decide`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from engine.language import nodes as n
from engine.runtime.constraints import check
from engine.runtime.functions import Failed
from engine.runtime.jsoninput import MAX_JSON_DEPTH
from engine.runtime.limits import shown_value
from engine.runtime.policy import MISSING, CompiledPolicy, CompiledRule, Entry, Request, get_attr
from engine.runtime.report import (
    Atom,
    Candidate,
    CandidateStatus,
    FallbackCheck,
    Report,
    RuleOutcome,
    RuleRef,
    RuleTrace,
    Similar,
)
from engine.runtime.semantic import similarity_of, state_of
from engine.runtime.units import fmt_value

if TYPE_CHECKING:
    from engine.runtime.selectors import Selector

__all__ = ["cond_value", "stand_in_reason", "trace"]


def stand_in_reason(sel: Selector, req: Request, chosen: Entry) -> str:
    """Why fallback `chosen` stands in for the rule's pick: what keeps the rule's first model (within its `where`
    limits) from serving the request."""
    limits = sel.cost_limits
    blocked = next((e for e in sel.pool if all(c.allows(e, req) for c in limits)), None)
    why = check(blocked, req) if blocked is not None else None
    if blocked is None or why is None:
        return f"fallback {chosen.name} stands in: no model of the rule can serve the request"
    if sel.kind == "use":
        return f"fallback {chosen.name} stands in for {blocked.name}: {why.text}"
    return f"fallback {chosen.name} stands in: no model of the rule can serve the request ({blocked.name}: {why.text})"


def cond_value(
    rule: CompiledRule,
    node: n.Cond | None,
    matched: int,
    tokens: int,
    attrs: Any,
    out: list[Atom] | None,
    depth: int,
    policy: CompiledPolicy | None = None,
    text: str = "",
    req: Request | None = None,
) -> bool:
    """Evaluate a condition atom by atom (every atom, for a complete trace); append Atoms to `out`. `req` is
    what function calls read (without it, a call has no value)."""
    if node is None:
        return True
    combine = _COMBINE.get(type(node))
    if combine is not None:
        slot = len(out) if out is not None else 0
        if out is not None:
            out.append(Atom(depth=depth, text="", value=False))
        parts = (node.operand,) if isinstance(node, n.Not) else node.operands  # type: ignore[union-attr]
        word, fold = combine
        value = fold([cond_value(rule, p, matched, tokens, attrs, out, depth + 1, policy, text, req) for p in parts])
        if out is not None:
            out[slot] = Atom(depth=depth, text=word, value=value)
        return value
    try:
        value = bool(rule.atoms[id(node)](matched, tokens, attrs, req))
        note = None
    except TypeError:
        value, note = False, "type mismatch: the comparison is false"
    except ArithmeticError:  # e.g. decimal.InvalidOperation: a Decimal NaN compared in order
        value, note = False, "not a comparable number: the comparison is false"
    if out is not None:
        shown, extra = _DESCRIBE[type(node)](node, _Seen(matched, tokens, attrs, policy, text, req))
        if extra is not None and (note is None or extra.startswith(_CALLED)):
            note = extra  # a function call's value (or failure) says more than a type mismatch
        out.append(Atom(depth=depth, text=shown, value=value, note=note))
    return value


class _Seen(NamedTuple):
    """What describing an atom may look at: the matched-pattern mask, the request and the policy."""

    matched: int
    tokens: int
    attrs: Any
    policy: CompiledPolicy | None
    text: str
    req: Request | None = None


def _task_match(node: Any, seen: _Seen) -> tuple[str, str | None]:
    hit = _first_hit(seen.policy, node.pattern, seen.text) if seen.policy else None
    return f"task ~ {_pattern(node.pattern)}", (f'matched "{hit}"' if hit is not None else None)


def _task_is(node: Any, seen: _Seen) -> tuple[str, str | None]:
    note, policy = None, seen.policy
    if policy is not None:
        mask = policy.tasks[node.name] & seen.matched
        if mask:
            pid = (mask & -mask).bit_length() - 1
            hit = policy.matcher.first_match(pid, seen.text) if policy.matcher else None
            note = f'{policy.pattern_text[pid]} matched "{hit}"'
        elif node.name in policy.semantic and seen.req is not None:
            near = state_of(seen.req).nearest(policy.semantic[node.name])
            if near.index < 0:  # no text to compare, or the embedder failed: Near.note says which
                note = f"by meaning: {near.note}"
            else:
                op = ">=" if near.hit else "<"
                note = f"by meaning: {_nearest(near)} {near.score:.3f} {op} {near.threshold:g}"
    return f"task is {node.name}", note


def _cut(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _nearest(near: Any) -> str:
    """`nearest example 2 "..."` (the example quoted as JSON: quotes and tabs escaped), or why there is none."""
    if near.index < 0:
        return str(near.note)
    return f"nearest example {near.index + 1} {json.dumps(_cut(near.example), ensure_ascii=False)}"


#: How a note on a function call starts (it wins over a type-mismatch note: it says more).
_CALLED = "called "


def _call_of(operand: n.Operand, seen: _Seen) -> Any:
    """A function call's value for the traced request (Failed when it has none; None when it was not called)."""
    return seen.req.calls.get(operand.name) if seen.req is not None and seen.req.calls else None


def _actual(operand: n.Operand, seen: _Seen) -> tuple[Any, str]:
    actual: Any
    if operand.task is not None:
        task = seen.policy.semantic.get(operand.task) if seen.policy is not None else None
        if task is None or seen.req is None:
            return MISSING, "(no value)"
        actual = similarity_of(seen.req, task)
        return (MISSING, "(no value)") if actual != actual else (actual, f"{actual:.3f}")  # NaN: the embedder failed
    if operand.call:
        actual = _call_of(operand, seen)
        return (MISSING, "(no value)") if actual is None or isinstance(actual, Failed) else (actual, _show(actual))
    actual = seen.tokens if operand.builtin else get_attr(seen.attrs, operand.name)
    return actual, "missing" if actual is MISSING else _show(actual)


def _not_passed(
    operand: n.Operand, actual: Any, seen: _Seen, then: str = ": every comparison with it is false"
) -> str | None:
    """The note of an atom on an operand: a function call's value (or why it has none), a missing attribute, a
    similarity's nearest example."""
    if operand.task is not None:
        task = seen.policy.semantic.get(operand.task) if seen.policy is not None else None
        if task is None or seen.req is None:
            return None
        return _nearest(state_of(seen.req).nearest(task))
    if operand.call:
        value = _call_of(operand, seen)
        if isinstance(value, Failed):
            return f"{_CALLED}{operand.name}(): it {value.why}, so the condition is false"
        return f"{_CALLED}{operand.name}() = {_show(value)}" if value is not None else None
    return f"{operand.name} was not passed{then}" if actual is MISSING else None


def _shown_name(operand: n.Operand) -> str:
    if operand.task is not None:
        return f"{operand.name}({operand.task})"
    return f"{operand.name}()" if operand.call else operand.name


def _truthy(node: Any, seen: _Seen) -> tuple[str, str | None]:
    actual, shown = _actual(node.operand, seen)
    return f"{_shown_name(node.operand)} {shown}", _not_passed(node.operand, actual, seen, then="")


def _compare(node: Any, seen: _Seen) -> tuple[str, str | None]:
    actual, shown = _actual(node.left, seen)
    plain = node.left.builtin or node.left.task is not None
    right = fmt_value(node.right.kind, node.right.value) if not plain else f"{node.right.value:g}"
    return f"{_shown_name(node.left)} {shown} {node.op} {right}", _not_passed(node.left, actual, seen)


def _in_list(node: Any, seen: _Seen) -> tuple[str, str | None]:
    actual, shown = _actual(node.left, seen)
    items = ", ".join(fmt_value(i.kind, i.value) for i in node.right.items)
    return f"{_shown_name(node.left)} {shown} in [{items}]", _not_passed(node.left, actual, seen)


#: How explain shows each condition atom, and how it folds each combinator's operands.
_DESCRIBE: dict[type, Callable[[Any, _Seen], tuple[str, str | None]]] = {
    n.TaskMatch: _task_match,
    n.TaskIs: _task_is,
    n.Truthy: _truthy,
    n.Compare: _compare,
    n.InList: _in_list,
}
_COMBINE: dict[type, tuple[str, Callable[[list[bool]], bool]]] = {
    n.And: ("all of", all),
    n.Or: ("any of", any),
    n.Not: ("not", lambda values: not values[0]),
}
n.exhaustive({**_DESCRIBE, **_COMBINE}, "explain")


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
    return shown_value(v)  # never raises: an int of 5000 digits, a cyclic or 5000-deep list


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
                reason=why.text,
                code=why.code.value,
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
        ok = cond_value(rule, rule.node.cond, matched, req.tokens, req.attrs, atoms, 0, policy, req.text, req)
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
        notes = sel.notes(req)  # e.g. a `where` limit on a request attribute that does not apply, and why
        if pick is None and sel.fallbacks:
            pick = sel.stand_in(req)
            if pick is not None:
                notes.insert(0, stand_in_reason(sel, req, pick))
        note = "; ".join(notes) or None
        cands = _candidates(rule, req, pick, policy)
        outcome: RuleOutcome = "decided" if pick is not None else "no viable model"
        traces.append(RuleTrace(rule=ref, matched=True, outcome=outcome, conditions=atoms, candidates=cands, note=note))
        if pick is not None:
            decided = (rule, pick)
            break
    semantic = _semantic(policy, req, matched)
    near = {s.task for s in semantic if s.matched_by == "meaning"}
    report = Report(
        policy=policy.entry,
        policy_version=policy.version,
        tokens=req.tokens,
        prompt_chars=len(req.text),
        tasks=[name for name in policy.tasks if name in tasks or name in near],
        semantic=semantic,
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
        report.strategy = sel.kind if sel.grouped else None
        if sel.kind in n.FANOUT_GROUPS:
            report.group = list(sel.group(req))
            report.judge = sel.judge.name if sel.judge is not None else None
        report.candidates = traces[-1].candidates
        report.fallbacks = list(sel.viable_fallbacks(req, winner))
        for f in sel.fallbacks:
            out = check(f, req)
            why = "is the chosen model" if f is winner else (out.text if out is not None else None)
            report.fallback_checks.append(FallbackCheck(model=f.name, status="skipped" if why else "kept", reason=why))
    return report


def _semantic(policy: CompiledPolicy, req: Request, matched: int) -> list[Similar]:
    """Each semantic task's nearest example for the request (explain shows them all, so the request is embedded
    here if decide() did not need to: once, shared through the request's semantic state)."""
    out = []
    for name, task in policy.semantic.items():
        near = state_of(req).nearest(task)
        how = "pattern" if policy.tasks[name] & matched else "meaning" if near.hit else "no"
        out.append(
            Similar(
                task=name,
                example=near.example,
                index=near.index,
                score=None if near.score != near.score else round(near.score, 6),  # NaN: embedder failed
                threshold=near.threshold,
                matched_by=how,  # type: ignore[arg-type]
            )
        )
    return out


def _jsonable(v: Any, depth: int = 0, open_ids: frozenset[int] = frozenset()) -> Any:
    """An attribute value as JSON data: lists, tuples and dicts as deep as JSON input may nest (MAX_JSON_DEPTH: what
    the CLI and the gateway accept comes back whole; deeper, or holding themselves: "[...]" / "{...}" there), an int
    too long to write out (and any other value) as shown_value text."""
    if v is None or isinstance(v, (str, float, bool)):
        return v
    if isinstance(v, int):
        shown = shown_value(v) if v.bit_length() > 10_000 else ""  # below that, any int can be written out
        return shown if shown.startswith("<") else v
    if isinstance(v, (list, tuple, dict)):
        if depth >= MAX_JSON_DEPTH or id(v) in open_ids:  # too deep, or a cycle
            return "{...}" if isinstance(v, dict) else "[...]"
        inner = open_ids | {id(v)}
        if isinstance(v, dict):
            return {_key(k): _jsonable(x, depth + 1, inner) for k, x in v.items()}
        return [_jsonable(x, depth + 1, inner) for x in v]
    return shown_value(v)


def _key(k: Any) -> str:
    try:
        return str(k)
    except Exception:  # an int of 5000 digits, a key whose __str__ fails
        return shown_value(k)
