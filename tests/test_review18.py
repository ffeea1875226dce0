"""Review of issue 18 (operating the gateway): requests through the official openai SDK against the gateway app on
loopback (the FakeServer as upstream), the keys and tracing helpers in; what held, and the fixes of what broke, out:
cache keys and hits against rate limits, key budgets and metrics, multi-prompt completions' headers, a token-limit
refusal the SDK must not retry, bad OTEL batch settings, compact expiry dates, counts like 10k for a key's limits."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="gateway deps not installed (pip install -e '.[test]')")
pytest.importorskip("uvicorn", reason="gateway deps not installed (pip install -e '.[test]')")
openai = pytest.importorskip("openai", reason="the openai SDK is not installed (pip install -e '.[test]')")
import httpx  # noqa: E402

from engine import Engine  # noqa: E402
from providers.execution.cache import CACHE_HEADER  # noqa: E402
from providers.gateway.keyfields import parse_expires  # noqa: E402
from providers.gateway.keyformat import GatewayKey, hash_key  # noqa: E402
from providers.gateway.keys import KeyRing  # noqa: E402
from providers.gateway.run import key_budget_key  # noqa: E402
from providers.state.ratelimit import MemoryLimiter, attach  # noqa: E402
from tests.fakeserver import FakeServer, Fault, Reply  # noqa: E402
from tests.gateway_kit import app_gateways  # noqa: E402
from tests.gateway_kit import sdk_client as client  # noqa: E402
from tests.test_cache import CACHED, MSG, POLICY  # noqa: E402

SECRET = "mr-review18-key-a"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def gateway(fake_server: FakeServer) -> Iterator[Callable[..., tuple[Engine, str]]]:
    """`gateway(policy, keys=None)`: a started gateway app over the FakeServer; returns (engine, base url)."""
    with app_gateways(fake_server, CACHED + POLICY) as start:
        yield start


def ask(c: Any, **kw: Any) -> Any:
    """A chat completion at temperature 0 (cacheable) through the SDK: the raw response (headers, parse())."""
    kw.setdefault("temperature", 0)
    kw.setdefault("messages", MSG)
    return c.chat.completions.with_raw_response.create(model="auto", **kw)


def metric(url: str, name: str) -> float:
    """The value of one /metrics sample (`name` with its labels), 0 when absent."""
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


# ---- what held -------------------------------------------------------------------------------------------------
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
VARIANTS: list[dict[str, Any]] = [
    {"response_format": {"type": "json_object"}},
    {"tools": [TOOL]},
    {"tools": [TOOL], "tool_choice": "required"},
    {"tools": [TOOL], "parallel_tool_calls": False},
    {"seed": 7},
    {"stop": ["x"]},
    {"top_p": 0.5},
    {"presence_penalty": 0.5},
    {"logit_bias": {"42": 5}},
    {"logprobs": True, "top_logprobs": 2},
    {"user": "u1"},
    {"max_completion_tokens": 9},
    {"reasoning_effort": "low"},
    {"prediction": {"type": "content", "content": "x"}},
]


def test_every_field_that_reaches_the_upstream_is_part_of_the_cache_key(gateway, fake_server: FakeServer) -> None:
    _, url = gateway()
    c = client(url)
    ask(c)
    for fields in VARIANTS:
        before = len(fake_server.requests)
        assert ask(c, **fields).headers[CACHE_HEADER] == "miss", fields
        assert len(fake_server.requests) == before + 1, fields  # answered by the upstream, not another's entry
    assert ask(c, **VARIANTS[0]).headers[CACHE_HEADER] == "hit"


def test_a_hit_takes_one_request_from_the_limits_and_gives_its_tokens_back(gateway) -> None:
    """A hit calls nothing upstream: it counts as a request (rpm) but uses no tokens (tpm refunded when it ends)."""
    engine, url = gateway(CACHED + "limit 1000 tpm\nlimit 100 rpm\n" + POLICY)
    attach(engine.state, MemoryLimiter(lambda: 1_000.0))  # a frozen clock: no refill between requests
    c = client(url)
    seen = [ask(c, max_tokens=500).headers for _ in range(3)]
    assert [h[CACHE_HEADER] for h in seen] == ["miss", "hit", "hit"]
    assert [h["x-ratelimit-remaining-requests"] for h in seen] == ["99", "98", "97"]
    miss_charge = 1000 - int(seen[0]["x-ratelimit-remaining-tokens"])  # the estimate charged up front
    after_miss = 1000 - 15  # the FakeServer's usage (10 + 5) is what the miss keeps
    assert int(seen[1]["x-ratelimit-remaining-tokens"]) == after_miss - miss_charge
    assert seen[2]["x-ratelimit-remaining-tokens"] == seen[1]["x-ratelimit-remaining-tokens"]  # the hit gave it back


def test_a_stream_that_ends_before_its_finish_is_not_stored(gateway, fake_server: FakeServer) -> None:
    fake_server.script("alpha-mini", [Fault.cut_stream(after=2, abort=False), Reply(text="the whole answer")])
    _, url = gateway(CACHED + "otherwise use alpha-mini\n")
    c = client(url)
    with pytest.raises(openai.APIError):
        for _chunk in c.chat.completions.create(model="auto", messages=MSG, temperature=0, stream=True):
            pass
    raw = ask(c)
    assert raw.headers[CACHE_HEADER] == "miss"
    assert raw.parse().choices[0].message.content == "the whole answer"


# ---- what broke, fixed -------------------------------------------------------------------------------------
def test_a_multi_prompt_completion_reports_the_cost_of_every_prompt(gateway) -> None:
    _, url = gateway(CACHED + "limit 100 rpm\n" + POLICY)
    c = client(url)
    single = c.completions.with_raw_response.create(model="auto", prompt="one", temperature=0, max_tokens=5)
    cost = single.headers["x-modelroute-cost"]
    assert float(cost) > 0
    both = c.completions.with_raw_response.create(model="auto", prompt=["one", "two"], temperature=0, max_tokens=5)
    assert len(both.parse().choices) == 2
    assert both.headers["x-modelroute-cost"] == cost  # "one" from the cache (0), "two" from the upstream
    assert both.headers["x-modelroute-attempts"] == "1"
    assert both.headers.get(CACHE_HEADER) != "hit"  # one of its prompts was not served from the cache
    assert both.headers["x-ratelimit-remaining-requests"] == "97"  # the last prompt's: every prompt counted
    again = c.completions.with_raw_response.create(model="auto", prompt=["one", "two"], temperature=0, max_tokens=5)
    assert again.headers[CACHE_HEADER] == "hit" and again.headers["x-modelroute-cost"] == "0"  # every prompt a hit
    assert again.headers["x-modelroute-attempts"] == "0"


def test_a_request_too_large_for_the_token_limit_is_not_retried_by_the_sdk(gateway) -> None:
    _, url = gateway("limit 50 tpm\notherwise use alpha-mini\n")
    c = client(url, retries=2)  # the SDK's default
    with pytest.raises(openai.RateLimitError) as info:
        c.chat.completions.create(model="auto", messages=MSG, max_tokens=1000)
    assert "fewer tokens" in info.value.message and "retry-after" not in info.value.response.headers
    assert info.value.response.headers["x-should-retry"] == "false"
    assert metric(url, 'modelroute_requests_total{endpoint="chat",status="429"}') == 1


def test_a_hit_is_a_request_of_its_key_in_metrics_as_in_usage(gateway) -> None:
    engine, url = gateway(keys=KeyRing([GatewayKey("a", hash_key(SECRET), {"user": "ann"})]))
    c = client(url, SECRET)
    assert [ask(c).headers[CACHE_HEADER] for _ in range(2)] == ["miss", "hit"]
    assert engine.executor.spending.summary()["keys"]["a"]["requests"] == 2
    assert metric(url, 'modelroute_key_requests_total{key="a"}') == 2
    assert metric(url, 'modelroute_user_requests_total{user="ann"}') == 2


def test_an_exhausted_key_budget_refuses_even_a_cached_answer(gateway) -> None:
    engine, url = gateway(keys=KeyRing([GatewayKey("a", hash_key(SECRET), daily_budget=1.0)]))
    c = client(url, SECRET)
    ask(c, max_tokens=5)
    bkey = key_budget_key("a", time.time())
    spent = engine.state.spent(bkey)[0]
    assert engine.state.reserve(bkey, 1.0 - spent, 1.0)[0]  # the rest of the day's budget, used elsewhere
    with pytest.raises(openai.RateLimitError) as other:
        ask(c, max_tokens=5, messages=[{"role": "user", "content": "another question"}])
    assert other.value.code == "budget_exceeded"
    with pytest.raises(openai.RateLimitError) as cached:
        ask(c, max_tokens=5)
    assert cached.value.code == "budget_exceeded"


@pytest.mark.parametrize(
    ("variable", "value"),
    [("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "5000"), ("OTEL_BSP_MAX_QUEUE_SIZE", "-1")],  # 5000: above the queue of 2048
)
def test_bad_otel_batch_settings_are_a_warning_not_a_crash(variable: str, value: str) -> None:
    pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", variable: value}
    code = "from providers.execution.tracing_setup import configure\nconfigure(print)()\n"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout.startswith(f"warning: {variable}=") and "serving without traces" in done.stdout


def test_a_basic_iso_date_expires_at_the_end_of_that_day_like_the_extended_one() -> None:
    assert parse_expires("20270301") == parse_expires("2027-03-01")


@pytest.mark.parametrize(("text", "number"), [("10k", 10_000), ("1.5M", 1_500_000), ("60", 60)])
def test_key_limits_take_counts_as_the_policy_language_writes_them(tmp_path: Path, text: str, number: int) -> None:
    from click.testing import CliRunner

    from engine.cli import main
    from providers.gateway.keyfile import read_keys

    path = tmp_path / "keys.yaml"
    done = CliRunner().invoke(main, ["keys", "add", "a", "--keys", str(path), "--tpm", text, "--rpm", text])
    assert done.exit_code == 0, done.output
    assert (read_keys(path)[0].tpm, read_keys(path)[0].rpm) == (number, number)


@pytest.mark.parametrize("text", ["0", "1.5", "1.0005k", "ten", "-3", "1e3"])
def test_key_limits_refuse_what_is_not_a_whole_count_above_zero(tmp_path: Path, text: str) -> None:
    from click.testing import CliRunner

    from engine.cli import main

    done = CliRunner().invoke(main, ["keys", "add", "a", "--keys", str(tmp_path / "k.yaml"), "--tpm", text])
    assert done.exit_code == 2 and "--tpm" in done.output and "whole number above 0" in done.output
