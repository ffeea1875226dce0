"""Parsed provider answers: a wire format's JSON (or its SSE events) in, a `ParsedReply` (or StreamEvents) out.

`ParsedReply` is what a client's `parse_reply` gives before timing and cost are attached; `StreamParser` holds one
stream's state while a wire format's subclass turns its SSE events into StreamEvents; `merge_answers` joins the
answers of a fanned-out `n` into one ChatResponse with n choices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from providers.clients.sse import SSEEvent
from providers.errors import ProviderError, classify_stream_error
from providers.types import ChatResponse, Choice, FinishReason, StreamEvent, ToolCall, Usage

if TYPE_CHECKING:
    from providers.clients.base import ProviderClient
    from providers.types import ModelSpecLike as ModelSpec


@dataclass
class ParsedReply:
    """A parsed provider answer before timing and cost are attached."""

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    finish_reason: FinishReason = "stop"
    model_version: str | None = None
    choices: list[Choice] = field(default_factory=list)  # the answers after the first (`n` > 1)
    logprobs: Any = None  # OpenAI-shaped logprobs of the first answer
    service_tier: str | None = None  # the OpenAI service tier billed (echoed by the upstream, else requested)


#: The progress hook of the stream read in this context: set around each wait for a stream's next event by the
#: bound on its waits (providers/execution/deadlines.py: a piece of output is progress for its idle timeout) and
#: called through `stream_progress` by a parser for each chunk whose output it holds back (a tool call's pieces,
#: emitted as one event when the call is whole). Consumers of the stream see nothing of it.
STREAM_PROGRESS: ContextVar[Callable[[], None] | None] = ContextVar("modelroute_stream_progress", default=None)


def stream_progress() -> None:
    """Tell whoever bounds this stream's waits that a chunk brought output not emitted yet (a tool call's piece)."""
    hook = STREAM_PROGRESS.get()
    if hook is not None:
        hook()


class StreamParser:
    """Per-stream state: subclasses turn SSE events into StreamEvents and set `finished` when done."""

    def __init__(self, client: ProviderClient, model: ModelSpec) -> None:
        self.client = client
        self.model = model
        self.reply = ParsedReply(finish_reason="other")
        self.finished = False
        self.raw: Any = None
        self.pieces: list[str] = []  # the deltas' text, joined into `reply.text` at the end (`+=` is quadratic)

    def feed(self, event: SSEEvent) -> Iterable[StreamEvent]:
        raise NotImplementedError

    def delta(self, text: str) -> StreamEvent:
        self.pieces.append(text)
        return StreamEvent(kind="delta", text=text)

    def text(self) -> str:
        """The text streamed so far (into `reply.text`)."""
        if self.pieces:
            self.reply.text += "".join(self.pieces)
            self.pieces.clear()
        return self.reply.text

    def tool_call(self, call: ToolCall) -> StreamEvent:
        self.reply.tool_calls.append(call)
        return StreamEvent(kind="tool_call", tool_call=call)

    def stream_error(self, payload: Any) -> ProviderError:
        c = self.client
        return classify_stream_error(c.kind, payload, provider=c.spec.name, model=self.model.name, secret=c._secret())


def merge_answers(answers: list[ChatResponse]) -> ChatResponse:
    """The answers of n separate calls as one answer with n choices (the first is the answer, the rest its
    `choices`): usage and cost summed, the slowest call's latency."""
    first, rest = answers[0], answers[1:]
    usage = Usage(
        input_tokens=sum(a.usage.input_tokens for a in answers),
        output_tokens=sum(a.usage.output_tokens for a in answers),
        estimated=any(a.usage.estimated for a in answers),
    )
    costs = [a.cost for a in answers]
    return first.model_copy(
        update={
            "usage": usage,
            "cost": None if None in costs else sum(c for c in costs if c is not None),
            "latency_s": max(a.latency_s for a in answers),
            "choices": [
                Choice(text=a.text, tool_calls=a.tool_calls, finish_reason=a.finish_reason, logprobs=a.logprobs)
                for a in rest
            ],
        }
    )
