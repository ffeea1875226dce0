"""Tests for the policy strategies at run time (providers/execution/strategies.py and judging.py, and the
stateful selectors): policies with balance / split / least_busy / fastest / race / consensus / best_of in, the
models actually called on the FakeServer and the Completion (or NoConsensus) out."""

from __future__ import annotations

import json
import threading
from collections import Counter
from typing import Any

import pytest

from providers.execution import NoConsensus, Verdict
from providers.execution.judging import pick, read_scores, render
from providers.execution.resilience import RoutingError
from providers.execution.strategies import normalise, vote
from tests.engines import called, engine_for
from tests.fakeserver import FakeServer, Fault, Reply
from tests.waiting import await_until

POLICY = """
set retry.attempts = 0
set latency.min_samples = 3
when s == "rr" balance round_robin [alpha-mini, beta-chat, gamma-flash] fallback delta-tiny
when s == "random" balance random [alpha-mini, beta-chat]
when s == "busy" balance least_busy [alpha-mini, beta-chat]
when s == "split" split 70% alpha-mini, 30% beta-chat
when s == "race" race [alpha-mini, beta-chat] fallback gamma-flash
when s == "consensus" consensus [alpha-mini, beta-chat, gamma-flash] fallback delta-tiny
when s == "two" consensus [alpha-mini, beta-chat, gamma-flash] min_agreement 2 fallback delta-tiny
when s == "all" consensus [alpha-mini, beta-chat, gamma-flash] min_agreement 3
when s == "best" best_of [alpha-mini, beta-chat] judge alpha-large
when s == "fastest" prefer fastest where provider in [deltaio, betacorp]
when s == "warm" use beta-chat
otherwise use alpha-mini
"""


EXACT = """
set retry.attempts = 0
set consensus.compare = exact
otherwise consensus [alpha-mini, beta-chat, gamma-flash]
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def engine(fake_server: FakeServer):
    with engine_for(fake_server, POLICY) as e:
        yield e


def test_round_robin_rotates_and_a_failing_member_fails_over_to_the_next(engine: Any, fake_server: FakeServer) -> None:
    models = [engine.complete("hi", s="rr").model for _ in range(6)]
    assert models == ["alpha-mini", "beta-chat", "gamma-flash"] * 2
    fake_server.script("alpha-mini", Fault.server_error(500))
    c = engine.complete("hi", s="rr")
    assert c.decision.chain == ["alpha-mini", "beta-chat", "gamma-flash", "delta-tiny"]
    assert [a.model for a in c.attempts] == ["alpha-mini", "beta-chat"]
    fake_server.always("beta-chat", Fault.server_error(500))
    fake_server.always("gamma-flash", Fault.server_error(500))
    fake_server.script("alpha-mini", Fault.server_error(500))
    c = engine.complete("hi", s="rr")  # the rotation is at beta-chat now: then gamma-flash, alpha-mini, delta-tiny
    assert [a.model for a in c.attempts] == ["beta-chat", "gamma-flash", "alpha-mini", "delta-tiny"]


def test_random_uses_both(engine: Any) -> None:
    assert {engine.complete("hi", s="random").model for _ in range(30)} == {"alpha-mini", "beta-chat"}


def test_split_is_weighted_and_sticky_per_user(engine: Any, fake_server: FakeServer) -> None:
    by_user = {u: engine.decide("hi", s="split", user=u).model for u in range(400)}
    share = Counter(by_user.values())["alpha-mini"] / 400
    assert 0.6 < share < 0.8
    for u in (1, 2, 3):
        assert {engine.complete("hi", s="split", user=u).model for _ in range(3)} == {by_user[u]}


@pytest.mark.anyio
async def test_least_busy_uses_in_flight_counts(engine: Any, fake_server: FakeServer) -> None:
    import anyio

    gate = threading.Event()  # alpha-mini answers only once the test opens it: in flight as long as needed
    fake_server.always("alpha-mini", Fault.held(gate, Reply(text="slow")))
    models: list[str] = []

    async def one() -> None:
        models.append((await engine.acomplete("hi", s="busy")).model)

    async with anyio.create_task_group() as tg:
        tg.start_soon(one)
        await await_until(lambda: len(fake_server.requests) == 1, "the first request to reach the server")
        assert engine.state.in_flight("alpha-mini") == 1
        for _ in range(3):  # one after the other while alpha-mini is busy: beta-chat each time
            await one()
        gate.set()
    assert models == ["beta-chat", "beta-chat", "beta-chat", "alpha-mini"]
    assert engine.state.in_flight("alpha-mini") == 0
    models.clear()
    gate.clear()
    async with anyio.create_task_group() as tg:  # all at once: in-flight counts alternate the picks
        for _ in range(4):
            tg.start_soon(one)
        await await_until(lambda: len(fake_server.requests) == 8, "the four requests to reach the server")
        gate.set()
    assert sorted(models) == ["alpha-mini", "alpha-mini", "beta-chat", "beta-chat"]
    await engine.aclose()


def test_fastest_switches_to_measured_latency(engine: Any, fake_server: FakeServer) -> None:
    assert engine.decide("hi", s="fastest").model == "delta-tiny"  # catalog: 150ms vs 400ms
    fake_server.always("delta-tiny", Reply(delay=0.2))
    for _ in range(3):
        assert engine.decide("hi", s="fastest").model == "delta-tiny"  # fewer than latency.min_samples
        engine.complete("hi", s="fastest")
        engine.complete("hi", s="warm")  # beta-chat: fast on the fake server
    measured = engine.state.latency_ms()  # delta-tiny's includes the server's 200 ms wait: a lower bound
    assert measured["delta-tiny"] > 150 and measured["beta-chat"] < measured["delta-tiny"]
    d = engine.decide("hi", s="fastest")
    assert d.model == "beta-chat" and "(measured)" in d.explain()


def test_race_first_good_answer_wins_and_the_rest_is_cancelled(engine: Any, fake_server: FakeServer) -> None:
    gate = threading.Event()  # never set: alpha-mini answers only when the server stops, after the test
    fake_server.script("alpha-mini", Fault.held(gate, Reply(text="slow")))
    fake_server.script("beta-chat", Reply(text="fast", delay=0.05))
    c = engine.complete("hi", s="race")  # returns without waiting for alpha-mini: it could not answer yet
    assert (c.text, c.model, c.strategy) == ("fast", "beta-chat", "race")
    assert {(a.model, a.outcome) for a in c.attempts} == {("beta-chat", "ok"), ("alpha-mini", "cancelled")}
    assert engine.state.in_flight("alpha-mini") == 0 and engine.usage()["models"].get("alpha-mini") is None


def test_race_skips_a_failed_leg_and_falls_back_when_all_fail(engine: Any, fake_server: FakeServer) -> None:
    fake_server.script("alpha-mini", Fault.server_error(500))
    fake_server.script("beta-chat", Reply(text="second", delay=0.2))
    assert engine.complete("hi", s="race").text == "second"
    fake_server.script("alpha-mini", Fault.server_error(500))
    fake_server.script("beta-chat", Fault.auth())
    c = engine.complete("hi", s="race")
    assert c.model == "gamma-flash"
    assert sorted((a.model, a.error or a.outcome) for a in c.attempts) == [
        ("alpha-mini", "ServerError"),
        ("beta-chat", "AuthError"),
        ("gamma-flash", "ok"),
    ]


def test_consensus_majority_with_agreement(engine: Any, fake_server: FakeServer) -> None:
    fake_server.script("alpha-mini", Reply(text="Paris."))
    fake_server.script("beta-chat", Reply(text="  paris "))
    fake_server.script("gamma-flash", Reply(text="Lyon"))
    c = engine.complete("Capital of France?", s="consensus")
    assert (c.text, c.model, c.strategy) == ("Paris.", "alpha-mini", "consensus")
    assert c.agreement == pytest.approx(2 / 3) and c.answers["gamma-flash"] == "Lyon"
    assert c.usage.input_tokens == 30 and sorted(called(fake_server)) == ["alpha-mini", "beta-chat", "gamma-flash"]


def test_consensus_counts_only_answers_and_falls_back_when_none(engine: Any, fake_server: FakeServer) -> None:
    fake_server.script("alpha-mini", Fault.server_error(500))
    fake_server.script("beta-chat", Reply(text="B"))
    fake_server.script("gamma-flash", Reply(text="b!"))
    c = engine.complete("hi", s="consensus")
    assert c.text == "B" and c.agreement == 1.0
    for model in ("alpha-mini", "beta-chat", "gamma-flash"):
        fake_server.script(model, Fault.server_error(503))
    fake_server.script("delta-tiny", Reply(text="fallback"))
    assert engine.complete("hi", s="consensus").model == "delta-tiny"


def test_best_of_judge_picks(engine: Any, fake_server: FakeServer) -> None:
    fake_server.script("alpha-mini", Reply(text="answer A"))
    fake_server.script("beta-chat", Reply(text="answer B"))
    fake_server.script("alpha-large-2025-01", Reply(text="Answer 2 is best."))
    c = engine.complete("Explain X", s="best")
    assert (c.text, c.model, c.strategy) == ("answer B", "beta-chat", "best_of")
    judge = fake_server.requests[-1]
    assert judge.model == "alpha-large-2025-01"
    prompt = judge.body["messages"][-1]["content"]
    assert "Explain X" in prompt and "Answer 1:\nanswer A" in prompt and "Answer 2:\nanswer B" in prompt
    assert len(c.attempts) == 3 and c.answers == {"alpha-mini": "answer A", "beta-chat": "answer B"}


def test_best_of_without_a_usable_verdict_takes_the_first(engine: Any, fake_server: FakeServer) -> None:
    fake_server.script("alpha-mini", Reply(text="answer A"))
    fake_server.script("beta-chat", Reply(text="answer B"))
    fake_server.script("alpha-large-2025-01", Reply(text="both are fine"))
    assert engine.complete("hi", s="best").text == "answer A"
    fake_server.script("alpha-mini", Fault.server_error(500))
    fake_server.script("beta-chat", Reply(text="only B"))
    c = engine.complete("hi", s="best")
    assert c.text == "only B" and "alpha-large" not in [a.model for a in c.attempts]  # one answer: no judge


def test_consensus_below_min_agreement_raises_no_consensus(engine: Any, fake_server: FakeServer) -> None:
    fake_server.script("alpha-mini", Reply(text="Paris"))
    fake_server.script("beta-chat", Reply(text="paris."))
    fake_server.script("gamma-flash", Reply(text="Lyon"))
    with pytest.raises(NoConsensus) as caught:
        engine.complete("Capital of France?", s="all")
    error = caught.value
    assert isinstance(error, RoutingError)
    assert str(error).startswith("no consensus: the best answer had 2 of 3 votes, min_agreement is 3")
    assert error.answers == {"alpha-mini": "Paris", "beta-chat": "paris.", "gamma-flash": "Lyon"}
    assert (error.votes, error.min_agreement, error.agreement) == (2, 3, pytest.approx(2 / 3))
    assert sorted((a.model, a.outcome) for a in error.attempts) == [
        ("alpha-mini", "ok"),
        ("beta-chat", "ok"),
        ("gamma-flash", "ok"),
    ]
    for model in ("alpha-mini", "beta-chat", "gamma-flash"):  # unanimous: reached
        fake_server.script(model, Reply(text="Paris"))
    c = engine.complete("Capital of France?", s="all")
    assert c.text == "Paris" and c.agreement == 1.0


def test_failed_members_cast_no_vote_and_no_consensus_never_falls_back(engine: Any, fake_server: FakeServer) -> None:
    fake_server.script("alpha-mini", Fault.server_error(500))
    fake_server.script("beta-chat", Fault.auth())
    fake_server.script("gamma-flash", Reply(text="Lyon"))
    with pytest.raises(NoConsensus) as caught:  # one answer of three: not "agreement 1.0"
        engine.complete("hi", s="two")
    error = caught.value
    assert str(error).startswith("no consensus: the best answer had 1 of 3 votes, min_agreement is 2")
    assert error.answers == {"gamma-flash": "Lyon"} and error.agreement == 1.0  # 1 vote / 1 answer received
    assert "delta-tiny" not in called(fake_server)  # the fallback cannot form a consensus
    for model in ("alpha-mini", "beta-chat", "gamma-flash"):  # no answer at all: still no consensus
        fake_server.script(model, Fault.server_error(503))
    with pytest.raises(NoConsensus, match="had 0 of 3 votes") as caught:
        engine.complete("hi", s="two")
    assert caught.value.answers == {} and caught.value.agreement == 0.0
    assert "delta-tiny" not in called(fake_server)
    fake_server.script("alpha-mini", Fault.server_error(500))  # two of three agree: reached
    fake_server.script("beta-chat", Reply(text="Lyon"))
    fake_server.script("gamma-flash", Reply(text="lyon!"))
    c = engine.complete("hi", s="two")
    assert (c.text, c.agreement, sorted(c.answers)) == ("Lyon", 1.0, ["beta-chat", "gamma-flash"])


def test_no_consensus_settles_the_budget(fake_server: FakeServer) -> None:
    from engine.runtime.budget import bucket

    now = 1_750_000_000.0
    policy = "set retry.attempts = 0\nbudget daily $5\notherwise consensus [alpha-mini, beta-chat] min_agreement 2\n"
    e: Any
    with engine_for(fake_server, policy, wall=lambda: now) as e:
        fake_server.script("alpha-mini", Reply(text="yes"))
        fake_server.script("beta-chat", Reply(text="no"))
        with pytest.raises(NoConsensus):
            e.complete("hi")
        spent, reserved = e.state.spent(f"daily:{bucket('daily', now)}")
        assert spent > 0 and reserved == 0  # both answers are paid for; nothing is left held


def test_consensus_compare_exact_takes_the_raw_text(fake_server: FakeServer) -> None:
    policy = EXACT
    with engine_for(fake_server, policy) as e:
        fake_server.script("alpha-mini", Reply(text="Paris."))
        fake_server.script("beta-chat", Reply(text="paris"))
        fake_server.script("gamma-flash", Reply(text="paris"))
        c = e.complete("Capital of France?")
        assert (c.text, c.model, c.agreement) == ("paris", "beta-chat", pytest.approx(2 / 3))
        for model in ("alpha-mini", "beta-chat", "gamma-flash"):
            fake_server.script(model, Reply(text=" Paris" if model == "alpha-mini" else "Paris"))
        assert e.complete("Capital of France?").model == "beta-chat"  # surrounding space counts too
    with engine_for(fake_server, policy.replace("exact", "normalised")) as e:
        for model in ("alpha-mini", "beta-chat", "gamma-flash"):
            fake_server.script(model, Reply(text={"alpha-mini": "Paris.", "beta-chat": "paris"}.get(model, "Lyon")))
        c = e.complete("Capital of France?")
        assert (c.model, c.agreement) == ("alpha-mini", pytest.approx(2 / 3))


def test_consensus_with_a_schema_compares_parsed_values_either_way(fake_server: FakeServer) -> None:
    from pydantic import BaseModel

    class City(BaseModel):
        name: str
        country: str

    policy = EXACT
    with engine_for(fake_server, policy) as e:
        fake_server.script("alpha-mini", Reply(text='{"name": "Lyon", "country": "FR"}'))
        fake_server.script("beta-chat", Reply(text='{"country":"FR","name":"Paris"}'))
        fake_server.script("gamma-flash", Reply(text='```json\n{"name": "Paris", "country": "FR"}\n```'))
        c = e.complete("Capital of France?", schema=City)
        assert (c.parsed.name, c.model, c.agreement) == ("Paris", "beta-chat", pytest.approx(2 / 3))


def test_best_of_judge_scores_and_reasoning(engine: Any, fake_server: FakeServer) -> None:
    fake_server.script("alpha-mini", Reply(text="answer A"))
    fake_server.script("beta-chat", Reply(text="answer B"))
    reply = 'Sure.\n```json\n{"scores": [4, 9], "reasoning": "B is complete"}\n```'
    fake_server.script("alpha-large-2025-01", Reply(text=reply))
    c = engine.complete("Explain X", s="best")
    assert (c.text, c.model) == ("answer B", "beta-chat")
    assert c.judge == Verdict(model="alpha-large", scores=[4.0, 9.0], reasoning="B is complete", winner="beta-chat")
    body = fake_server.requests[-1].body
    assert body["temperature"] == 0 and body["max_completion_tokens"] == 1024
    prompt = body["messages"][-1]["content"]
    assert "Score each of the 2 answers" in prompt and '{"scores": [' in prompt and "{{" not in prompt
    fake_server.script("alpha-mini", Reply(text="answer A"))
    fake_server.script("beta-chat", Reply(text="answer B"))
    fake_server.script("alpha-large-2025-01", Reply(text='{"scores": [7, 7], "reasoning": "tie"}'))
    c = engine.complete("Explain X", s="best")
    assert c.model == "alpha-mini" and c.judge is not None and c.judge.winner == "alpha-mini"  # tie: listed first


def test_best_of_judge_reply_that_is_not_json_falls_back_to_the_number(engine: Any, fake_server: FakeServer) -> None:
    fake_server.script("alpha-mini", Reply(text="answer A"))
    fake_server.script("beta-chat", Reply(text="answer B"))
    fake_server.script("alpha-large-2025-01", Reply(text='2 is best. {"scores": [9]}'))  # one score for two
    c = engine.complete("Explain X", s="best")
    assert c.model == "beta-chat"
    assert c.judge == Verdict("alpha-large", [], '2 is best. {"scores": [9]}', "beta-chat")


def test_best_of_custom_judge_prompt_reaches_the_judge(fake_server: FakeServer) -> None:
    template = 'Pick the best of {count} for: {question}\\n{answers}\\nReply {\\"scores\\": [...]} {unknown}'
    policy = f'set judge.prompt = "{template}"\notherwise best_of [alpha-mini, beta-chat] judge alpha-large\n'
    with engine_for(fake_server, policy) as e:
        fake_server.script("alpha-mini", Reply(text="answer A"))
        fake_server.script("beta-chat", Reply(text="answer {count}"))
        fake_server.script("alpha-large-2025-01", Reply(text=json.dumps({"scores": [8, 2], "reasoning": "A"})))
        c = e.complete("Explain X")
    assert c.model == "alpha-mini" and c.judge is not None and c.judge.scores == [8.0, 2.0]
    judge = fake_server.requests[-1]
    assert judge.model == "alpha-large-2025-01"
    assert judge.body["messages"] == [
        {
            "role": "user",
            "content": "Pick the best of 2 for: Explain X\nAnswer 1:\nanswer A\n\nAnswer 2:\nanswer {count}\n"
            'Reply {"scores": [...]} {unknown}',
        }
    ]


def test_best_of_judge_failure_takes_the_first_answer(engine: Any, fake_server: FakeServer) -> None:
    events: list[Any] = []
    engine.on_event(events.append)
    fake_server.script("alpha-mini", Reply(text="answer A"))
    fake_server.script("beta-chat", Reply(text="answer B"))
    fake_server.script("alpha-large-2025-01", Fault.server_error(500))
    c = engine.complete("Explain X", s="best")
    assert (c.text, c.judge) == ("answer A", None)
    assert ("alpha-large", "ServerError") in [(a.model, a.error) for a in c.attempts]
    judged = [e for e in events if e.error == "JudgeFailed"]
    assert len(judged) == 1 and "the judge failed" in judged[0].message
    fake_server.script("alpha-mini", Reply(text="answer A"))
    fake_server.script("beta-chat", Reply(text="answer B"))
    fake_server.script("alpha-large-2025-01", Reply(text='{"scores": "high", "reasoning": "no numbers"}'))
    c = engine.complete("Explain X", s="best")
    assert (c.text, c.judge) == ("answer A", None)
    assert "names no answer" in [e for e in events if e.error == "JudgeFailed"][-1].message


def test_group_strategy_with_all_failures_raises_routing_error(engine: Any, fake_server: FakeServer) -> None:
    fake_server.script("alpha-mini", Fault.server_error(500))
    fake_server.script("beta-chat", Fault.server_error(500))
    with pytest.raises(RoutingError):
        engine.complete("hi", s="best")


def test_group_strategy_streams_its_result(engine: Any, fake_server: FakeServer) -> None:
    fake_server.script("alpha-mini", Reply(text="x"))
    fake_server.script("beta-chat", Reply(text="X"))
    fake_server.script("gamma-flash", Reply(text="y"))
    stream = engine.stream("hi", s="consensus")
    assert stream.text() == "x" and stream.completion.agreement == pytest.approx(2 / 3)


def test_helpers() -> None:
    assert pick("I pick 2.", 3) == 1 and pick("answer 7", 3) is None and pick("none", 2) is None

    class R:
        def __init__(self, text: str) -> None:
            self.parsed, self.response = None, type("Resp", (), {"text": text})()

    assert normalise(R('  "The  Answer!" ')) == "the answer"  # type: ignore[arg-type]
    assert normalise(R('`"Paris".`')) == normalise(R("'PARIS!'")) == "paris"  # type: ignore[arg-type]
    assert normalise(R(" Paris. "), "exact") == " Paris. "  # type: ignore[arg-type]
    winner, votes = vote([R("a"), R("b"), R("B."), R("a")])  # type: ignore[list-item]
    assert winner.response.text == "a" and votes == 2  # tie: the one listed first
    winner, votes = vote([R("b"), R("a"), R("B."), R("a")], "exact")  # type: ignore[list-item]
    assert winner.response.text == "a" and votes == 2


def test_judge_prompt_rendering_replaces_only_the_three_placeholders() -> None:
    template = 'Q: {question} | {answers} | {count} | {"scores": []} {other} {{question}}'
    out = render(template, question="is {answers} here?", answers="A1", count=2)
    assert out == 'Q: is {answers} here? | A1 | 2 | {"scores": []} {other} {is {answers} here?}'


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('{"scores": [3, 9.5], "reasoning": "B cites sources"}', ([3.0, 9.5], "B cites sources")),
        ('```json\n{"scores": [1, 2]}\n```', ([1.0, 2.0], "")),
        ('Here you go: {"note": {"x": 1}} then {"scores": [0, 1], "reasoning": 7} done', ([0.0, 1.0], "")),
        ('{"scores": [1, 2, 3], "reasoning": "three"}', None),  # not one per answer
        ('{"scores": [true, 2]}', None),  # booleans are not scores
        ('{"scores": ["8", 2]}', None),
        ("Answer 2 is best", None),
        ('{"scores": [1, 2]', None),  # unterminated
    ],
)
def test_read_scores(reply: str, expected: tuple[list[float], str] | None) -> None:
    assert read_scores(reply, 2) == expected
