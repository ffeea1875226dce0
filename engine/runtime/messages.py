"""The OpenAI message reader: OpenAI-format chat message dicts in, typed `ChatMessage`s (and their text, and the
request counts policies read: messages, turns, words) out.

The gateway, the executor and token counting all read messages through `read_message`, so a role alias, an
image, audio or file part shape or a text rule is decided here once. The reader is lenient about shapes the wire
allows (string parts, `image_url` as a string or an object, `developer` for `system`) and raises `MessageError`,
carrying OpenAI's `param` path, for anything it cannot read. An `input_audio` part carries base64 WAV or MP3
bytes; a `file` part a PDF (`file_data`: a `data:application/pdf;base64,` URL or bare base64) or the `file_id`
of a file stored at OpenAI. `input_features` names the catalog features such parts need (`audio`, `files`).
The deprecated function-calling shapes (an assistant `function_call`, a `function` message) are read as a tool
call with a synthetic id and the tool message that answers it (`legacy_functions`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from engine.runtime.features import PART_FEATURES
from engine.runtime.images import parse_data_url

Role = Literal["system", "user", "assistant", "tool"]
# OpenAI role names accepted on the wire and the role each one means
ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}
IMAGE_PART_TYPES = ("image_url", "image", "input_image")
#: The `detail` values of an image part (OpenAI's vision fidelity).
IMAGE_DETAILS = ("auto", "low", "high")
#: The id prefix of the tool call a deprecated assistant `function_call` is read as (then its message index).
FUNCTION_CALL_ID = "call_function_"
#: The `format`s of an input_audio part, and the MIME type each one is sent as where a provider wants one.
AUDIO_FORMATS = {"wav": "audio/wav", "mp3": "audio/mp3"}
#: The MIME types a file part's `file_data` may hold.
FILE_MIME_TYPES = ("application/pdf",)
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


class MessageError(ValueError):
    """A message the reader cannot read; `param` is OpenAI's path to the offending field (`messages[0].role`)."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class TextContent:
    type: ClassVar[str] = "text"
    text: str
    cache_control: Mapping[str, Any] | None = None  # Anthropic's prompt-cache breakpoint, carried as sent


@dataclass(frozen=True)
class ImageContent:
    """An image given by URL or by base64 `data` (with its `mime_type`)."""

    type: ClassVar[str] = "image"
    url: str | None = None
    data: str | None = field(default=None, repr=False)
    mime_type: str = "image/png"
    detail: str | None = None
    cache_control: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class AudioContent:
    """Audio given as base64 `data` in `format` (AUDIO_FORMATS: wav or mp3)."""

    type: ClassVar[str] = "audio"
    data: str = field(repr=False)
    format: str = "wav"

    @property
    def mime_type(self) -> str:
        return AUDIO_FORMATS.get(self.format, "audio/" + self.format)


@dataclass(frozen=True)
class FileContent:
    """A document given as base64 `data` (with its `mime_type`), or by the `file_id` of a file stored at OpenAI."""

    type: ClassVar[str] = "file"
    data: str | None = field(default=None, repr=False)
    mime_type: str = "application/pdf"
    filename: str | None = None
    file_id: str | None = None
    cache_control: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class FunctionCall:
    """A tool call written by an assistant turn; `arguments` is the JSON text as given."""

    id: str
    name: str
    arguments: str = "{}"


ContentPart = TextContent | ImageContent | AudioContent | FileContent


@dataclass(frozen=True)
class ChatMessage:
    """One read message: `content` is a string or a tuple of text, image, audio and file parts."""

    role: Role
    content: str | tuple[ContentPart, ...] = ""
    tool_calls: tuple[FunctionCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    is_error: bool = False  # a tool result that reports a failure (Anthropic's tool_result is_error)

    def text(self) -> str:
        """The text of the content, text parts joined by newlines (other parts are skipped)."""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text for p in self.content if isinstance(p, TextContent))

    @property
    def has_images(self) -> bool:
        return not isinstance(self.content, str) and any(isinstance(p, ImageContent) for p in self.content)


def read_part(part: Any, where: str, *, lenient: bool = False, assistant: bool = False) -> ContentPart | None:
    """One content part (see _read_part), with the part's `cache_control` object (Anthropic's prompt-cache
    breakpoint, which the gateway carries from /v1/messages) when it has one."""
    read = _read_part(part, where, lenient=lenient, assistant=assistant)
    cache = part.get("cache_control") if isinstance(part, Mapping) else None
    if read is None or cache is None:
        return read
    if not isinstance(cache, Mapping):
        if lenient:
            return read
        raise MessageError(f"{where}.cache_control must be an object", f"{where}.cache_control")
    if isinstance(read, AudioContent):
        return read
    return dataclasses.replace(read, cache_control=cache)


def _read_part(part: Any, where: str, *, lenient: bool = False, assistant: bool = False) -> ContentPart | None:
    """One content part: `{"type": "text", "text": ...}`, `{"type": "image_url", "image_url": ...}`,
    `{"type": "input_audio", "input_audio": {"data", "format"}}` or `{"type": "file", "file": {"file_data" or
    "file_id", "filename"?}}`, and in an `assistant` message `{"type": "refusal", "refusal": ...}` (read as the
    assistant's text, as the Responses API's refusal part is); `lenient` also reads bare strings, the
    `image`/`input_image` shapes and a missing text, does not check that base64 decodes, and gives None for a part
    of another type (the caller skips it)."""
    if isinstance(part, str) and lenient:
        return TextContent(part)
    kind = part.get("type") if isinstance(part, Mapping) else None
    text = part.get("text", "" if lenient else None) if isinstance(part, Mapping) else None
    if kind == "text" and isinstance(text, str):
        return TextContent(text)
    if kind == "image_url" or (lenient and kind in IMAGE_PART_TYPES):
        raw = part.get("image_url")
        url = raw.get("url") if isinstance(raw, Mapping) else raw
        url = url or part.get("url") if lenient else url
        data, mime = part.get("data"), part.get("mime_type", "image/png")
        detail = raw.get("detail") if isinstance(raw, Mapping) else part.get("detail")
        if detail is not None and detail not in IMAGE_DETAILS and not lenient:
            raise MessageError(
                f"{where}.image_url.detail must be one of {', '.join(IMAGE_DETAILS)}", f"{where}.image_url.detail"
            )
        if (
            (isinstance(raw, (Mapping, str)) or lenient)
            and (url is None or isinstance(url, str))
            and (data is None or isinstance(data, str))
            and isinstance(mime, str)
        ):
            return ImageContent(url=url, data=data, mime_type=mime, detail=detail if isinstance(detail, str) else None)
    if kind == "input_audio":
        return _audio(part.get("input_audio"), f"{where}.input_audio", lenient)
    if kind == "file":
        return _file(part.get("file"), f"{where}.file", lenient)
    if kind == "refusal" and assistant:  # an earlier answer that refused: sent on as what the assistant said
        refusal = part.get("refusal")
        if isinstance(refusal, str):
            return TextContent(refusal)
        if not lenient:
            raise MessageError(f"{where}.refusal must be a string", f"{where}.refusal")
    if lenient and isinstance(part, Mapping) and kind not in ("text", *IMAGE_PART_TYPES):
        return None
    raise MessageError(f"{where} must be a text, image_url, input_audio or file part", where.rpartition("[")[0])


def _base64(payload: str, where: str, lenient: bool) -> None:
    """Raise MessageError unless `payload` is base64 text (whitespace allowed); lenient: no check."""
    if lenient:
        return
    text = payload if _BASE64.fullmatch(payload) else "".join(payload.split())
    if len(text) % 4 or not _BASE64.fullmatch(text):
        raise MessageError(f"{where} must be base64 data", where)


def _audio(raw: Any, where: str, lenient: bool) -> AudioContent:
    if not isinstance(raw, Mapping):
        raise MessageError(f'{where} must be an object: {{"data": <base64>, "format": "wav" or "mp3"}}', where)
    data, fmt = raw.get("data"), raw.get("format")
    if not isinstance(data, str) or not data:
        raise MessageError(f"{where}.data must be the audio as base64 text", f"{where}.data")
    if not isinstance(fmt, str) or fmt not in AUDIO_FORMATS:
        raise MessageError(f'{where}.format must be "wav" or "mp3"', f"{where}.format")
    _base64(data, f"{where}.data", lenient)
    return AudioContent(data=data, format=fmt)


def _file(raw: Any, where: str, lenient: bool) -> FileContent:
    if not isinstance(raw, Mapping):
        raise MessageError(f'{where} must be an object with "file_data" (a PDF as base64) or "file_id"', where)
    data, file_id, name = raw.get("file_data"), raw.get("file_id"), raw.get("filename")
    if name is not None and not isinstance(name, str):
        raise MessageError(f"{where}.filename must be a string", f"{where}.filename")
    if file_id is not None and (not isinstance(file_id, str) or not file_id):
        raise MessageError(f"{where}.file_id must be a non-empty string", f"{where}.file_id")
    if (data is None) is (file_id is None):
        raise MessageError(f"{where} must have one of file_data (a PDF as base64) and file_id", where)
    if file_id is not None:
        return FileContent(filename=name, file_id=file_id)
    if not isinstance(data, str) or not data:
        raise MessageError(f"{where}.file_data must be a PDF as base64 text", f"{where}.file_data")
    mime, payload = "application/pdf", data
    if data.startswith("data:"):
        parsed = parse_data_url(data)
        if parsed is None or parsed[0] not in FILE_MIME_TYPES or not parsed[1]:
            raise MessageError(
                f"{where}.file_data must be a data:application/pdf;base64,... URL or base64 text (only PDF files "
                "are read)",
                f"{where}.file_data",
            )
        mime, payload = parsed
    _base64(payload, f"{where}.file_data", lenient)
    return FileContent(data=payload, mime_type=mime, filename=name)


def read_content(
    content: Any, where: str, *, lenient: bool = False, assistant: bool = False
) -> str | tuple[ContentPart, ...]:
    """A message content: None or an empty list (empty), a string, or a list of parts (refusal parts too in an
    `assistant` message's); `lenient` skips parts of unknown types and reads any other falsy value as empty."""
    if content is None or (isinstance(content, list) and not content) or (lenient and not content):
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, p in enumerate(content):
            part = read_part(p, f"{where}[{j}]", lenient=lenient, assistant=assistant)
            if part is not None:
                parts.append(part)
        return tuple(parts)
    raise MessageError(f"{where} must be a string or an array of parts", where)


def read_tool_calls(calls: Any, where: str, *, lenient: bool = False) -> tuple[FunctionCall, ...]:
    """The `tool_calls` of an assistant message; `lenient` reads any falsy value as none."""
    if calls is None or (lenient and not calls):
        return ()
    out = []
    for c in calls if isinstance(calls, list) else [None]:
        fn = c.get("function") if isinstance(c, Mapping) else None
        if not (isinstance(c, Mapping) and isinstance(c.get("id"), str) and isinstance(fn, Mapping)):
            raise MessageError(f"{where} must be an array of function calls", where)
        if not isinstance(fn.get("name"), str) or not isinstance(fn.get("arguments"), (str, type(None))):
            raise MessageError(f"{where} must be an array of function calls (name and arguments strings)", where)
        out.append(FunctionCall(id=c["id"], name=fn["name"], arguments=fn.get("arguments") or "{}"))
    return tuple(out)


def legacy_functions(messages: Sequence[Any]) -> list[Any]:
    """`messages` with the deprecated function-calling shapes rewritten (others as they are): an assistant
    `function_call` becomes one tool call whose id is FUNCTION_CALL_ID plus the message's index, and a `function`
    message (`name`, `content`) the tool message answering the latest such call of that name (or, without one, the
    id FUNCTION_CALL_ID plus the name). Raises MessageError for a function_call or function message it cannot
    read."""
    ids: dict[str, str] = {}
    return [_legacy(m, f"messages[{i}]", ids) for i, m in enumerate(messages)]


def _legacy(message: Any, where: str, ids: dict[str, str]) -> Any:
    if not isinstance(message, Mapping):
        return message
    call = message.get("function_call")
    if message.get("role") == "assistant" and call is not None and not message.get("tool_calls"):
        name, arguments = (call.get("name"), call.get("arguments")) if isinstance(call, Mapping) else (None, None)
        if not isinstance(name, str) or not name or not isinstance(arguments, (str, type(None))):
            raise MessageError(
                f"{where}.function_call must be an object with a name and arguments (strings)", f"{where}.function_call"
            )
        call_id = FUNCTION_CALL_ID + re.sub(r"\D", "", where)
        ids[name] = call_id
        rest = {k: v for k, v in message.items() if k != "function_call"}
        return {
            **rest,
            "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments or "{}"}}
            ],
        }
    if message.get("role") == "function":
        name = message.get("name")
        if not isinstance(name, str) or not name:
            raise MessageError(f"{where}: a function message needs the function's `name`", f"{where}.name")
        return {**message, "role": "tool", "tool_call_id": ids.get(name, FUNCTION_CALL_ID + name)}
    return message


def read_message(message: Mapping[str, Any], where: str = "messages[0]", *, lenient: bool = False) -> ChatMessage:
    """One OpenAI-format message dict as a ChatMessage; raises MessageError naming the field at fault.
    `lenient` (the executor's reading of caller-built messages) skips content parts of unknown types. A deprecated
    `function` message or assistant `function_call` is read as legacy_functions does (read_messages pairs them)."""
    if not isinstance(message, Mapping):
        raise MessageError(f"{where} must be an object", where)
    if message.get("role") == "function" or message.get("function_call") is not None:
        message = _legacy(message, where, {})
    raw_role = message.get("role")
    role = ROLES.get(raw_role) if isinstance(raw_role, str) else None
    if role is None:
        raise MessageError(f"{where}.role must be one of {', '.join(ROLES)}, function", f"{where}.role")
    content = read_content(message.get("content"), f"{where}.content", lenient=lenient, assistant=role == "assistant")
    calls = read_tool_calls(message.get("tool_calls"), f"{where}.tool_calls", lenient=lenient)
    call_id = message.get("tool_call_id")
    if role == "tool" and not lenient and not isinstance(call_id, str):
        raise MessageError(f"{where}: a tool message needs a tool_call_id", f"{where}.tool_call_id")
    name = message.get("name")
    return ChatMessage(
        role=role,
        content=content,
        tool_calls=calls,
        tool_call_id=call_id if isinstance(call_id, str) else None,
        name=name if isinstance(name, str) else None,
        is_error=role == "tool" and message.get("is_error") is True,
    )


def read_messages(messages: Iterable[Mapping[str, Any]], *, lenient: bool = False) -> list[ChatMessage]:
    """Every message of a list, each error naming its index (`messages[2].content`)."""
    return [read_message(m, f"messages[{i}]", lenient=lenient) for i, m in enumerate(legacy_functions(list(messages)))]


def content_text(content: Any) -> str:
    """The text of an OpenAI-format content (string or parts) for token counting; unreadable parts count as empty
    (a text part whose `text` is missing or null is empty text)."""
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for part in content if isinstance(content, (list, tuple)) else []:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, Mapping) and part.get("type") == "text":
            text = part.get("text")
            texts.append(text if isinstance(text, str) else "" if text is None else str(text))
    return "\n".join(texts)


def has_images(messages: Iterable[Mapping[str, Any]]) -> bool:
    """Whether any message holds an image part (any of the OpenAI image part shapes; in a read message, an image
    part). Anything that is not a message holds none."""
    for msg in messages:
        if isinstance(msg, Mapping):
            content = msg.get("content")
            if isinstance(content, list) and any(
                isinstance(p, Mapping) and p.get("type") in IMAGE_PART_TYPES for p in content
            ):
                return True
        else:
            content = getattr(msg, "content", None)
            if isinstance(content, (list, tuple)) and any(
                not isinstance(p, (str, Mapping)) and getattr(p, "type", None) in IMAGE_PART_TYPES for p in content
            ):
                return True
    return False


def input_features(messages: Iterable[Any] | None) -> frozenset[str]:
    """The catalog features the content parts of `messages` (OpenAI-format dicts, or read messages) need: `audio`
    for an input_audio part, `files` for a file part (PART_FEATURES); empty for none (or no messages)."""
    found: set[str] = set()
    for msg in messages or ():
        content = msg.get("content") if isinstance(msg, Mapping) else getattr(msg, "content", None)
        if isinstance(content, (list, tuple)):
            for p in content:
                kind = p.get("type") if isinstance(p, Mapping) else getattr(p, "type", None)
                feature = PART_FEATURES.get(kind) if isinstance(kind, str) else None
                if feature is not None:
                    found.add(feature)
    return frozenset(found)


# ---- request counts --------------------------------------------------------------------------------------

#: Request attributes derived from the request itself (reserved: a caller cannot set them): `messages` (how many
#: messages), `turns` (how many of them are user messages), `words` (words in the task text, the last user
#: message). A prompt is one user message.
REQUEST_COUNTS = ("messages", "turns", "words")


def request_counts(
    text: str, messages: Sequence[Any] | None = None, wanted: Iterable[str] = REQUEST_COUNTS
) -> dict[str, int]:
    """The `wanted` counts of a request whose task text is `text`, sent as `messages` (OpenAI-format dicts or read
    ChatMessages; None: a prompt, one user message). Words are runs of non-space characters."""
    out: dict[str, int] = {}
    for name in wanted:
        if name == "messages":
            out[name] = len(messages) if messages is not None else 1
        elif name == "turns":
            out[name] = sum(1 for m in messages if _role(m) == "user") if messages is not None else 1
        elif name == "words":
            out[name] = len(text.split())
    return out


def _role(message: Any) -> str | None:
    role = message.get("role") if isinstance(message, Mapping) else getattr(message, "role", None)
    return ROLES.get(role) if isinstance(role, str) else None


def counts_read(rules: Iterable[Any]) -> frozenset[str]:
    """The request counts (REQUEST_COUNTS) a policy's rules (CompiledRules) read anywhere: in a condition, a `where`
    limit or a score. The request builder derives only these (`words` reads the whole text); CompiledPolicy keeps
    them as `counts`."""
    return frozenset(_names_read(rules)) & frozenset(REQUEST_COUNTS)


def _names_read(rules: Iterable[Any]) -> Iterable[str]:
    """Every request attribute name a policy's rules (CompiledRules) read."""
    from engine.language import nodes as n

    for rule in rules:
        node = rule.node
        if node.cond is not None:
            for atom in n.walk_cond(node.cond):
                operand = getattr(atom, "left", None) or getattr(atom, "operand", None)
                if isinstance(operand, n.Operand) and not operand.builtin and operand.task is None:
                    yield operand.name
        for c in node.action.where:
            if isinstance(c.value, n.Literal) and c.value.kind == "name":
                yield str(c.value.value)
        for r in node.action.rankings:
            yield from (str(t.name) for t in r.terms if t.factor == "attr")
