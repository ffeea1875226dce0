"""Attacks on decide() and explain with hostile or odd input: attribute values of every type where a policy
compares numbers or strings, `tokens=` / `max_tokens=` out of range, prompts and messages of the wrong shape,
huge and malformed content, policy reloads racing decisions. The standards: bad input is a documented error
(RequestError, a ValueError / TypeError, NoRouteError), never an exception leaking from inside; decide() stays
fast and deterministic; explain renders every decision decide() returns."""

from __future__ import annotations

import decimal
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from engine import Decision, Engine, NoRouteError
from engine.api import RequestError
from engine.language.load import bundled_policy_dir
from engine.tools.render import render_html, render_markdown

FIXTURES = Path(__file__).parent / "fixtures" / "policies"
CATALOG = (FIXTURES / "catalog.yaml").resolve()

#: A policy comparing numbers and strings in conditions, a `where` limit and a linear score.
NUMBERS = """
when score > 5 use alpha-large
when tier == "pro" prefer cheapest where latency <= max_latency
when budget_usd >= $2 prefer score(capability(CODING) + bonus)
otherwise use alpha-mini
"""

HUGE_INT = 10**5000  # more digits than str()/repr() of an int may have (sys.get_int_max_str_digits: 4300)


@pytest.fixture(scope="module")
def fx() -> Engine:
    return Engine.load(FIXTURES)


@pytest.fixture(scope="module")
def numbers(fixture_catalog: Any) -> Engine:
    return Engine.from_source(NUMBERS, catalog=fixture_catalog)


@pytest.fixture(scope="module")
def fixture_catalog() -> Any:
    from providers.catalog.loader import load_catalog

    return load_catalog(CATALOG)


@pytest.fixture(scope="module")
def bundled() -> Engine:
    return Engine.load(bundled_policy_dir())


def _renders(d: Decision) -> None:
    """Every rendering of a decision works: text, JSON (strict: no NaN/Infinity), markdown, html."""
    assert d.model in d.explain()
    data = json.loads(d.to_json(), parse_constant=_no_constant)
    assert data["model"] == d.model
    assert d.report().model == d.model  # the traced path agrees with the fast path
    render_markdown(d.report())
    render_html(d.report())


def _no_constant(name: str) -> Any:
    raise AssertionError(f"to_json wrote {name}, which is not JSON")


def _best_of_3(fn: Callable[[], Any]) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


# ---- tokens= and max_tokens= --------------------------------------------------------------------------------


def test_tokens_too_large_for_a_float_is_a_request_or_route_error(fx: Engine) -> None:
    with pytest.raises((RequestError, NoRouteError)):
        fx.decide("hi", tokens=10**400)


@pytest.mark.parametrize("text", ["\u00b2", "9" * 5000], ids=["superscript-two", "5000-digits"])
def test_tokens_as_text_int_cannot_read_is_a_request_error(fx: Engine, text: str) -> None:
    with pytest.raises(RequestError):
        fx.decide("hi", tokens=text)


@pytest.mark.parametrize("value", [-1, float("nan"), float("inf"), True, decimal.Decimal(5), "many", None, [3]])
def test_tokens_that_are_no_count_are_request_errors(fx: Engine, value: Any) -> None:
    with pytest.raises(RequestError):
        fx.decide("hi", tokens=value)


def test_max_tokens_too_large_for_a_float_does_not_overflow(fx: Engine) -> None:
    d = fx.decide("hi", max_tokens=10**400)
    _renders(d)


@pytest.mark.parametrize("value", [float("inf"), float("nan"), -0.0, 1e308, decimal.Decimal("1e500"), "9", True])
def test_odd_max_tokens_decide_and_render(fx: Engine, value: Any) -> None:
    _renders(fx.decide("hi", max_tokens=value))


def test_no_route_for_an_astronomic_token_count_explains(fx: Engine) -> None:
    with pytest.raises(NoRouteError) as err:
        fx.decide("hi", tokens=1e300)
    assert "no route" in str(err.value)
    assert err.value.explain()


# ---- prompts and messages of the wrong shape ----------------------------------------------------------------


@pytest.mark.parametrize("prompt", [b"translate this", ["translate this"]], ids=["bytes", "list"])
def test_a_prompt_that_is_not_text_is_a_clear_error(fx: Engine, prompt: Any) -> None:
    with pytest.raises((TypeError, RequestError)):
        fx.decide(prompt)


@pytest.mark.parametrize(
    "messages",
    [["hello"], [None], "hello", {"role": "user", "content": "hello"}],
    ids=["str-item", "none-item", "str", "dict"],
)
def test_messages_that_are_not_message_objects_are_a_clear_error(fx: Engine, messages: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        fx.decide(messages=messages)


IMAGE_MESSAGE = {
    "role": "user",
    "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "http://x/a.png"}},
    ],
}


def test_messages_from_an_iterator_still_need_a_vision_model(fx: Engine) -> None:
    as_list = fx.decide(messages=[IMAGE_MESSAGE])
    assert as_list.request.need_vision
    one_pass: Any = iter([IMAGE_MESSAGE])  # request() takes any iterable: it copies a non-list with list()
    from_iter = fx.decide(messages=one_pass)
    assert from_iter.request.need_vision
    assert from_iter.model == as_list.model


def test_a_text_part_whose_text_is_null_adds_no_text(fixture_catalog: Any) -> None:
    e = Engine.from_source("when words > 0 use alpha-large\notherwise use alpha-mini\n", catalog=fixture_catalog)
    msgs = [{"role": "user", "content": [{"type": "text", "text": None}]}]
    assert e.request(messages=msgs).text == ""
    assert e.decide(messages=msgs).model == "alpha-mini"


def test_odd_message_contents_decide_and_render(fx: Engine) -> None:
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    deep: list[Any] = []
    for _ in range(5000):
        deep = [deep]
    msgs: Any = [
        {"role": "wizard", "content": "hello"},
        {"role": ["user"], "content": 5},
        {"role": "user", "content": [{"type": ["text"]}, {"type": "text", "text": 7}, 3, None, deep, cyclic]},
        {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": cyclic, "arguments": deep}}]},
        {"role": "user", "content": [{"type": "image_url", "image_url": "data:image/png;base64,%%%"}]},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}, {"type": "image_url"}]},
        {"role": "user", "content": "translate this \u202e\u0000\ud800 please"},
    ]
    d = fx.decide(messages=msgs)
    assert d.request.need_vision
    _renders(d)


# ---- attribute values of every type --------------------------------------------------------------------------


class _Unhashable:
    __hash__ = None  # type: ignore[assignment]

    def __eq__(self, other: object) -> bool:
        return False


ODD_VALUES: list[Any] = [
    None,
    True,
    False,
    float("nan"),
    float("inf"),
    float("-inf"),
    -0.0,
    10**400,
    decimal.Decimal("Infinity"),
    decimal.Decimal("1e999999"),
    [1, 2],
    {"a": {"b": 1}},
    b"pro",
    1 + 2j,
    "\ud800",
    "<script>alert(1)</script>",
    _Unhashable(),
]


@pytest.mark.parametrize("value", ODD_VALUES, ids=lambda v: type(v).__name__)
@pytest.mark.parametrize("name", ["score", "tier", "max_latency", "bonus", "budget_usd"])
def test_odd_attribute_values_decide_deterministically_and_render(numbers: Engine, name: str, value: Any) -> None:
    attrs = {name: value, "tier": value if name == "tier" else "pro"}
    if name == "bonus":
        attrs["budget_usd"] = 3
    first = numbers.decide("hi", **attrs)
    assert numbers.decide("hi", **attrs).model == first.model
    _renders(first)


@pytest.mark.parametrize("value", [decimal.Decimal("NaN"), decimal.Decimal("sNaN")], ids=["NaN", "sNaN"])
@pytest.mark.parametrize("name", ["score", "budget_usd"])
def test_a_decimal_nan_makes_a_comparison_false(numbers: Engine, name: str, value: decimal.Decimal) -> None:
    attrs: dict[str, Any] = {name: value}
    d = numbers.decide("hi", **attrs)
    assert d.model == "alpha-mini"
    _renders(d)


@pytest.mark.parametrize(
    "attrs",
    [{"score": HUGE_INT}, {"tier": "pro", "max_latency": HUGE_INT}, {"budget_usd": 3, "bonus": HUGE_INT}],
    ids=["condition", "where-limit", "score-term"],
)
def test_explain_of_an_attribute_with_5000_digits(numbers: Engine, attrs: dict[str, Any]) -> None:
    d = numbers.decide("hi", **attrs)  # decide() itself copes
    _renders(d)


def _cyclic() -> list[Any]:
    out: list[Any] = []
    out.append(out)
    return out


def _deep() -> list[Any]:
    out: list[Any] = []
    for _ in range(5000):
        out = [out]
    return out


@pytest.mark.parametrize("make", [_cyclic, _deep], ids=["cyclic", "deep"])
def test_explain_of_a_cyclic_or_deep_attribute_value(fx: Engine, make: Callable[[], Any]) -> None:
    d = fx.decide("hi", tier=make())
    _renders(d)


def test_hostile_attribute_names_and_values_are_escaped_in_markdown_and_html(fx: Engine) -> None:
    odd: dict[str, Any] = {"<img src=x>": "a|b", "a\x00b": 1, "\ud800": "\udfff"}
    d = fx.decide("hi", tier="<script>x</script>|`", **odd)
    html = render_html(d.report())
    md = render_markdown(d.report())
    assert "<script>" not in html and "<img" not in html
    assert "<script>" not in md and "<img" not in md
    json.loads(d.to_json(), parse_constant=_no_constant)


# ---- speed and determinism on the bundled policy ------------------------------------------------------------


def test_huge_and_odd_requests_stay_fast_on_the_bundled_policy(bundled: Engine) -> None:
    many = [{"role": "user", "content": "hello there"}] * 100_000
    image = "data:image/png;base64," + "A" * (50 * 2**20)
    big_image = [
        {"role": "user", "content": [{"type": "text", "text": "what"}, {"type": "image_url", "image_url": image}]}
    ]
    cases: list[Callable[[], Any]] = [
        lambda: bundled.decide(messages=many),
        lambda: bundled.decide(messages=big_image),
        lambda: bundled.decide("\u202e\ud800 write a python function " * 20_000),
        lambda: bundled.decide("(" * 300_000 + "a" * 100_000),
    ]
    for case in cases:
        assert _best_of_3(case) < 2.0


def test_meaning_detection_on_a_long_prompt_is_bounded(bundled: Engine) -> None:
    words = ["river", "mountain", "quietly", "paint", "seven", "blue", "orchard", "lantern", "harbor"]
    prompt = " ".join(words[(i * 7) % len(words)] + str(i % 97) for i in range(60_000))  # ~400 KB
    start = time.perf_counter()
    d = bundled.decide(prompt)
    assert time.perf_counter() - start < 5.0
    assert d.explain()


def test_the_same_request_decides_the_same_on_two_fresh_engines(bundled: Engine) -> None:
    other = Engine.load(bundled_policy_dir())
    prompts = [
        "",
        "\x00" * 100,
        "Fix the bug in my SQL query \ud800",
        "Summarize this contract and flag the risky clauses",
        "\u202eprove that the square root of two is irrational\u202c",
    ]
    for p in prompts:
        for attrs in ({}, {"tier": "pro"}, {"max_tokens": 10_000, "tools": [{"x": 1}]}):
            a, b = bundled.decide(p, **attrs), other.decide(p, **attrs)
            assert (a.model, a.tasks, a.tokens, a.fallbacks) == (b.model, b.tasks, b.tokens, b.fallbacks)
            assert a.report().model_dump() | {"elapsed_us": 0} == b.report().model_dump() | {"elapsed_us": 0}


# ---- reloads racing decisions --------------------------------------------------------------------------------


POLICY_A = f'catalog "{CATALOG}"\nwhen tier == "pro" use alpha-large\notherwise use alpha-mini\n'
POLICY_B = f'catalog "{CATALOG}"\nwhen tier == "pro" use gamma-long\notherwise use gamma-flash\n'


def test_decisions_from_eight_threads_during_reloads_each_follow_one_version(tmp_path: Path) -> None:
    main = tmp_path / "main.route"
    main.write_text(POLICY_A)
    eng = Engine.load(main)
    expected = {eng.version: {"pro": "alpha-large", "free": "alpha-mini"}}
    main.write_text(POLICY_B)
    assert eng.reload()
    expected[eng.version] = {"pro": "gamma-long", "free": "gamma-flash"}
    bad: list[Any] = []
    stop = threading.Event()

    def work() -> None:
        n = 0
        while not stop.is_set():
            tier = "pro" if n % 2 else "free"
            d = eng.decide("hello", tier=tier)
            if d.model != expected[d.policy_version][tier]:
                bad.append((d.policy_version, tier, d.model))
            if n % 50 == 0 and d.report().model != d.model:
                bad.append(("report", d.model, d.report().model))
            n += 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        for i in range(30):
            main.write_text(POLICY_A if i % 2 == 0 else POLICY_B)
            assert eng.reload()
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not bad


class _ReloadingMessages(Sequence[Any]):
    """A conversation held in the caller's own Sequence type; `hook` runs on its first read (there: a reload
    landing while decide() reads the request)."""

    def __init__(self, items: list[Any], hook: Callable[[], None]):
        self.items, self.hook = items, hook

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: Any) -> Any:
        hook, self.hook = self.hook, (lambda: None)
        hook()
        return self.items[i]

    def __iter__(self) -> Iterator[Any]:
        for i in range(len(self)):
            yield self[i]


def test_a_reload_mid_request_never_mixes_one_versions_rules_with_anothers_token_counter(tmp_path: Path) -> None:
    old = f'catalog "{CATALOG}"\nwhen tokens > 700 use alpha-large\notherwise use alpha-mini\n'
    new = (
        f'catalog "{CATALOG}"\nset tokens.estimator = "tiktoken:cl100k_base"\n'
        "when tokens > 700 use gamma-long\notherwise use gamma-flash\n"
    )
    pytest.importorskip("tiktoken")
    main = tmp_path / "main.route"
    main.write_text(old)
    eng = Engine.load(main)
    msgs = [{"role": "user", "content": "a" * 4000}]  # 1000 tokens at 4 chars a token, ~500 by cl100k
    by_version = {eng.version: eng.decide(messages=msgs).model}

    def reload() -> None:
        main.write_text(new)
        assert eng.reload()

    d = eng.decide(messages=_ReloadingMessages(msgs, reload))
    by_version[eng.version] = eng.decide(messages=msgs).model
    assert by_version[d.policy_version] == d.model
