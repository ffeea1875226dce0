"""Reading an Anthropic Messages request (POST /v1/messages and /v1/messages/count_tokens): its JSON body in, the
equivalent OpenAI chat-completions body out (system as the first message, content blocks as content parts, a PDF
document as a file part, tool_use as tool_calls, tool_result as tool messages, tool_choice / output_config as their
chat counterparts, top_k and thinking as the extension fields of providers/clients/params.py), or
ApiError 400 naming the field in Anthropic's words. providers/gateway/anthropic_api.py renders the answers."""

from __future__ import annotations

import json
from typing import Any

from providers.gateway.jsonbody import object_at, text_at
from providers.gateway.openai_wire import ApiError

__all__ = ["to_chat", "to_count"]

# the fields of a Messages request; `service_tier`, `container`, `diagnostics`, `inference_geo` and `speed` (how
# Anthropic's own service runs a request) are accepted and not sent on; `cache_control` is carried (to Anthropic)
_FIELDS = frozenset(
    {
        "model",
        "max_tokens",
        "messages",
        "system",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "metadata",
        "tools",
        "tool_choice",
        "thinking",
        "output_config",
        "service_tier",
        "container",
        "cache_control",
        "diagnostics",
        "inference_geo",
        "speed",
    }
)
# output_config.effort -> the OpenAI reasoning_effort (Anthropic's `max` is OpenAI's `xhigh`)
_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh", "max": "xhigh"}


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_value")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _image(block: dict[str, Any], where: str) -> dict[str, Any]:
    """An Anthropic image block as an OpenAI image_url part (base64 as a data: URL)."""
    source = object_at(block.get("source"), f"{where}.source")
    kind = source.get("type")
    if kind == "base64":
        media = text_at(source.get("media_type"), f"{where}.source.media_type")
        data = text_at(source.get("data"), f"{where}.source.data")
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
    if kind == "url":
        return {"type": "image_url", "image_url": {"url": text_at(source.get("url"), f"{where}.source.url")}}
    raise _bad(f'`{where}.source.type` must be "base64" or "url"', f"{where}.source.type")


def _document(block: dict[str, Any], where: str) -> dict[str, Any]:
    """An Anthropic document block as an OpenAI part: a base64 PDF as a `file` part (its title the filename), a
    plain-text document as a text part."""
    source = object_at(block.get("source"), f"{where}.source")
    kind = source.get("type")
    if kind == "text":
        return {"type": "text", "text": text_at(source.get("data"), f"{where}.source.data")}
    if kind != "base64":
        raise _bad(f'`{where}.source.type` must be "base64" (a PDF) or "text"', f"{where}.source.type")
    media = text_at(source.get("media_type"), f"{where}.source.media_type")
    if media != "application/pdf":
        raise _bad(f'`{where}.source.media_type` must be "application/pdf"', f"{where}.source.media_type")
    file = {"file_data": f"data:{media};base64,{text_at(source.get('data'), f'{where}.source.data')}"}
    if block.get("title") is not None:
        file["filename"] = text_at(block["title"], f"{where}.title")
    return {"type": "file", "file": file}


def _cached(part: dict[str, Any], block: dict[str, Any], where: str) -> dict[str, Any]:
    """`part` with the block's `cache_control` (an object), which the Anthropic client sends back and other kinds
    name as dropped."""
    if block.get("cache_control") is None:
        return part
    return {**part, "cache_control": object_at(block["cache_control"], f"{where}.cache_control")}


def _tool_result(block: dict[str, Any], where: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A tool_result block as an OpenAI tool message, and the image parts it held (sent after it as user parts)."""
    call_id = text_at(block.get("tool_use_id"), f"{where}.tool_use_id")
    content = block.get("content", "")
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for j, part in enumerate(content):
            here = f"{where}.content[{j}]"
            part = object_at(part, here)
            if part.get("type") == "text":
                texts.append(text_at(part.get("text"), f"{here}.text"))
            elif part.get("type") == "image":
                images.append(_image(part, here))
            else:
                raise _bad(f'`{here}.type` must be "text" or "image"', f"{here}.type")
    elif content is not None:
        raise _bad(f"`{where}.content` must be a string or an array of blocks", f"{where}.content")
    tool: dict[str, Any] = {"role": "tool", "tool_call_id": call_id, "content": "\n".join(texts)}
    if block.get("is_error") is True:  # kept for an Anthropic upstream; "Error: " text for the others
        tool["is_error"] = True
    return tool, images


def _tool_use(block: dict[str, Any], where: str) -> dict[str, Any]:
    name = text_at(block.get("name"), f"{where}.name")
    call_id = text_at(block.get("id"), f"{where}.id")
    arguments = object_at(block.get("input", {}), f"{where}.input")
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


def _message(m: Any, i: int) -> list[dict[str, Any]]:
    """One Anthropic message as OpenAI chat messages (tool results become tool messages, first)."""
    where = f"messages[{i}]"
    m = object_at(m, where)
    role = m.get("role")
    if role not in ("user", "assistant"):
        raise _bad(f'`{where}.role` must be "user" or "assistant"', f"{where}.role")
    content = m.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise _bad(f"`{where}.content` must be a string or an array of content blocks", f"{where}.content")
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        here = f"{where}.content[{j}]"
        block = object_at(block, here)
        kind = block.get("type")
        if kind == "text":
            parts.append(_cached({"type": "text", "text": text_at(block.get("text"), f"{here}.text")}, block, here))
        elif kind == "image" and role == "user":
            parts.append(_cached(_image(block, here), block, here))
        elif kind == "document" and role == "user":
            parts.append(_cached(_document(block, here), block, here))
        elif kind == "tool_result" and role == "user":
            tool, images = _tool_result(block, here)
            out.append(tool)
            parts.extend(images)
        elif kind == "tool_use" and role == "assistant":
            calls.append(_tool_use(block, here))
        elif kind in ("thinking", "redacted_thinking") and role == "assistant":
            continue  # the provider's own reasoning record: not sent on (docs/gateway.md)
        else:
            allowed = "text, image, document, tool_result" if role == "user" else "text, tool_use, thinking"
            raise _bad(f"`{here}.type` must be one of {allowed} in a {role} message", f"{here}.type")
    if role == "assistant":
        text = "".join(p["text"] for p in parts)
        msg: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
        if calls:
            msg["tool_calls"] = calls
        return [msg]
    if parts or not out:
        out.append({"role": "user", "content": parts})
    return out


def _system(system: Any) -> str | list[dict[str, Any]] | None:
    """The system message's content: the text (blocks joined by blank lines), or its text parts when a block has a
    `cache_control` breakpoint."""
    if system is None or isinstance(system, str):
        return system or None
    if not isinstance(system, list):
        raise _bad("`system` must be a string or an array of text blocks", "system")
    parts = []
    for j, block in enumerate(system):
        block = object_at(block, f"system[{j}]")
        if block.get("type") != "text":
            raise _bad(f'`system[{j}].type` must be "text"', f"system[{j}].type")
        part = {"type": "text", "text": text_at(block.get("text"), f"system[{j}].text")}
        parts.append(_cached(part, block, f"system[{j}]"))
    if any("cache_control" in p for p in parts):
        return parts
    return "\n\n".join(p["text"] for p in parts) or None


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _bad("`tools` must be an array of tools", "tools")
    out = []
    for j, tool in enumerate(tools):
        where = f"tools[{j}]"
        tool = object_at(tool, where)
        if tool.get("type", "custom") != "custom":
            raise _bad(f"`{where}`: server tools ({str(tool.get('type'))[:40]}) are not served by this gateway", where)
        function: dict[str, Any] = {"name": text_at(tool.get("name"), f"{where}.name")}
        if tool.get("description") is not None:
            function["description"] = text_at(tool["description"], f"{where}.description")
        function["parameters"] = object_at(tool.get("input_schema"), f"{where}.input_schema")
        if tool.get("strict") is not None:
            function["strict"] = tool["strict"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any, body: dict[str, Any]) -> None:
    """Anthropic's tool_choice as the chat fields tool_choice and parallel_tool_calls, into `body`."""
    choice = object_at(choice, "tool_choice")
    kind = choice.get("type")
    if kind == "tool":
        body["tool_choice"] = {
            "type": "function",
            "function": {"name": text_at(choice.get("name"), "tool_choice.name")},
        }
    elif kind in ("auto", "any", "none"):
        body["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
    else:
        raise _bad('`tool_choice.type` must be "auto", "any", "tool" or "none"', "tool_choice.type")
    if choice.get("disable_parallel_tool_use") is True:
        body["parallel_tool_calls"] = False


def _thinking(thinking: Any, body: dict[str, Any]) -> None:
    """`thinking` as the `thinking` extension field (providers/clients/params.py: the exact budget to Anthropic and
    Gemini, a reasoning_effort to OpenAI kinds)."""
    thinking = object_at(thinking, "thinking")
    kind = thinking.get("type")
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
            raise _bad("`thinking.budget_tokens` must be a positive integer", "thinking.budget_tokens")
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    elif kind in ("disabled", "adaptive"):
        body["thinking"] = {"type": kind}
    else:
        raise _bad('`thinking.type` must be "enabled", "disabled" or "adaptive"', "thinking.type")


def _output_config(config: Any, body: dict[str, Any]) -> None:
    config = object_at(config, "output_config")
    if config.get("effort") is not None:
        effort = _EFFORTS.get(config["effort"]) if isinstance(config["effort"], str) else None
        if effort is None:
            raise _bad("`output_config.effort` must be one of low, medium, high, max", "output_config.effort")
        body["reasoning_effort"] = effort
    fmt = config.get("format")
    if fmt is not None:
        fmt = object_at(fmt, "output_config.format")
        if fmt.get("type") != "json_schema":
            raise _bad('`output_config.format.type` must be "json_schema"', "output_config.format.type")
        schema = object_at(fmt.get("schema"), "output_config.format.schema")
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}


def to_chat(req: dict[str, Any]) -> dict[str, Any]:
    """A Messages request body as the equivalent chat-completions body (raises ApiError 400)."""
    unknown = sorted(map(str, set(req) - _FIELDS))
    if unknown:
        raise ApiError(400, f"{unknown[0][:64]}: Extra inputs are not permitted", param=unknown[0][:64])
    max_tokens = req.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise _bad("`max_tokens` is required: a positive integer", "max_tokens")
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("`messages` must be a non-empty array of messages", "messages")
    body: dict[str, Any] = {"model": req.get("model", "auto"), "max_tokens": max_tokens}
    system = _system(req.get("system"))
    chat = [{"role": "system", "content": system}] if system else []
    for i, m in enumerate(messages):
        chat += _message(m, i)
    body["messages"] = chat
    if req.get("stream") is not None:
        body["stream"] = req["stream"]
    stops = req.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _bad("`stop_sequences` must be an array of strings", "stop_sequences")
        if stops:
            body["stop"] = stops
    temperature = req.get("temperature")
    if temperature is not None:
        if not _is_number(temperature) or not 0 <= temperature <= 1:
            raise _bad("`temperature` must be a number from 0 to 1", "temperature")
        body["temperature"] = temperature
    if req.get("top_p") is not None:
        body["top_p"] = req["top_p"]
    top_k = req.get("top_k")  # an extension field: Anthropic and Gemini get it, an OpenAI kind drops and names it
    if top_k is not None:
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0:
            raise _bad("`top_k` must be a non-negative integer", "top_k")
        body["top_k"] = top_k
    metadata = req.get("metadata")
    if metadata is not None:
        metadata = dict(object_at(metadata, "metadata"))
        user = metadata.pop("user_id", None)
        if user is not None:
            body["user"] = text_at(user, "metadata.user_id")
        if metadata:  # beyond Anthropic's user_id: request attributes, as chat's metadata
            body["metadata"] = metadata
    if req.get("tools"):
        body["tools"] = _tools(req["tools"])
    if req.get("tool_choice") is not None:
        _tool_choice(req["tool_choice"], body)
    if req.get("thinking") is not None:
        _thinking(req["thinking"], body)
    if req.get("cache_control") is not None:  # an extension field: Anthropic's automatic prompt caching
        body["cache_control"] = object_at(req["cache_control"], "cache_control")
    if req.get("output_config") is not None:
        _output_config(req["output_config"], body)
    return body


def to_count(req: dict[str, Any]) -> dict[str, Any]:
    """A count_tokens body (a Messages body without max_tokens and stream) as the equivalent chat body."""
    extra = sorted({"max_tokens", "stream"} & set(req))
    if extra:
        raise ApiError(400, f"{extra[0]}: Extra inputs are not permitted", param=extra[0])
    return to_chat({**{k: v for k, v in req.items() if k != "output_format"}, "max_tokens": 1})
