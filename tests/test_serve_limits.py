"""Tests for how `modelroute serve` bounds its clients (providers/gateway/protocol.py, providers/gateway/server.py):
real `modelroute serve` processes and raw sockets in (slowloris connections sending a header byte a second, idle
kept-alive connections, connections that never send anything, more requests than --limit-concurrency, a file-
descriptor limit smaller than the idle connections); connections closed after --header-timeout /
--timeout-keep-alive, normal requests served meanwhile, 503 server_busy as OpenAI-shaped JSON, out. Also the
start-up note that budgets live in memory without --redis."""

from __future__ import annotations

import json
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("uvicorn", reason="gateway deps not installed (pip install -e '.[test]')")
pytest.importorskip("starlette", reason="gateway deps not installed (pip install -e '.[test]')")
import httpx

from tests.engines import KINDS, TEST_KEY
from tests.fakeserver import FakeServer, Fault, Reply
from tests.test_gateway import write_policy
from tests.test_redis_store import free_port
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parent.parent
POLICY = "set retry.attempts = 0\notherwise use alpha-mini fallback beta-chat\n"
CHAT = {"model": "auto", "messages": [{"role": "user", "content": "Hi"}]}


class Gateway:
    """`modelroute serve` in a subprocess on a free port; `nofile` sets its file-descriptor limit, `env` adds to its
    environment (every provider's key is TEST_KEY unless it says otherwise)."""

    def __init__(
        self, policy_dir: Path, *args: str, nofile: int | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            **{f"TEST_{n.upper()}_KEY": TEST_KEY for n in KINDS},
            **(env or {}),
        }

        def limit() -> None:
            if nofile is not None:
                import resource

                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "serve", "-p", str(policy_dir), "--port", str(self.port), *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=limit if nofile is not None else None,
        )
        wait_until(self._healthy, f"modelroute serve on port {self.port}", timeout=30, interval=0.05)

    def _healthy(self) -> bool:
        try:
            return httpx.get(self.url + "/healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            if self.proc.poll() is not None:
                raise AssertionError("serve exited: " + self.proc.stderr.read()) from None  # type: ignore[union-attr]
            return False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def chat(self, timeout: float = 10.0) -> httpx.Response:
        return httpx.post(self.url + "/v1/chat/completions", json=CHAT, timeout=timeout)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err


@pytest.fixture
def serve(tmp_path: Path, fake_server: FakeServer) -> Iterator[Any]:
    started: list[Gateway] = []

    def start(*args: str, policy: str = POLICY, nofile: int | None = None) -> Gateway:
        g = Gateway(write_policy(tmp_path, fake_server, policy), "--log-level", "warning", *args, nofile=nofile)
        started.append(g)
        return g

    yield start
    for g in started:
        g.stop()


class Conns:
    """Many raw client sockets to one port, watched with a selector: bytes received and when each was closed."""

    def __init__(self, port: int, n: int):
        self.sel = selectors.DefaultSelector()
        self.socks: list[socket.socket] = []
        self.opened: dict[socket.socket, float] = {}
        self.received: dict[socket.socket, bytes] = {}
        self.closed: dict[socket.socket, float] = {}
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.setblocking(False)
            self.socks.append(s)
            self.opened[s] = time.monotonic()
            self.received[s] = b""
            self.sel.register(s, selectors.EVENT_READ)

    def _gone(self, s: socket.socket) -> None:
        if s not in self.closed:
            self.closed[s] = time.monotonic()
            self.sel.unregister(s)

    def send(self, data: bytes) -> None:
        """Send `data` on every open connection that has nothing waiting to be read (an answer, or the close)."""
        waiting = {key.fileobj for key, _ in self.sel.select(timeout=0)}
        for s in self.socks:
            if s not in self.closed and s not in waiting:
                try:
                    s.send(data)
                except OSError:
                    self._gone(s)

    def pump(self, seconds: float) -> None:
        """Read what arrives for `seconds`, noting connections the server closed."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0 and len(self.closed) < len(self.socks):
            for key, _ in self.sel.select(timeout=min(left, 0.2)):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                try:
                    data = s.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    self.received[s] += data
                else:
                    self._gone(s)

    def open_count(self) -> int:
        return len(self.socks) - len(self.closed)

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.sel.close()


def _answered(data: bytes) -> bool:
    """A whole HTTP response (Content-Length framed) is in `data`."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    length = next(
        (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
        0,
    )
    return len(body) >= length


# ---- slowloris -------------------------------------------------------------------------------------------------
def test_slowloris_connections_are_closed_after_the_header_timeout_while_requests_are_served(serve: Any) -> None:
    gw = serve("--header-timeout", "3")
    conns = Conns(gw.port, 150)
    served: list[tuple[int, float]] = []
    stop = threading.Event()

    def normal_traffic() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            r = gw.chat()
            served.append((r.status_code, time.monotonic() - t0))
            stop.wait(0.2)

    traffic = threading.Thread(target=normal_traffic, daemon=True)
    try:
        conns.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        traffic.start()
        deadline = time.monotonic() + 30  # far past the 3 s timeout: bounds a failure, measures nothing
        while conns.open_count() and time.monotonic() < deadline:
            conns.send(b"a")  # one header byte a second: uvicorn alone would wait forever
            conns.pump(1.0)
    finally:
        stop.set()
        traffic.join(30)
        conns.close()
    assert conns.open_count() == 0, f"{conns.open_count()} slow connections still open after 30 s"
    lived = [conns.closed[s] - conns.opened[s] for s in conns.socks]
    assert min(lived) >= 2.9, f"a slow connection was closed after {min(lived):.2f} s, before the 3 s timeout"
    answers = [conns.received[s] for s in conns.socks]
    timed_out = [a for a in answers if a.startswith(b"HTTP/1.1 408 ")]
    # each is told why (a byte sent just as the server closed can turn its close into a reset, losing the answer)
    assert len(timed_out) >= 0.9 * len(answers) and all(a in timed_out or a == b"" for a in answers)
    err = json.loads(timed_out[0].partition(b"\r\n\r\n")[2])["error"]
    assert err["code"] == "request_timeout" and "3 seconds" in err["message"]
    assert len(served) >= 5 and all(status == 200 for status, _ in served), served
    assert max(took for _, took in served) < 5, served  # generous: each takes milliseconds when unloaded


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(serve: Any) -> None:
    gw = serve("--header-timeout", "1.5")
    conns = Conns(gw.port, 20)
    try:
        conns.pump(20)
    finally:
        conns.close()
    assert conns.open_count() == 0
    assert all(conns.received[s] == b"" for s in conns.socks)  # nothing was started: nothing to answer
    assert min(conns.closed[s] - conns.opened[s] for s in conns.socks) >= 1.4


# ---- idle keep-alive connections ---------------------------------------------------------------------------------
def test_a_thousand_idle_keep_alive_connections_are_closed_after_the_keep_alive_timeout(serve: Any) -> None:
    gw = serve("--timeout-keep-alive", "2", "--header-timeout", "30")
    conns = Conns(gw.port, 1000)
    try:
        conns.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        deadline = time.monotonic() + 60
        while not all(_answered(d) for d in conns.received.values()) and time.monotonic() < deadline:
            conns.pump(0.5)
        answered_at = time.monotonic()
        assert all(_answered(d) and d.startswith(b"HTTP/1.1 200 ") for d in conns.received.values())
        assert gw.chat().status_code == 200  # served alongside the idle ones
        conns.pump(60)
    finally:
        conns.close()
    assert conns.open_count() == 0, f"{conns.open_count()} idle connections still open"
    assert max(conns.closed.values()) - answered_at < 30  # bounds a failure only
    assert gw.chat().status_code == 200


def test_idle_connections_beyond_the_descriptor_limit_make_room_for_requests(serve: Any) -> None:
    """With 512 file descriptors, 600 idle sockets used to make a normal request fail until they were gone:
    the connection cap closes the longest-idle connection instead (timeouts here are long on purpose)."""
    gw = serve("--timeout-keep-alive", "120", "--header-timeout", "120", nofile=512)
    conns = Conns(gw.port, 600)
    try:
        conns.pump(1.0)
        for _ in range(5):
            r = gw.chat()
            assert r.status_code == 200, r.text
        conns.pump(0.5)
        assert conns.open_count() < 512  # the server closed some to stay within its descriptors
        assert conns.open_count() > 200  # and kept the rest (their timeouts are far away)
    finally:
        conns.close()


# ---- --limit-concurrency ---------------------------------------------------------------------------------------
def test_requests_beyond_the_concurrency_limit_get_openai_shaped_503(serve: Any, fake_server: FakeServer) -> None:
    gate = threading.Event()
    fake_server.always("alpha-mini", Fault.held(gate, Reply(text="held answer")))
    gw = serve("--limit-concurrency", "2")
    results: list[httpx.Response] = []
    threads = [threading.Thread(target=lambda: results.append(gw.chat(timeout=30))) for _ in range(2)]
    try:
        for t in threads:
            t.start()
        fake_server.wait_for_requests(2, timeout=20)
        r = gw.chat()
        assert r.status_code == 503 and r.headers["content-type"] == "application/json"
        assert r.headers["retry-after"] == "1"
        err = r.json()["error"]
        assert err["code"] == "server_busy" and err["type"] == "server_error" and "2 requests" in err["message"]
        assert httpx.get(gw.url + "/healthz", timeout=10).status_code == 200  # probes are never refused
        metrics = httpx.get(gw.url + "/metrics", timeout=10).text
        assert 'modelroute_requests_total{endpoint="chat",status="503"} 1' in metrics
    finally:
        gate.set()
        for t in threads:
            t.join(30)
    assert [x.status_code for x in results] == [200, 200]
    assert gw.chat().status_code == 200


def test_serve_options_are_checked(tmp_path: Path, cli: Any) -> None:
    for option, value in (
        ("--limit-concurrency", "0"),
        ("--header-timeout", "0"),
        ("--timeout-keep-alive", "-1"),
        ("--max-response-bytes", "0"),
    ):
        out = cli("serve", option, value, "--port", "1")
        assert out.returncode == 2 and option in out.stderr, (option, out.stderr)
    help_text = cli("serve", "--help").stdout
    for option in ("--header-timeout", "--timeout-keep-alive", "--limit-concurrency", "--max-response-bytes"):
        assert option in help_text


# ---- budgets without --redis -------------------------------------------------------------------------------------
def test_serve_says_spend_is_in_memory_when_there_are_budgets(serve: Any) -> None:
    note = "without --redis, budget spend is kept in this process only"
    with_budget = serve(policy="budget daily $5\n" + POLICY)
    without = serve()
    assert note in with_budget.stop()
    assert note not in without.stop()


# ---- the protocol on its own, over both of uvicorn's HTTP implementations -----------------------------------------
@pytest.mark.parametrize("impl", ["httptools", "h11"])
def test_header_timeout_and_keep_alive_over_both_uvicorn_protocols(impl: str) -> None:
    import uvicorn
    from uvicorn.config import HTTP_PROTOCOLS
    from uvicorn.importer import import_from_string

    from providers.gateway.protocol import coalescing, guarded

    if impl == "httptools":
        pytest.importorskip("httptools")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    protocol = guarded(coalescing(import_from_string(HTTP_PROTOCOLS[impl])), header_timeout=1.0)
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", http=protocol, timeout_keep_alive=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, "uvicorn to start")
    conns = Conns(port, 3)
    slow, idle, kept = conns.socks
    try:
        kept.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # answered, then idle: keep-alive timeout
        slow.send(b"GET / HTTP/1.1\r\nHost: x\r\n")  # a head that never ends: header timeout
        deadline = time.monotonic() + 20
        while conns.open_count() and time.monotonic() < deadline:
            conns.pump(0.3)
        assert conns.open_count() == 0
        assert conns.received[slow].startswith(b"HTTP/1.1 408 ") and conns.received[idle] == b""
        assert conns.received[kept].startswith(b"HTTP/1.1 200 ") and conns.received[kept].endswith(b"ok")
        # after an answer, a next head that trickles in is held to the header timeout too (uvicorn's keep-alive
        # timer alone stops at its first byte)
        again = Conns(port, 1)
        sock = again.socks[0]
        sock.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        opened = time.monotonic()
        while sock not in again.closed and time.monotonic() < deadline:
            again.send(b"a")
            again.pump(0.3)
        again.close()
        answers = again.received[sock]
        assert sock in again.closed and time.monotonic() - opened >= 0.9
        assert answers.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 408 " in answers, answers
    finally:
        conns.close()
        server.should_exit = True
        thread.join(10)


@pytest.mark.parametrize("impl", ["httptools", "h11"])
def test_a_body_that_trickles_in_after_its_head_is_cut_at_the_body_timeout(impl: str) -> None:
    """A client that sends a whole head and then one body byte at a time holds a connection and a request slot; the
    body timeout closes it with a 408 while a request whose body arrives at once on another connection is served."""
    import uvicorn
    from uvicorn.config import HTTP_PROTOCOLS
    from uvicorn.importer import import_from_string

    from providers.gateway.protocol import coalescing, guarded

    if impl == "httptools":
        pytest.importorskip("httptools")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        answer = b"got %d" % len(body)
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(answer))]}
        )
        await send({"type": "http.response.body", "body": answer})

    protocol = guarded(coalescing(import_from_string(HTTP_PROTOCOLS[impl])), header_timeout=5.0, body_timeout=1.0)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", http=protocol)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, "uvicorn to start")
    conns = Conns(port, 2)
    slow, quick = conns.socks
    try:
        slow.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        opened = time.monotonic()
        deadline = opened + 20
        while slow not in conns.closed and time.monotonic() < deadline:
            try:
                slow.send(b"a")  # a byte every 0.3 s: the head timer alone would never fire
            except OSError:
                pass  # closed by the server meanwhile; pump() notes it
            conns.pump(0.3)
        assert slow in conns.closed and time.monotonic() - opened >= 0.9
        assert conns.received[slow].startswith(b"HTTP/1.1 408 "), conns.received[slow]
        assert b"request body did not arrive within 1 seconds" in conns.received[slow]
        quick.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        while not conns.received[quick].endswith(b"got 5") and time.monotonic() < deadline:
            conns.pump(0.3)
        assert conns.received[quick].startswith(b"HTTP/1.1 200 ") and conns.received[quick].endswith(b"got 5")
    finally:
        conns.close()
        server.should_exit = True
        thread.join(10)
