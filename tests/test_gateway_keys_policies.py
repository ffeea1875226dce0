"""Gateway keys against hostile callers and broken deploys (providers/gateway/keys.py, app.py): a keys file and
requests in; which policies a key may use (403 `policy_not_allowed`), which `user` a per-user budget charges, what
the unauthenticated /healthz says about a broken keys file, and a FIFO, directory or device at the keys path
refused without blocking the gateway, out."""

from __future__ import annotations

import concurrent.futures
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="gateway deps not installed (pip install -e '.[test]')")
pytest.importorskip("uvicorn", reason="gateway deps not installed (pip install -e '.[test]')")
import httpx
import uvicorn
from starlette.testclient import TestClient

from providers.gateway import keys as gateway_keys
from providers.gateway.app import Gateway
from providers.gateway.keys import KeyRing, KeysFileError, hash_key
from tests.engines import engine_for
from tests.fakeserver import FakeServer, Reply
from tests.waiting import wait_until

FREE, PRO, OPEN = "mr-free-key", "mr-pro-key", "mr-open-key"
ALICE, ANYONE = "mr-alice-key", "mr-anyone-key"
MSG = [{"role": "user", "content": "Hi"}]
POLICY = """
set retry.attempts = 1
set overrides = true
otherwise use alpha-mini
"""
PREMIUM = """
set retry.attempts = 1
otherwise use alpha-large
"""
KEYS = f"""
keys:
  - name: free
    sha256: {hash_key(FREE)}
    attributes: {{tier: free}}
    policies: [cheap]
  - name: pro
    sha256: {hash_key(PRO)}
    policies: [auto, cheap, premium]
  - name: open
    sha256: {hash_key(OPEN)}
"""


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture
def gateway(tmp_path: Path, fake_server: FakeServer) -> Iterator[tuple[TestClient, Gateway]]:
    path = tmp_path / "keys.yaml"
    path.write_text(KEYS)
    policies = {"cheap": engine_for(fake_server, POLICY), "premium": engine_for(fake_server, PREMIUM)}
    gw = Gateway(engine_for(fake_server, POLICY), keys=KeyRing.load(path), policies=policies)
    with TestClient(gw.asgi()) as client:
        yield client, gw


# ---- which policies a key may use --------------------------------------------------------------------------------
@pytest.mark.parametrize("endpoint", ["/v1/chat/completions", "/v1/route/explain"])
@pytest.mark.parametrize(
    ("key", "model", "allowed"),
    [
        (FREE, "cheap", True),
        (FREE, "premium", False),  # the attack: a key bound to tier free used the premium policy
        (FREE, "auto", False),
        (FREE, "alpha-large", False),  # naming a catalog model routes through "auto"
        (PRO, "premium", True),
        (PRO, "alpha-large", True),
        (OPEN, "premium", True),  # no `policies:`: every policy
    ],
)
def test_a_key_uses_only_its_policies(gateway: Any, endpoint: str, key: str, model: str, allowed: bool) -> None:
    client, _ = gateway
    r = client.post(endpoint, json={"model": model, "messages": MSG}, headers=auth(key))
    if allowed:
        assert r.status_code == 200, r.text
        return
    assert r.status_code == 403, r.text
    err = r.json()["error"]
    assert err["code"] == "policy_not_allowed" and err["param"] == "model"
    assert "may not use policy" in err["message"] and "cheap" in err["message"] and len(err["message"]) < 200


def test_models_lists_what_a_key_may_use(gateway: Any) -> None:
    client, _ = gateway
    free = [m["id"] for m in client.get("/v1/models", headers=auth(FREE)).json()["data"]]
    assert free == ["cheap"]  # not "auto", nor the catalog models that are pinned through it
    pro = [m["id"] for m in client.get("/v1/models", headers=auth(PRO)).json()["data"]]
    assert pro[:3] == ["auto", "cheap", "premium"] and "alpha-large" in pro


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        ("    policies: []\n", "policies must be a non-empty list of policy names"),
        ("    policies: auto\n", "policies must be a non-empty list of policy names"),
        ("    policies: [auto, 3]\n", "policies must be a non-empty list of policy names"),
        ("    attributes: {max_tokens: 1}\n", "`max_tokens` cannot be bound to a key"),
        ("    attributes: {budget: {left: 1}}\n", "`budget` cannot be bound to a key"),
        ("    attributes: {spend.today: 0}\n", "`spend.today` cannot be bound to a key"),
        ("    attributes: {since: 2024-01-01}\n", "date values are not allowed"),
        ("    attributes: {x: .nan}\n", "NaN"),
    ],
)
def test_keys_file_checks_policies_and_bound_attributes(tmp_path: Path, entry: str, error: str) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(f"keys:\n  - name: a\n    sha256: {hash_key(FREE)}\n{entry}")
    with pytest.raises(KeysFileError, match=error) as info:
        KeyRing.load(path)
    assert str(info.value).startswith(f"{path}:4: keys[0] (a): ")


def test_a_key_naming_a_policy_the_gateway_lacks_is_warned_about(
    tmp_path: Path, fake_server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(f"keys:\n  - name: a\n    sha256: {hash_key(FREE)}\n    policies: [auto, cheep]\n")
    Gateway(engine_for(fake_server, POLICY), keys=KeyRing.load(path))
    assert any("may use policies this gateway does not serve: cheep" in r.getMessage() for r in caplog.records)


# ---- per-user budgets: `user` bound to the key ---------------------------------------------------------------------
USER_BUDGET = """
set retry.attempts = 1
budget daily $0.005 per user
otherwise use alpha-mini
"""


def test_a_user_bound_to_the_key_cannot_be_rotated_away(tmp_path: Path, fake_server: FakeServer) -> None:
    """A client rotating `user` spends a fresh per-user budget each time, unless the key binds `user`."""
    fake_server.default = Reply(text="ok", input_tokens=10, output_tokens=1000)  # $0.0015 a request on alpha-mini
    path = tmp_path / "keys.yaml"
    path.write_text(
        f"keys:\n  - name: alice\n    sha256: {hash_key(ALICE)}\n    attributes: {{user: alice}}\n"
        f"  - name: anyone\n    sha256: {hash_key(ANYONE)}\n"
    )
    gw = Gateway(engine_for(fake_server, USER_BUDGET), keys=KeyRing.load(path))
    with TestClient(gw.asgi()) as client:

        def statuses(key: str) -> list[int]:
            return [
                client.post(
                    "/v1/chat/completions",
                    json={"messages": MSG, "user": f"rotated-{key}-{i}", "max_tokens": 1000},
                    headers=auth(key),
                ).status_code
                for i in range(8)
            ]

        report = client.post("/v1/route/explain", json={"messages": MSG, "user": "bob"}, headers=auth(ALICE)).json()
        assert report["attrs"]["user"] == "alice"  # the bound attribute wins over the body's `user`
        bound = statuses(ALICE)
        assert bound.count(200) <= 4 and bound[-1] == 429, bound  # one $0.005 budget: alice's
        assert statuses(ANYONE) == [200] * 8  # unbound: every rotated `user` is a new budget (documented)


# ---- /healthz says that the keys file is broken, never what it holds -----------------------------------------------
def test_healthz_does_not_echo_a_key_pasted_into_the_keys_file(tmp_path: Path, fake_server: FakeServer) -> None:
    secret = "mr-pasted-by-mistake-0123456789abcdef"
    path = tmp_path / "keys.yaml"
    path.write_text(f"keys:\n  - name: a\n    sha256: {hash_key(OPEN)}\n")
    ring = KeyRing.load(path, poll_interval_s=0)
    gw = Gateway(engine_for(fake_server, POLICY), keys=ring)
    with TestClient(gw.asgi()) as client:
        for broken, quoted in (
            (f"keys:\n  - name: a\n    sha256: {hash_key(OPEN)}\n    {secret}: 1\n", True),  # an unknown field
            (f"keys:\n  - name: {secret}\n    sha256: {secret}\n", True),  # the key itself, not its digest
            (f"keys:\n  - name: a\n    sha256: {hash_key(OPEN)}\n  {secret}\n", False),  # not YAML
        ):
            path.write_text(broken)
            body = client.get("/healthz").text
            assert ring.last_error is not None and (secret in ring.last_error) == quoted  # the operator's detail
            assert "pasted" not in body and hash_key(OPEN) not in body, body
            assert json.loads(body)["last_keys_error"] == gateway_keys.REJECTED
            assert client.get("/v1/models", headers=auth(OPEN)).status_code == 200  # the last good keys stay
        path.unlink()
        health = client.get("/healthz").json()
        assert health["last_keys_error"] == (
            "the keys file cannot be read (No such file or directory): the last good keys stay in force"
        )


# ---- a keys path that is not a regular file ------------------------------------------------------------------------
def _load_within(path: Path, seconds: float = 2.0) -> BaseException | None:
    """KeyRing.load(path) in a thread: the error it raised, or a failure if it blocks."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(KeyRing.load, path)
    try:
        return future.exception(timeout=seconds)
    except concurrent.futures.TimeoutError:
        _unblock(path)
        pytest.fail(f"KeyRing.load({path}) blocked")
    finally:
        pool.shutdown(wait=False)


def _unblock(path: Path) -> None:
    """Release a reader blocked opening the FIFO at `path` (a writer's open completes its open)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_directory_or_device_is_refused_at_start(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    directory = tmp_path / "dir.yaml"
    directory.mkdir()
    device = tmp_path / "zero.yaml"
    device.symlink_to("/dev/zero")  # endless: reading it would never finish
    for path, what in ((fifo, "a FIFO"), (directory, "a directory"), (device, "a character device")):
        err = _load_within(path)
        assert isinstance(err, KeysFileError)
        assert str(err) == f"{path}: cannot read keys file: not a regular file ({what})"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_swapped_in_while_serving_does_not_block_the_gateway(tmp_path: Path, fake_server: FakeServer) -> None:
    """The issue's attack: a FIFO at the keys path froze the whole gateway (a blocking open() on the event loop)."""
    path = tmp_path / "keys.yaml"
    path.write_text(f"keys:\n  - name: a\n    sha256: {hash_key(OPEN)}\n")
    ring = KeyRing.load(path, poll_interval_s=0.01)
    gw = Gateway(engine_for(fake_server, POLICY), keys=ring)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(gw.asgi(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: server.started or not thread.is_alive(), "uvicorn to start")
        path.unlink()
        os.mkfifo(path)
        for _ in range(3):  # each request is due to look at the file
            r = httpx.get(url + "/v1/models", headers=auth(OPEN), timeout=2.0)
            assert r.status_code == 200  # the last good keys stay in force
        health = httpx.get(url + "/healthz", timeout=2.0).json()
        assert health["last_keys_error"] == (
            "the keys file cannot be read (not a regular file (a FIFO)): the last good keys stay in force"
        )
        assert ring.last_error == f"{path}: cannot read keys file: not a regular file (a FIFO)"
        path.unlink()  # a good file again: it is followed as before
        path.write_text(f"keys:\n  - name: b\n    sha256: {hash_key(FREE)}\n")
        wait_until(
            lambda: httpx.get(url + "/v1/models", headers=auth(FREE), timeout=2.0).status_code == 200,
            "the fixed keys file to apply",
        )
        assert "last_keys_error" not in httpx.get(url + "/healthz", timeout=2.0).json()
    finally:
        _unblock(path)
        server.should_exit = True
        thread.join(10)


# ---- the reserved names: one fact -----------------------------------------------------------------------------------
