"""Gateway keys managed from the command line, through a running gateway (providers/gateway/keys.py, keyfields.py,
keyfile.py, engine/cli/keys.py): `modelroute keys add / revoke` on the file a uvicorn gateway follows, expiring keys
(a fake wall clock) and per-key model allow-lists in; what the official OpenAI and Anthropic SDKs get back (a key
picked up, a revoked key refused, 401 `key_expired`, the plan cut to the allowed models, 403 `model_not_allowed`)
out."""

from __future__ import annotations

import datetime
import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="gateway deps not installed (pip install -e '.[test]')")
pytest.importorskip("uvicorn", reason="gateway deps not installed (pip install -e '.[test]')")
import anthropic
import httpx
import openai
from click.testing import CliRunner

from engine.cli import main
from providers.gateway.app import create_app
from providers.gateway.jsonbody import ApiError
from providers.gateway.keyfields import KeyExpired, allowed_plan
from providers.gateway.keyfile import add_key
from providers.gateway.keys import GatewayKey, KeyRing, hash_key
from tests.engines import engine_for
from tests.fakeserver import FakeServer
from tests.test_gateway import ThreadServer
from tests.waiting import wait_until

keys_cli = importlib.import_module("engine.cli.keys")
T0 = datetime.datetime(2026, 3, 10, 12, 0, tzinfo=datetime.timezone.utc).timestamp()
MSG: list[Any] = [{"role": "user", "content": "Hi"}]
POLICY = """
set retry.attempts = 1
set overrides = true
when s == "race" race [alpha-mini, beta-chat] fallback gamma-flash
otherwise use alpha-mini fallback beta-chat, gamma-flash
"""
OLD = "mr-old-key"


class Wall:
    """The wall clock keys expire by, standing still until a test moves it."""

    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def wall(monkeypatch: pytest.MonkeyPatch) -> Wall:
    fake = Wall()
    monkeypatch.setattr(keys_cli, "_wall", fake)  # `keys add --expires` judges "already past" by the same clock
    return fake


@pytest.fixture
def served(tmp_path: Path, fake_server: FakeServer, wall: Wall) -> Iterator[tuple[str, Path]]:
    path = tmp_path / "keys.yaml"
    path.write_text(f"# keys\nkeys:\n  - name: old\n    sha256: {hash_key(OLD)}\n")
    ring = KeyRing.load(path, clock=wall)  # the default poll interval, as `modelroute serve --keys` follows it
    with ThreadServer(create_app(engine_for(fake_server, POLICY), keys=ring)) as server:
        yield server.url, path


def keys(*args: str) -> str:
    result = CliRunner().invoke(main, ["keys", *args])
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def chat(url: str, key: str, model: str = "auto") -> Any:
    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    return client.chat.completions.with_raw_response.create(model=model, messages=MSG)


def refused(url: str, key: str) -> str | None:
    """The error code a chat request with `key` gets (None: it was answered)."""
    try:
        chat(url, key)
    except openai.APIStatusError as exc:
        return str(exc.code)
    return None


def test_a_running_gateway_follows_keys_add_and_revoke(served: tuple[str, Path]) -> None:
    url, path = served
    new = keys("add", "team-b", "--keys", str(path))
    assert wait_until(lambda: refused(url, new) is None, "the gateway to accept the added key")
    assert chat(url, new).headers["x-modelroute-model"] == "alpha-mini" and refused(url, OLD) is None
    keys("revoke", "old", "--keys", str(path))
    assert wait_until(lambda: refused(url, OLD) == "invalid_api_key", "the gateway to refuse the revoked key")
    assert refused(url, new) is None
    health = httpx.get(url + "/healthz").json()
    assert health["keys"] == 1 and "last_keys_error" not in health


def test_an_expired_key_is_refused_with_key_expired(served: tuple[str, Path], wall: Wall) -> None:
    url, path = served
    soon = keys("add", "temp", "--keys", str(path), "--expires", "2026-03-10T13:00:00Z")
    day = keys("add", "day", "--keys", str(path), "--expires", "2026-03-10")  # the end of that day UTC
    assert wait_until(lambda: refused(url, soon) is None and refused(url, day) is None, "the keys to work")
    wall.t = T0 + 3600  # 13:00:00 UTC: `temp` is refused from this instant on
    with pytest.raises(openai.AuthenticationError) as err:
        chat(url, soon)
    assert err.value.status_code == 401 and err.value.code == "key_expired"
    assert "gateway key `temp` expired at 2026-03-10T13:00:00Z" in err.value.message
    bad = anthropic.Anthropic(base_url=url, api_key=soon, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as aerr:
        bad.messages.create(model="auto", max_tokens=5, messages=[{"role": "user", "content": "Hi"}])
    assert "expired at 2026-03-10T13:00:00Z" in str(aerr.value)
    r = httpx.get(url + "/v1/models", headers={"authorization": f"Bearer {soon}"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "key_expired"
    assert refused(url, day) is None and refused(url, OLD) is None
    wall.t = T0 + 12 * 3600 - 1  # 23:59:59 UTC on the day it names: still works
    assert refused(url, day) is None
    wall.t += 1
    assert refused(url, day) == "key_expired"
    assert refused(url, "mr-never-issued") == "invalid_api_key"  # an unknown key is not told about expiry


def test_check_reads_the_wall_clock_only_for_keys_that_expire(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    reads = [0]

    def clock() -> float:
        reads[0] += 1
        return T0

    add_key(path, "forever", now=T0)
    ring = KeyRing.load(path, poll_interval_s=None, clock=clock)
    assert ring.check("mr-unknown") is None and reads == [0]
    expiring = KeyRing([GatewayKey("gone", hash_key("g"), expires=T0)], clock=clock)
    with pytest.raises(KeyExpired):
        expiring.check("g")
    assert reads == [1]


# ---- the models a key may use ------------------------------------------------------------------------------
@pytest.fixture
def engine(fake_server: FakeServer) -> Any:
    return engine_for(fake_server, POLICY)


def test_the_allow_list_is_a_hard_filter_on_the_plan(engine: Any) -> None:
    decision = engine.decide(messages=MSG)
    assert decision.chain == ["alpha-mini", "beta-chat", "gamma-flash"]
    kept = allowed_plan("bot", frozenset({"gamma-flash", "beta-chat"}), decision)
    assert kept.chain == ["beta-chat", "gamma-flash"]  # the plan's order, the others dropped
    assert allowed_plan("any", None, engine.decide(messages=MSG)).chain == ["alpha-mini", "beta-chat", "gamma-flash"]
    with pytest.raises(ApiError) as err:
        allowed_plan("bot", frozenset({"delta-tiny"}), engine.decide(messages=MSG))
    assert (err.value.status, err.value.code) == (403, "model_not_allowed")
    assert err.value.message == (
        "gateway key `bot` may not use model(s) alpha-mini, beta-chat, gamma-flash; it may use: delta-tiny"
    )


def test_a_pinned_model_outside_the_list_is_refused(engine: Any) -> None:
    pinned = engine.pin("alpha-large", messages=MSG)
    with pytest.raises(ApiError) as err:
        allowed_plan("bot", frozenset({"alpha-mini"}), pinned)
    assert err.value.code == "model_not_allowed" and "alpha-large" in err.value.message
    assert allowed_plan("bot", frozenset({"alpha-large"}), engine.pin("alpha-large", messages=MSG)).chain == [
        "alpha-large"
    ]


def test_a_group_is_not_thinned_out(engine: Any) -> None:
    race = engine.decide(messages=MSG, s="race")
    assert race.strategy == "race"
    with pytest.raises(ApiError, match="may not use model\\(s\\) beta-chat"):
        allowed_plan("bot", frozenset({"alpha-mini", "gamma-flash"}), race)
    race = engine.decide(messages=MSG, s="race")
    kept = allowed_plan("bot", frozenset({"alpha-mini", "beta-chat"}), race)
    assert kept.chain == ["alpha-mini", "beta-chat"]  # the fallback outside the list is dropped


def test_the_gateway_applies_a_keys_models(served: tuple[str, Path]) -> None:
    url, path = served
    bot = keys("add", "bot", "--keys", str(path), "--model", "gamma-flash", "--model", "beta-chat")
    assert wait_until(lambda: refused(url, bot) in (None, "model_not_allowed"), "the key to be picked up")
    assert chat(url, bot).headers["x-modelroute-model"] == "beta-chat"  # alpha-mini is not in its list
    with pytest.raises(openai.PermissionDeniedError) as err:
        chat(url, bot, model="alpha-large")
    assert err.value.code == "model_not_allowed"


def test_a_keys_models_may_be_aliases_and_bound_what_it_lists_and_retrieves(served: tuple[str, Path]) -> None:
    url, path = served
    bot = keys("add", "lister", "--keys", str(path), "--model", "gpt-4o-mini", "--model", "gamma-flash")
    assert wait_until(lambda: refused(url, bot) is None, "the key to be picked up")
    assert chat(url, bot).headers["x-modelroute-model"] == "alpha-mini"  # gpt-4o-mini is alpha-mini's alias
    client = openai.OpenAI(base_url=url + "/v1", api_key=bot, max_retries=0)
    listed = {m.id for m in client.models.list()}
    assert {"alpha-mini", "gamma-flash"} <= listed and "alpha-large" not in listed and "beta-chat" not in listed
    assert client.models.retrieve("gamma-flash").id == "gamma-flash"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("alpha-large")
