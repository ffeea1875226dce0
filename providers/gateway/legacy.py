"""Legacy text completions and model lookup for the gateway: a POST /v1/completions body in, the equivalent chat
call (the prompt as one user message) out, and its Completion or stream events in, `text_completion` JSON and SSE
chunks out; a model id (GET /v1/models/{id}) in, its model object or an OpenAI-style 404 out."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from providers.execution.cache import CACHE_HEADER
from providers.gateway.closing import COST_FIELD, add_to_frame, cost_fields
from providers.gateway.keyfields import canonical_models
from providers.gateway.metrics import cost_headers
from providers.gateway.openai_wire import AUTO_MODELS, ApiError, parse_chat, read_json, usage_json
from providers.gateway.wire import body_object, dumps, json_response

if TYPE_CHECKING:
    from starlette.responses import Response

    from engine import Engine
    from providers.execution import Completion
    from providers.gateway.keys import GatewayKey
    from providers.gateway.openai_wire import ChatCall
    from providers.gateway.wire import Writer
    from providers.types import StreamEvent

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "MAX_PROMPTS",
    "CompletionsWire",
    "merge_answers",
    "model_object",
    "several_prompts",
    "to_chat",
]

#: OpenAI's default `max_tokens` for a legacy completion.
DEFAULT_MAX_TOKENS = 16
#: The most prompts one request may hold; each is answered as a request of its own (`several_prompts`).
MAX_PROMPTS = 16
# fields sent on as the chat fields of the same name
_PASSED = ("model", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options", "stop", "user", "seed")
_PASSED_TOO = ("frequency_penalty", "presence_penalty", "logit_bias", "metadata")
# fields with no chat counterpart: refused unless they ask for nothing
_REFUSED = {"suffix": None, "best_of": 1, "logprobs": None}
_FIELDS = frozenset({*_PASSED, *_PASSED_TOO, *_REFUSED, "prompt", "echo"})
_FINISH = {"length": "length", "content_filter": "content_filter"}


def _bad(message: str, param: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, code=code, param=param)


def _prompt(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        raise _bad(
            f"`prompt`: several prompts are answered without streaming only, at most {MAX_PROMPTS} at a time",
            "prompt",
        )
    if isinstance(prompt, list) and prompt and all(isinstance(p, (int, list)) for p in prompt):
        raise _bad("`prompt`: token arrays are not supported; send the prompt as text", "prompt")
    raise _bad("`prompt` must be a string (or an array of one string)", "prompt")


def to_chat(req: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """A completions body as the equivalent chat body, and the prompt to echo (None unless `echo`)."""
    unknown = sorted(map(str, set(req) - _FIELDS))
    if unknown:
        raise _bad(f"unknown field `{unknown[0][:40]}`", unknown[0][:64], "unknown_field")
    for name, default in _REFUSED.items():
        if req.get(name) not in (None, default):
            raise _bad(
                f"unsupported field `{name}`: the gateway maps completions onto chat, which has no counterpart",
                name,
                "unsupported_field",
            )
    if "prompt" not in req:
        raise _bad("`prompt` is required", "prompt")
    prompt = _prompt(req["prompt"])
    body: dict[str, Any] = {name: req[name] for name in (*_PASSED, *_PASSED_TOO) if req.get(name) is not None}
    body.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
    body["messages"] = [{"role": "user", "content": prompt}]
    echo = req.get("echo")
    if echo is not None and not isinstance(echo, bool):
        raise _bad("`echo` must be a boolean", "echo")
    return body, prompt if echo else None


def _finish(reason: str | None) -> str:
    return _FINISH.get(reason or "stop", "stop")


class CompletionsWriter:
    """The `text_completion` SSE chunks of one streamed answer."""

    def __init__(self, model: str, include_usage: bool, echo: str | None) -> None:
        self.id, self.created, self.model = "cmpl-" + os.urandom(12).hex(), int(time.time()), model
        self.include_usage, self.echo = include_usage, echo
        self.finish: str | None = None

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        obj = {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model}
        return b"data: " + dumps({**obj, "choices": choices, **extra}) + b"\n\n"

    def _text(self, text: str, finish: str | None = None) -> bytes:
        return self._chunk([{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}])

    def start(self) -> bytes:
        return self._text(self.echo) if self.echo else b""

    def event(self, event: StreamEvent) -> bytes | None:
        if event.kind == "delta" and event.text:
            return self._text(event.text)
        if event.kind == "done":
            self.finish = _finish(event.finish_reason)  # its chunk is the last one: end() adds the cost to it
        return None

    def end(self, done: Completion | None) -> bytes:
        """The finish chunk; then the usage chunk with `cost` / `cost_estimated` in its `usage` (include_usage),
        else a top-level `x_modelroute_cost: {usd, estimated}` on the finish chunk; then `[DONE]`."""
        cost = cost_fields(done)
        out = b""
        if self.finish is not None:
            out, self.finish = self._text("", self.finish), None
            if cost and not self.include_usage:
                out = add_to_frame(out, None, {COST_FIELD: {"usd": cost["cost"], "estimated": cost["cost_estimated"]}})
        if self.include_usage and done is not None:
            out += self._chunk([], usage={**usage_json(done.usage), **cost})
        return out + b"data: [DONE]\n\n"

    def error(self, err: ApiError) -> bytes:
        finish = self._text("", self.finish) if self.finish is not None else b""
        self.finish = None
        return finish + b"data: " + dumps(err.body()) + b"\n\n"


class CompletionsWire:
    """POST /v1/completions: legacy text completions over the chat pipeline."""

    endpoint = "completions"

    def __init__(self) -> None:
        self.echo: str | None = None
        self.include_usage = False

    def parse(self, raw: bytes, headers: Mapping[str, str]) -> ChatCall:
        body, self.echo = to_chat(body_object(raw))
        call = parse_chat(body, headers)
        self.include_usage = call.include_usage
        return call

    def answer(self, c: Completion) -> dict[str, Any]:
        echo = self.echo or ""
        more = c.response.choices if c.response is not None else []  # the further answers when `n` > 1
        choices = [(c.text, c.finish_reason)] + [(m.text, m.finish_reason) for m in more]
        return {
            "id": "cmpl-" + os.urandom(12).hex(),
            "object": "text_completion",
            "created": int(time.time()),
            "model": c.model,
            "system_fingerprint": None,
            "choices": [
                {"text": echo + text, "index": i, "logprobs": None, "finish_reason": _finish(finish)}
                for i, (text, finish) in enumerate(choices)
            ],
            "usage": usage_json(c.usage),
        }

    def writer(self, model: str) -> Writer:
        return CompletionsWriter(model, self.include_usage, self.echo)

    def error_body(self, err: ApiError) -> dict[str, Any]:
        return err.body()


def several_prompts(raw: bytes) -> list[bytes] | None:
    """The bodies of the one-prompt requests that a completions body with several prompts (2 to MAX_PROMPTS
    strings, not streamed) is answered as, one after another; None for any other body (served, or refused, as it
    is)."""
    try:
        body = read_json(raw)
    except ApiError:
        return None  # refused in its turn, after the key is checked
    prompts = body.get("prompt") if isinstance(body, dict) else None
    if not isinstance(prompts, list) or not 1 < len(prompts) <= MAX_PROMPTS or body.get("stream") is True:
        return None
    if not all(isinstance(p, str) for p in prompts):
        return None
    return [dumps({**body, "prompt": p}) for p in prompts]


def merge_answers(answers: list[Response]) -> Response:
    """One `text_completion` from the answers to each prompt: their choices in prompt order, indexed on (prompt
    i's `n` choices come after those of the prompts before it), usage summed; the first answer that is not a 200
    instead, as it is. Headers: `x-modelroute-cost`, `-attempts` and `-fallbacks` summed, `-cost-estimated` true
    when any part's was, `x-modelroute-cache` a hit only when every part was one (else a miss), the other
    `x-modelroute-*` headers the first answer's; the `x-ratelimit-*` headers the last answer's (taken after every
    prompt was counted: the fewest left)."""
    failed = next((r for r in answers if r.status_code != 200), None)
    if failed is not None:
        return failed
    bodies = [json.loads(bytes(r.body)) for r in answers]
    choices = [{**choice, "index": i} for i, choice in enumerate(c for b in bodies for c in b["choices"])]
    usage = {name: sum(b["usage"][name] for b in bodies) for name in bodies[0]["usage"]}
    hdrs = {k: v for k, v in answers[0].headers.items() if k.startswith("x-modelroute-")}
    hdrs.update(_summed_headers(answers))
    hdrs.update({k: v for k, v in answers[-1].headers.items() if k.startswith("x-ratelimit-")})
    return json_response({**bodies[0], "choices": choices, "usage": usage}, 200, hdrs)


def _summed_headers(answers: list[Response]) -> dict[str, str]:
    """The `x-modelroute-*` headers that describe the whole of a multi-prompt request: counts and cost summed,
    estimated if any part was, a cache hit only when every part was one."""
    out: dict[str, str] = {}
    cost = [float(r.headers["x-modelroute-cost"]) for r in answers if "x-modelroute-cost" in r.headers]
    if cost:
        estimated = any(r.headers.get("x-modelroute-cost-estimated") == "true" for r in answers)
        out.update(cost_headers(sum(cost), 1.0 if estimated else 0.0))
    for name in ("x-modelroute-attempts", "x-modelroute-fallbacks"):
        counts = [int(r.headers[name]) for r in answers if name in r.headers]
        if counts:
            out[name] = str(sum(counts))
    cache = [r.headers.get(CACHE_HEADER) for r in answers]
    if any(cache):
        out[CACHE_HEADER] = "hit" if all(c == "hit" for c in cache) else "miss"
    return out


def model_object(name: str, policies: Mapping[str, Engine], engine: Engine, key: GatewayKey | None) -> Any:
    """The model object of GET /v1/models/{name}: a policy name ("auto" or a named policy) or a catalog model or
    alias of the default policy, as the key may use (its `policies` and `models`; None: a gateway without keys);
    ApiError 404 otherwise."""
    allowed = None if key is None else key.policies
    usable = None if key is None or key.models is None else canonical_models(key.models, engine.policy)
    if name in policies and (allowed is None or name in allowed):
        return {"id": name, "object": "model", "created": 0, "owned_by": "modelroute"}
    if allowed is None or AUTO_MODELS[0] in allowed:  # catalog models are pinned through "auto"
        canonical = engine.resolve_model(name)
        entry = engine.policy.models.get(canonical) if canonical is not None else None
        if entry is not None and (usable is None or canonical in usable):
            return {"id": name, "object": "model", "created": 0, "owned_by": entry.provider}
    shown = name if len(name) <= 80 else name[:80] + "..."
    raise ApiError(
        404,
        f"The model `{shown}` does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )
