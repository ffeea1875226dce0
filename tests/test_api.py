"""The public Python API: `engine.__all__`, Engine.load, Decision fields, explain text (golden files) and its
JSON form, NoRouteError, thread-safety, import hygiene (no httpx), and a property test that the fast decide()
and the traced report always agree."""

from __future__ import annotations

import dataclasses
import datetime
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine
from engine import Decision, Engine, NoRouteError, PolicyError

FIXTURES = Path(__file__).parent / "fixtures" / "policies"
EXPLAIN = Path(__file__).parent / "golden" / "explain"
REPO = Path(__file__).resolve().parent.parent

CODE_PROMPT = "Implement a function that merges two sorted lists"


@pytest.fixture(scope="module")
def fx() -> Engine:
    """The fixture policy (tests/fixtures/policies/main.route + tasks.route, fixture catalog)."""
    return Engine.load(FIXTURES)


# ---- the public surface --------------------------------------------------------------------------------


def test_all_is_pinned() -> None:
    assert sorted(engine.__all__) == sorted(
        [
            "BudgetBook",
            "Decision",
            "Diagnostic",
            "Engine",
            "NoRouteError",
            "PinError",
            "PolicyError",
            "compile_policy",
            "compile_source",
        ]
    )
    for name in engine.__all__:
        assert getattr(engine, name) is not None
    assert issubclass(NoRouteError, Exception) and issubclass(PolicyError, Exception)


def test_load_directory_file_and_default(fx: Engine) -> None:
    by_file = Engine.load(FIXTURES / "main.route")
    assert by_file.version == fx.version
    assert len(fx.policy.rules) == 10
    assert fx.policy.files[0].endswith("main.route")
    assert any(f.endswith("tasks.route") for f in fx.policy.files)
    bundled = Engine.load()
    assert bundled.policy.entry.endswith("main.route")
    assert bundled.decide("hello").model in bundled.policy.models


def test_load_directory_without_main_route(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        Engine.load(tmp_path)
    assert info.value.codes == ["E200"]
    assert "main.route" in info.value.render()


def test_readme_example_on_the_bundled_policy(monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    e = Engine.load("policies/", today=datetime.date(2026, 6, 1))  # after every bundled deprecation date so far
    d = e.decide("Implement a function that merges two sorted lists", tier="pro")
    assert (d.model, d.provider) == ("claude-sonnet-4-6", "anthropic")
    assert d.fallbacks == ["gpt-5-mini"]
    assert d.rule.file == "policies/main.route"
    assert d.tasks == ["code"]


def test_decision_fields(fx: Engine) -> None:
    d = fx.decide(CODE_PROMPT, tier="pro", tools=True)
    assert isinstance(d, Decision)
    assert (d.model, d.provider, d.fallbacks) == ("beta-coder", "betacorp", ["alpha-mini"])
    assert Path(d.rule.file).name == "main.route"
    assert d.rule.line == 11
    assert d.rule.text == (
        "when task is code prefer capability(CODING) where latency <= 1s and price <= $1/1M "
        "fallback gpt-4o-mini, delta-tiny"
    )
    assert (d.tasks, d.tokens) == (["code"], 13)
    assert d.policy_version == fx.version and len(d.policy_version) == 12
    statuses = {c.model: (c.status, c.rank, c.reason) for c in d.candidates}
    assert statuses == {
        "beta-coder": ("chosen", 1, None),
        "alpha-mini": ("eligible", 2, None),
        "gamma-flash": ("eligible", 3, None),
        "beta-chat": ("rejected", None, "no tools support (request has tools)"),
        "local-free": ("rejected", None, "no tools support (request has tools)"),
        "delta-tiny": ("rejected", None, "no tools support (request has tools)"),
        "alpha-large": ("rejected", None, "latency 3000ms > 1s"),
        "gamma-long": ("rejected", None, "latency 1500ms > 1s"),
    }
    assert d.model_dump() == json.loads(d.to_json())
    assert "beta-coder" in repr(d)


def test_policy_version_depends_only_on_content(monkeypatch, tmp_path: Path) -> None:
    versions = set()
    for cwd, path in ((REPO, FIXTURES), (tmp_path, FIXTURES), (FIXTURES, Path("."))):
        monkeypatch.chdir(cwd)
        versions.add(Engine.load(path).version)
    assert len(versions) == 1


def test_policy_version_changes_with_content(write_policy) -> None:
    first = Engine.load(write_policy('catalog "catalog.yaml"\notherwise use alpha-mini\n')).version
    second = Engine.load(write_policy('catalog "catalog.yaml"\notherwise use alpha-large\n')).version
    again = Engine.load(write_policy('catalog "catalog.yaml"\notherwise use alpha-mini\n')).version
    assert first != second and first == again


def test_decision_model_id_and_spec(fx: Engine) -> None:
    d = fx.decide("please review this NDA", tier="enterprise")
    assert (d.model, d.rule.line, d.fallbacks) == ("alpha-large", 9, ["gamma-long"])
    assert d.spec.id == "alpha-large-2025-01"


def test_use_rule_candidates_name_one_model(fx: Engine) -> None:
    d = fx.decide("please review this NDA", tier="enterprise")
    statuses = [c.status for c in d.candidates]
    assert statuses.count("chosen") == 1
    assert statuses.count("not named") == 7


def test_messages(fx: Engine) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Implement quicksort"},
        {"role": "assistant", "content": "def quicksort(xs): ..."},
        {"role": "user", "content": [{"type": "text", "text": "Now summarize what you did"}]},
    ]
    d = fx.decide(messages=messages)
    assert d.tasks == ["summarize"]  # the last user message only
    assert d.tokens == (4 + 4) + (5 + 4) + (6 + 4) + (7 + 4)
    assert (d.model, d.rule.line) == ("gamma-flash", 14)


def test_compiled_policy_is_frozen() -> None:
    policy = Engine.load(FIXTURES).policy
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.rules = ()  # type: ignore[misc]
    assert isinstance(policy.rules, tuple)


def test_compiled_policy_mappings_are_read_only() -> None:
    policy = Engine.load(FIXTURES).policy  # a private copy: this test may corrupt it
    for mapping in (policy.models, policy.tasks):
        with pytest.raises(TypeError):
            mapping["x"] = None  # type: ignore[index]


def test_no_route_error(fixture_catalog) -> None:
    e = Engine.load(FIXTURES / "noroute.route")
    with pytest.raises(NoRouteError) as info:
        e.decide("hello", tier="pro", tools=True)
    err = info.value
    assert isinstance(err, LookupError)
    assert "no route" in str(err)
    report = err.report()
    assert report.model is None and report.rule is None
    assert [(t.rule.line, t.outcome) for t in report.rules] == [(3, "no viable model"), (4, "no viable model")]
    assert [c.reason for c in report.rules[0].candidates if c.status == "rejected"] == [
        "no tools support (request has tools)"
    ]
    assert "no route" in err.explain()


# ---- explain: golden text and JSON -----------------------------------------------------------------------

EXPLAIN_CASES = {
    "code_with_tools": ("main.route", CODE_PROMPT, {"tier": "pro", "tools": True}),
    "summarize_missing_attrs": ("main.route", "Summarize the key points of this report", {"spend": {"today": 12}}),
    "translate_then_tiebreak": ("main.route", "translate this into French", {"env": "prod"}),
    "no_route": ("noroute.route", "hello", {"tier": "pro", "tools": True}),
}


def explain_text(policy: str, prompt: str, attrs: dict, color: bool = False) -> str:
    e = Engine.load(policy)
    try:
        return e.decide(prompt, **attrs).explain(color=color)
    except NoRouteError as err:
        return err.explain(color=color)


@pytest.mark.parametrize("name", list(EXPLAIN_CASES))
def test_explain_golden(name: str, monkeypatch, golden, mask_explain) -> None:
    monkeypatch.chdir(FIXTURES)
    text = explain_text(*EXPLAIN_CASES[name])
    assert "\x1b[" not in text
    golden(EXPLAIN / f"{name}.txt", mask_explain(text))


def test_explain_shows_the_numbers(fx: Engine) -> None:
    text = fx.decide(CODE_PROMPT, tier="pro", tools=True).explain()
    assert "tokens 13 > 150000: false" in text
    assert '(/implement/ matched "Implement")' in text
    assert "alpha-large   latency 3000ms > 1s" in text
    assert "delta-tiny: skipped, no tools support (request has tools)" in text
    assert "decision   beta-coder (betacorp) by rule" in text
    assert "time " in text and "µs" in text


def test_explain_says_an_attribute_is_missing(fx: Engine) -> None:
    text = fx.decide("hello").explain()
    assert 'tier missing == "free": false  (tier was not passed: every comparison with it is false)' in text
    assert "spend.today missing >= $50.00: false" in text


def test_explain_color(fx: Engine, strip_ansi) -> None:
    d = fx.decide(CODE_PROMPT, tier="pro")
    colored = d.explain(color=True)
    assert "\x1b[" in colored
    assert strip_ansi(colored) == d.explain(color=False)


def test_explain_phrase_match_text_is_the_phrase(fx: Engine) -> None:
    text = fx.decide("Summarize the key points of this report").explain()
    assert '("summarize" matched "Summarize")' in text


def test_json_structure(fx: Engine) -> None:
    data = json.loads(fx.decide(CODE_PROMPT, tier="pro", tools=True).to_json())
    assert data["model"] == "beta-coder" and data["provider"] == "betacorp"
    assert Path(data["rule"]["file"]).name == "main.route"
    assert {k: data["rule"][k] for k in ("line", "col", "index")} == {"line": 11, "col": 1, "index": 3}
    assert data["ranking"] == ["capability(CODING)"]
    assert data["fallbacks"] == ["alpha-mini"]
    assert data["fallback_checks"] == [
        {"model": "alpha-mini", "status": "kept", "reason": None},
        {"model": "delta-tiny", "status": "skipped", "reason": "no tools support (request has tools)"},
    ]
    assert [(c["model"], c["status"], c["rank"]) for c in data["candidates"] if c["status"] != "rejected"] == [
        ("beta-coder", "chosen", 1),
        ("alpha-mini", "eligible", 2),
        ("gamma-flash", "eligible", 3),
    ]
    rejected = {c["model"]: c["reason"] for c in data["candidates"] if c["status"] == "rejected"}
    assert rejected["alpha-large"] == "latency 3000ms > 1s"
    assert data["candidates"][0]["scores"] == ["CODING 10"]
    assert (data["tasks"], data["tokens"], data["prompt_chars"]) == (["code"], 13, 49)
    assert data["attrs"] == {"tier": "pro", "tools": True}
    assert [(r["rule"]["line"], r["matched"], r["outcome"]) for r in data["rules"]] == [
        (8, False, "no match"),
        (9, False, "no match"),
        (10, False, "no match"),
        (11, True, "decided"),
    ]
    assert data["rules"][0]["conditions"] == [{"depth": 0, "text": "tokens 13 > 150000", "value": False, "note": None}]
    assert data["rules_not_reached"] == 6
    assert len(data["policy_version"]) == 12
    assert isinstance(data["elapsed_us"], float)


def test_json_records_a_rule_without_viable_model(fx: Engine) -> None:
    data = fx.decide("summarize this", tools=True, tier="x").model_dump()
    assert data["rule"]["line"] == 17
    outcomes = {r["rule"]["line"]: r["outcome"] for r in data["rules"]}
    assert outcomes[14] == "no match"  # `not tools` is false
    # 100k tokens with an image: rule 16's cost limit rejects every vision model, and the otherwise model
    # has no vision: no route, and the report says why for both rules
    with pytest.raises(NoRouteError) as info:
        fx.decide("." * 400_000, images=True)
    report = info.value.report().model_dump()
    by_line = {r["rule"]["line"]: r for r in report["rules"]}
    assert by_line[16]["outcome"] == "no viable model"
    reasons = {c["model"]: c["reason"] for c in by_line[16]["candidates"] if c["status"] == "rejected"}
    assert reasons["gamma-flash"] == "cost $0.0102 > $0.01"
    assert reasons["alpha-mini"] == "no vision support"  # the static `where supports vision`
    assert by_line[17]["outcome"] == "no viable model"
    assert [c["reason"] for c in by_line[17]["candidates"] if c["status"] == "rejected"] == [
        "no vision support (request has images)"
    ]
    assert report["model"] is None and report["fallbacks"] == []


def test_decision_after_a_rule_without_viable_model(fixture_catalog) -> None:
    e = Engine.from_source(
        'when tier == "pro" use beta-chat\notherwise use gamma-flash fallback beta-chat\n', catalog=fixture_catalog
    )
    d = e.decide("hi", tier="pro", tools=True)
    assert (d.model, d.rule.line, d.fallbacks) == ("gamma-flash", 2, [])
    first = d.report().rules[0]
    assert (first.matched, first.outcome) == (True, "no viable model")
    assert [(c.model, c.reason) for c in first.candidates if c.status == "rejected"] == [
        ("beta-chat", "no tools support (request has tools)")
    ]
    assert [(f.model, f.status, f.reason) for f in d.report().fallback_checks] == [
        ("beta-chat", "skipped", "no tools support (request has tools)")
    ]
    assert "matched, no viable model" in d.explain()


# ---- thread-safety --------------------------------------------------------------------------------------

PROMPTS = [
    CODE_PROMPT,
    "please debug this",
    "Summarize the key points",
    "tl;dr",
    "review the NDA and contract",
    "translate this into French",
    "hello",
    "",
    "```python\nprint(1)\n```",
    "write the script",
    "x" * 5000,
    "debug " + "." * 130_000,
    "." * 610_000,
]
ATTRS = [
    {},
    {"tier": "pro"},
    {"tier": "free"},
    {"tools": True},
    {"images": True},
    {"env": "prod"},
    {"spend": {"today": 80}},
    {"tier": "enterprise", "tools": True},
]
REQUESTS = [(p, a) for p in PROMPTS for a in ATTRS]


def _outcome(e: Engine, prompt: str, attrs: dict):
    try:
        d = e.decide(prompt, **attrs)
    except NoRouteError:
        return None
    return (d.model, d.rule.line, tuple(d.fallbacks), tuple(d.tasks), d.tokens)


def test_thread_safety(fx: Engine) -> None:
    expected = [_outcome(fx, p, a) for p, a in REQUESTS]
    assert len(set(expected)) > 10  # the requests really do route differently
    errors: list[BaseException] = []
    mismatches: list[tuple] = []
    barrier = threading.Barrier(8)

    def worker(offset: int) -> None:
        try:
            barrier.wait()
            for i in range(2000):
                k = (i * 7 + offset) % len(REQUESTS)
                got = _outcome(fx, *REQUESTS[k])
                if got != expected[k]:
                    mismatches.append((k, got, expected[k]))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert mismatches == []


def test_explain_from_many_threads(fx: Engine) -> None:
    """Reports (the lazy per-pattern regexes of explain) are built safely from several threads."""
    fresh, other = Engine.load(FIXTURES), Engine.load(FIXTURES)
    decisions = [fresh.decide(p, **a) for p, a in REQUESTS[:40]]
    serial = [other.decide(p, **a).model_dump()["rules"] for p, a in REQUESTS[:40]]
    results: list = [None] * len(decisions)

    def work(i: int) -> None:
        results[i] = decisions[i].model_dump()["rules"]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(decisions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == serial


# ---- import hygiene --------------------------------------------------------------------------------------


def test_import_and_decide_do_not_import_httpx(clean_env) -> None:
    code = (
        "import sys\n"
        "import engine\n"
        "e = engine.Engine.load()\n"
        "d = e.decide('Implement a function', tier='pro')\n"
        "d.explain(); d.to_json()\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('httpx', 'httpcore'))\n"
        "print(d.model, bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=clean_env(), cwd=REPO, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("[]")


def test_decide_with_budgets_imports_nothing_from_providers_but_the_catalog(clean_env) -> None:
    code = (
        "import sys\n"
        "import engine\n"
        "e = engine.Engine.from_source('budget daily $50 per user\\nwhen budget.left < 20% use gpt-4o-mini\\n"
        "otherwise use gpt-4o\\n')\n"
        "d = e.decide('hello', user='alice')\n"
        "assert d.request.attrs['budget.left'] == 1.0, d.request.attrs\n"
        "bad = sorted(m for m in sys.modules if m.startswith('providers.') and not m.startswith('providers.catalog'))\n"
        "print(d.model, bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=clean_env(), cwd=REPO, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "gpt-4o []"


# ---- the seams execution, the gateway and the reloader use ----------------------------------------------


def test_swap_installs_a_policy_and_path_says_what_recompile_reads() -> None:
    e = Engine.load(FIXTURES)
    assert e.path == FIXTURES and e.reloader is e.reloader
    other = engine.compile_source("otherwise use gpt-4o-mini\n")
    e.swap(other)
    assert e.policy is other and e.version == other.version
    assert e.decide(CODE_PROMPT).model == "gpt-4o-mini"
    assert e.reload() and e.policy.version != other.version  # recompiled from e.path
    source = Engine.from_source("otherwise use gpt-4o\n")
    assert source.path is None
    with pytest.raises(ValueError, match="nothing to watch"):
        source.watch()


def test_the_executor_reserves_against_the_engines_budget_book() -> None:
    e = Engine.from_source("budget daily $1\notherwise use gpt-4o-mini\n", wall=lambda: 86_400.0 * 365)
    ex = e.executor
    assert ex is e.executor and ex.engine is e
    book = e.budget_book
    assert ex.budgets.store is book.store is e.state and ex.budgets.wall is book.wall
    held = ex.budgets.reserve(e.policy.budgets, {}, 0.75)
    assert book.request_attrs(e.policy.budgets, {})["budget.left"] == pytest.approx(0.25)
    assert e.request("hi", user="x").attrs["budget.left"] == pytest.approx(0.25)
    ex.budgets.settle(held, 0.5, 0.8)
    assert e.state.spent(book.day_key()) == (0.5, 0.0)  # type: ignore[attr-defined]


OVERRIDES = "set overrides = true\notherwise use gpt-4o-mini\n"


def test_pin_builds_a_decision_for_a_named_model() -> None:
    e = Engine.from_source(OVERRIDES)
    d = e.pin("gpt-4o", "hello", tier="pro")
    assert isinstance(d, Decision)
    assert (d.model, d.fallbacks, d.chain, d.strategy) == ("gpt-4o", [], ["gpt-4o"], "single")
    assert d.rule.index == -1 and d.request.attrs == {"tier": "pro"}
    report = d.report()
    assert report.rule.index == -1 and "named by the request" in report.rule.text
    assert json.loads(d.to_json())["model"] == "gpt-4o"


def test_pin_refusals_carry_a_code() -> None:
    with pytest.raises(engine.PinError) as not_found:
        Engine.from_source(OVERRIDES).pin("no-such-model", "hi")
    assert not_found.value.code == "model_not_found" and not_found.value.model == "no-such-model"
    with pytest.raises(engine.PinError) as disabled:
        Engine.from_source("otherwise use gpt-4o-mini\n").pin("gpt-4o", "hi")
    assert disabled.value.code == "model_override_disabled"
    with pytest.raises(engine.PinError) as unsuitable:
        Engine.from_source(OVERRIDES).pin("gpt-4o", "hi", tokens=100_000_000)
    assert unsuitable.value.code == "model_unsuitable" and "context" in (unsuitable.value.reason or "")


def test_pin_leaves_an_open_circuit_to_execution() -> None:
    from engine.runtime.state import MemoryStore

    class Down(MemoryStore):
        def unavailable(self) -> frozenset[str]:
            return frozenset({"gpt-4o"})

    e = Engine.from_source(OVERRIDES, state=Down())
    assert e.pin("gpt-4o", "hi").model == "gpt-4o"  # not refused: the executor skips it and says why
    with pytest.raises(engine.PinError) as too_long:  # a hard constraint still refuses it
        e.pin("gpt-4o", "hi", tokens=100_000_000)
    assert too_long.value.code == "model_unsuitable" and "circuit" not in str(too_long.value)


# ---- property: the fast path and the traced report agree ------------------------------------------------

KEYWORDS = [
    "implement",
    "debug",
    "debugger",
    "write the code",
    "write a function",
    "summarize",
    "tl;dr",
    "key points",
    "contract",
    "NDA",
    "liability",
    "translate",
    "```py",
    "Summarize",
    "DEBUG",
]
words = st.one_of(st.sampled_from(KEYWORDS), st.text(alphabet="abcdefghij ;.,\n`", max_size=12))
prompts = st.builds(
    lambda parts, pad: " ".join(parts) + "." * pad,
    st.lists(words, max_size=6),
    st.sampled_from([0, 0, 0, 4 * 9_000, 4 * 31_000, 4 * 70_000, 4 * 160_000]),
)
attrs = st.fixed_dictionaries(
    {},
    optional={
        "tier": st.sampled_from(["pro", "enterprise", "free", "trial", "team", "", 3]),
        "tools": st.booleans(),
        "images": st.booleans(),
        "env": st.sampled_from(["prod", "staging", "dev"]),
        "spend": st.fixed_dictionaries({}, optional={"today": st.integers(0, 100) | st.floats(0, 100)}),
    },
)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompt=prompts, attributes=attrs)
def test_fast_path_agrees_with_trace(fx: Engine, prompt: str, attributes: dict) -> None:
    from engine.runtime.evaluate import trace

    req = fx.request(prompt, **attributes)
    report = trace(fx.policy, req)
    try:
        d = fx.decide(prompt, **attributes)
    except NoRouteError:
        assert report.model is None
        return
    assert (d.model, d.rule.line) == (report.model, report.rule.line)
    assert d.fallbacks == report.fallbacks
    assert d.tasks == report.tasks
    ranked = [c for c in report.candidates if c.rank is not None]
    assert ranked[0].model == d.model and ranked[0].status == "chosen"
    decided = [t for t in report.rules if t.outcome == "decided"]
    assert len(decided) == 1 and decided[0].rule.line == d.rule.line
    assert all(t.outcome != "decided" for t in report.rules[:-1])


def test_settings_is_a_full_mapping() -> None:
    """Settings is a Mapping: values() and items() work (a field once named `values` shadowed the method)."""
    from engine.runtime.settings import Settings

    defaults = Settings.defaults()
    assert dict(defaults.items()) == dict(defaults)
    assert list(defaults.values()) == [defaults[k] for k in defaults]
