"""The decision core's single sources: the hard-constraint check and its coded reasons, selectors per action
kind, index guards, exhaustive dispatch over condition kinds, and the public result types."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import engine.compiler.codegen as codegen
import engine.runtime.traced as evaluate  # the traced path (explain) holds the per-condition cases
import engine.tools.conditions as conditions
from engine import Engine
from engine.compiler.actions import BUILDERS
from engine.language import nodes as n
from engine.runtime.constraints import Code, CostLimit, Reason, check, violation
from engine.runtime.decision import RuleSource
from engine.runtime.policy import Entry, Request
from engine.runtime.selectors import (
    BalanceSelector,
    BestOfSelector,
    CheapestPrefer,
    SplitSelector,
    StaticPrefer,
    UseSelector,
)


@dataclass
class _Spec:
    id: str = "x"


def _entry(name: str, context: int = 1000, tools: bool = True, vision: bool = True, ip: float = 1e-6) -> Entry:
    return Entry(name, "p", context, ip, 2 * ip, 100.0, tools, vision, _Spec())


def _req(tokens: int = 10, tools: bool = False, vision: bool = False, unavailable: frozenset = frozenset()) -> Request:
    return Request("hi", tokens, {}, tools, vision, 100.0, unavailable)


@pytest.mark.parametrize(
    ("entry", "req", "code", "text"),
    [
        (_entry("a", context=5), _req(tokens=10), Code.CONTEXT, "context 5 < 10 tokens"),
        (_entry("a", tools=False), _req(tools=True), Code.TOOLS, "no tools support (request has tools)"),
        (_entry("a", vision=False), _req(vision=True), Code.VISION, "no vision support (request has images)"),
        (_entry("a"), _req(unavailable=frozenset({"a"})), Code.UNAVAILABLE, "unavailable (circuit open)"),
    ],
)
def test_each_hard_constraint_has_a_code_and_its_text(entry: Entry, req: Request, code: Code, text: str) -> None:
    assert violation(entry, req) is code
    assert check(entry, req) == Reason(code, text)
    assert str(check(entry, req)) == text and str(code) == code.value


def test_the_first_broken_constraint_wins_and_a_fit_model_has_no_reason() -> None:
    both = _entry("a", context=5, tools=False)
    assert violation(both, _req(tokens=10, tools=True)) is Code.CONTEXT
    assert violation(_entry("a"), _req()) is None and check(_entry("a"), _req()) is None


def test_cost_limits_are_part_of_the_same_check() -> None:
    dear = _entry("dear", ip=1.0)
    limit = CostLimit("<", 0.01, "$0.01")
    assert violation(dear, _req(), (limit,)) is Code.COST
    why = check(dear, _req(), (limit,))
    assert why is not None and why.code is Code.COST and why.text.endswith(">= $0.01")
    assert violation(_entry("cheap", ip=1e-9), _req(), (limit,)) is None


def test_selection_explain_and_fallbacks_agree_with_the_check() -> None:
    small, big, blind = _entry("small", context=5), _entry("big"), _entry("blind", vision=False)
    sel = StaticPrefer(pool=(big, blind, small), fallbacks=(big, blind, small))  # no rankings: name order
    for req in (_req(tokens=10), _req(vision=True), _req(tokens=2), _req(unavailable=frozenset({"big"}))):
        viable, rejected = sel.rank(req)
        expect = [e for e in sel.pool if violation(e, req) is None]
        assert viable == expect
        assert sel.pick(req) == (expect[0] if expect else None)
        assert [(e, why) for e, why in rejected] == [(e, check(e, req)) for e in sel.pool if e not in expect]
        chosen = expect[0] if expect else small
        assert sel.viable_fallbacks(req, chosen) == tuple(e.name for e in expect if e is not chosen)


def test_selectors_are_one_class_per_action_kind() -> None:
    a, b = _entry("a"), _entry("b")
    assert UseSelector(pool=(a,), use=a).pick(_req()) is a
    assert UseSelector(pool=(a,), use=a).pick(_req(unavailable=frozenset({"a"}))) is None
    assert BalanceSelector(pool=(a, b), mode="round_robin").pick(_req()) is a  # no state: position 0
    split = SplitSelector(pool=(a, b), weights=(0.0, 1.0), key="k")
    assert split.pick(_req()) is b
    judge = BestOfSelector(pool=(a, b), judge=b)
    assert (judge.kind, judge.judge, judge.group(_req(unavailable=frozenset({"a"})))) == ("best_of", b, ("b",))
    assert {s.kind for s in (UseSelector, StaticPrefer, CheapestPrefer, BalanceSelector, SplitSelector)} == {
        "use",
        "prefer",
        "balance",
        "split",
    }
    assert set(BUILDERS) == {"use", "prefer"} | n.GROUP_ACTIONS
    assert n.GROUP_ACTIONS == n.PICK_GROUPS | n.FANOUT_GROUPS


def test_compiled_selectors_have_the_right_class(write_policy: Callable[..., Path]) -> None:
    policy = write_policy(
        'catalog "catalog.yaml"\n'
        'when tier == "a" use alpha-mini\n'
        'when tier == "b" prefer cheapest\n'
        'when tier == "c" prefer capability(coding)\n'
        'when tier == "d" balance round_robin [alpha-mini, beta-chat]\n'
        "otherwise race [alpha-mini, beta-chat]\n"
    )
    rules = Engine.load(policy / "main.route").policy.rules
    assert [type(r.selector).__name__ for r in rules] == [
        "UseSelector",
        "CheapestPrefer",
        "StaticPrefer",
        "BalanceSelector",
        "RaceSelector",
    ]


def test_index_guards_cover_or_across_attributes_and_negations() -> None:
    """Every condition shape gets a guard (issue 15): `or` is the union of its operands' keys, `and` the most
    selective operand's, `not` an exclusion; tests/test_index.py and the differential test check decisions."""
    from engine.runtime.index_keys import Eq, Guard, NotIn

    span = n.Span("f", 1, 1, 1, 1)

    def eq(name: str, value: str) -> n.Compare:
        return n.Compare(n.Operand(name, False, span), "==", n.Literal("string", value, f'"{value}"', span), span)

    gen = codegen._Gen({}, {})
    assert codegen.guard(n.Or((eq("tier", "a"), eq("tier", "b")), span), gen) == Guard(
        frozenset({Eq("tier", "a"), Eq("tier", "b")})
    )
    assert codegen.guard(n.Or((eq("tier", "a"), eq("plan", "b")), span), gen) == Guard(
        frozenset({Eq("tier", "a"), Eq("plan", "b")})
    )
    assert codegen.guard(n.And((eq("tier", "a"), eq("plan", "b")), span), gen) == Guard(frozenset({Eq("tier", "a")}))
    assert codegen.guard(n.Not(eq("tier", "a"), span), gen) == Guard(frozenset({NotIn("tier", frozenset({"a"}))}))


def test_every_stage_has_a_case_for_every_condition_kind() -> None:
    kinds = set(n.CONDITIONS)
    assert set(codegen._EXPR) == kinds and set(codegen._GUARD) == kinds
    assert set(evaluate._DESCRIBE) | set(evaluate._COMBINE) == kinds
    with pytest.raises(TypeError, match="stage x has no case for: Or"):
        n.exhaustive({k: None for k in n.CONDITIONS if k is not n.Or}, "stage x")


@pytest.mark.parametrize("module", [codegen, evaluate, conditions])
def test_a_new_condition_kind_without_a_case_fails_at_import(monkeypatch: pytest.MonkeyPatch, module: object) -> None:
    @dataclass(frozen=True)
    class Regexish:
        span: n.Span

    monkeypatch.setattr(n, "CONDITIONS", (*n.CONDITIONS, Regexish))
    path = getattr(module, "__file__", "")
    spec = importlib.util.spec_from_file_location("stage_under_test", path)
    assert spec is not None and spec.loader is not None
    fresh = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "stage_under_test", fresh)  # its dataclasses look their module up
    with pytest.raises(TypeError, match="no case for: Regexish"):
        spec.loader.exec_module(fresh)


def test_decision_rule_is_a_public_reference_and_json_is_a_string(write_policy: Callable[..., Path]) -> None:
    policy = write_policy('catalog "catalog.yaml"\nwhen tier == "x" use beta-chat\notherwise use alpha-mini\n')
    d = Engine.load(policy / "main.route").decide("hello", tier="x")
    assert isinstance(d.rule, RuleSource) and dataclasses.is_dataclass(d.rule)
    assert (Path(d.rule.file).name, d.rule.line, d.rule.col, d.rule.index) == ("main.route", 2, 1, 0)
    assert d.rule.text == 'when tier == "x" use beta-chat' and str(d.rule).endswith("main.route:2")
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.rule.line = 3  # type: ignore[misc]
    text = d.to_json()
    assert isinstance(text, str) and json.loads(text) == d.model_dump()
    assert {"model", "provider", "rule", "candidates", "fallback_checks", "rules", "policy_version"} <= set(
        d.model_dump()
    )


def test_rejected_candidates_carry_the_reason_code(write_policy: Callable[..., Path]) -> None:
    policy = write_policy('catalog "catalog.yaml"\notherwise prefer cheapest where context >= 100k\n')
    data = Engine.load(policy / "main.route").decide("hello", tools=True).model_dump()
    rejected = [c for c in data["candidates"] if c["status"] == "rejected"]
    assert rejected and all(c["code"] in {code.value for code in Code} for c in rejected)
    # the rule's `where context` is not the prompt overflowing the window: each has its own code
    assert {c["code"] for c in rejected} >= {"context_limit"} and "context" not in {c["code"] for c in rejected}
