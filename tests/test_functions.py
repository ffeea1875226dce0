"""Python extension points in the language (issue 17): `Engine.load(functions=...)` makes `complexity()` usable in
conditions and in `score(...)`, `Engine.load(rankers=...)` makes `prefer custom(NAME)` rank by a Python function.
One call per function (and per ranker and model) per request; an exception makes a condition false, a score
unknown, a ranked model last, is logged once per policy version, and explain shows it. Unknown and missing names
are compile errors (golden files), an async function a TypeError at load."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest

from engine import Engine, NoRouteError, PolicyError
from engine.compiler.passes import compile_loaded
from engine.language.fmt import format_source
from engine.language.load import load_source
from engine.runtime.functions import RequestView
from providers.catalog.loader import load_catalog

HERE = Path(__file__).resolve().parent
CATALOG = load_catalog(HERE / "fixtures" / "policies" / "catalog.yaml")
DIAG = HERE / "golden" / "diagnostics"


class Counted:
    """A policy function that counts its calls and returns `value(request)`."""

    def __init__(self, value: Any):
        self.value, self.calls = value, 0

    def __call__(self, request: RequestView) -> Any:
        self.calls += 1
        return self.value(request) if callable(self.value) else self.value


def boom(request: RequestView) -> bool:
    raise ValueError("no model for that")


def engine(text: str, **kw: Any) -> Engine:
    return Engine.from_source(text, file="fn.route", catalog=CATALOG, **kw)


# ---- conditions ----------------------------------------------------------------------------------------------


def test_a_function_in_a_condition_is_called_once_per_request() -> None:
    complexity = Counted(lambda r: len(r.text.split()))
    e = engine(
        "when complexity() > 5 use alpha-large\n"
        "when complexity() in [3, 4] use beta-coder\n"
        "when complexity() use beta-chat\n"
        "otherwise use alpha-mini\n",
        functions={"complexity": complexity},
    )
    assert e.decide("one two three four five six seven").model == "alpha-large"
    d = e.decide("one two three")
    assert d.model == "beta-coder" and complexity.calls == 2
    d.report()  # the traced evaluation reuses the request's value
    assert complexity.calls == 2
    assert e.decide("one").model == "beta-chat"
    assert e.decide("").model == "alpha-mini"  # 0 is falsy
    assert complexity.calls == 4


def test_a_truthy_function_and_not() -> None:
    e = engine(
        "when is_urgent() use gamma-flash\nwhen not is_urgent() use beta-chat\n",
        functions={"is_urgent": lambda r: r.attrs.get("priority") == "high"},
    )
    assert e.decide("x", priority="high").model == "gamma-flash"
    assert e.decide("x", priority="low").model == "beta-chat"


def test_the_request_view_is_read_only_and_complete() -> None:
    seen: list[RequestView] = []

    def look(request: RequestView) -> int:
        seen.append(request)
        return 1

    e = engine("when look() == 1 use beta-chat\n", functions={"look": look})
    e.decide("hello there", tier="pro")
    view = seen[-1]
    assert (view.text, view.tokens, view.attrs["tier"]) == ("hello there", 3, "pro")
    assert [dict(m) for m in view.messages] == [{"role": "user", "content": "hello there"}]
    with pytest.raises(TypeError):
        view.attrs["tier"] = "free"  # type: ignore[index]
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    e.decide(messages=messages)
    assert [m["role"] for m in seen[-1].messages] == ["system", "user"]
    with pytest.raises(TypeError):
        seen[-1].messages[0]["role"] = "user"  # type: ignore[index]


def test_an_exception_makes_the_condition_false_is_logged_once_and_explained(caplog) -> None:
    e = engine(
        "when boom() use alpha-large\nwhen boom() > 1 use beta-coder\notherwise use alpha-mini\n",
        functions={"boom": boom},
    )
    with caplog.at_level(logging.WARNING, logger="modelroute.functions"):
        for _ in range(3):
            d = e.decide("hi")
            assert d.model == "alpha-mini"
    logged = [r for r in caplog.records if r.name == "modelroute.functions"]
    assert len(logged) == 1 and "boom() raised ValueError: no model for that" in logged[0].getMessage()
    atoms = [a for t in d.report().rules for a in t.conditions]
    assert atoms[0].value is False and "raised ValueError: no model for that" in (atoms[0].note or "")
    assert "boom() (no value) > 1" in atoms[1].text
    text = d.explain()
    assert "boom(): it raised ValueError: no model for that, so the condition is false" in text


def test_a_value_that_is_not_a_bool_or_a_number_is_a_failure() -> None:
    e = engine("when f() == 1 use alpha-large\notherwise use alpha-mini\n", functions={"f": lambda r: "1"})
    d = e.decide("hi")
    assert d.model == "alpha-mini"
    assert "returned str, not a bool or a number" in (d.report().rules[0].conditions[0].note or "")


def test_explain_shows_each_calls_value() -> None:
    e = engine(
        "when complexity() > 50 use alpha-large\notherwise use alpha-mini\n", functions={"complexity": lambda r: 72}
    )
    atom = e.decide("hi").report().rules[0].conditions[0]
    assert (atom.text, atom.value, atom.note) == ("complexity() 72 > 50", True, "called complexity() = 72")


def test_a_condition_on_a_function_is_never_indexed() -> None:
    e = engine(
        'when complexity() > 50 use alpha-large\nwhen complexity() > 50 and tier == "pro" use beta-coder\n'
        "otherwise use alpha-mini\n",
        functions={"complexity": lambda r: 10},
    )
    assert 0 in e.policy.unguarded  # always tried
    assert 1 not in e.policy.unguarded  # the attribute test beside it guards the rule


# ---- scores ---------------------------------------------------------------------------------------------------


def test_a_function_in_a_score_adds_its_value_and_a_failure_ranks_last() -> None:
    text = "otherwise prefer score(capability(CODING) + 2 * bonus()) then cheapest among [alpha-mini, beta-coder]\n"
    d = engine(text, functions={"bonus": lambda r: 1.5}).decide("hi")
    assert d.model == "beta-coder"
    shown = next(c for c in d.candidates if c.model == "beta-coder").scores[0]
    assert shown == "score 13 = +10 (1 x CODING 10) +3 (2 x bonus() 1.5)"
    d = engine(text, functions={"bonus": boom}).decide("hi")
    # every score is unknown: all rank last alike, so the next ranking decides
    assert d.model == "alpha-mini"
    shown = next(c for c in d.candidates if c.model == "beta-coder").scores[0]
    assert shown.startswith("score unknown = ") and "bonus() raised ValueError" in shown


# ---- rankers --------------------------------------------------------------------------------------------------


def by_price(request: RequestView, model: Any) -> float:
    """Higher is better: the cheaper the input, the higher."""
    return -model.input_price * 1e6


def test_prefer_custom_ranks_by_the_ranker_with_then_among_where_fallback() -> None:
    calls: list[str] = []

    def quality(request: RequestView, model: Any) -> float:
        calls.append(model.name)
        return {"alpha-mini": 1.0, "beta-chat": 1.0, "gamma-flash": 3.0, "alpha-large": 9.0}.get(model.name, 0.0)

    e = engine(
        "when r == 1 prefer custom(quality) then cheapest among [alpha-mini, beta-chat, gamma-flash]\n"
        "when r == 2 prefer custom(quality) where latency <= 1s fallback alpha-large\n"
        "when r == 3 prefer custom(price) among [alpha-large, beta-coder]\n",
        rankers={"quality": quality, "price": by_price},
    )
    d = e.decide("hi", r=1)
    assert d.model == "gamma-flash" and d.chain == ["gamma-flash", "beta-chat", "alpha-mini"]  # ties: cheapest
    assert sorted(calls) == ["alpha-mini", "beta-chat", "gamma-flash"]  # once per model and request
    d.report()
    assert len(calls) == 3
    d = e.decide("hi", r=2)
    assert d.model == "gamma-flash" and d.fallbacks == ["alpha-large"]  # alpha-large is slower than 1s
    assert e.decide("hi", r=3).model == "beta-coder"
    report = e.decide("hi", r=1).report()
    assert report.ranking == ["custom(quality)", "cheapest"]
    assert next(c for c in report.candidates if c.model == "gamma-flash").scores[0] == "custom(quality) 3"


def test_a_ranker_exception_ranks_that_model_last() -> None:
    def flaky(request: RequestView, model: Any) -> float:
        if model.name == "gamma-flash":
            raise RuntimeError("down")
        return 1.0 if model.name == "alpha-mini" else 0.5

    d = engine("otherwise prefer custom(flaky) among [alpha-mini, beta-chat, gamma-flash]\n", rankers={"flaky": flaky})
    decision = d.decide("hi")
    assert decision.chain == ["alpha-mini", "beta-chat", "gamma-flash"]
    shown = {c.model: c.scores[0] for c in decision.candidates}
    assert shown["gamma-flash"] == "custom(flaky) raised RuntimeError: down (ranks last)"


def test_no_route_when_the_ranked_rule_has_no_viable_model() -> None:
    e = engine("when tier == 1 prefer custom(p) among [alpha-mini] where latency <= 1ms\n", rankers={"p": by_price})
    with pytest.raises(NoRouteError):
        e.decide("hi", tier=1)


# ---- compile errors, load errors ---------------------------------------------------------------------------------


def _error(text: str, **kw: Any) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        compile_loaded(load_source(text, "policy.route"), CATALOG, **kw)
    return info.value


def test_unknown_function_and_ranker_say_what_was_meant(golden) -> None:
    err = _error(
        "when complexty() > 50 use alpha-large\notherwise prefer score(2 * complexity()) then custom(qualty)\n",
        functions={"complexity": lambda r: 1},
        rankers={"quality": by_price},
    )
    assert err.codes == ["E313", "E314"]
    assert "did you mean complexity?" in err.render() and "did you mean quality?" in err.render()
    golden(DIAG / "unknown_function_and_ranker.txt", err.render())


def test_a_policy_compiled_without_functions_names_the_missing_ones() -> None:
    err = _error("when complexity() > 50 prefer custom(quality)\n")
    assert err.codes == ["E313", "E314"]
    text = err.render()
    assert "function `complexity()` is not provided" in text and "ranker `quality` is not provided" in text
    assert "--functions module:NAME" in text


def test_an_async_function_is_a_type_error_at_load(golden) -> None:
    async def slow(request: RequestView) -> int:
        return 1

    with pytest.raises(TypeError) as info:
        Engine.from_source("when slow() use alpha-mini\n", catalog=CATALOG, functions={"slow": slow})
    golden(DIAG / "typeerror_async_function.txt", str(info.value))


# ---- reload, CLI, formatting --------------------------------------------------------------------------------------


def test_functions_and_rankers_survive_a_reload(tmp_path: Path) -> None:
    (tmp_path / "catalog.yaml").write_bytes((HERE / "fixtures" / "policies" / "catalog.yaml").read_bytes())
    main = tmp_path / "main.route"
    main.write_text('catalog "catalog.yaml"\nwhen big() use alpha-large\notherwise use alpha-mini\n')
    e = Engine.load(main, functions={"big": lambda r: r.tokens > 2}, rankers={"p": by_price})
    assert e.decide("a long enough prompt").model == "alpha-large"
    main.write_text('catalog "catalog.yaml"\nwhen big() prefer custom(p) among [alpha-large, beta-coder]\n')
    later = time.time() + 5
    os.utime(main, (later, later))
    assert e.reload(), e.last_error
    assert e.decide("a long enough prompt").model == "beta-coder"


def test_cli_check_and_explain_take_functions(tmp_path: Path, monkeypatch) -> None:
    from click.testing import CliRunner

    from engine.cli.app import main

    (tmp_path / "catalog.yaml").write_bytes((HERE / "fixtures" / "policies" / "catalog.yaml").read_bytes())
    (tmp_path / "main.route").write_text(
        'catalog "catalog.yaml"\n'
        "when hard() prefer custom(q) among [alpha-mini, beta-coder]\n"
        "otherwise use alpha-mini\n"
    )
    (tmp_path / "myrouting_fn.py").write_text(
        "FUNCTIONS = {'hard': lambda r: 'bug' in r.text}\nRANKERS = {'q': lambda r, m: m.capability('CODING') or 0}\n"
    )
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(main, ["check", "main.route"])
    assert result.exit_code == 1 and "function `hard()` is not provided" in result.output
    given = ["--functions", "myrouting_fn:FUNCTIONS", "--rankers", "myrouting_fn:RANKERS"]
    result = runner.invoke(main, ["check", "main.route", *given])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["explain", "-p", "main.route", "fix this bug", "--no-color", *given])
    assert result.exit_code == 0 and "beta-coder" in result.output and "called hard() = true" in result.output
    result = runner.invoke(main, ["check", "main.route", "--functions", "no_such_module_here:F"])
    assert result.exit_code == 2 and "cannot load no_such_module_here:F" in result.output


@pytest.mark.parametrize(
    "text",
    [
        "when complexity() > 50 and not is_urgent() use a\n",
        "when f() in [1, 2] or (g() and x) prefer custom(q) then cheapest among [a, b] where cost <= $1 fallback c\n",
        "otherwise prefer score(2 * complexity() - cost + f() * 3) then custom(mine)\n",
        "when custom == 1 and score > 2 use a\n",  # `custom` is a keyword only inside an action
    ],
)
def test_the_fast_parser_reads_calls_as_lark_does(text: str) -> None:
    from engine.language.fastparse import parse_fast
    from engine.language.parse import parse

    fast = parse_fast(text, "p.route")
    assert fast is not None and fast == parse(text, "p.route", fast=False).body


def test_fmt_writes_calls_as_one_word() -> None:
    text = "when complexity ( ) > 50 and not is_urgent( ) prefer custom( q ) then score(2 * f( ) - cost)\n"
    assert format_source(text) == (
        "when complexity() > 50 and not is_urgent() prefer custom(q) then score(2 * f() - cost)\n"
    )


# ---- explain shows a `where` limit that does not apply on the rule itself --------------------------------------------


def test_selector_notes_are_on_the_rule_trace() -> None:
    e = engine("otherwise prefer cheapest among [alpha-mini, beta-chat] where latency <= max_latency\n")
    rule = e.decide("hi", max_latency="fast").report().rules[0]
    assert rule.note is not None and "does not apply" in rule.note and "max_latency" in rule.note
