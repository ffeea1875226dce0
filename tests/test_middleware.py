"""Middleware (providers/execution/middleware.py, calls.py, providers/gateway/middleware.py): `engine.use(mw)` with
sync and async `before` / `after` hooks in; what reaches the loopback fake upstream, what the caller gets back
(complete, acomplete, stream, astream, and the gateway through the official openai SDK) and in which order and on
which thread the hooks ran out."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from engine import Engine
from providers.execution import MiddlewareRequest, answer
from tests.engines import Engines
from tests.fakeserver import FakeServer, Fault, Reply

POLICY = """
set retry.attempts = 0
when tier == "pro" use alpha-large
otherwise use alpha-mini fallback beta-chat
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def make(fake_server: FakeServer) -> Iterator[Engines]:
    engines = Engines(fake_server, default=POLICY)
    yield engines
    engines.close()


class Redact:
    """A worked example (docs/middleware.md): replace e-mail addresses before anything is routed or sent."""

    def before(self, request: MiddlewareRequest) -> None:
        for m in request.messages:
            if isinstance(m.get("content"), str):
                m["content"] = m["content"].replace("ann@example.com", "[email]")


class Log:
    """Records every hook call (name, thread) in `calls`."""

    def __init__(self, name: str, calls: list[tuple[str, str]]) -> None:
        self.name, self.calls = name, calls

    def before(self, request: MiddlewareRequest) -> None:
        self.calls.append((f"{self.name}.before", threading.current_thread().name))

    async def after(self, request: MiddlewareRequest, response: Any) -> None:
        self.calls.append((f"{self.name}.after", threading.current_thread().name))


def sent_text(server: FakeServer) -> str:
    return str(server.last().body["messages"])


# ---- the Python API ----------------------------------------------------------------------------------------------
def test_before_rewrites_messages_and_attributes_and_after_replaces_the_text(make, fake_server: FakeServer) -> None:
    engine = make()
    engine.use(Redact())

    class Upgrade:
        def before(self, request: MiddlewareRequest) -> None:
            request.attributes["tier"] = "pro"

        def after(self, request: MiddlewareRequest, response: Any) -> str:
            return response.text.upper()

    engine.use(Upgrade())
    fake_server.default = Reply(text="done")
    c = engine.complete("mail ann@example.com please")
    assert (c.model, c.text) == ("alpha-large", "DONE")  # the attribute routed it, the after hook rewrote it
    assert "[email]" in sent_text(fake_server) and "ann@example.com" not in sent_text(fake_server)


def test_hooks_run_in_registration_order_sync_and_async(make, fake_server: FakeServer) -> None:
    engine = make()
    calls: list[tuple[str, str]] = []
    engine.use(Log("a", calls))
    remove = engine.use(Log("b", calls))
    engine.complete("hello")
    assert [name for name, _ in calls] == ["a.before", "b.before", "a.after", "b.after"]
    assert calls[0][1] == threading.current_thread().name  # the sync API runs plain hooks on the caller's thread
    remove()
    calls.clear()
    engine.complete("hello")
    assert [name for name, _ in calls] == ["a.before", "a.after"]


def test_before_can_answer_without_routing(make, fake_server: FakeServer) -> None:
    engine = make()

    class Cache:
        async def before(self, request: MiddlewareRequest) -> Any:
            return answer("cached answer") if request.messages[-1]["content"] == "cached?" else None

    seen: list[str] = []

    class Tail:
        def before(self, request: MiddlewareRequest) -> None:
            seen.append("tail.before")  # never reached for an answered request

        def after(self, request: MiddlewareRequest, response: Any) -> None:
            seen.append(f"tail.after {response.model}")

    engine.use(Cache())
    engine.use(Tail())
    c = engine.complete("cached?")
    assert (c.text, c.model, c.strategy, c.attempts, c.decision) == (
        "cached answer",
        "middleware",
        "middleware",
        [],
        None,
    )
    assert fake_server.requests == [] and seen == ["tail.after middleware"]
    assert [e.kind for e in engine.stream("cached?")] == ["delta", "usage", "done"]
    assert engine.complete("not cached").model == "alpha-mini"


def test_a_before_hook_may_return_a_new_request(make, fake_server: FakeServer) -> None:
    engine = make()

    class Swap:
        def before(self, request: MiddlewareRequest) -> MiddlewareRequest:
            return MiddlewareRequest([{"role": "user", "content": "swapped"}], {"tier": "pro"}, request.options)

    engine.use(Swap())
    assert engine.complete("original", max_tokens=7).model == "alpha-large"
    body = fake_server.last().body
    assert body["messages"] == [{"role": "user", "content": "swapped"}] and body["max_completion_tokens"] == 7


def test_a_middleware_that_changes_nothing_changes_nothing(make, fake_server: FakeServer) -> None:
    plain, hooked = make(), make()
    hooked.use(Log("x", []))
    assert plain.decide("hello").tokens == hooked.decide("hello").tokens
    plain.complete("hello")
    first = fake_server.last().body
    hooked.complete("hello")
    assert fake_server.last().body == first


def test_stream_after_sees_the_assembled_answer(make, fake_server: FakeServer) -> None:
    engine = make()
    got: list[str] = []

    class Tap:
        def after(self, request: MiddlewareRequest, response: Any) -> str:
            got.append(response.text)
            return "replaced"

    engine.use(Tap())
    fake_server.script("alpha-mini", Reply(text="a b c", chunks=3))
    s = engine.stream("hello")
    assert s.decision.model == "alpha-mini"
    assert s.text() == "a b c"  # the events already delivered are what the model sent
    assert got == ["a b c"] and s.completion is not None and s.completion.text == "replaced"


@pytest.mark.anyio
async def test_async_paths_run_plain_hooks_in_a_worker_thread(make, fake_server: FakeServer) -> None:
    engine = make()
    calls: list[tuple[str, str]] = []
    engine.use(Log("a", calls))
    loop_thread = threading.current_thread().name
    c = await engine.acomplete("hello")
    assert c.model == "alpha-mini"
    assert calls[0][0] == "a.before" and calls[0][1] != loop_thread  # the plain hook ran off the event loop
    assert calls[1] == ("a.after", loop_thread)  # the async one on it
    calls.clear()
    fake_server.script("alpha-mini", Reply(text="x y", chunks=2))
    stream = engine.astream("hello")
    text = "".join([e.text async for e in stream if e.kind == "delta"])
    assert text == "x y" and [n for n, _ in calls] == ["a.before", "a.after"]
    assert stream.decision.model == "alpha-mini" and stream.completion is not None
    await engine.aclose()


def test_errors_propagate_and_after_runs_only_for_an_answer(make, fake_server: FakeServer) -> None:
    from providers.execution import RoutingError

    engine = make()
    calls: list[tuple[str, str]] = []
    engine.use(Log("a", calls))
    fake_server.always("alpha-mini", Fault.server_error(500))
    fake_server.always("beta-chat", Fault.server_error(500))
    with pytest.raises(RoutingError):
        engine.complete("hello")
    assert [n for n, _ in calls] == ["a.before"]


def test_bad_middleware_is_refused(make) -> None:
    engine = make()
    with pytest.raises(TypeError, match="neither a before"):
        engine.use(object())

    class Wrong:
        def before(self, request: MiddlewareRequest) -> int:
            return 42

    engine.use(Wrong())
    with pytest.raises(TypeError, match="before\\(\\) returned int"):
        engine.complete("hello")


# ---- the gateway -------------------------------------------------------------------------------------------------
openai = pytest.importorskip("openai", reason="the openai SDK is not installed (pip install -e '.[test]')")


@pytest.fixture
def served(fake_server: FakeServer) -> Iterator[Any]:
    """`served(engine)` serves an engine's gateway on a loopback port; returns an openai client."""
    from providers.gateway.app import create_app
    from tests.test_gateway import ThreadServer

    servers: list[Any] = []

    def start(engine: Engine, **kw: Any) -> Any:
        server = ThreadServer(create_app(engine, **kw)).__enter__()
        servers.append(server)
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        client.url = server.url
        return client

    yield start
    for s in servers:
        s.__exit__()


def test_gateway_runs_middleware_with_sync_hooks_off_the_event_loop(make, served, fake_server: FakeServer) -> None:
    engine = make()
    calls: list[tuple[str, str]] = []
    engine.use(Redact())
    engine.use(Log("log", calls))

    class Shout:
        def after(self, request: MiddlewareRequest, response: Any) -> str:
            assert request.source == "gateway"
            return response.text.upper()

    engine.use(Shout())
    client = served(engine)
    fake_server.default = Reply(text="fine")
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "to ann@example.com"}]
    )
    c = raw.parse()
    assert c.choices[0].message.content == "FINE" and raw.headers["x-modelroute-model"] == "alpha-mini"
    assert "[email]" in sent_text(fake_server)
    # the plain hook ran in a worker thread, the async one on the server's event loop thread
    assert calls[0][0] == "log.before" and calls[0][1] != calls[1][1]


def test_gateway_middleware_answer_json_and_stream(make, served, fake_server: FakeServer) -> None:
    engine = make()

    class Refuse:
        def before(self, request: MiddlewareRequest) -> Any:
            return "refused by policy" if "forbidden" in str(request.messages) else None

    engine.use(Refuse())
    client = served(engine)
    msgs = [{"role": "user", "content": "forbidden topic"}]
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=msgs)
    assert raw.parse().choices[0].message.content == "refused by policy"
    assert raw.headers["x-modelroute-rule"] == "middleware" and raw.headers["x-modelroute-attempts"] == "0"
    chunks = list(client.chat.completions.create(model="auto", messages=msgs, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "refused by policy"
    assert fake_server.requests == []


def test_gateway_stream_after_sees_the_assembled_answer(make, served, fake_server: FakeServer) -> None:
    engine = make()
    got: list[str] = []

    class Tap:
        async def after(self, request: MiddlewareRequest, response: Any) -> None:
            await asyncio.sleep(0)
            got.append(response.text)

    engine.use(Tap())
    client = served(engine)
    fake_server.script("alpha-mini", Reply(text="one two three", chunks=3))
    chunks = list(
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}], stream=True)
    )
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "one two three"
    from tests.waiting import wait_until

    wait_until(lambda: got, "the after hook of the stream")
    assert got == ["one two three"]
