"""The best_of judge: the question and the members' answers in, the judge's ChatRequest out; then the judge's
reply in, a Verdict (scores, reasoning, winner) or None out.

The prompt is the `judge.prompt` setting (default engine.runtime.settings.JUDGE_PROMPT) with its three
placeholders replaced in one pass: `{question}` (the user's messages), `{answers}` ("Answer 1:\\n<text>" blocks,
in group order) and `{count}` (how many answers). Nothing else in the template is special: other braces, and
placeholders that appear inside the question or the answers, are sent as written. The judge is called with
temperature 0 and max_tokens 1024, without the request's schema.

Its reply is read as JSON `{"scores": [...], "reasoning": "..."}`, tolerating a ```json fence or text around
the object: the scores must be numbers (not booleans), finite, one per answer; the winner is the highest score
(ties: the answer listed first). A reply without such an object is read the old way: its first integer, when
it names an answer (1..count). A reply that does neither names nothing (None).
"""

from __future__ import annotations

import json
import math
import re
from typing import TYPE_CHECKING, Any

from engine.runtime.settings import setting
from providers.execution.outcome import Verdict
from providers.types import ChatRequest, Message

if TYPE_CHECKING:
    from providers.execution.outcome import Result, Run

__all__ = ["JUDGE_MAX_TOKENS", "judge_request", "pick", "read_scores", "render", "verdict"]

JUDGE_MAX_TOKENS = 1024
_PLACEHOLDER = re.compile(r"\{(question|answers|count)\}")
_NUMBER = re.compile(r"\d+")
_DECODER = json.JSONDecoder()
#: The prompt of a policy without settings (the compiler always fills them in: then `judge.prompt` is used).


def render(template: str, *, question: str, answers: str, count: int) -> str:
    """`template` with `{question}`, `{answers}` and `{count}` replaced (one pass; no other brace is special)."""
    values = {"question": question, "answers": answers, "count": str(count)}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def judge_request(run: Run, results: list[Result]) -> ChatRequest:
    question = "\n\n".join(m.text() for m in run.chat.messages if m.role == "user")
    answers = "\n\n".join(f"Answer {i}:\n{r.response.text}" for i, r in enumerate(results, 1))
    template = str(setting(run.policy.settings, "judge.prompt"))
    prompt = render(template, question=question, answers=answers, count=len(results))
    return ChatRequest(messages=[Message.user(prompt)], temperature=0.0, max_tokens=JUDGE_MAX_TOKENS)


def _objects(reply: str) -> list[dict[str, Any]]:
    """Every JSON object in `reply` (a ```json fence or surrounding text is skipped), outermost first."""
    found: list[dict[str, Any]] = []
    at = reply.find("{")
    while at != -1:
        try:
            value, end = _DECODER.raw_decode(reply, at)
        except ValueError:
            at = reply.find("{", at + 1)
            continue
        if isinstance(value, dict):
            found.append(value)
        at = reply.find("{", end)
    return found


def _score(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def read_scores(reply: str, n: int) -> tuple[list[float], str] | None:
    """The scores (one finite number per answer) and reasoning of the first JSON object in `reply` that has
    valid ones, or None."""
    for obj in _objects(reply):
        raw = obj.get("scores")
        if not isinstance(raw, list) or len(raw) != n:
            continue
        scores = [_score(v) for v in raw]
        if any(s is None for s in scores):
            continue
        reasoning = obj.get("reasoning")
        return [s for s in scores if s is not None], reasoning.strip() if isinstance(reasoning, str) else ""
    return None


def pick(reply: str, n: int) -> int | None:
    """The 0-based index named by the first integer of the reply, or None (no integer, or not 1..n)."""
    match = _NUMBER.search(reply)
    if match is None:
        return None
    i = int(match.group()) - 1
    return i if 0 <= i < n else None


def verdict(judge: str, reply: str, results: list[Result]) -> Verdict | None:
    """The judge's Verdict on `results` from its reply, or None when the reply names no answer. Scores and
    JSON reasoning when it replied with valid JSON; else empty scores, the reply as reasoning and the answer
    its first integer names."""
    n = len(results)
    read = read_scores(reply, n)
    if read is not None:
        scores, reasoning = read
        best = max(range(n), key=lambda i: (scores[i], -i))  # ties: the first listed
        return Verdict(judge, scores, reasoning, results[best].model)
    index = pick(reply, n)
    if index is None:
        return None
    return Verdict(judge, [], reply.strip(), results[index].model)
