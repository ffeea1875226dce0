"""POST /v1/messages, /v1/responses and /v1/completions against generated request bodies (the idea of
tests/test_gateway_fuzz.py, per endpoint): bodies of the endpoint's own shape with wrong types anywhere, deep
nesting, NaN / Infinity / 1e999, lone surrogates, huge numbers, extra fields, broken bytes and random `x-route-*`
headers in; checked answers of an in-process gateway (upstream: the loopback FakeServer) out.

"No 5xx for a client's mistake", asserted exactly, with the endpoint's own reading of the body (its Wire's
`parse`) as the oracle: a body it refuses gets that 4xx in the endpoint's error shape (Anthropic's for
/v1/messages); a body it accepts gets a 200 or a routing 4xx (only 504 when the client set its own deadline);
no ERROR record is logged, a stream ends properly, and nothing is left in flight."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("starlette", reason="gateway deps not installed (pip install -e '.[test]')")
from hypothesis import currently_in_test_context, event, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from providers.gateway.anthropic_api import MessagesWire, error_type
from providers.gateway.app import Gateway
from providers.gateway.legacy import CompletionsWire, several_prompts
from providers.gateway.openai_wire import DEADLINE_HEADER, ApiError
from providers.gateway.responses_api import ResponsesWire
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
    values,
)

POLICY = fuzz_policy('when endpoint == "messages" and tools use beta-coder')
MODELS = ["auto", "cheap", "alpha-mini", "gpt-4o-mini", "beta-coder", "delta-tiny", "nope", ""]

WIRES: dict[str, Callable[[], Any]] = {
    "/v1/messages": MessagesWire,
    "/v1/responses": ResponsesWire,
    "/v1/completions": CompletionsWire,
}
plain = st.text(max_size=12)
IMAGE_B64 = {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"}


def junk(good: st.SearchStrategy[Any], on: bool) -> st.SearchStrategy[Any]:
    return st.one_of(good, values) if on else good


def messages_bodies(on: bool) -> st.SearchStrategy[dict[str, Any]]:
    """Anthropic Messages bodies; with `on`, any field may hold anything."""
    f = lambda good: junk(good, on)  # noqa: E731
    text_block = st.fixed_dictionaries({"type": st.just("text"), "text": f(plain)})
    image = st.fixed_dictionaries(
        {
            "type": st.just("image"),
            "source": f(st.one_of(st.just(IMAGE_B64), st.just({"type": "url", "url": "https://x.test/a.png"}))),
        }
    )
    result = st.fixed_dictionaries(
        {
            "type": st.just("tool_result"),
            "tool_use_id": f(st.just("t1")),
            "content": f(st.one_of(plain, st.lists(text_block, max_size=2))),
        },
        optional={"is_error": f(st.booleans())},
    )
    use = st.fixed_dictionaries(
        {"type": st.just("tool_use"), "id": f(st.just("t1")), "name": f(st.just("f")), "input": f(st.just({"a": 1}))}
    )
    user = st.fixed_dictionaries(
        {
            "role": st.just("user"),
            "content": f(st.one_of(plain, st.lists(st.one_of(text_block, image, result), max_size=3))),
        }
    )
    assistant = st.fixed_dictionaries(
        {
            "role": f(st.just("assistant")),
            "content": f(st.one_of(plain, st.lists(st.one_of(text_block, use), max_size=2))),
        }
    )
    tool = st.fixed_dictionaries(
        {"name": f(st.sampled_from(["f", "g"])), "input_schema": f(st.just({"type": "object", "properties": {}}))},
        optional={"description": f(plain)},
    )
    choice = st.one_of(
        st.fixed_dictionaries(
            {"type": st.sampled_from(["auto", "any", "none"])}, optional={"disable_parallel_tool_use": st.booleans()}
        ),
        st.just({"type": "tool", "name": "f"}),
    )
    return st.fixed_dictionaries(
        {
            "max_tokens": f(st.integers(1, 4000)),
            "messages": f(st.lists(st.one_of(user, assistant), min_size=1, max_size=3)),
        },
        optional={
            "model": f(st.sampled_from(MODELS)),
            "system": f(st.one_of(plain, st.lists(text_block, max_size=2))),
            "stop_sequences": f(st.lists(plain, max_size=2)),
            "stream": f(st.booleans()),
            "temperature": f(st.floats(0, 1)),
            "top_p": f(st.floats(0, 1)),
            "top_k": f(st.integers(0, 100)),
            "metadata": f(st.fixed_dictionaries({}, optional={"user_id": plain, "tier": st.just("pro")})),
            "tools": f(st.lists(tool, max_size=2)),
            "tool_choice": f(choice),
            "thinking": f(
                st.one_of(
                    st.just({"type": "disabled"}),
                    st.builds(lambda n: {"type": "enabled", "budget_tokens": n}, st.integers(1024, 9000)),
                )
            ),
        },
    )


def responses_bodies(on: bool) -> st.SearchStrategy[dict[str, Any]]:
    """Responses bodies; with `on`, any field may hold anything."""
    f = lambda good: junk(good, on)  # noqa: E731
    part = st.one_of(
        st.fixed_dictionaries({"type": st.just("input_text"), "text": f(plain)}),
        st.fixed_dictionaries(
            {"type": st.just("input_image"), "image_url": f(st.just("data:image/png;base64,iVBORw0K"))}
        ),
    )
    message = st.fixed_dictionaries(
        {
            "role": f(st.sampled_from(["user", "system", "developer", "assistant"])),
            "content": f(st.one_of(plain, st.lists(part, max_size=2))),
        },
        optional={"type": st.just("message")},
    )
    call = st.fixed_dictionaries(
        {
            "type": st.just("function_call"),
            "call_id": f(st.just("c1")),
            "name": f(st.just("f")),
            "arguments": f(st.just("{}")),
        }
    )
    output = st.fixed_dictionaries(
        {"type": st.just("function_call_output"), "call_id": f(st.just("c1")), "output": f(plain)}
    )
    tool = st.fixed_dictionaries(
        {"type": st.just("function"), "name": f(st.sampled_from(["f", "g"]))},
        optional={"parameters": f(st.just({"type": "object"})), "strict": f(st.booleans())},
    )
    fmt = st.one_of(
        st.just({"type": "text"}),
        st.just({"type": "json_object"}),
        st.just({"type": "json_schema", "name": "x", "schema": {"type": "object"}}),
    )
    return st.fixed_dictionaries(
        {"input": f(st.one_of(plain, st.lists(st.one_of(message, call, output), min_size=1, max_size=3)))},
        optional={
            "model": f(st.sampled_from(MODELS)),
            "instructions": f(plain),
            "tools": f(st.lists(tool, max_size=2)),
            "tool_choice": f(
                st.one_of(st.sampled_from(["auto", "none", "required"]), st.just({"type": "function", "name": "f"}))
            ),
            "text": f(st.fixed_dictionaries({"format": fmt})),
            "max_output_tokens": f(st.integers(1, 4000)),
            "temperature": f(st.floats(0, 2)),
            "top_p": f(st.floats(0, 1)),
            "metadata": f(st.dictionaries(st.sampled_from(["tier", "seats"]), plain, max_size=2)),
            "store": f(st.just(False)),
            "stream": f(st.booleans()),
        },
    )


def completions_bodies(on: bool) -> st.SearchStrategy[dict[str, Any]]:
    """Legacy completions bodies; with `on`, any field may hold anything."""
    f = lambda good: junk(good, on)  # noqa: E731
    return st.fixed_dictionaries(
        {"prompt": f(st.one_of(plain, st.lists(plain, min_size=1, max_size=3)))},
        optional={
            "model": f(st.sampled_from(MODELS)),
            "max_tokens": f(st.integers(1, 4000)),
            "temperature": f(st.floats(0, 2)),
            "stop": f(st.one_of(plain, st.lists(plain, max_size=2))),
            "n": f(st.just(1)),
            "stream": f(st.booleans()),
            "echo": f(st.booleans()),
            "user": f(plain),
            "metadata": f(st.dictionaries(keys, values, max_size=2)),
        },
    )


SHAPES = {"/v1/messages": messages_bodies, "/v1/responses": responses_bodies, "/v1/completions": completions_bodies}


@st.composite
def one_bad_leaf(draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A body of `base` with one leaf anywhere replaced by a surrogate, a huge number or deep nesting."""
    body = copy.deepcopy(draw(base))
    spots: list[tuple[Any, Any]] = []
    stack: list[Any] = [body]
    while stack:
        node = stack.pop()
        for key, child in node.items() if isinstance(node, dict) else enumerate(node):
            if isinstance(child, (dict, list)):
                stack.append(child)
            else:
                spots.append((node, key))
    node, key = draw(st.sampled_from(spots))
    node[key] = draw(st.one_of(surrogates, huge, deep, values))
    return body


def bodies(endpoint: str) -> st.SearchStrategy[Any]:
    shape = SHAPES[endpoint]
    return st.one_of(
        shape(False),  # served, or refused for a combination
        shape(False),
        one_bad_leaf(shape(False)),
        st.builds(
            lambda b, k, v: {**b, k: v},
            shape(False),
            st.one_of(keys, st.sampled_from(["store", "suffix", "foo"])),
            values,
        ),
        shape(True),
        values,
    )


@pytest.fixture(scope="module")
def target() -> Iterator[tuple[TestClient, Gateway, Records]]:
    with fuzz_target(POLICY) as target:
        yield target


def error_of(endpoint: str, r: Any) -> str:
    """The error body's type, checked against the endpoint's shape."""
    body = r.json()
    if endpoint == "/v1/messages":
        assert set(body) == {"type", "error"} and body["type"] == "error", body
        err = body["error"]
        assert set(err) == {"type", "message"} and err["type"] == error_type(r.status_code), body
    else:
        assert set(body) == {"error"}, body
        err = body["error"]
        assert set(err) == {"message", "type", "code", "param"} and isinstance(err["code"], str), err
    assert isinstance(err["message"], str) and 0 < len(err["message"]) <= 600, err
    return str(err.get("code") or err["type"])


def check(target: Any, endpoint: str, raw: bytes, hdrs: dict[str, str]) -> None:
    client, gw, records = target
    records.records.clear()
    refused = None
    if len(raw) > gw.max_body:
        refused = ApiError(413, "too large")
    else:
        try:  # several prompts are answered as one request each: each is read on its own
            parts = several_prompts(raw) if endpoint == "/v1/completions" else None
            for part in parts or [raw]:
                WIRES[endpoint]().parse(part, hdrs)
        except ApiError as err:
            refused = err
    r = client.post(endpoint, content=raw, headers={"content-type": "application/json", **hdrs})
    if currently_in_test_context():  # pytest --hypothesis-show-statistics shows how often each outcome came
        event(f"{endpoint} {r.status_code} {'refused' if refused is not None else 'accepted'}")
    assert_no_error_logged(records)
    assert r.status_code != 500, r.text
    if refused is not None:
        assert r.status_code == refused.status and 400 <= r.status_code < 500, r.text
        error_of(endpoint, r)
    elif r.status_code != 200:
        error_of(endpoint, r)
        assert r.status_code < 500 or (r.status_code == 504 and DEADLINE_HEADER in hdrs), r.text
    elif r.headers["content-type"].startswith("text/event-stream"):
        end = {
            "/v1/messages": "event: message_stop",
            "/v1/responses": '"response.completed"',
            "/v1/completions": "data: [DONE]",
        }[endpoint]
        assert end in r.text[-3000:] and "stream_interrupted" not in r.text, r.text[-300:]
    else:
        assert isinstance(r.json(), dict)
    assert_nothing_in_flight(gw)


@settings(max_examples=450, deadline=None)
@given(
    case=st.sampled_from(sorted(WIRES)).flatmap(lambda e: st.tuples(st.just(e), bodies(e))),
    hdrs=headers,
    how=hows,
    at=st.integers(min_value=0),
)
def test_generated_requests_get_a_4xx_or_an_answer_never_a_500(
    target: Any, case: tuple[str, Any], hdrs: dict[str, str], how: int, at: int
) -> None:
    endpoint, body = case
    check(target, endpoint, mangle(dump(body), how, at), hdrs)


#: A minimal valid body per endpoint, as JSON text with `{}` where a hostile value goes.
TEMPLATES = {
    "/v1/messages": '{{"max_tokens": 5, "messages": [{{"role": "user", "content": {}}}]}}',
    "/v1/responses": '{{"input": [{{"role": "user", "content": {}}}]}}',
    "/v1/completions": '{{"prompt": {}}}',
}
HOSTILE = ['"\\ud800"', "1e999", "NaN", "[" * 100_000 + "]" * 100_000, '{"\\udc00": 1}', "9" * 5000]


@pytest.mark.parametrize("endpoint", sorted(WIRES))
@pytest.mark.parametrize("value", HOSTILE, ids=lambda v: v[:30])
def test_hostile_values(target: Any, endpoint: str, value: str) -> None:
    raw = TEMPLATES[endpoint].format(value).encode()
    check(target, endpoint, raw, {})
    with pytest.raises(ApiError):  # each is a client mistake
        WIRES[endpoint]().parse(raw, {})
