"""Bad input to the CLI gets one error line and exit 1 (bad input) or 2 (usage), never 3 ("a bug in modelroute")
or a traceback: messages files with a content that is not text, JSON nested too deep for the stack in --messages and
--attr, unusable `tokens`, `serve --redis` with something that is not a Redis URL, `serve` on a port in use. Each
runs the real CLI in a subprocess with a deadline (the `cli` fixture's timeout)."""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from engine.runtime.jsoninput import MAX_JSON_DEPTH

FIXTURES = Path(__file__).parent / "fixtures" / "policies"
REPO = Path(__file__).resolve().parent.parent


def one_error(proc: subprocess.CompletedProcess, code: int, text: str) -> None:
    """Exit `code`, nothing on stdout, and exactly one stderr line carrying `text` (besides click's usage lines)."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == code, out
    assert "Traceback" not in out and "internal error" not in out and "bug in modelroute" not in out
    assert proc.stdout == ""
    hits = [line for line in proc.stderr.splitlines() if text in line]
    assert len(hits) == 1, proc.stderr


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# ---- explain: --messages and --attr ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (5, "messages[0].content must be a string or an array of parts"),
        ({"text": "hi"}, "messages[0].content must be a string or an array of parts"),
        (["ok", 7], "messages[0].content[1] must be a text, image_url, input_audio or file part"),
    ],
)
def test_messages_content_that_is_not_text(cli, tmp_path: Path, content: object, error: str) -> None:
    (tmp_path / "m.json").write_text(json.dumps([{"role": "user", "content": content}]), encoding="utf-8")
    one_error(cli("explain", "-p", str(FIXTURES), "--messages", "m.json"), 2, error)


@pytest.mark.parametrize("depth", [300, 20_000])
def test_messages_nested_too_deep(cli, tmp_path: Path, depth: int) -> None:
    """20,000 levels exhaust json's stack; 300 parse but would exhaust the stack further on (the explain report)."""
    (tmp_path / "deep.json").write_text(f'[{{"role": "user", "content": "hi", "x": {nested(depth)}}}]')
    one_error(cli("explain", "-p", str(FIXTURES), "--messages", "deep.json"), 2, "nested deeper than 64 levels")


@pytest.mark.parametrize("depth", [300, 20_000])
def test_attr_nested_too_deep(cli, depth: int) -> None:
    proc = cli("explain", "-p", str(FIXTURES), "hi", "--attr", f"x={nested(depth)}")
    one_error(proc, 2, "the value of x is nested deeper than 64 levels")


def test_attr_as_deep_as_allowed_still_explains(cli) -> None:
    proc = cli("explain", "-p", str(FIXTURES), "hi", "--json", "--attr", f"x={nested(MAX_JSON_DEPTH)}")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["attrs"]["x"] == json.loads(nested(MAX_JSON_DEPTH))


@pytest.mark.parametrize("value", ["abc", "[1]", "-1", "NaN", "1e400", "true"])
def test_attr_tokens_that_is_not_a_count(cli, value: str) -> None:
    one_error(cli("explain", "-p", str(FIXTURES), "hi", "--attr", f"tokens={value}"), 2, "tokens must be a number")


def test_attr_tokens_given_as_digits_still_counts(cli) -> None:
    proc = cli("explain", "-p", str(FIXTURES), "hi", "--json", "--attr", 'tokens="1200"')
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["tokens"] == 1200


def test_an_expect_with_unusable_tokens_fails_that_case(cli, tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "catalog.yaml", tmp_path / "catalog.yaml")
    (tmp_path / "main.route").write_text(
        'catalog "catalog.yaml"\notherwise use alpha-mini\n'
        'test "t" {\n  expect "hi" with tokens = "many" -> alpha-mini\n  expect "hi" -> alpha-mini\n}\n'
    )
    proc = cli("test", str(tmp_path))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout
    assert "tokens must be a number of tokens from 0 to 10**308 (or its digits), not 'many'" in proc.stdout
    assert proc.stdout.rstrip().endswith("1 passed, 1 failed")


# ---- serve --------------------------------------------------------------------------------------------------


def test_serve_redis_that_is_not_a_url(cli) -> None:
    proc = cli("serve", "-p", str(FIXTURES), "--redis", "notaurl", "--port", "0", timeout=60)
    one_error(proc, 2, "'notaurl' is not a Redis URL")
    from_env = cli("serve", "-p", str(FIXTURES), "--port", "0", env={"MODELROUTE_REDIS_URL": "redis://h:port/0"})
    one_error(from_env, 2, "is not a Redis URL: Port could not be cast to integer")


def test_serve_on_a_port_in_use(cli) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = cli("serve", "-p", str(FIXTURES), "--port", str(port), timeout=60)
    assert "Started server process" not in proc.stderr  # refused before uvicorn starts
    one_error(proc, 1, f"error: cannot listen on 127.0.0.1:{port}: ")


def test_serve_port_0_names_the_port_it_got_and_the_default_policy(tmp_path: Path, clean_env) -> None:
    for name in ("main.route", "tasks.route", "catalog.yaml"):
        shutil.copy(FIXTURES / name, tmp_path / name)
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "serve", "--port", "0", "--log-level", "warning"],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        lines = _stderr_until(proc, "modelroute gateway: ", deadline=time.monotonic() + 30)
        assert "using policy ./main.route" in lines
        url = lines[-1].split()[2]  # modelroute gateway: http://127.0.0.1:PORT/v1 ...
        assert url.startswith("http://127.0.0.1:") and not url.startswith("http://127.0.0.1:0/")
        assert _healthz(url.removesuffix("/v1") + "/healthz", deadline=time.monotonic() + 30) == 200
    finally:
        proc.send_signal(signal.SIGTERM if os.name == "posix" else signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


def _healthz(url: str, deadline: float) -> int:
    """GET /healthz until the gateway listens (the banner comes just before) or the deadline passes."""
    while True:
        try:
            return httpx.get(url, timeout=5).status_code
        except httpx.ConnectError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _stderr_until(proc: subprocess.Popen, marker: str, deadline: float) -> list[str]:
    """The process's stderr lines up to and including the first one containing `marker` (read unbuffered, so a
    line already received is never left waiting in a buffer while select() waits for more)."""
    assert proc.stderr is not None
    fd, data = proc.stderr.fileno(), b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            lines = data[: data.rfind(b"\n") + 1].decode("utf-8", "replace").splitlines()  # complete lines only
            hit = next((i for i, line in enumerate(lines) if marker in line), None)
            if hit is not None:
                return lines[: hit + 1]
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError("serve exited: " + data.decode("utf-8", "replace"))
            data += chunk
    raise AssertionError(f"no {marker!r} line before the deadline: {data!r}")


def test_diff_prompts_too_deep_or_malformed_is_bad_input(cli, tmp_path: Path) -> None:
    """A --prompts corpus line nested 20,000 deep, or with non-string content, is one clear line, never exit 3."""
    for line, expected in (
        (
            json.dumps({"prompt": "x", "attrs": {"a": 1}})[:-1] + ', "deep": ' + "[" * 20_000 + "]" * 20_000 + "}",
            "nested deeper than",
        ),
        (json.dumps({"messages": [{"role": "user", "content": 5}]}), "messages[0].content"),
    ):
        corpus = tmp_path / "prompts.jsonl"
        corpus.write_text(line + "\n")
        proc = cli("diff", str(FIXTURES), str(FIXTURES), "--prompts", str(corpus))
        assert proc.returncode in (1, 2), proc.stderr
        assert expected in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("key", ["prompt", "messages"])
def test_attr_named_like_the_request_is_usage(cli, key: str) -> None:
    """`--attr prompt=...` would collide with decide()'s own argument: a usage error, never exit 3."""
    proc = cli("explain", "-p", str(FIXTURES), "hi", "--attr", f"{key}=7")
    assert proc.returncode == 2 and "is the request itself" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("attr", ['prompt="x"', "messages=5"])
def test_expect_with_a_request_argument_fails_the_case(cli, tmp_path: Path, attr: str) -> None:
    policy = tmp_path / "t.route"
    policy.write_text(f'otherwise use gpt-4o-mini\ntest "t" {{ expect "hi" with {attr} -> gpt-4o-mini }}\n')
    proc = cli("test", str(policy))
    assert proc.returncode == 1 and "is the request itself" in proc.stdout + proc.stderr, proc.stderr


def test_test_on_a_missing_policy_is_a_policy_error(cli, tmp_path: Path) -> None:
    """Like check and explain: a policy that is not there is E200 and exit 1."""
    proc = cli("test", str(tmp_path / "nope.route"))
    assert proc.returncode == 1 and "E200" in proc.stderr
