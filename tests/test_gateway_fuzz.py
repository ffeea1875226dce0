"""The gateway against generated request bodies (issue 14): JSON with wrong types at every field of a chat
request, deep nesting, NaN / Infinity / 1e999, lone surrogates, huge numbers, random extra fields, broken bytes,
and random `x-route-*` / `x-modelroute-deadline` headers, in; checked answers of POST /v1/chat/completions and
POST /v1/route/explain of an in-process gateway (upstream: the loopback FakeServer) out.

"No 5xx for a client's mistake", asserted exactly:
* a request the gateway's own validation refuses (`parse_chat`, the oracle) gets that 4xx, whatever the endpoint;
* a request it accepts is served by a healthy upstream, so it gets a 200 or a routing 4xx (no route, a model the
  policy will not pin, a budget); the one 5xx it may get is 504 `deadline_exceeded` when it sent its own
  `x-modelroute-deadline` (the client asked for that bound). 500, and any other 5xx, would be the body's fault;
* every error body is OpenAI-shaped with a short message, no ERROR record or traceback is logged, a stream ends
  with `[DONE]` (never `stream_interrupted`), and nothing is left in flight.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("starlette", reason="gateway deps not installed (pip install -e '.[test]')")
from hypothesis import currently_in_test_context, event, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from providers.gateway.app import Gateway
from providers.gateway.openai_wire import ACCEPTED, DEADLINE_HEADER, RESERVED_ATTRS, UNSUPPORTED, ApiError, parse_chat
from tests.fuzz_values import (
    Records,
    assert_no_error_logged,
    assert_nothing_in_flight,
    deep,
    dump,
    fuzz_policy,
    fuzz_target,
    headers,
    hows,
    huge,
    keys,
    mangle,
    surrogates,
    texts,
    values,
)

POLICY = fuzz_policy("when seats > 3 use beta-coder")
ENDPOINTS = ("/v1/chat/completions", "/v1/route/explain")
#: the 4xx an accepted request may get: routing refusals, a budget, the provider refusing the request itself
ROUTING_CODES = {
    "no_route",
    "model_not_found",
    "model_override_disabled",
    "model_unsuitable",
    "budget_exceeded",
    "upstream_rejected_request",
}


# ---- strategies (the shared hostile values: tests/fuzz_values.py) ---------------------------------------------
plain = st.text(max_size=12)  # a good string
ROLES = ["user", "user", "user", "system", "developer", "assistant", "tool"]  # mostly ones that need nothing more
MODELS = ["auto", "cheap", "alpha-mini", "gpt-4o-mini", "delta-tiny", "nope", ""]


def request_bodies(junk: bool, with_tools: bool = False) -> st.SearchStrategy[dict[str, Any]]:
    """Chat-completions bodies: with `junk`, any field at any level may hold anything (wrong types, deep nesting,
    NaN, surrogates, huge numbers) and objects get random extra fields; without, every field has a value of its
    type (the combination may still be refused, e.g. a tool message without a tool_call_id). `with_tools`: always
    a non-empty `tools` (whose schemas go upstream as they are)."""

    def f(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(good, values) if junk else good

    def extra(base: st.SearchStrategy[dict[str, Any]], names: list[str]) -> st.SearchStrategy[dict[str, Any]]:
        if not junk:
            return base
        return st.one_of(
            base, st.builds(lambda d, k, v: {**d, k: v}, base, st.one_of(st.sampled_from(names), keys), values)
        )

    text = texts if junk else plain
    part = st.one_of(
        st.fixed_dictionaries({"type": st.just("text"), "text": f(text)}),
        st.fixed_dictionaries(
            {"type": st.just("image_url"), "image_url": f(st.just({"url": "data:image/png;base64,iVBORw0K"}))}
        ),
    )
    call = st.fixed_dictionaries(
        {
            "id": f(st.just("call_1")),
            "type": f(st.just("function")),
            "function": extra(
                st.fixed_dictionaries({"name": f(st.just("f")), "arguments": f(st.just('{"a": 1}'))}),
                ["name", "arguments"],
            ),
        }
    )
    message = extra(
        st.fixed_dictionaries(
            {"role": f(st.sampled_from(ROLES)), "content": f(st.one_of(text, st.lists(part, max_size=2)))},
            optional={
                "name": f(plain),
                "tool_call_id": f(st.just("call_1")),
                "tool_calls": f(st.lists(extra(call, ["id", "type", "function"]), max_size=2)),
            },
        ),
        ["role", "content", "name", "tool_call_id", "tool_calls", "refusal"],
    )
    function = st.fixed_dictionaries(
        {"name": f(st.sampled_from(["f", "g"]))},
        optional={
            "description": f(text),
            "parameters": f(st.just({"type": "object", "properties": {"a": {"type": "string"}}})),
            "strict": f(st.booleans()),
        },
    )
    tool = st.fixed_dictionaries(
        {"type": f(st.just("function")), "function": extra(function, ["name", "description", "parameters"])}
    )
    fields: dict[str, st.SearchStrategy[Any]] = {
        "model": f(st.sampled_from(MODELS)),
        "stream": f(st.booleans()),
        "stream_options": f(st.fixed_dictionaries({"include_usage": st.booleans()})),
        "max_tokens": f(st.integers(min_value=1, max_value=4000)),
        "max_completion_tokens": f(st.integers(min_value=1, max_value=4000)),
        "temperature": f(st.floats(min_value=0, max_value=2)),
        "tools": f(st.lists(extra(tool, ["type", "function"]), max_size=2)),
        "tool_choice": f(
            st.one_of(
                st.sampled_from(["auto", "none", "required"]), st.just({"type": "function", "function": {"name": "f"}})
            )
        ),
        "stop": f(st.one_of(text, st.lists(text, max_size=3))),
        "user": f(text),
        "metadata": f(
            st.dictionaries(
                keys if junk else st.sampled_from(["tier", "seats", "team"]),
                values if junk else st.one_of(plain, st.integers(0, 10)),
                max_size=3,
            )
        ),
        "n": f(st.just(1)),
    }
    assert set(fields) | {"messages"} == ACCEPTED  # every accepted field is fuzzed
    required = {"messages": f(st.lists(message, min_size=1, max_size=3))}
    if with_tools:
        required["tools"] = st.lists(tool, min_size=1, max_size=2)
        del fields["tools"]
    body = st.fixed_dictionaries(required, optional=fields)  # type: ignore[arg-type]
    if not junk:
        return body
    return st.builds(
        lambda b, more: {**b, **more},
        body,
        st.dictionaries(st.one_of(keys, st.sampled_from(sorted(UNSUPPORTED))), values, max_size=1),
    )


good_bodies = request_bodies(junk=False)


@st.composite
def one_bad_value(
    draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]], bad: st.SearchStrategy[Any]
) -> dict[str, Any]:
    """A body of `base` with one leaf anywhere in it (a message's content, a value in a tool's schema, a stop
    string, ...) replaced by one of `bad`."""
    body = copy.deepcopy(draw(base))  # st.just() values are shared between examples: never mutate those
    spots: list[tuple[Any, Any]] = []
    stack: list[Any] = [body]
    while stack:
        node = stack.pop()
        pairs = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in pairs:
            if isinstance(child, (dict, list)):
                stack.append(child)
            else:  # a leaf: the bad value stands where a string or number of the right type was
                spots.append((node, key))
    node, key = draw(st.sampled_from(spots))
    node[key] = draw(bad)
    return body


tool_bodies = request_bodies(junk=False, with_tools=True)


def with_schema(body: dict[str, Any], value: Any) -> dict[str, Any]:
    """`body` whose first tool's schema holds `value` (a tool schema is sent upstream as it is)."""
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "maximum": value}}}
    return {**body, "tools": [tool, *body["tools"][1:]]}


bodies = st.one_of(
    good_bodies,  # served, or refused for a combination (a tool message without tool_call_id, ...)
    one_bad_value(good_bodies, st.one_of(surrogates, huge, deep, values)),
    # what once reached a provider and became a 500: a lone surrogate, NaN or deep nesting in what is sent upstream
    one_bad_value(tool_bodies, surrogates),
    st.builds(with_schema, tool_bodies, st.one_of(huge, deep)),
    st.builds(  # a reserved attribute (or a nested stand-in for one) in metadata
        lambda b, k, v: {**b, "metadata": {k: v}},
        good_bodies,
        st.sampled_from([*RESERVED_ATTRS, "budget.left", "spend.today"]),
        st.one_of(values, st.just({"left": 1.0}), st.just({"today": 0.0})),
    ),
    st.builds(lambda b, k, v: {**b, k: v}, good_bodies, st.sampled_from(sorted(ACCEPTED)), values),  # one bad field
    request_bodies(junk=True),  # anything anywhere
    values,  # not even an object
)


# ---- the gateway under test ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def target() -> Iterator[tuple[TestClient, Gateway, Records]]:
    with fuzz_target(POLICY) as target:
        yield target


def check_error_body(r: Any) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "code", "param"}, err
    assert isinstance(err["message"], str) and 0 < len(err["message"]) <= 600, err
    assert isinstance(err["type"], str) and isinstance(err["code"], str), err
    assert err["param"] is None or isinstance(err["param"], str), err
    return err


def check(target: Any, endpoint: str, raw: bytes, hdrs: dict[str, str]) -> None:
    client, gw, records = target
    records.records.clear()
    refused = None
    if len(raw) > gw.max_body:
        refused = ApiError(413, "too large", code="body_too_large")
    else:
        try:
            parse_chat(raw, hdrs)
        except ApiError as err:
            refused = err
    r = client.post(endpoint, content=raw, headers={"content-type": "application/json", **hdrs})
    if currently_in_test_context():  # pytest --hypothesis-show-statistics shows how often each outcome came
        event(f"{r.status_code} {refused.code if refused is not None else 'accepted'}")
    assert_no_error_logged(records)
    assert r.status_code != 500, r.text
    if refused is not None:  # the client's mistake: its 4xx
        assert (r.status_code, check_error_body(r)["code"]) == (refused.status, refused.code), r.text
        assert 400 <= refused.status < 500
    elif r.status_code != 200:
        code = check_error_body(r)["code"]
        if r.status_code >= 500:  # only the deadline the client asked for
            assert (r.status_code, code) == (504, "deadline_exceeded") and DEADLINE_HEADER in hdrs, r.text
        else:
            assert code in ROUTING_CODES, r.text
    elif endpoint == ENDPOINTS[0] and r.headers["content-type"].startswith("text/event-stream"):
        assert r.text.endswith("data: [DONE]\n\n") and "stream_interrupted" not in r.text, r.text[-300:]
    else:
        assert isinstance(r.json(), dict)
    assert_nothing_in_flight(gw)


@settings(max_examples=500)
@given(
    endpoint=st.sampled_from(ENDPOINTS),
    body=bodies,
    hdrs=headers,
    how=hows,
    at=st.integers(min_value=0),
)
def test_generated_requests_get_a_4xx_or_an_answer_never_a_500(
    target: Any, endpoint: str, body: Any, hdrs: dict[str, str], how: int, at: int
) -> None:
    check(target, endpoint, mangle(dump(body), how, at), hdrs)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(
    "raw",
    [  # the issue's list, each once whatever hypothesis draws
        b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"messages": [{"role": "user", "content": "x", "name": 5}]}',
        b'{"messages": [{"role": "tool", "content": "x", "tool_call_id": 5}]}',
        b'{"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", '
        b'"function": {"name": "f", "arguments": {"a": 1}}}]}]}',
        b'{"messages": [{"role": "user", "content": "x"}], "stream": true, '
        b'"tools": [{"type": "function", "function": {"name": "f", "parameters": {"x": NaN}}}]}',
        b'{"messages": [{"role": "user", "content": "\\ud800"}], "stream": true}',
        b'{"messages": [{"role": "user", "content": "x"}], "metadata": {"\\ud800": 1}}',
        b'{"messages": [{"role": "user", "content": "x"}], "metadata": {"x": 1e999}}',
        b'{"messages": [{"role": "user", "content": "x"}], "metadata": {"messages": 1}}',
        b'{"messages": [{"role": "user", "content": "x"}], "metadata": {"budget": {"left": 1}}}',
        b'{"model": "alpha-mini", "messages": [{"role": "user", "content": "x"}], "metadata": {"model": 1}}',
    ],
    ids=lambda raw: raw[:60].decode(errors="replace"),
)
def test_the_issues_bodies(target: Any, endpoint: str, raw: bytes) -> None:
    check(target, endpoint, raw, {})
    with pytest.raises(ApiError):  # and each is a client mistake
        parse_chat(raw, {})
