"""Gateway request validation (providers.gateway.openai_wire.parse_chat): chat-completions bodies in, a ChatCall
or an OpenAI-style 400 whose `param` names the field at fault out."""

from __future__ import annotations

from typing import Any

import pytest

from providers.gateway.openai_wire import ApiError, parse_chat

U = {"role": "user", "content": "x"}


def _error(body: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse_chat(body, {})
    assert info.value.status == 400 and info.value.message
    return info.value


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        (["a list"], "invalid_json", None),
        ({"messages": [U], "top_p": 1}, "unsupported_field", "top_p"),
        ({"messages": [U], "frobnicate": 1}, "unknown_field", "frobnicate"),
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
        ({"messages": [U], "n": 2}, "invalid_value", "n"),
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
    ],
)
def test_refused_requests_name_the_field(body: Any, code: str, param: str | None) -> None:
    err = _error(body)
    assert (err.code, err.param) == (code, param)


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
