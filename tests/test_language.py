"""The .route language itself: literal values and their units, operator precedence (checked against Python
as an oracle), which units each `where` metric accepts, lexical details (comments, whitespace, escapes), rule
text, and the token estimator."""

from __future__ import annotations

import itertools

import pytest

from engine import Engine, PolicyError, compile_source
from engine.runtime.tokens import MESSAGE_OVERHEAD, estimate_tokens


@pytest.fixture
def engine_for(fixture_catalog):
    def make(text: str, **kwargs) -> Engine:
        return Engine(compile_source(text, "lang.route", catalog=fixture_catalog), **kwargs)

    return make


# ---- literals ------------------------------------------------------------------------------------------

LITERALS = [
    # (literal as written, the normalised value it equals, a value it must not equal)
    ("7", 7, 7.5),
    ("30k", 30_000, 30),
    ("1.5k", 1_500, 1.5),
    ("2M", 2_000_000, 2),
    ("0.5M", 500_000, 0.5),
    ("800ms", 0.8, 800),
    ("2s", 2, 2000),
    ("1.5s", 1.5, 1500),
    ("$0.05", 0.05, 5),
    ("$3/1M", 3 / 1_000_000, 3),
    ("$0.003/1k", 3 / 1_000_000, 0.003),
    ("$2/1000", 0.002, 2),
    ("$5/k", 0.005, 5),
    ("20%", 0.2, 20),
    ('"pro"', "pro", "Pro"),
    ('"say \\"hi\\""', 'say "hi"', 'say \\"hi\\"'),
    ("pro", "pro", "PRO"),
    ("true", True, "true"),
    ("false", False, "false"),
]


@pytest.mark.parametrize(("literal", "equal", "different"), LITERALS, ids=[x[0] for x in LITERALS])
def test_literal_values(engine_for, literal: str, equal, different) -> None:
    e = engine_for(f"when v == {literal} use delta-tiny\notherwise use alpha-mini\n")
    assert e.decide("x", v=equal).model == "delta-tiny"
    assert e.decide("x", v=different).model == "alpha-mini"
    assert e.decide("x").model == "alpha-mini"  # missing


def test_count_literals_compare_with_tokens(engine_for) -> None:
    e = engine_for("when tokens >= 1.5k use delta-tiny\notherwise use alpha-mini\n")
    assert e.decide("." * 5996).tokens == 1499
    assert e.decide("." * 5996).model == "alpha-mini"
    assert e.decide("." * 5997).model == "delta-tiny"


# ---- precedence: not > and > or, parentheses group --------------------------------------------------

PRECEDENCE = [
    ("a or b and not c", lambda a, b, c: a or (b and not c)),
    ("not a and b or c", lambda a, b, c: ((not a) and b) or c),
    ("not (a and b) or c", lambda a, b, c: (not (a and b)) or c),
    ("a and (b or c)", lambda a, b, c: a and (b or c)),
    ("(a or b) and not c", lambda a, b, c: (a or b) and not c),
    ("not not a and b", lambda a, b, c: a and b),
    ("a or b or c and a", lambda a, b, c: a or b or (c and a)),
]


@pytest.mark.parametrize(("cond", "oracle"), PRECEDENCE, ids=[p[0] for p in PRECEDENCE])
def test_precedence_truth_table(engine_for, cond: str, oracle) -> None:
    e = engine_for(f"when {cond} use delta-tiny\notherwise use alpha-mini\n")
    for a, b, c in itertools.product([False, True], repeat=3):
        d = e.decide("x", a=a, b=b, c=c)
        assert (d.model == "delta-tiny") == oracle(a, b, c), (cond, a, b, c)
        assert d.report().rule.line == d.rule.line


def test_missing_attributes_in_truth_table(engine_for) -> None:
    """A missing attribute is falsy as a bare name, and every comparison with it is false (also `!=`)."""
    e = engine_for(
        'when not a and b != "x" use delta-tiny\nwhen not b == "x" use beta-chat\notherwise use alpha-mini\n'
    )
    assert e.decide("x").model == "beta-chat"
    assert e.decide("x", b="y").model == "delta-tiny"
    assert e.decide("x", b="x").model == "alpha-mini"


# ---- units are checked at compile time -----------------------------------------------------------------

METRIC_UNITS = {
    "latency": "2s",
    "price": "$1/1M",
    "cost": "$0.05",
    "context": "100k",
    "capability(CODING)": "5",
}
VALUES = ["2s", "800ms", "$1/1M", "$0.003/1k", "$0.05", "100k", "5", "20%", '"x"']


def _kind(value: str) -> str:
    if value.endswith(("ms", "s")):
        return "duration"
    if "/" in value:
        return "price"
    if value.startswith("$"):
        return "money"
    if value.endswith("%"):
        return "percent"
    if value.startswith('"'):
        return "string"
    return "count"


@pytest.mark.parametrize("metric", list(METRIC_UNITS))
def test_where_metric_units(fixture_catalog, metric: str) -> None:
    want = _kind(METRIC_UNITS[metric])
    for value in VALUES:
        text = f"when x prefer cheapest where {metric} <= {value}\notherwise use alpha-mini\n"
        if _kind(value) == want and not (metric.startswith("capability") and value == "100k"):
            compile_source(text, catalog=fixture_catalog)
        elif _kind(value) == want:
            with pytest.raises(PolicyError) as info:
                compile_source(text, catalog=fixture_catalog)
            assert info.value.codes == ["E401"]  # a capability score of 100,000
        else:
            with pytest.raises(PolicyError) as info:
                compile_source(text, catalog=fixture_catalog)
            assert info.value.codes == ["E400"], (metric, value)
            span = info.value.diagnostics[0].span
            assert span is not None and span.col == text.index(value) + 1


@pytest.mark.parametrize("value", ["2s", "$0.05", "$1/1M", "20%", '"many"'])
def test_tokens_compare_only_with_counts(fixture_catalog, value: str) -> None:
    with pytest.raises(PolicyError) as info:
        compile_source(f"when tokens > {value} use alpha-mini\n", catalog=fixture_catalog)
    assert info.value.codes == ["E400"]


def test_attributes_compare_with_any_literal_kind(fixture_catalog) -> None:
    for value in VALUES:
        compile_source(f"when budget <= {value} use alpha-mini\n", catalog=fixture_catalog)


def test_price_boundary_is_exact_across_units(tmp_path) -> None:
    from providers.catalog.loader import load_catalog

    (tmp_path / "c.yaml").write_text(
        "models:\n  m45:\n    provider: acme\n    context: 10k\n"
        "    price: {input: 0.45, output: 1}\n    latency_ms: 100\n"
    )
    cat = load_catalog(tmp_path / "c.yaml")
    e = Engine(compile_source("when x prefer cheapest where price <= $0.00045/1k\notherwise use m45\n", catalog=cat))
    assert e.decide("hi", x=True).rule.line == 1


def test_price_boundary_same_unit_is_exact(engine_for) -> None:
    e = engine_for("when x prefer cheapest where price >= $0.50/1M and price <= $0.5/1M\n")
    assert e.decide("hi", x=True).model == "alpha-mini"


# ---- lexical details -----------------------------------------------------------------------------------


def test_comments_and_whitespace_are_insignificant(engine_for) -> None:
    e = engine_for(
        "# a policy\n"
        "\n"
        'when tier == "pro"      # paying customers\n'
        "     and not tools\n"
        "  use alpha-large       # the best\n"
        "  fallback gamma        # long context\n"
        "otherwise use alpha-mini# no space needed\n"
    )
    d = e.decide("x", tier="pro")
    assert (d.model, d.rule.line, d.fallbacks) == ("alpha-large", 3, ["gamma-long"])
    assert e.decide("x", tier="pro", tools=True).rule.line == 7


def test_rule_text_has_no_comments(engine_for) -> None:
    e = engine_for('when tier == "pro"   # paying customers\n  and not tools\n  use alpha-large\n')
    assert e.decide("x", tier="pro").rule.text == 'when tier == "pro" and not tools use alpha-large'


def test_rule_text_is_the_rule_on_one_line(engine_for) -> None:
    e = engine_for('when tier == "pro"\n  and not tools\n  use alpha-large   fallback   gamma\n')
    d = e.decide("x", tier="pro")
    assert d.rule.text == 'when tier == "pro" and not tools use alpha-large fallback gamma'
    assert d.report().rule.text == d.rule.text


def test_escaped_slash_in_regex_and_quote_in_phrase(engine_for) -> None:
    e = engine_for(
        'when task ~ /a\\/b/ use beta-chat\nwhen task ~ "say \\"hi\\"" use gamma-flash\notherwise use alpha-mini\n'
    )
    assert e.decide("see a/b").model == "beta-chat"
    assert e.decide("see ab").model == "alpha-mini"
    assert e.decide('he said say "hi" loudly').model == "gamma-flash"
    assert e.decide("he said say hi loudly").model == "alpha-mini"


def test_explicit_i_flag_is_the_default(engine_for) -> None:
    e = engine_for(
        "when task ~ /Hello/i use beta-chat\nwhen task ~ /Hello/c use gamma-flash\notherwise use alpha-mini\n"
    )
    assert e.decide("HELLO").model == "beta-chat"
    assert e.decide("Hello").model == "beta-chat"


def test_case_sensitive_flag_applies_to_task_patterns(engine_for) -> None:
    e = engine_for(
        'task acronym = /\\bAPI\\b/c, "rest api"\nwhen task is acronym use beta-chat\notherwise use alpha-mini\n'
    )
    assert e.decide("call the API").tasks == ["acronym"]
    assert e.decide("call the api").tasks == []
    assert e.decide("a REST API").tasks == ["acronym"]  # the phrase stays case-insensitive


def test_empty_list_matches_nothing(engine_for) -> None:
    e = engine_for("when tier in [] use beta-chat\notherwise use alpha-mini\n")
    assert e.decide("x", tier="").model == "alpha-mini"


def test_unhashable_attribute_values_are_compared_not_crashed(engine_for) -> None:
    e = engine_for('when tier == "pro" use beta-chat\nwhen tier in ["a"] use gamma-flash\notherwise use alpha-mini\n')
    assert e.decide("x", tier=["pro"]).model == "alpha-mini"
    assert e.decide("x", tier={"a": 1}).model == "alpha-mini"


def test_names_may_contain_dots_dashes_and_colons(engine_for) -> None:
    e = engine_for(
        "model my-model.v1:fast = gamma-flash\nwhen org.tier == 1 use my-model.v1:fast\notherwise use alpha-mini\n"
    )
    assert e.decide("x", org={"tier": 1}).model == "gamma-flash"


def test_cache_clause_sets_the_deciding_rules_ttl(engine_for) -> None:
    e = engine_for(
        "set cache.ttl = 1h\n"
        'when tier == "a" use beta-chat where latency <= 2s fallback gamma-flash cache 1.5m\n'
        'when tier == "b" use beta-chat cache off\n'
        "otherwise use alpha-mini\n"
    )
    a, b, other = (e.decide("x", tier=t) for t in ("a", "b", "c"))
    assert (a.model, a.fallbacks, a.cache_ttl) == ("beta-chat", ["gamma-flash"], 90.0)
    assert (b.cache_ttl, other.cache_ttl) == (0.0, None)  # None: the policy's `set cache.ttl`
    assert a.report().cache_ttl == 90.0 and "cache      90s (the rule's TTL)" in a.explain()
    assert "cache      off" in b.explain() and "\ncache " not in other.explain()


@pytest.mark.parametrize("clause", ["cache 0s", "cache 0ms", "cache 10", "cache on", 'cache "1h"', "cache 5%"])
def test_cache_takes_a_positive_duration_or_off(fixture_catalog, clause: str) -> None:
    with pytest.raises(PolicyError) as err:
        compile_source(f"otherwise use alpha-mini {clause}\n", "c.route", catalog=fixture_catalog)
    assert err.value.codes == ["E401" if clause.startswith("cache 0") else "E400"]
    assert "cache off" in str(err.value)


# ---- token estimation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "tokens"), [("", 0), ("a", 1), ("abcd", 1), ("abcde", 2), ("x" * 400, 100)])
def test_default_token_estimator(text: str, tokens: int) -> None:
    assert estimate_tokens(text) == tokens


def test_token_estimator_is_pluggable(fixture_catalog, engine_for) -> None:
    policy = "when tokens > 100 use gamma-long\notherwise use delta-tiny\n"
    assert engine_for(policy).decide("short").model == "delta-tiny"
    e = engine_for(policy, token_estimator=lambda text: 1000 + len(text))
    d = e.decide("short")
    assert (d.model, d.tokens) == ("gamma-long", 1005)
    e2 = Engine.from_source(policy, catalog=fixture_catalog, token_estimator=lambda text: 7)
    d2 = e2.decide(messages=[{"role": "system", "content": "a"}, {"role": "user", "content": "b"}])
    assert d2.tokens == 2 * (7 + MESSAGE_OVERHEAD)


# ---- files -----------------------------------------------------------------------------------------------


def test_catalog_path_is_relative_to_the_file_that_names_it(write_policy) -> None:
    root = write_policy(
        'include "sub/models.route"\notherwise use delta-tiny\n',
        files={"sub/models.route": 'catalog "../catalog.yaml"\nmodel tiny = delta-tiny\n'},
    )
    d = Engine.load(root).decide("hi")
    assert (d.model, d.rule.line) == ("delta-tiny", 2)


def test_crlf_line_endings(write_policy) -> None:
    root = write_policy(
        'catalog "catalog.yaml"\r\nwhen tier == "pro"\r\n  use beta-chat\r\notherwise use alpha-mini\r\n'
    )
    e = Engine.load(root)
    assert (e.decide("x", tier="pro").rule.line, e.decide("x").rule.line) == (2, 4)


def test_utf8_bom_is_accepted(tmp_path) -> None:
    from engine import compile_policy
    from providers.catalog.models import default_catalog_path

    (tmp_path / "main.route").write_bytes(
        b"\xef\xbb\xbf" + f'catalog "{default_catalog_path()}"\notherwise use gpt-4o-mini\n'.encode()
    )
    assert len(compile_policy(tmp_path).rules) == 1
