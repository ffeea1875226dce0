"""The one OpenAI message reader (engine.runtime.messages): message dicts in, typed messages and text out."""

from __future__ import annotations

from typing import Any

import pytest

from engine.runtime.messages import (
    ChatMessage,
    FunctionCall,
    ImageContent,
    MessageError,
    TextContent,
    content_text,
    has_images,
    read_message,
    read_messages,
)
from providers.types import ImagePart, Message, TextPart, ToolCall


def test_roles_contents_and_tool_calls_are_read() -> None:
    read = read_messages(
        [
            {"role": "developer", "content": "be brief"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "u"}}],
            },
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "function": {"name": "f"}}]},
            {"role": "tool", "content": "42", "tool_call_id": "c1", "name": "f"},
        ]
    )
    assert read[0] == ChatMessage("system", "be brief")
    assert read[1].content == (TextContent("a"), ImageContent(url="u")) and read[1].has_images
    assert read[2].tool_calls == (FunctionCall("c1", "f", "{}"),) and read[2].content == ""
    assert read[3].tool_call_id == "c1" and read[3].name == "f"


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ({"role": "wizard"}, "messages[0].role"),
        ({"role": "user", "content": 3}, "messages[0].content"),
        ({"role": "user", "content": [{"type": "text", "text": 1}]}, "messages[0].content"),
        ({"role": "user", "content": ["bare string"]}, "messages[0].content"),
        ({"role": "user", "content": [{"type": "input_audio"}]}, "messages[0].content"),
        ({"role": "assistant", "tool_calls": [{"id": "c"}]}, "messages[0].tool_calls"),
        ({"role": "tool", "content": "x"}, "messages[0].tool_call_id"),
        ("not an object", "messages[0]"),
    ],
)
def test_strict_reading_names_the_field_at_fault(message: Any, param: str) -> None:
    with pytest.raises(MessageError) as info:
        read_messages([message])
    assert info.value.param == param


def test_lenient_reading_takes_what_callers_of_the_api_build() -> None:
    message = {
        "role": "user",
        "content": ["plain", {"type": "input_audio"}, {"type": "image", "data": "AAAA", "mime_type": "image/jpeg"}],
    }
    read = read_message(message, lenient=True)
    assert read.content == (TextContent("plain"), ImageContent(data="AAAA", mime_type="image/jpeg"))
    assert read_message({"role": "tool", "content": "x"}, lenient=True).tool_call_id is None


def test_text_for_token_counting() -> None:
    parts = [{"type": "text", "text": "a"}, "b", {"type": "image_url", "image_url": "u"}, {"type": "text"}]
    assert content_text(parts) == "a\nb\n"
    assert content_text(None) == "" and content_text("x") == "x"
    assert read_message({"role": "user", "content": parts[:2]}, lenient=True).text() == "a\nb"
    assert has_images([{"role": "user", "content": parts}]) and not has_images([{"role": "user", "content": "x"}])


def test_provider_messages_come_from_the_reader() -> None:
    message = Message.from_openai(
        {
            "role": "developer",
            "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "u"}}],
            "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": '{"x": 1}'}}],
        }
    )
    assert message.role == "system"
    assert message.content == [TextPart(text="a"), ImagePart(url="u")]
    assert message.tool_calls == [ToolCall(id="c1", name="f", arguments='{"x": 1}')]
    same = Message.user("hi")
    assert Message.from_openai(same) is same


def test_lenient_reading_keeps_what_the_executor_always_accepted() -> None:
    """Falsy content and tool_calls read as empty (as the executor did before the one reader); an empty list of
    parts is empty text in both modes."""
    from engine.runtime.messages import read_message

    for content in (None, "", [], 0, False, {}):
        assert read_message({"role": "user", "content": content}, lenient=True).content == ""
    for calls in (None, [], {}, "", False):
        assert read_message({"role": "assistant", "tool_calls": calls}, lenient=True).tool_calls == ()
    assert read_message({"role": "user", "content": []}).content == ""
