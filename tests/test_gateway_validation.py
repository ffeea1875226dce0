"""Gateway request validation (providers.gateway.openai_wire.parse_chat): chat-completions bodies in, a ChatCall
or an OpenAI-style 400 whose `param` names the field at fault out."""

from __future__ import annotations

from typing import Any

import pytest

from providers.gateway.openai_wire import ApiError, parse_chat

U = {"role": "user", "content": "x"}
ANY = "<any path>"  # a `param` the test does not pin down (it must name some field)


def _deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    return value


def _error(body: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse_chat(body, {})
    assert info.value.status == 400 and info.value.message
    return info.value


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        (["a list"], "invalid_json", None),
        ({"messages": [U], "top_p": 2}, "invalid_value", "top_p"),
        ({"messages": [U], "response_format": {"type": "xml"}}, "invalid_value", "response_format.type"),
        ({}, "invalid_value", "messages"),
        ({"messages": []}, "invalid_value", "messages"),
        ({"messages": [U], "model": ""}, "invalid_value", "model"),
        ({"messages": [U], "model": 3}, "invalid_value", "model"),
        ({"messages": [U, {"role": "wizard"}]}, "invalid_value", "messages[1].role"),
        ({"messages": [{"role": "user", "content": 3}]}, "invalid_value", "messages[0].content"),
        ({"messages": [{"role": "user", "content": ["s"]}]}, "invalid_value", "messages[0].content"),
        ({"messages": [{"role": "tool", "content": "r"}]}, "invalid_value", "messages[0].tool_call_id"),
        ({"messages": [{"role": "assistant", "tool_calls": {}}]}, "invalid_value", "messages[0].tool_calls"),
        ({"messages": [U], "stream": 1}, "invalid_value", "stream"),
        ({"messages": [U], "stream_options": []}, "invalid_value", "stream_options"),
        ({"messages": [U], "stream_options": {"x": 1}}, "invalid_value", "stream_options.x"),
        ({"messages": [U], "n": 0}, "invalid_value", "n"),
        ({"messages": [U], "n": 2, "stream": True}, "invalid_value", "n"),
        ({"messages": [U], "max_tokens": 0}, "invalid_value", "max_tokens"),
        ({"messages": [U], "max_tokens": True}, "invalid_value", "max_tokens"),
        ({"messages": [U], "max_completion_tokens": 1.5}, "invalid_value", "max_completion_tokens"),
        ({"messages": [U], "temperature": 2.5}, "invalid_value", "temperature"),
        ({"messages": [U], "temperature": True}, "invalid_value", "temperature"),
        ({"messages": [U], "temperature": "1"}, "invalid_value", "temperature"),
        ({"messages": [U], "tools": [{"type": "x", "function": {"name": "f"}}]}, "invalid_value", "tools[0].type"),
        ({"messages": [U], "tools": [{"function": {}}]}, "invalid_value", "tools[0].function.name"),
        ({"messages": [U], "tool_choice": 3}, "invalid_value", "tool_choice"),
        ({"messages": [U], "tool_choice": {"function": {}}}, "invalid_value", "tool_choice"),
        ({"messages": [U], "stop": ["a", 1]}, "invalid_value", "stop"),
        ({"messages": [U], "user": 3}, "invalid_value", "user"),
        ({"messages": [U], "metadata": []}, "invalid_value", "metadata"),
        ({"messages": [U], "metadata": {"tokens": 1}}, "reserved_attribute", None),
        # found by attacking the gateway: each of these once reached a provider call and became a 500
        ({"messages": [{"role": ["user"], "content": "x"}]}, "invalid_value", "messages[0].role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "u", "data": 5}]}]},
            "invalid_value",
            "messages[0].content",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "u", "mime_type": None}]}]},
            "invalid_value",
            "messages[0].content",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "c", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}
                        ],
                    }
                ]
            },
            "invalid_value",
            "messages[0].tool_calls",
        ),
        (
            {"messages": [U], "tools": [{"type": "function", "function": {"name": ""}}]},
            "invalid_value",
            "tools[0].function.name",
        ),
        ({"messages": [U], "max_tokens": 10**400}, "invalid_value", "max_tokens"),
        # issue 14: every malformed request is a 400, never a 500 (each of these was one, or reached a provider)
        ({"messages": [{**U, "name": 5}]}, "invalid_value", "messages[0].name"),
        ({"messages": [U, {"role": "tool", "content": "r", "tool_call_id": "c", "name": []}]}, "invalid_value", ANY),
        ({"messages": [{**U, "tool_call_id": 5}]}, "invalid_value", "messages[0].tool_call_id"),
        (
            {"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": 3, "function": {"name": "f"}}]}]},
            "invalid_value",
            "messages[0].tool_calls[0].type",
        ),
        ({"messages": [{"role": "user", "content": "a\ud800b"}]}, "invalid_value", "messages[0].content"),
        ({"messages": [U], "metadata": {"\udfff": 1}}, "invalid_value", "metadata.\udfff"),
        ({"messages": [U], "stop": ["\ud800"]}, "invalid_value", "stop[0]"),
        ({"messages": [U], "metadata": {"x": float("nan")}}, "invalid_value", "metadata.x"),
        (
            {"messages": [U], "tools": [{"function": {"name": "f", "parameters": {"x": float("inf")}}}]},
            "invalid_value",
            ANY,
        ),
        ({"messages": [U], "metadata": {"x": _deep(64)}}, "invalid_value", "metadata"),
        ({"messages": [U], "tools": [{"function": {"name": "f", "parameters": _deep(70)}}]}, "invalid_value", "tools"),
        ({"messages": [U], "tools": [{"function": {"name": "f", "description": 5}}]}, "invalid_value", ANY),
        ({"messages": [U], "tools": [{"function": {"name": "f", "parameters": []}}]}, "invalid_value", ANY),
        ({"messages": [U], "tool_choice": "sometimes"}, "invalid_value", "tool_choice"),
        ({"messages": [U], "tool_choice": "required"}, "invalid_value", "tool_choice"),
        ({"messages": [U], "tool_choice": {"type": "function", "function": {"name": "g"}}}, "invalid_value", ANY),
        ({"messages": [U], "stream_options": {"include_usage": "yes"}}, "invalid_value", ANY),
        ({"messages": [U], "n": True}, "invalid_value", "n"),
        ({"messages": [U], "seed": 1.5}, "invalid_value", "seed"),
        # reserved attributes, nested shadows of them, and decide()'s own arguments
        ({"messages": [U], "metadata": {"max_tokens": 1}}, "reserved_attribute", None),
        ({"messages": [U], "metadata": {"budget": {"left": 1}}}, "reserved_attribute", None),
        ({"messages": [U], "metadata": {"budget.left": 1}}, "reserved_attribute", None),
        ({"messages": [U], "metadata": {"spend": {"today": 0}}}, "reserved_attribute", None),
        ({"messages": [U], "metadata": {"messages": 1}}, "reserved_attribute", None),
        ({"messages": [U], "metadata": {"prompt": "x"}}, "reserved_attribute", None),
        ({"messages": [U], "metadata": {"self": 1}}, "reserved_attribute", None),
        ({"messages": [U], "metadata": {"model": 1}}, "reserved_attribute", None),
    ],
)
def test_refused_requests_name_the_field(body: Any, code: str, param: Any) -> None:
    err = _error(body)
    assert (err.code, err.param) == (code, err.param if param is ANY else param)
    assert err.param or param is None  # ANY: names the field at fault, whatever its exact path
    assert len(err.message) <= 200, err.message  # short: a client-given name is cut


@pytest.mark.parametrize(
    ("raw", "code", "message"),
    [
        (b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', "invalid_json", "NaN"),
        (b'{"messages": [{"role": "user", "content": "x"}], "metadata": {"x": -Infinity}}', "invalid_json", "Infinity"),
        (b'{"messages": [{"role": "user", "content": "x"}], "metadata": {"x": 1e999}}', "invalid_value", "1e999"),
        (b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "invalid_value", "lone surrogate"),
        (b'{"messages": [{"role": "user", "content": "\xed\xa0\x80"}]}', "invalid_json", "not UTF-8"),
        (b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "invalid_json", "nested too deeply"),
        (
            b'{"messages": [{"role": "user", "content": "x"}], "metadata": ' + b'{"a": ' * 80 + b"1" + b"}" * 81,
            "invalid_value",
            "nested too deeply",
        ),
        (b"", "invalid_json", "malformed JSON"),
        (b'{"a": 1} x', "invalid_json", "Extra data"),
        (b'{"a": ' + b"9" * 5000 + b"}", "invalid_json", "malformed JSON"),
    ],
)
def test_refused_request_bytes(raw: bytes, code: str, message: str) -> None:
    """The gateway hands parse_chat the body's bytes: what Python's json accepts but JSON sent upstream cannot carry
    (NaN, Infinity, 1e999, lone surrogates) is refused there, as is nesting deeper than MAX_DEPTH."""
    with pytest.raises(ApiError) as info:
        parse_chat(raw, {})
    err = info.value
    assert err.status == 400 and err.code == code and message in err.message, err.message
    assert len(err.message) <= 200


def test_escaped_surrogate_pairs_and_escaped_backslashes_are_fine() -> None:
    raw = b'{"messages": [{"role": "user", "content": "\\ud83d\\ude00 and \\\\ud800"}]}'
    call = parse_chat(raw, {})
    assert call.messages[0]["content"] == "\U0001f600 and \\ud800"


@pytest.mark.parametrize("header", ["x-route-max-tokens", "x-route-tokens", "x-route-budget.left", "x-route-budget"])
def test_reserved_attributes_cannot_come_from_headers(header: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_chat({"messages": [U]}, {header: "1"})
    assert info.value.code == "reserved_attribute" and header in info.value.message


@pytest.mark.parametrize(
    "value", ["NaN", "1e999", '"\\ud800"', '{"a": "\\udc00"}', "[" * 65 + "]" * 65, "[" * 5000 + "]" * 5000]
)
def test_a_header_value_json_cannot_carry_is_taken_as_text(value: str) -> None:
    assert parse_chat({"messages": [U]}, {"x-route-tier": value}).attrs["tier"] == value


def test_an_accepted_request_is_read_into_a_call() -> None:
    body = {
        "model": "auto",
        "messages": [{"role": "developer", "content": "s"}, U],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 3,
        "max_completion_tokens": 7,
        "temperature": 1,
        "tools": [{"function": {"name": "f", "parameters": {}}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "stop": "END",
        "user": "u1",
        "metadata": {"team": "a"},
        "n": 1,
    }
    call = parse_chat(body, {"X-Route-Tier": "2", "x-other": "ignored"})
    assert call.auto and call.stream and call.include_usage
    assert call.messages == [{"role": "system", "content": "s"}, U]
    assert call.options == {
        "max_tokens": 7,
        "temperature": 1.0,
        "tools": body["tools"],
        "tool_choice": "f",
        "stop": ["END"],
        "params": {"user": "u1", "metadata": {"team": "a"}, "n": 1},
    }
    assert call.attrs == {"user": "u1", "team": "a", "metadata": {"team": "a"}, "tier": 2}


def test_defaults_and_empty_options() -> None:
    call = parse_chat({"messages": [U], "tools": [], "max_completion_tokens": None, "max_tokens": 5}, {})
    assert call.model == "auto" and not call.stream and call.options == {} and call.attrs == {}


def test_a_deeply_nested_route_header_is_taken_as_text() -> None:
    """`x-route-*` values are JSON when they parse; one nested too deeply to parse is the raw string, not a 500."""
    deep = "[" * 50_000 + "]" * 50_000
    call = parse_chat({"messages": [U]}, {"x-route-tier": deep})
    assert call.attrs["tier"] == deep
