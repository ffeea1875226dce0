"""Requests for the Engine: a prompt or OpenAI-format messages and request attributes in, the Request decide()
evaluates (and the request's token counts) out, with the engine's text estimator and state store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from engine.runtime.budget import BudgetBook
from engine.runtime.limits import shown_value
from engine.runtime.messages import request_counts
from engine.runtime.policy import CompiledPolicy, Request, not_an_attribute
from engine.runtime.state import StateStore
from engine.runtime.tokenizer import load_estimator, policy_estimator
from engine.runtime.tokens import TokenCount, TokenEstimator, count_request, from_messages, has_images


class RequestError(ValueError):
    """A request the engine cannot decide as given (e.g. `tokens="many"`); the message says what to change."""


#: The largest `tokens=N` override: any count up to it is a finite float (the cost and ranking arithmetic stays
#: finite); a larger one is a RequestError.
MAX_TOKENS = 10**308
_MAX_DIGITS = len(str(MAX_TOKENS))


def _token_count(value: Any) -> int:
    """The `tokens=N` override as an int; RequestError for anything but a number from 0 to MAX_TOKENS (10**308),
    or its ASCII digits."""
    if isinstance(value, str):
        digits = value.strip()
        if digits.isascii() and digits.isdigit() and len(digits) <= _MAX_DIGITS:
            value = int(digits)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_TOKENS:
        raise RequestError(
            f"tokens must be a number of tokens from 0 to 10**308 (or its digits), not {shown_value(value, 60)}"
        )
    return int(value)


def out_token_count(value: Any, default: float) -> float:
    """The `max_tokens=` attribute as the request's output tokens: a number above 0 (one too large for a float reads
    as infinite, as `max_tokens=inf` does), else `default` (the policy's)."""
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
        return default
    try:
        return float(value)
    except OverflowError:  # an int of more than 308 digits
        return float("inf")


def prompt_text(prompt: Any) -> str:
    """The prompt as text: a str, or "" for None; RequestError naming the type of anything else."""
    if prompt is None:
        return ""
    if not isinstance(prompt, str):
        raise RequestError(
            f"the prompt must be text (a str), not {type(prompt).__name__}; pass a conversation as messages=[...]"
        )
    return prompt


def message_list(messages: Any) -> list[Any]:
    """`messages=` as a list, read once (an iterator is consumed here, and the list used everywhere after):
    RequestError unless it is a list (or other iterable) of messages, each an OpenAI-format message object (a
    dict such as {"role": "user", "content": "..."}) or a read message (with a `role`)."""
    if isinstance(messages, (str, bytes, bytearray, Mapping)):
        raise RequestError(
            f'messages must be a list of message objects ({{"role": ..., "content": ...}}), not '
            f"{type(messages).__name__}"
        )
    if not isinstance(messages, list):
        try:
            messages = list(messages)
        except TypeError:
            raise RequestError(f"messages must be a list of message objects, not {type(messages).__name__}") from None
    for i, msg in enumerate(messages):
        if type(msg) is not dict and not isinstance(msg, Mapping) and not hasattr(msg, "role"):
            raise RequestError(
                f'messages[{i}] must be a message object ({{"role": ..., "content": ...}}), not {type(msg).__name__}'
            )
    return messages


class RequestMethods:
    """token_estimator, tokenizer(), count_tokens(), request(): a base class of engine.api.Engine, which provides
    the attributes below and its `budget_book`. `_snapshot` is the installed (policy, text estimator) pair, swapped
    as one reference (ReloadMethods.swap): a request reads it once, so its rules and its token counts are of one
    policy version."""

    state: StateStore
    _snapshot: tuple[CompiledPolicy, TokenEstimator]
    _default_estimate: TokenEstimator

    @property
    def budget_book(self) -> BudgetBook:
        raise NotImplementedError

    @property
    def token_estimator(self) -> TokenEstimator:
        """The text estimator `fn(text) -> int` every count of this engine uses: the policy's `tokens.estimator`,
        else `token_estimator=`, else the default one token per four characters."""
        return self._snapshot[1]

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
        already serialised), images per provider kind. `.for_kind("openai")`, `.worst`. RequestError for a prompt
        that is not text or messages that are not a list of message objects."""
        msgs = message_list(messages) if messages is not None else [{"role": "user", "content": prompt_text(prompt)}]
        estimate = self._snapshot[1]
        return count_request(msgs, estimate, system=system, tools=tools, response_format=response_format)

    def estimator_for(self, policy: CompiledPolicy) -> TokenEstimator:
        """The text estimator requests decided under `policy` count with: the installed one for the installed
        policy, else the one `policy`'s `tokens.estimator` names (else the engine's default)."""
        installed, estimate = self._snapshot
        if policy is installed:
            return estimate
        return policy_estimator(getattr(policy, "settings", None), self._default_estimate)

    def request(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[Mapping[str, Any]] | None = None,
        policy: CompiledPolicy | None = None,
        **attrs: Any,
    ) -> Request:
        """The Request decide() evaluates (exposed for tools that trace without deciding), counted with the
        estimator of `policy` (default: the installed policy).

        RequestError (a ValueError saying what is accepted) for a prompt that is not text, `messages` that are not
        a list of message objects, and a `tokens=N` override (for callers that count tokens exactly) that is not a
        number of tokens from 0 to MAX_TOKENS (10**308)."""
        if policy is None:
            policy, estimate = self._snapshot  # one read: the rules and the token counter of one version
        else:
            estimate = self.estimator_for(policy)
        return self.build_request(prompt, messages, policy, estimate, attrs)

    def build_request(
        self,
        prompt: Any,
        messages: Any,
        policy: CompiledPolicy,
        estimate: TokenEstimator,
        attrs: dict[str, Any],
    ) -> Request:
        """request() for a policy and the estimator read with it (decide() passes the pair it read at once)."""
        for name in attrs:
            if (why := not_an_attribute(name)) is not None:
                raise RequestError(why)
        images_in_messages = False
        if messages is not None:
            messages = message_list(messages)  # read once: an iterator is used up here
            text, tokens = from_messages(messages, estimate)
            images_in_messages = has_images(messages)
            if images_in_messages and "images" not in attrs:
                attrs["images"] = True
        else:
            text = prompt_text(prompt)
            tokens = estimate(text)
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
        out = out_token_count(attrs.get("max_tokens"), policy.out_tokens)
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
            out,
            state.unavailable(),
            state,
            state.latency_ms(),
            messages,
        )
