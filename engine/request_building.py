"""Requests for the Engine: a prompt or OpenAI-format messages and request attributes in, the Request decide()
evaluates (and the request's token counts) out, with the engine's text estimator and state store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from engine.runtime.budget import BudgetBook
from engine.runtime.messages import request_counts
from engine.runtime.policy import CompiledPolicy, Request, not_an_attribute
from engine.runtime.state import StateStore
from engine.runtime.tokenizer import load_estimator
from engine.runtime.tokens import TokenCount, TokenEstimator, count_request, from_messages, has_images


class RequestError(ValueError):
    """A request the engine cannot decide as given (e.g. `tokens="many"`); the message says what to change."""


def _token_count(value: Any) -> int:
    """The `tokens=N` override as an int; RequestError for anything but a finite number >= 0 (or its digits)."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise RequestError(f"tokens must be a number of tokens (0 or more), not {value!r}")
    return int(value)


class RequestMethods:
    """token_estimator, tokenizer(), count_tokens(), request(): a base class of engine.api.Engine, which provides
    the attributes below and its `budget_book`."""

    state: StateStore
    _policy: CompiledPolicy
    _estimate: TokenEstimator

    @property
    def budget_book(self) -> BudgetBook:
        raise NotImplementedError

    @property
    def token_estimator(self) -> TokenEstimator:
        """The text estimator `fn(text) -> int` every count of this engine uses: the policy's `tokens.estimator`,
        else `token_estimator=`, else the default one token per four characters."""
        return self._estimate

    @staticmethod
    def tokenizer(spec: str) -> TokenEstimator:
        """The exact text counter a tokenizer spec names ("tiktoken:cl100k_base", "tiktoken:gpt-4"), loaded from
        local files once per process (never downloaded); TokenizerError (a ValueError with `.hint`) when it
        cannot be loaded. `modelroute serve --tokenizer` checks its option with it."""
        return load_estimator(spec)

    def count_tokens(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[Any] | None = None,
        system: str | None = None,
        tools: Any = None,
        response_format: Any = None,
    ) -> TokenCount:
        """The one token counter (engine/runtime/tokens.py) on a request as it is sent: every message part (a
        prompt is one user message), the system text, the tools and the response-format schema (JSON text, or
        already serialised), images per provider kind. `.for_kind("openai")`, `.worst`."""
        msgs = messages if messages is not None else [{"role": "user", "content": prompt or ""}]
        return count_request(msgs, self._estimate, system=system, tools=tools, response_format=response_format)

    def request(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[Mapping[str, Any]] | None = None,
        policy: CompiledPolicy | None = None,
        **attrs: Any,
    ) -> Request:
        """The Request decide() evaluates (exposed for tools that trace without deciding).

        `tokens=N` overrides the estimate (for callers that count tokens exactly); RequestError if it is not a
        number of tokens."""
        policy = policy or self._policy
        for name in attrs:
            if (why := not_an_attribute(name)) is not None:
                raise RequestError(why)
        images_in_messages = False
        if messages is not None:
            text, tokens = from_messages(messages if isinstance(messages, list) else list(messages), self._estimate)
            images_in_messages = has_images(messages)
            if images_in_messages and "images" not in attrs:
                attrs["images"] = True
        else:
            text = prompt or ""
            tokens = self._estimate(text)
        if policy.counts:  # messages / turns / words: derived here, never taken from the caller (reserved)
            attrs.update(request_counts(text, messages, policy.counts))
        state = self.state
        if not attrs and not policy.budgets:  # the common case, kept short: decide() is on the hot path
            return Request(
                text,
                tokens,
                attrs,
                False,
                images_in_messages,
                policy.out_tokens,
                state.unavailable(),
                state,
                state.latency_ms(),
                messages,
            )
        if "tokens" in attrs:
            tokens = _token_count(attrs.pop("tokens"))
        out = attrs.get("max_tokens")
        if not (isinstance(out, (int, float)) and not isinstance(out, bool) and out > 0):
            out = policy.out_tokens
        if policy.budgets:
            for name, value in self.budget_book.request_attrs(policy.budgets, attrs).items():
                attrs.setdefault(name, value)
        # images found in the messages need a vision model even if the caller says images=False
        return Request(
            text,
            tokens,
            attrs,
            bool(attrs.get("tools")),
            bool(attrs.get("images")) or images_in_messages,
            float(out),
            state.unavailable(),
            state,
            state.latency_ms(),
            messages,
        )
