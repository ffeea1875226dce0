"""The Responses request for the gateway: a Responses API request body (POST /v1/responses) in, the equivalent
chat-completions body out, which parse_chat checks into the ChatCall every endpoint executes; its mistakes raise
ApiError 400, and `_renamed` names the fields of parse_chat's errors as the Responses request spells them. Nothing is
stored: `store: true`, `previous_response_id`, `conversation` and stored prompts are refused with a 400 that says
so."""

from __future__ import annotations

from typing import Any

from providers.gateway.jsonbody import object_at, text_at
from providers.gateway.openai_wire import ApiError

__all__ = ["to_chat"]

# sent on as the chat fields of the same name
_PASSED = ("model", "stream", "temperature", "top_p", "parallel_tool_calls", "metadata", "user")
_PASSED_TOO = ("safety_identifier", "prompt_cache_key", "service_tier")
# accepted and not sent on: how OpenAI's servers keep or present a response, nothing a model reads
_IGNORED = ("include", "truncation", "stream_options", "prompt_cache_retention", "prompt_cache_options")
# carried as chat fields: top_logprobs (with logprobs), max_tool_calls (no chat counterpart: never sent, and named
# in x-modelroute-dropped-params, providers/clients/params.py UNSENT)
_CARRIED = ("top_logprobs", "max_tool_calls")
# what needs state this gateway does not keep
_STATEFUL = ("previous_response_id", "conversation", "prompt")
_OWN = (
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "text",
    "max_output_tokens",
    "reasoning",
    "store",
    "background",
)
_FIELDS = frozenset({*_PASSED, *_PASSED_TOO, *_IGNORED, *_CARRIED, *_STATEFUL, *_OWN})
_NO_STATE = "this gateway keeps no state: send the whole conversation in `input` (and `store: false`)"


# chat-completions names to_chat writes, as the Responses request spells them (for errors of the shared checks)
_RESPONSES_NAMES = {"max_completion_tokens": "max_output_tokens", "reasoning_effort": "reasoning.effort"}


def _renamed(err: ApiError) -> ApiError:
    """An error of the chat checks (parse_chat) naming a field as the Responses request has it."""
    for chat_name, name in _RESPONSES_NAMES.items():
        err.message = err.message.replace(f"`{chat_name}`", f"`{name}`")
        if err.param == chat_name:
            err.param = name
    err.args = (err.message,)
    return err


def _bad(message: str, param: str | None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, code=code, param=param)


def _part(part: Any, where: str) -> dict[str, Any]:
    """A Responses content part as an OpenAI chat content part."""
    part = object_at(part, where)
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": text_at(part.get("text"), f"{where}.text")}
    if kind == "refusal":  # an assistant turn's refusal, sent back as its text
        return {"type": "text", "text": text_at(part.get("refusal"), f"{where}.refusal")}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str):
            raise _bad(
                f"`{where}.image_url` must be a URL or data: URL (file ids are not served)", f"{where}.image_url"
            )
        image: dict[str, Any] = {"url": url}
        if part.get("detail") in ("low", "high", "auto"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        return {"type": "file", "file": _file(part, where)}
    raise _bad(f'`{where}.type` must be "input_text", "input_image" or "input_file"', f"{where}.type")


def _file(part: dict[str, Any], where: str) -> dict[str, Any]:
    """An input_file part's chat `file` object: its file_data (a PDF) or file_id, with its filename."""
    if part.get("file_url") is not None:
        raise _bad(f"`{where}.file_url`: files are not fetched by URL; send the PDF as file_data", f"{where}.file_url")
    file: dict[str, Any] = {}
    for name in ("file_data", "file_id", "filename"):
        if part.get(name) is not None:
            file[name] = text_at(part[name], f"{where}.{name}")
    return file


def _content(content: Any, where: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(f"`{where}` must be a string or an array of content parts", where)
    return [_part(p, f"{where}[{j}]") for j, p in enumerate(content)]


def _plain(content: str | list[dict[str, Any]]) -> str:
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def _items(items: list[Any]) -> list[dict[str, Any]]:
    """Responses input items as chat messages: function_call items join the assistant message before them as
    tool_calls, function_call_output items become tool messages."""
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        item = object_at(item, where)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise _bad(f"`{where}.role` must be user, assistant, system or developer", f"{where}.role")
            content = _content(item.get("content"), f"{where}.content")
            out.append({"role": role, "content": _plain(content) if role == "assistant" else content})
        elif kind == "function_call":
            call = {
                "id": text_at(item.get("call_id"), f"{where}.call_id"),
                "type": "function",
                "function": {
                    "name": text_at(item.get("name"), f"{where}.name"),
                    "arguments": text_at(item.get("arguments"), f"{where}.arguments"),
                },
            }
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
                last["content"] = last["content"] or None
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else _plain(_content(output, f"{where}.output"))
            out.append(
                {"role": "tool", "tool_call_id": text_at(item.get("call_id"), f"{where}.call_id"), "content": text}
            )
        elif kind == "reasoning":
            continue  # a provider's own reasoning record: not sent on
        elif kind == "item_reference":
            raise _bad(f"`{where}`: item references need stored responses; {_NO_STATE}", f"{where}.type")
        else:
            raise _bad(
                f"`{where}.type` must be message, function_call or function_call_output (got {str(kind)[:40]})",
                f"{where}.type",
            )
    return out


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _bad("`tools` must be an array of function tools", "tools")
    out = []
    for j, tool in enumerate(tools):
        where = f"tools[{j}]"
        tool = object_at(tool, where)
        if tool.get("type") != "function":
            raise _bad(
                f"`{where}`: built-in tools ({str(tool.get('type'))[:40]}) are not served by this gateway", where
            )
        function: dict[str, Any] = {"name": text_at(tool.get("name"), f"{where}.name")}
        for name in ("description", "parameters", "strict"):
            if tool.get(name) is not None:
                function[name] = tool[name]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": text_at(choice.get("name"), "tool_choice.name")}}
    raise _bad('`tool_choice` must be "auto", "none", "required" or {"type": "function", "name": ...}', "tool_choice")


def _format(text: Any, body: dict[str, Any]) -> None:
    text = object_at(text, "text")
    if text.get("verbosity") is not None:
        body["verbosity"] = text["verbosity"]
    fmt = text.get("format")
    if fmt is None:
        return
    fmt = object_at(fmt, "text.format")
    kind = fmt.get("type")
    if kind == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif kind == "json_schema":
        spec = {
            "name": text_at(fmt.get("name"), "text.format.name"),
            "schema": object_at(fmt.get("schema"), "text.format.schema"),
        }
        for name in ("description", "strict"):
            if fmt.get(name) is not None:
                spec[name] = fmt[name]
        body["response_format"] = {"type": "json_schema", "json_schema": spec}
    elif kind != "text":
        raise _bad('`text.format.type` must be "text", "json_object" or "json_schema"', "text.format.type")


def to_chat(req: dict[str, Any]) -> dict[str, Any]:
    """A Responses request body as the equivalent chat-completions body (raises ApiError 400)."""
    unknown = sorted(map(str, set(req) - _FIELDS))
    if unknown:
        raise _bad(f"unknown field `{unknown[0][:40]}`", unknown[0][:64], "unknown_field")
    if req.get("store") is True:
        raise _bad(f"`store: true` asks to keep the response, but {_NO_STATE}", "store", "state_not_kept")
    for name in _STATEFUL:
        if req.get(name) is not None:
            raise _bad(f"`{name}` needs a stored response or conversation; {_NO_STATE}", name, "state_not_kept")
    if req.get("background") is True:
        raise _bad(f"`background: true` needs a stored response to poll; {_NO_STATE}", "background", "state_not_kept")
    body: dict[str, Any] = {name: req[name] for name in (*_PASSED, *_PASSED_TOO) if req.get(name) is not None}
    given = req.get("input")
    if isinstance(given, str):
        messages: list[dict[str, Any]] = [{"role": "user", "content": given}]
    elif isinstance(given, list) and given:
        messages = _items(given)
    else:
        raise _bad("`input` must be a string or a non-empty array of input items", "input")
    instructions = req.get("instructions")
    if instructions is not None:
        messages.insert(0, {"role": "system", "content": text_at(instructions, "instructions")})
    body["messages"] = messages
    if req.get("max_output_tokens") is not None:
        body["max_completion_tokens"] = req["max_output_tokens"]
    if req.get("tools"):
        body["tools"] = _tools(req["tools"])
    if req.get("tool_choice") is not None:
        body["tool_choice"] = _tool_choice(req["tool_choice"])
    if req.get("text") is not None:
        _format(req["text"], body)
    if req.get("top_logprobs") is not None:
        body["logprobs"], body["top_logprobs"] = True, req["top_logprobs"]
    if req.get("max_tool_calls") is not None:
        body["max_tool_calls"] = req["max_tool_calls"]
    reasoning = req.get("reasoning")
    if reasoning is not None and object_at(reasoning, "reasoning").get("effort") is not None:
        body["reasoning_effort"] = reasoning["effort"]
    return body
