"""Group strategies: a prepared request whose decision names a group (race, consensus, best_of) in, one
Completion out; None when no member answered, so the caller falls back; NoConsensus when a consensus was not
reached (never falls back).

race       every member at once, one try each (the race is the redundancy); the first answer that is good
           (a 2xx reply that validates against the schema, if any) wins and the other calls are cancelled.
consensus  every member at once, with retries; each answer becomes a comparison key and the most common key
           wins (ties: the member listed first). Keys (`set consensus.compare`):
             normalised (default)  case-folded, runs of whitespace collapsed to one space, surrounding
                                   whitespace and quotes (" ' `) and trailing . ! ? ; : stripped (in any
                                   order, until none is left);
             exact                 the raw text, unchanged;
           with a schema, either way: the parsed value as JSON with sorted keys.
           A failed (or skipped) member casts no vote. The winner's votes must reach the rule's
           `min_agreement N` (default 1): fewer raise NoConsensus (answers, agreement and attempts attached),
           and the fallbacks are not tried (one model cannot form a consensus), not even when every member
           failed; with the default 1, no answer at all falls back as for the other groups.
           `Completion.agreement` (and NoConsensus.agreement) = votes for the winner / answers received.
best_of    every member at once, with retries; then the judge model gets the `judge.prompt` template (the
           question, the numbered answers, their count) and replies with JSON scores and reasoning, or a number
           (providers/execution/judging.py). The best score wins (ties: listed first); `Completion.judge` is
           the Verdict. With one answer the judge is not called; when the judge fails or its reply names no
           answer, the first answer wins, an `attempt_failed` event (error JudgeFailed) says why, and
           `Completion.judge` is None (as it is when the judge was not called).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from typing import TYPE_CHECKING

from engine.runtime.settings import setting
from providers.execution.deadlines import out_of_time
from providers.execution.judging import judge_request, verdict
from providers.execution.resilience import RoutingError

if TYPE_CHECKING:
    from engine import Decision
    from providers.execution.executor import Completion, Executor, Result, Run
    from providers.execution.resilience import Attempt

__all__ = ["NoConsensus", "normalise", "run_group", "vote"]

_SPACE = re.compile(r"\s+")


class NoConsensus(RoutingError):
    """A consensus whose best answer had fewer votes than `min_agreement`. `.answers` maps each member that
    answered to its text, `.votes` is the winner's votes, `.agreement` votes / answers received (0.0 without
    answers), `.attempts` every call, as for RoutingError."""

    def __init__(
        self,
        attempts: list[Attempt],
        decision: Decision,
        *,
        answers: dict[str, str],
        votes: int,
        min_agreement: int,
    ):
        self.answers, self.votes, self.min_agreement = answers, votes, min_agreement
        self.agreement = votes / len(answers) if answers else 0.0
        members = len(decision.group)
        got = f"{len(answers)} answer{'s' if len(answers) != 1 else ''} from {members} members"
        self.summary = (
            f"no consensus: the best answer had {votes} of {members} votes, min_agreement is {min_agreement} ({got})"
        )
        super().__init__(attempts, decision, self.summary)


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


def normalise(result: Result, compare: str = "normalised") -> str:
    """The key consensus compares `result` by (see the module docstring)."""
    if result.parsed is not None and hasattr(result.parsed, "model_dump"):
        return json.dumps(result.parsed.model_dump(mode="json"), sort_keys=True)
    if compare == "exact":
        return result.response.text
    text, previous = _SPACE.sub(" ", result.response.text.strip().casefold()), None
    while text != previous:  # in any order: '"Paris".' and '"Paris."' are both "paris"
        previous, text = text, text.strip(" \"'`").rstrip(" .!?;:")
    return text


def vote(results: list[Result], compare: str = "normalised") -> tuple[Result, int]:
    """The winning answer (most common key; ties: listed first) and its votes."""
    keys = [normalise(r, compare) for r in results]
    counts = Counter(keys)
    best = max(counts.values())
    winner = next(i for i, k in enumerate(keys) if counts[k] == best)
    return results[winner], best


async def consensus(ex: Executor, run: Run) -> Completion | None:
    decision = run.decision
    need = decision.min_agreement
    results = await _all(ex, run)
    answers = {r.model: r.response.text for r in results}
    if not results and need <= 1:
        return None  # min_agreement 1: a single fallback answer is as good as any member's
    compare = str(setting(run.policy.settings, "consensus.compare"))
    winner: Result | None = None
    votes = 0
    if results:
        winner, votes = vote(results, compare)
    if winner is None or votes < need:
        error = NoConsensus(run.attempts, decision, answers=answers, votes=votes, min_agreement=need)
        error.deadline_passed = out_of_time(run)  # members cut by the request's deadline: that is what happened
        ex.events.emit(
            "attempt_failed",
            error.summary,
            model=winner.model if winner is not None else None,
            provider=winner.provider if winner is not None else None,
            error="NoConsensus",
            data={"agreement": error.agreement, "answers": len(results), "votes": votes, "min_agreement": need},
        )
        raise error
    agreement = votes / len(results)
    ex.events.emit(
        "attempt_succeeded",
        f"consensus: {winner.model} with {votes} of {len(results)} answers ({agreement:.0%} agreement)",
        model=winner.model,
        provider=winner.provider,
        data={"agreement": agreement, "answers": len(results), "votes": votes},
    )
    return ex.completion(run, winner, agreement=agreement, answers=answers)


async def best_of(ex: Executor, run: Run) -> Completion | None:
    results = await _all(ex, run)
    if not results:
        return None
    chosen, found = results[0], None
    judge = run.decision.judge
    if len(results) > 1 and judge is not None:
        reply = await ex.try_model(run, judge, chat=judge_request(run, results), validate_schema=False)
        found = verdict(judge, reply.response.text, results) if reply is not None else None
        if found is not None:
            chosen = next(r for r in results if r.model == found.winner)
        else:
            why = (
                "the judge failed"
                if reply is None
                else f"the judge's reply {reply.response.text[:40]!r} names no answer"
            )
            ex.events.emit(
                "attempt_failed", f"best_of: {why}; taking the first answer", model=judge, error="JudgeFailed"
            )
    return ex.completion(run, chosen, answers={r.model: r.response.text for r in results}, judge=found)
