"""Tests for the gateway (providers/gateway/, engine/cli/serve.py): the official `openai` SDK and raw httpx
requests in, against real uvicorn servers (in a thread, or `modelroute serve` subprocesses) whose upstreams are
the FakeServer; OpenAI-shaped answers, headers, errors, metrics, shared Redis state and graceful shutdown out."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="gateway deps not installed (pip install -e '.[test]')")
pytest.importorskip("uvicorn", reason="gateway deps not installed (pip install -e '.[test]')")
openai = pytest.importorskip("openai", reason="the openai SDK is not installed (pip install -e '.[test]')")
import httpx  # noqa: E402
import uvicorn  # noqa: E402

from providers.gateway.app import create_app  # noqa: E402
from providers.gateway.keys import GatewayKey, KeyRing, hash_key  # noqa: E402
from providers.gateway.protocol import CoalescingTransport, http_protocol  # noqa: E402
from tests.engines import CATALOG, KINDS, TEST_KEY, engine_for  # noqa: E402
from tests.fakeserver import Call, FakeServer, Fault, Reply  # noqa: E402
from tests.test_redis_store import REDIS_BIN, RedisServer, free_port  # noqa: E402
from tests.waiting import wait_until  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
KEY, OTHER_KEY = "mr-test-gateway-key", "mr-budgeted-key"
FIXTURE_POLICY = Path(__file__).parent / "fixtures" / "policies"
POLICY = """
set retry.attempts = 1
set retry.backoff = 5ms
when tier == "pro" use alpha-large fallback beta-coder
when images prefer cheapest
otherwise use alpha-mini fallback beta-chat, gamma-flash
"""


class ThreadServer:
    """A uvicorn server for an ASGI app on a free loopback port, in a background thread."""

    def __init__(self, app: Any):
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on", http=http_protocol()
            )
        )  # as `serve` runs it
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        wait_until(lambda: self.server.started or not self.thread.is_alive(), "uvicorn to start")
        assert self.server.started, "uvicorn did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def keyring() -> KeyRing:
    return KeyRing(
        [
            GatewayKey("team-a", hash_key(KEY)),
            GatewayKey("budgeted", hash_key(OTHER_KEY), {"tier": "free"}, daily_budget=0.0002),
        ]
    )


@pytest.fixture
def gw(fake_server: FakeServer) -> Iterator[Any]:
    """A gateway over engine_for(fake_server, POLICY) with gateway keys; `gw.start(policy)` for another."""

    class Handle:
        servers: list[ThreadServer] = []

        def start(self, policy: str = POLICY, keys: KeyRing | None = None, **kw: Any) -> Handle:
            self.engine = engine_for(fake_server, policy)
            self.app = create_app(self.engine, keys=keys if keys is not None else keyring(), **kw)
            server = ThreadServer(self.app).__enter__()
            self.servers.append(server)
            self.url = server.url
            self.client = openai.OpenAI(base_url=self.url + "/v1", api_key=KEY, max_retries=0)
            return self

        def post(self, path: str, body: Any = None, key: str | None = KEY, **kw: Any) -> httpx.Response:
            headers = {"authorization": f"Bearer {key}"} if key else {}
            headers.update(kw.pop("headers", {}))
            return httpx.post(self.url + path, json=body, headers=headers, timeout=10, **kw)

    handle = Handle().start()
    yield handle
    for s in handle.servers:
        s.__exit__()


MSG = [{"role": "user", "content": "Say hello"}]


# ---- the openai SDK: sync, async, streaming, fallback ------------------------------------------------------
def test_sync_sdk_routes_by_policy_and_reports_in_headers(gw, fake_server: FakeServer) -> None:
    fake_server.script("alpha-mini", Reply(text="hello there", input_tokens=12, output_tokens=3))
    raw = gw.client.chat.completions.with_raw_response.create(model="auto", messages=MSG)
    c = raw.parse()
    assert c.choices[0].message.content == "hello there" and c.model == "alpha-mini"
    assert c.choices[0].finish_reason == "stop" and c.usage.prompt_tokens == 12 and c.usage.total_tokens == 15
    h = raw.headers
    assert h["x-modelroute-model"] == "alpha-mini" and h["x-modelroute-rule"] == "<string>:6"
    assert h["x-modelroute-policy-version"] == gw.engine.version
    assert (h["x-modelroute-attempts"], h["x-modelroute-fallbacks"]) == ("1", "0")
    assert fake_server.last().headers["authorization"] == f"Bearer {TEST_KEY}"  # the provider key goes upstream
    assert KEY not in json.dumps(fake_server.last().headers)  # and the gateway key does not


def test_async_sdk_and_fallback_after_503(gw, fake_server: FakeServer) -> None:
    fake_server.script("alpha-mini", [Fault.server_error(503), Fault.server_error(503)])
    fake_server.script("beta-chat", Reply(text="from the fallback"))

    async def go() -> Any:
        async with openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0) as client:
            return await client.chat.completions.with_raw_response.create(model="auto", messages=MSG)

    raw = asyncio.run(go())
    assert raw.parse().choices[0].message.content == "from the fallback"
    assert raw.headers["x-modelroute-model"] == "beta-chat"
    assert (raw.headers["x-modelroute-attempts"], raw.headers["x-modelroute-fallbacks"]) == ("3", "1")


def test_streaming_sdk_chunks_usage_and_done(gw, fake_server: FakeServer) -> None:
    fake_server.script("alpha-mini", [Fault.server_error(503), Fault.server_error(503)])
    fake_server.script("beta-chat", Reply(text="one two three four", chunks=4, output_tokens=4))
    with gw.client.chat.completions.with_streaming_response.create(
        model="auto", messages=MSG, stream=True, stream_options={"include_usage": True}
    ) as resp:
        assert resp.headers["x-modelroute-model"] == "beta-chat" and resp.headers["x-modelroute-fallbacks"] == "1"
        lines = [line for line in resp.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "beta-chat" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "one two three four"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
    # and through the SDK's own stream parser
    stream = gw.client.chat.completions.create(model="auto", messages=MSG, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "ok"


def test_async_streaming_and_tool_calls(gw, fake_server: FakeServer) -> None:
    fake_server.script(
        "alpha-mini", [Reply(text="", tool_calls=[Call("get_weather", {"city": "Paris"})], finish="tool_calls")] * 2
    )
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]

    async def go() -> tuple[list[Any], Any]:
        async with openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0) as client:
            stream = await client.chat.completions.create(model="auto", messages=MSG, tools=tools, stream=True)
            chunks = [c async for c in stream]
            plain = await client.chat.completions.create(model="auto", messages=MSG, tools=tools)
            return chunks, plain

    chunks, plain = asyncio.run(go())
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert calls[0].function.name == "get_weather" and json.loads(calls[0].function.arguments) == {"city": "Paris"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert plain.choices[0].message.tool_calls[0].function.name == "get_weather"
    assert plain.choices[0].finish_reason == "tool_calls"
    assert fake_server.last().body["tools"][0]["function"]["name"] == "get_weather"


def test_concurrent_load_with_faults(gw, fake_server: FakeServer) -> None:
    faults = [Fault.server_error(503), Fault.rate_limited(retry_after=0.01), Fault.reset(), Reply(text="fine")]
    fake_server.script("alpha-mini", [faults[i % 4] for i in range(120)])
    fake_server.default = Reply(text="fine")

    async def go() -> list[Any]:
        sem = asyncio.Semaphore(16)
        async with openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0) as client:

            async def one(i: int) -> Any:
                async with sem:
                    return await client.chat.completions.with_raw_response.create(
                        model="auto", messages=[{"role": "user", "content": f"request {i}"}]
                    )

            return await asyncio.gather(*(one(i) for i in range(60)))

    results = asyncio.run(go())
    assert all(r.parse().choices[0].message.content == "fine" for r in results)
    assert {r.headers["x-modelroute-model"] for r in results} <= {"alpha-mini", "beta-chat", "gamma-flash"}
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'modelroute_requests_total{endpoint="chat",status="200"} 60' in metrics
    decisions = [line for line in metrics.splitlines() if line.startswith("modelroute_decisions_total{")]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in decisions) == 60  # alpha-mini until its circuit opened
    assert "modelroute_fallbacks_total" in metrics and 'modelroute_failures_total{model="alpha-mini"' in metrics


# ---- request attributes, overrides --------------------------------------------------------------------------
def test_request_fields_and_headers_become_attributes(gw, fake_server: FakeServer) -> None:
    r = gw.post("/v1/chat/completions", {"model": "auto", "messages": MSG}, headers={"x-route-tier": "pro"})
    assert r.status_code == 200 and r.headers["x-modelroute-model"] == "alpha-large"
    r = gw.post("/v1/chat/completions", {"model": "auto", "messages": MSG, "metadata": {"tier": "pro"}})
    assert r.headers["x-modelroute-model"] == "alpha-large"
    image = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
            ],
        }
    ]
    r = gw.post("/v1/route/explain", {"model": "auto", "messages": image})
    assert r.status_code == 200 and r.json()["model"] == "gamma-flash"  # the cheapest vision model
    r = gw.post(
        "/v1/route/explain",
        {
            "model": "auto",
            "messages": MSG,
            "user": "u1",
            "max_tokens": 50,
            "tools": [{"type": "function", "function": {"name": "f"}}],
        },
        headers={"x-route-plan": '{"seats": 3}'},
    )
    report = r.json()
    assert report["attrs"]["user"] == "u1" and report["attrs"]["plan"] == {"seats": 3}
    assert report["attrs"]["tools"] is True and report["attrs"]["max_tokens"] == 50
    assert report["attrs"]["key"] == "team-a"
    # a key's bound attributes win over what the request says
    r = gw.post("/v1/route/explain", {"messages": MSG}, key=OTHER_KEY, headers={"x-route-tier": "pro"})
    assert r.json()["attrs"]["tier"] == "free" and r.json()["model"] == "alpha-mini"


def test_naming_a_model_needs_overrides(gw, fake_server: FakeServer) -> None:
    r = gw.post("/v1/chat/completions", {"model": "beta-chat", "messages": MSG})
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_override_disabled"
    assert "set overrides = true" in r.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError):
        gw.client.chat.completions.create(model="no-such-model", messages=MSG)
    gw.start("set overrides = true\n" + POLICY)
    raw = gw.client.chat.completions.with_raw_response.create(model="beta-chat", messages=MSG)
    assert raw.parse().model == "beta-chat" and raw.headers["x-modelroute-rule"] == "override"
    assert gw.client.chat.completions.create(model="gpt-4o-mini", messages=MSG).model == "alpha-mini"  # an alias
    r = gw.post(
        "/v1/chat/completions",
        {"model": "beta-chat", "messages": MSG, "tools": [{"type": "function", "function": {"name": "f"}}]},
    )
    assert r.status_code == 400 and "no tools support" in r.json()["error"]["message"]


# ---- errors ---------------------------------------------------------------------------------------------
def test_named_policies_are_chosen_by_model_name(gw, fake_server: FakeServer) -> None:
    cheap = engine_for(fake_server, "otherwise use gamma-flash fallback alpha-mini\n")
    gw.start(policies={"cheap": cheap})
    fake_server.script("gamma-flash", Reply(text="cheap answer"))
    raw = gw.client.chat.completions.with_raw_response.create(model="cheap", messages=MSG)
    assert raw.parse().choices[0].message.content == "cheap answer" and raw.parse().model == "gamma-flash"
    assert raw.headers["x-modelroute-policy"] == "cheap"
    assert raw.headers["x-modelroute-policy-version"] == cheap.version != gw.engine.version
    auto = gw.client.chat.completions.with_raw_response.create(model="auto", messages=MSG)
    assert (auto.headers["x-modelroute-policy"], auto.headers["x-modelroute-model"]) == ("auto", "alpha-mini")
    streamed = gw.client.chat.completions.with_raw_response.create(model="cheap", messages=MSG, stream=True)
    assert streamed.headers["x-modelroute-policy"] == "cheap"
    assert "".join(c.choices[0].delta.content or "" for c in streamed.parse() if c.choices)
    models = httpx.get(gw.url + "/v1/models", headers={"authorization": f"Bearer {KEY}"}).json()["data"]
    ids = [m["id"] for m in models]
    assert ids[:2] == ["auto", "cheap"]
    report = gw.post("/v1/route/explain", {"model": "cheap", "messages": MSG}).json()
    assert report["model"] == "gamma-flash" and report["policy_version"] == cheap.version
    health = httpx.get(gw.url + "/healthz").json()
    assert health["policies"]["cheap"]["policy_version"] == cheap.version
    with pytest.raises(ValueError, match="also a catalog model"):
        create_app(gw.engine, policies={"alpha-mini": cheap})


def test_serve_named_policy_options(tmp_path: Path, cli) -> None:
    out = cli("serve", "-p", "a.route", "-p", "b.route", "--port", "1")
    assert out.returncode == 2 and "two default policies" in out.stderr and "Traceback" not in out.stderr
    out = cli("serve", "-p", "x=a.route", "-p", "x=b.route", "--port", "1")
    assert out.returncode == 2 and "given twice" in out.stderr
    out = cli("serve", "-p", "cheap=missing.route", "--port", "1")
    assert out.returncode == 1 and "missing.route" in out.stderr and "Traceback" not in out.stderr


def test_authentication(gw) -> None:
    assert gw.post("/v1/chat/completions", {"messages": MSG}, key=None).status_code == 401
    r = gw.post("/v1/chat/completions", {"messages": MSG}, key="mr-wrong")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    bad = openai.OpenAI(base_url=gw.url + "/v1", api_key="mr-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="auto", messages=MSG)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    assert httpx.get(gw.url + "/healthz").json()["status"] == "ok"  # health and metrics need no key


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b'["a list"]', 400, "invalid_json"),
        (b'{"messages": [{"role": "user", "content": "x"}], "top_p": "high"}', 400, "invalid_value"),
        (b'{"messages": [{"role": "user", "content": "x"}], "n": 2, "stream": true}', 400, "invalid_value"),
        (b'{"messages": []}', 400, "invalid_value"),
        (b'{"messages": [{"role": "wizard", "content": "x"}]}', 400, "invalid_value"),
        (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}', 400, "invalid_value"),
        (b'{"messages": [{"role": "user", "content": "x"}], "metadata": {"tokens": 1}}', 400, "reserved_attribute"),
        (b'{"messages": [{"role": "user", "content": "' + b"x" * 5000 + b'"}]}', 413, "body_too_large"),
    ],
)
def test_bad_requests_get_openai_style_errors(gw, body: bytes, status: int, code: str) -> None:
    gw.start(max_body=4096)
    r = httpx.post(
        gw.url + "/v1/chat/completions",
        content=body,
        headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"},
    )
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["type"] == "invalid_request_error" and err["message"]


def test_every_model_failing_is_a_502_and_keys_never_leak(
    gw, fake_server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    fake_server.default = Fault.auth(echo_key=True)  # every provider answers 401 quoting the key it was sent
    with caplog.at_level(logging.DEBUG):
        r = gw.post("/v1/chat/completions", {"messages": MSG})
        s = gw.post("/v1/chat/completions", {"messages": MSG, "stream": True})
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_failed"
    assert "AuthError" in r.json()["error"]["message"] and r.headers["x-modelroute-model"] == "alpha-mini"
    assert s.status_code == 502
    metrics = httpx.get(gw.url + "/metrics").text
    everything = r.text + json.dumps(dict(r.headers)) + s.text + metrics + caplog.text
    assert TEST_KEY not in everything and KEY not in everything


def test_key_daily_budget_and_policy_budget(gw, fake_server: FakeServer) -> None:
    fake_server.script("alpha-mini", Reply(input_tokens=10, output_tokens=100))  # costs $0.000155
    body = {"messages": MSG, "max_tokens": 100}  # may cost up to $0.0001535 on alpha-mini
    r = gw.post("/v1/chat/completions", body, key=OTHER_KEY)  # $0.0002 a day
    assert r.status_code == 200
    r = gw.post("/v1/chat/completions", body, key=OTHER_KEY)
    assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded"
    assert "budgeted" in r.json()["error"]["message"]
    gw.start("budget daily $0.0000001\n" + POLICY)
    r = gw.post("/v1/chat/completions", {"messages": MSG})
    assert r.status_code == 429 and r.json()["error"]["type"] == "insufficient_quota"


def test_models_explain_healthz_metrics(gw) -> None:
    ids = [m.id for m in gw.client.models.list()]
    assert ids[0] == "auto" and {"alpha-mini", "beta-chat", "local-free"} <= set(ids)
    r = gw.post("/v1/route/explain", {"model": "auto", "messages": MSG}, headers={"x-route-tier": "pro"})
    report = r.json()
    assert report["model"] == "alpha-large" and report["rule"]["line"] == 4 and report["fallbacks"] == ["beta-coder"]
    assert report["policy_version"] == gw.engine.version and report["rules"]
    health = httpx.get(gw.url + "/healthz").json()
    assert health["state"] == "memory" and health["policy_version"] == gw.engine.version
    gw.client.chat.completions.create(model="auto", messages=MSG)
    metrics = httpx.get(gw.url + "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    for needle in (
        "# TYPE modelroute_request_duration_seconds histogram",
        'modelroute_circuit_state{model="alpha-mini"} 0',
        'modelroute_attempts_total{model="alpha-mini",outcome="ok"} 1',
        "modelroute_spend_usd_total",
        'modelroute_upstream_latency_seconds_bucket{model="alpha-mini",le="+Inf"} 1',
    ):
        assert needle in text
    assert httpx.get(gw.url + "/nope").json()["error"]["code"] == "not_found"


def test_keys_file_and_hash_key_command(tmp_path: Path, cli) -> None:
    out = cli("serve", "--hash-key", input="my-key\n")
    assert out.returncode == 0 and out.stdout.strip() == hash_key("my-key")
    path = tmp_path / "keys.yaml"
    path.write_text(
        f"keys:\n  - name: a\n    sha256: {hash_key('my-key')}\n    attributes: {{tier: pro}}\n    daily_budget: $5\n"
    )
    ring = KeyRing.load(path)
    found = ring.check("my-key")
    assert found is not None and found.attributes == {"tier": "pro"} and found.daily_budget == 5.0
    assert ring.check("other") is None and ring.check(None) is None
    path.write_text("keys:\n  - name: a\n    sha256: my-key\n")
    out = cli("serve", "--keys", str(path), "--port", "1")
    assert out.returncode == 2 and "64 hex digits" in out.stderr


# ---- real `modelroute serve` processes: shutdown, shared Redis ---------------------------------------------
def write_policy(tmp_path: Path, server: FakeServer, policy: str) -> Path:
    providers = "".join(
        f'  {name}: {{kind: {kind}, base_url: "{server.base_url(kind)}", '
        f"api_key_env: TEST_{name.upper()}_KEY, timeout_s: 5}}\n"
        for name, kind in KINDS.items()
    )
    (tmp_path / "catalog.yaml").write_text(CATALOG.read_text() + "\nproviders:\n" + providers)
    (tmp_path / "main.route").write_text('catalog "catalog.yaml"\n' + policy)
    return tmp_path


class Serve:
    """`modelroute serve` in a subprocess on a free port (env: the test keys unless given; log_level None: serve's
    own default); `stop()` returns what it wrote to stderr."""

    def __init__(
        self, policy_dir: Path, *args: str, env: dict[str, str] | None = None, log_level: str | None = "warning"
    ) -> None:
        self.port = free_port()
        if env is None:
            env = {**os.environ, "PYTHONPATH": str(REPO), **{f"TEST_{n.upper()}_KEY": TEST_KEY for n in KINDS}}
        level = ["--log-level", log_level] if log_level else []
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "engine.cli",
                "serve",
                "-p",
                str(policy_dir),
                "--port",
                str(self.port),
                *level,
                *args,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_until(self._healthy, f"modelroute serve on port {self.port} to answer /healthz", timeout=30, interval=0.05)

    def _healthy(self) -> bool:
        try:
            return httpx.get(self.url + "/healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            if self.proc.poll() is not None:
                raise AssertionError("serve exited: " + (self.proc.stderr.read() if self.proc.stderr else "")) from None
            return False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err


def test_sigterm_lets_a_slow_stream_finish(tmp_path: Path, fake_server: FakeServer) -> None:
    policy = write_policy(tmp_path, fake_server, "otherwise use alpha-mini\n")
    fake_server.script("alpha-mini", Reply(text="a b c d e f g h", chunks=8, chunk_delay=0.15))
    serve = Serve(policy)
    try:
        with httpx.stream(
            "POST",
            serve.url + "/v1/chat/completions",
            timeout=20,
            json={"model": "auto", "messages": MSG, "stream": True},
        ) as resp:
            lines = resp.iter_lines()
            first = next(line for line in lines if line)
            serve.proc.send_signal(signal.SIGTERM)  # mid-stream
            rest = [line for line in lines if line]
        assert json.loads(first[6:])["choices"][0]["delta"]["role"] == "assistant"
        assert rest[-1] == "data: [DONE]"
        text = "".join(json.loads(x[6:])["choices"][0]["delta"].get("content") or "" for x in rest[:-1])
        assert text == "a b c d e f g h"
        # uvicorn finishes the stream, shuts down, then re-raises the SIGTERM it caught (exit status -15)
        assert serve.proc.wait(10) in (0, -signal.SIGTERM)
        assert "Traceback" not in serve.stop()
    finally:
        serve.stop()


needs_redis = pytest.mark.skipif(REDIS_BIN is None, reason="no redis-server binary (apt-get install redis-server)")


@needs_redis
def test_two_gateways_share_circuits_and_budget_through_redis(tmp_path: Path, fake_server: FakeServer) -> None:
    pytest.importorskip("redis")
    redis_server = RedisServer().start()
    policy = write_policy(
        tmp_path,
        fake_server,
        """
set retry.attempts = 0
set circuit.failures = 2
set circuit.cooldown = 60s
set output_tokens = 100
set budget.max_output_tokens = 100
budget daily $0.002
otherwise use alpha-mini fallback beta-chat
""",
    )
    a = b = None
    try:
        a, b = (Serve(policy, "--redis", redis_server.url) for _ in range(2))
        assert httpx.get(a.url + "/healthz").json()["state"] == "redis"
        fake_server.script("alpha-mini", [Fault.server_error(503)] * 2)
        for _ in range(2):  # two failures through A open alpha-mini's circuit
            r = httpx.post(a.url + "/v1/chat/completions", json={"messages": MSG})
            assert r.status_code == 200 and r.headers["x-modelroute-model"] == "beta-chat"
        calls = sum(x.model == "alpha-mini" for x in fake_server.requests)
        r = httpx.post(b.url + "/v1/chat/completions", json={"messages": MSG})  # B skips it without calling
        assert r.headers["x-modelroute-model"] == "beta-chat" and r.headers["x-modelroute-attempts"] == "1"
        assert sum(x.model == "alpha-mini" for x in fake_server.requests) == calls
        assert 'modelroute_circuit_state{model="alpha-mini"} 2' in httpx.get(b.url + "/metrics").text

        # concurrent load across both: the daily budget ($0.002; each request holds up to $0.0000508 on
        # beta-chat, 54 tokens in and max_tokens 100 out, and really costs $0.000042) is never exceeded
        fake_server.default = Reply(text="ok", input_tokens=10, output_tokens=100)

        async def load() -> list[httpx.Response]:
            sem = asyncio.Semaphore(24)
            async with httpx.AsyncClient(timeout=20) as client:

                async def one(i: int) -> httpx.Response:
                    async with sem:
                        url = (a.url if i % 2 else b.url) + "/v1/chat/completions"
                        return await client.post(url, json={"messages": [{"role": "user", "content": "x" * 200}]})

                return await asyncio.gather(*(one(i) for i in range(120)))

        results = asyncio.run(load())
        assert {r.status_code for r in results} <= {200, 429}
        import redis

        client = redis.Redis.from_url(redis_server.url)
        try:  # one key per UTC day (two if the load ran over midnight): whatever today is, none is overspent
            keys = list(client.scan_iter(match="modelroute:spend:daily:*"))
            spent = [float(client.hget(key, "spent") or 0) for key in keys]
        finally:
            client.close()
        assert keys and sum(spent) > 0 and all(x <= 0.002 + 1e-12 for x in spent)
        assert sum(r.status_code == 429 for r in results) > 0  # the budget was binding

        # losing Redis mid-run: requests still succeed, with one warning
        redis_server.kill()
        for server in (a, b):
            for _ in range(3):
                r = httpx.post(server.url + "/v1/chat/completions", json={"messages": MSG})
                assert r.status_code in (200, 429), r.text
            assert httpx.get(server.url + "/healthz").json()["state"].startswith("local")
        err = a.stop()
        assert "redis state store unreachable" in err and err.count("unreachable") == 1
    finally:
        for s in (a, b):
            if s is not None:
                s.stop()
        redis_server.kill()


# ---- the coalescing HTTP protocol (providers/gateway/protocol.py) -------------------------------------------------
class RecordingTransport:
    """Stands in for a socket transport: records each write as the kernel would see it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


def test_coalescing_transport_joins_writes_of_one_loop_turn() -> None:
    async def go() -> None:
        real = RecordingTransport()
        t = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        t.write(b"")
        t.write(b"hi")
        assert real.writes == [] and t.get_write_buffer_size() == 40
        await asyncio.sleep(0)
        assert real.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi"]
        t.write(b"chunk 1")  # a stream: each turn's writes leave in that turn
        await asyncio.sleep(0)
        t.write(b"chunk 2")
        t.close()  # close sends what is queued first
        assert real.writes[1:] == [b"chunk 1", b"chunk 2"] and real.closed
        assert t.get_extra_info("peername") == ("127.0.0.1", 1)

    asyncio.run(go())


def test_a_json_answer_leaves_in_one_write(gw, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through real uvicorn: it writes a response's head and body separately; the socket gets one write."""
    import providers.gateway.protocol as gh

    sent: list[bytes] = []  # what reaches the socket transport
    queued: list[bytes] = []  # what uvicorn wrote

    class Recorder:
        def __init__(self, transport: Any) -> None:
            self._t = transport

        def write(self, data: bytes) -> None:
            sent.append(data)
            self._t.write(data)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._t, name)

    init, write = gh.CoalescingTransport.__init__, gh.CoalescingTransport.write
    monkeypatch.setattr(gh.CoalescingTransport, "__init__", lambda self, t, loop: init(self, Recorder(t), loop))
    monkeypatch.setattr(gh.CoalescingTransport, "write", lambda self, data: (queued.append(data), write(self, data)))
    with httpx.Client() as client:  # a fresh connection, made after the patch
        r = client.post(
            gw.url + "/v1/chat/completions",
            json={"model": "auto", "messages": MSG},
            headers={"authorization": f"Bearer {KEY}"},
        )
    assert r.status_code == 200 and r.json()["model"] == "alpha-mini"
    queued = [q for q in queued if q]  # uvicorn's h11 protocol also writes an empty end-of-body
    assert len(queued) == 2 and queued[0].startswith(b"HTTP/1.1 200") and queued[1] == r.content
    assert sent == [queued[0] + queued[1]]


# ---- run_server: what `modelroute serve` calls after parsing its options ---------------------------------------


def test_run_server_refuses_a_bad_keys_file_before_binding(tmp_path: Path) -> None:
    from providers.gateway.server import ServeError, ServeOptions, run_server

    bad = tmp_path / "keys.yaml"
    bad.write_text("keys: [oops\n")
    lines: list[str] = []
    with pytest.raises(ServeError) as err:
        run_server(ServeOptions(policy=FIXTURE_POLICY, named={}, port=0, keys_file=bad), lines.append)
    assert err.value.kind == "usage" and err.value.param is None and "keys.yaml" in str(err.value)
    assert lines == []  # nothing was served, so no banner


def test_run_server_names_the_option_of_a_bad_redis_url() -> None:
    from providers.gateway.server import ServeError, ServeOptions, run_server

    with pytest.raises(ServeError) as err:
        run_server(ServeOptions(policy=FIXTURE_POLICY, named={}, port=0, redis_url="notaurl"), print)
    assert err.value.param == "--redis" and "not a Redis URL" in str(err.value)


def test_run_server_reports_an_unresolvable_host_as_a_usage_error() -> None:
    from providers.gateway.server import ServeError, ServeOptions, run_server

    with pytest.raises(ServeError) as err:
        run_server(ServeOptions(policy=FIXTURE_POLICY, named={}, host="no-such-host.invalid", port=0), print)
    assert err.value.kind == "usage" and "cannot listen on no-such-host.invalid:0" in str(err.value)


def test_explain_with_metadata_nested_too_deeply_is_a_400(gw) -> None:
    """A client's deep metadata reaches explain's trace: it is the client's mistake, answered as OpenAI JSON."""
    deep: object = "x"
    for _ in range(900):  # deep enough to exhaust the trace's recursion, shallow enough to send as JSON
        deep = [deep]
    r = gw.post("/v1/route/explain", {"messages": MSG, "metadata": {"plan": deep}})
    assert r.status_code == 400 and "nested too deeply" in r.json()["error"]["message"]
