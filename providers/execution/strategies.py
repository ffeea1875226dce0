"""Group strategies: a prepared request whose decision names a group (race, consensus, best_of) in, one
Completion (or None when no member answered, so the caller falls back) out.

race       every member at once, one try each (the race is the redundancy); the first answer that is good
           (a 2xx reply that validates against the schema, if any) wins and the other calls are cancelled.
consensus  every member at once, with retries; answers are normalised (case-folded, whitespace collapsed,
           surrounding quotes and final punctuation stripped; with a schema, the parsed value as sorted JSON)
           and the most common one wins; ties go to the member listed first. `agreement` = votes for the
           winner / answers received.
best_of    every member at once, with retries; then the judge model gets the question and the numbered
           answers and replies with the number of the best one. With one answer the judge is not called;
           when the judge fails or replies without a valid number, the first answer is taken.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from typing import TYPE_CHECKING

from providers.types import ChatRequest, Message

if TYPE_CHECKING:
    from providers.execution.executor import Completion, Executor, Result, Run

_SPACE = re.compile(r"\s+")
_NUMBER = re.compile(r"\d+")
JUDGE_SYSTEM = (
    "You are judging answers to the same request. Reply with only the number of the best answer: "
    "the most correct, complete and helpful one."
)


async def run_group(ex: Executor, run: Run) -> Completion | None:
    kind = run.decision.strategy
    if kind == "race":
        return await race(ex, run)
    if kind == "consensus":
        return await consensus(ex, run)
    if kind == "best_of":
        return await best_of(ex, run)
    raise ValueError(f"not a group strategy: {kind}")


async def race(ex: Executor, run: Run) -> Completion | None:
    tasks = [asyncio.ensure_future(ex.try_model(run, name, retries=False)) for name in run.decision.group]
    winner: Result | None = None
    try:
        for next_done in asyncio.as_completed(tasks):
            result = await next_done
            if result is not None:
                winner = result
                break
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # let cancelled legs record themselves
    if winner is None:
        return None
    return ex.completion(run, winner)


async def _all(ex: Executor, run: Run) -> list[Result]:
    """Every group member's answer (in group order), failures dropped."""
    results = await asyncio.gather(*(ex.try_model(run, name) for name in run.decision.group))
    return [r for r in results if r is not None]


def normalise(result: Result) -> str:
    if result.parsed is not None and hasattr(result.parsed, "model_dump"):
        return json.dumps(result.parsed.model_dump(mode="json"), sort_keys=True)
    text = _SPACE.sub(" ", result.response.text.strip().casefold())
    return text.strip(" \"'`").rstrip(" .!?;:")


def vote(results: list[Result]) -> tuple[Result, float]:
    """The winning answer (most common normalised form; ties: listed first) and its vote share."""
    keys = [normalise(r) for r in results]
    counts = Counter(keys)
    best = max(counts.values())
    winner = next(i for i, k in enumerate(keys) if counts[k] == best)
    return results[winner], best / len(results)


async def consensus(ex: Executor, run: Run) -> Completion | None:
    results = await _all(ex, run)
    if not results:
        return None
    winner, agreement = vote(results)
    ex.events.emit(
        "attempt_succeeded",
        f"consensus: {winner.model} with {agreement:.0%} agreement of {len(results)} answers",
        model=winner.model,
        provider=winner.provider,
        data={"agreement": agreement, "answers": len(results)},
    )
    return ex.completion(run, winner, agreement=agreement, answers={r.model: r.response.text for r in results})


def judge_request(run: Run, results: list[Result]) -> ChatRequest:
    question = "\n\n".join(m.text() for m in run.chat.messages if m.role == "user")
    answers = "\n\n".join(f"Answer {i}:\n{r.response.text}" for i, r in enumerate(results, 1))
    prompt = (
        f"Request:\n{question}\n\n{answers}\n\nWhich answer is best? Reply with its number (1-{len(results)}) only."
    )
    return ChatRequest(messages=[Message.user(prompt)], system=JUDGE_SYSTEM, temperature=0.0, max_tokens=16)


def pick(reply: str, n: int) -> int | None:
    """The 0-based index named by the judge's reply, or None."""
    match = _NUMBER.search(reply)
    if match is None:
        return None
    i = int(match.group()) - 1
    return i if 0 <= i < n else None


async def best_of(ex: Executor, run: Run) -> Completion | None:
    results = await _all(ex, run)
    if not results:
        return None
    chosen = results[0]
    judge = run.decision.judge
    if len(results) > 1 and judge is not None:
        verdict = await ex.try_model(run, judge, chat=judge_request(run, results), validate_schema=False)
        index = pick(verdict.response.text, len(results)) if verdict is not None else None
        if index is not None:
            chosen = results[index]
        else:
            why = (
                "the judge failed"
                if verdict is None
                else f"the judge's reply {verdict.response.text[:40]!r} names no answer"
            )
            ex.events.emit(
                "attempt_failed", f"best_of: {why}; taking the first answer", model=judge, error="JudgeFailed"
            )
    return ex.completion(run, chosen, answers={r.model: r.response.text for r in results})
