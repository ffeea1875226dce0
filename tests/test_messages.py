"""The one OpenAI message reader (engine.runtime.messages): message dicts in, typed messages and text out."""

from __future__ import annotations

from typing import Any

import pytest

from engine.runtime.messages import (
    AudioContent,
    ChatMessage,
    FileContent,
    FunctionCall,
    ImageContent,
    MessageError,
    TextContent,
    content_text,
    has_images,
    input_features,
    legacy_functions,
    read_message,
    read_messages,
    read_part,
)
from providers.types import AudioPart, FilePart, ImagePart, Message, TextPart, ToolCall


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
        ({"role": "user", "content": [{"type": "video"}]}, "messages[0].content"),
        ({"role": "user", "content": [{"type": "input_audio"}]}, "messages[0].content[0].input_audio"),
        (
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "ogg"}}]},
            "messages[0].content[0].input_audio.format",
        ),
        (
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "no!", "format": "wav"}}]},
            "messages[0].content[0].input_audio.data",
        ),
        ({"role": "user", "content": [{"type": "file", "file": {}}]}, "messages[0].content[0].file"),
        (
            {"role": "user", "content": [{"type": "file", "file": {"file_data": "data:image/png;base64,AAAA"}}]},
            "messages[0].content[0].file.file_data",
        ),
        (
            {"role": "user", "content": [{"type": "file", "file": {"file_id": "f", "file_data": "AAAA"}}]},
            "messages[0].content[0].file",
        ),
        (
            {"role": "user", "content": [{"type": "file", "file": {"file_id": 7}}]},
            "messages[0].content[0].file.file_id",
        ),
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
        "content": ["plain", {"type": "video"}, {"type": "image", "data": "AAAA", "mime_type": "image/jpeg"}],
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


# ---- the one token counter (engine/runtime/tokens.py, engine/runtime/images.py) -----------------------------------
def _png(width: int, height: int) -> str:
    import base64
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return "data:image/png;base64," + base64.b64encode(raw).decode()


def _b64(raw: bytes) -> str:
    import base64

    return base64.b64encode(raw).decode()


def test_image_sizes_are_read_from_the_bytes_never_fetched(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import struct

    from engine.runtime.images import image_size

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("fetched a URL"))
    jpeg = b"\xff\xd8" + b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + b"\x00" * 9
    jpeg += b"\xff\xe1" + struct.pack(">H", 4002) + b"x" * 4000  # an EXIF segment before the frame
    jpeg += b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, 1080, 1920, 3) + b"\x00" * 9
    gif = b"GIF89a" + struct.pack("<HH", 640, 480) + b"\x00" * 8
    vp8x = b"RIFF" + struct.pack("<I", 30) + b"WEBPVP8X" + struct.pack("<I", 10) + b"\x00" * 4
    vp8x += (799).to_bytes(3, "little") + (599).to_bytes(3, "little")
    vp8l = b"RIFF" + struct.pack("<I", 30) + b"WEBPVP8L" + struct.pack("<I", 10) + b"\x2f"
    vp8l += ((1023) | (767 << 14)).to_bytes(4, "little") + b"\x00" * 8
    assert image_size(_png(4000, 3000)) == (4000, 3000)
    assert image_size(data=_b64(jpeg)) == (1920, 1080)
    assert image_size(f"data:image/gif;base64,{_b64(gif)}") == (640, 480)
    assert image_size(data=_b64(vp8x)) == (800, 600) and image_size(data=_b64(vp8l)) == (1024, 768)
    assert image_size("https://example.invalid/cat.png") is None  # a remote image: its size is not known
    assert image_size("data:image/png;base64,not base64!!") is None and image_size(data="") is None


@pytest.mark.parametrize(
    ("size", "kind", "tokens"),
    [
        ((1024, 1024), "openai", 765),  # OpenAI's own examples: 85 + 170 x 4 tiles
        ((2048, 4096), "openai", 1105),  # 768x1536 after scaling: 6 tiles
        ((300, 200), "openai", 255),
        (None, "openai", 1445),
        ((1000, 1000), "anthropic", 1334),  # Anthropic's table: 1000x1000 is ~1334 tokens
        ((1092, 1092), "anthropic", 1590),
        ((8000, 8000), "anthropic", 1600),
        (None, "anthropic", 1600),
        ((384, 384), "gemini", 1120),  # 258 for Gemini 2, at least 1120 (Gemini 3's default resolution)
        ((3000, 3000), "gemini", 258 * 16),
        (None, "gemini", 1120),
        (None, None, 1600),  # unknown kind: the largest
    ],
)
def test_image_tokens_per_provider_kind(size: tuple[int, int] | None, kind: str | None, tokens: int) -> None:
    from engine.runtime.images import image_tokens

    assert image_tokens(size, kind) == tokens


def test_the_counter_counts_every_part_the_tools_the_schema_and_images() -> None:
    from engine.runtime.tokens import MESSAGE_OVERHEAD, SCHEMA_FRAMING, TOOL_PROMPT, count_request, from_messages

    args = '{"city": "Paris"}'
    messages = [
        {"role": "system", "content": "x" * 40},
        {
            "role": "user",
            "content": [{"type": "text", "text": "y" * 40}, {"type": "image_url", "image_url": _png(1024, 1024)}],
        },
        {"role": "assistant", "tool_calls": [{"id": "c1", "function": {"name": "weather", "arguments": args}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "z" * 400},
    ]
    text = 4 * MESSAGE_OVERHEAD + 10 + 10 + (2 + 5) + (1 + 100)  # "weather" 2, the arguments 5, "c1" 1
    assert from_messages(messages, lambda t: (len(t) + 3) // 4) == ("y" * 40, text + 1399)  # worst: anthropic
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    count = count_request(messages, tools=tools, response_format={"type": "object"}, system="s" * 8)
    tools_tokens = (len('[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}]') + 3) // 4
    base = text + MESSAGE_OVERHEAD + 2 + tools_tokens + SCHEMA_FRAMING + 5
    assert count.for_kind("openai") == base + 765
    assert count.for_kind("anthropic") == base + TOOL_PROMPT["anthropic"] + 1399
    assert count.for_kind("gemini") == base + 1120 and count.worst == count.for_kind("anthropic")
    # read messages (the executor's) count like their dicts
    read = [Message.from_openai(m) for m in messages]
    assert count_request(read).for_kind("openai") == count_request(messages).for_kind("openai")


def test_decide_counts_tool_calls_and_a_custom_estimator_applies_to_text(fixture_catalog: Any) -> None:
    from engine import Engine

    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "a" * 400}}]},
    ]
    engine = Engine.from_source("otherwise use alpha-mini", catalog=fixture_catalog)
    assert engine.decide(messages=messages).tokens == (4 + 1) + (4 + 1 + 100)
    counting = Engine.from_source("otherwise use alpha-mini", catalog=fixture_catalog, token_estimator=lambda t: 7)
    assert counting.decide(messages=messages).tokens == (4 + 7) + (4 + 7 + 7)
    assert counting.count_tokens("hello", tools=[{"x": 1}]).text == 4 + 7 + 7


# ---- audio and file parts (engine/runtime/messages.py, engine/runtime/media.py) -------------------------------------
def _wav(seconds: float, rate: int = 16000) -> bytes:
    """A mono 16-bit PCM WAV file of `seconds` of silence."""
    import struct

    data = b"\x00\x00" * int(rate * seconds)
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + len(data))
        + b"WAVEfmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + (struct.pack("<I", len(data)) + data)
    )


def _mp3(seconds: float, kbps: int = 64) -> bytes:
    """An ID3v2 tag, then MPEG-1 layer III frames (header 0xFFFB, `kbps` bitrate index) for `seconds`."""
    index = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128).index(kbps)
    tag = b"ID3\x04\x00\x00" + bytes([0, 0, 1, 0]) + b"\x00" * 128  # a 128-byte tag (syncsafe size)
    frame = bytes([0xFF, 0xFB, index << 4 | 0x04, 0x00]) + b"\x00" * (144 * kbps * 1000 // 44100 - 4)
    return tag + frame * int(seconds * 44100 / 1152)


def _pdf(pages: int, *, compressed: bool = False) -> bytes:
    """A minimal PDF with `pages` page objects, written plainly or inside a compressed object stream."""
    import zlib

    objects = b"".join(b"%d 0 obj << /Type /Page /Parent 1 0 R >> endobj\n" % (i + 2) for i in range(pages))
    tree = b"1 0 obj << /Type /Pages /Count %d >> endobj\n" % pages
    if compressed:
        body = zlib.compress(objects)
        objects = b"9 0 obj << /Type /ObjStm /Filter /FlateDecode /Length %d >>\nstream\n" % len(body)
        objects += body + b"\nendstream endobj\n"
    return b"%PDF-1.7\n" + tree + objects + b"%%EOF\n"


def test_audio_and_file_parts_are_read_with_their_bytes_and_names() -> None:
    wav, pdf = _b64(_wav(1.0)), _b64(_pdf(2))
    content = [
        {"type": "input_audio", "input_audio": {"data": wav, "format": "wav"}},
        {"type": "file", "file": {"file_data": f"data:application/pdf;base64,{pdf}", "filename": "a.pdf"}},
        {"type": "file", "file": {"file_data": pdf}},  # bare base64: a PDF
        {"type": "file", "file": {"file_id": "file-abc"}},
    ]
    read = read_message({"role": "user", "content": content})
    assert read.content == (
        AudioContent(data=wav, format="wav"),
        FileContent(data=pdf, filename="a.pdf"),
        FileContent(data=pdf),
        FileContent(file_id="file-abc"),
    )
    assert read.text() == "" and not read.has_images and AudioContent(data=wav).mime_type == "audio/wav"
    assert input_features([{"role": "user", "content": content}]) == {"audio", "files"}
    assert input_features([read]) == {"audio", "files"} and input_features(None) == frozenset()
    message = Message.from_openai({"role": "user", "content": content})
    assert message.content == [
        AudioPart(data=wav, format="wav", mime_type="audio/wav"),
        FilePart(data=pdf, filename="a.pdf"),
        FilePart(data=pdf),
        FilePart(file_id="file-abc"),
    ]
    assert input_features([message]) == {"audio", "files"}
    # base64 wrapped over lines (as some encoders write it) is base64 too
    wrapped = "\n".join(wav[i : i + 76] for i in range(0, len(wav), 76))
    assert read_message(
        {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": wrapped, "format": "wav"}}]}
    )


def test_audio_seconds_and_pdf_pages_are_read_from_the_bytes() -> None:
    from engine.runtime.media import BYTES_PER_PAGE, audio_seconds, document_pages

    assert audio_seconds(_b64(_wav(2.0)), "wav") == pytest.approx(2.0, abs=0.01)
    assert audio_seconds(_b64(_wav(3.0, rate=8000)), "wav") == pytest.approx(3.0, abs=0.01)
    assert audio_seconds(_b64(_mp3(10.0)), "mp3") == pytest.approx(10.0, rel=0.05)
    # an unreadable header: the lowest common rate (8,000 bytes/s; 32 kbit/s), so the most seconds
    assert audio_seconds(_b64(b"\x01" * 16000), "wav") == pytest.approx((16000 - 44) / 8000)
    assert audio_seconds(_b64(b"\x01" * 8000), "mp3") == pytest.approx(2.0)
    assert document_pages(_b64(_pdf(3))) == 3
    assert document_pages(_b64(_pdf(12, compressed=True))) == 12
    assert document_pages(_b64(b"x" * (3 * BYTES_PER_PAGE))) == 3  # no page objects: by size
    assert document_pages(_b64(b"x")) == 1


def test_the_counter_counts_audio_and_documents_per_provider_kind() -> None:
    from engine.runtime.media import AUDIO_TOKENS_PER_SECOND, PAGE_TOKENS, UNKNOWN_PAGES
    from engine.runtime.tokens import MESSAGE_OVERHEAD, count_request, from_messages

    content = [
        {"type": "input_audio", "input_audio": {"data": _b64(_wav(10.0)), "format": "wav"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64," + _b64(_pdf(4))}},
        {"type": "file", "file": {"file_id": "file-abc"}},
    ]
    messages = [{"role": "user", "content": content}]
    count = count_request(messages)
    for kind in ("openai", "anthropic", "gemini"):
        media = 10 * AUDIO_TOKENS_PER_SECOND[kind] + (4 + UNKNOWN_PAGES) * PAGE_TOKENS[kind]
        assert count.for_kind(kind) == MESSAGE_OVERHEAD + media, kind
    assert count.worst == max(count.for_kind(k) for k in ("openai", "anthropic", "gemini")) == count.for_kind(None)
    assert from_messages(messages, lambda t: 0)[1] == count.worst
    read = [Message.from_openai(m) for m in messages]  # the executor's messages count like their dicts
    assert count_request(read) == count


def test_legacy_functions_pair_each_function_message_with_the_latest_call_of_its_name() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather twice?"},
        {"role": "assistant", "content": None, "function_call": {"name": "weather", "arguments": '{"city": "A"}'}},
        {"role": "function", "name": "weather", "content": "sunny"},
        {"role": "assistant", "content": None, "function_call": {"name": "weather", "arguments": '{"city": "B"}'}},
        {"role": "function", "name": "weather", "content": "rain"},
    ]
    read = read_messages(messages)
    assert [m.role for m in read] == ["user", "assistant", "tool", "assistant", "tool"]
    assert read[1].tool_calls[0].id == read[2].tool_call_id == "call_function_1"
    assert read[3].tool_calls[0].id == read[4].tool_call_id == "call_function_3"
    assert read[4].name == "weather" and read[4].text() == "rain"
    assert legacy_functions(messages)[0] is messages[0]  # other messages as they are
    with pytest.raises(MessageError) as bad:
        read_messages([{"role": "assistant", "function_call": {"arguments": "{}"}}])
    assert bad.value.param == "messages[0].function_call"


def test_image_detail_and_cache_control_are_kept() -> None:
    part = {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}, "cache_control": {"a": 1}}
    read = read_part(part, "messages[0].content[0]")
    assert isinstance(read, ImageContent) and read.detail == "low" and read.cache_control == {"a": 1}
    message = Message.from_chat(read_message({"role": "user", "content": [part]}))
    assert message.to_openai()["content"] == [
        {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}
    ]
    assert message.cached()


def test_an_azure_provider_is_counted_as_openai() -> None:
    from engine.runtime.tokens import TokenCount

    count = TokenCount(100, images=((1024, 1024),), tools=True)
    assert count.for_kind("azure") == count.for_kind("openai") < count.worst
