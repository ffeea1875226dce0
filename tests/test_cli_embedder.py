"""`--embedder MODULE:NAME` on the commands that compile a policy: a module of the working directory with a
deterministic embedder in, the real CLI (and a real `modelroute serve`) deciding with that embedder's scores out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REPO

#: A bag of words over three dimensions where "zebra" means what "contract" means: only this embedder puts the
#: prompt "zebra" next to the example "review this contract" (cosine 1.0); WordLlama puts it far away.
MODULE = """
import math
import re

DIMS = {"zebra": 0, "contract": 0, "clause": 1, "poem": 2}
NOT_CALLABLE = 3


def embed(texts):
    out = []
    for text in texts:
        v = [0.0, 0.0, 0.0, 0.01]
        for word in re.findall(r"[a-z]+", text.lower()):
            if word in DIMS:
                v[DIMS[word]] += 1.0
        out.append(v)
    return out


def nan_embed(texts):
    return [[math.nan, 1.0] for _ in texts]


FUNCTIONS = {"striped": lambda request: "zebra" in request.text}
"""

POLICY = """\
task legal = like ["review this contract"] >= 0.9
when task is legal use gpt-4o
otherwise use gpt-4o-mini

test "by meaning" {
  expect "zebra" -> gpt-4o
}
"""

Run = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "mymod.py").write_text(MODULE, encoding="utf-8")
    (tmp_path / "policy.route").write_text(POLICY, encoding="utf-8")
    return tmp_path


def _similar(out: str) -> str:
    """The `legal` line of explain's `similar` section."""
    return next(line for line in out.splitlines() if line.strip().startswith("legal "))


def test_explain_scores_with_the_given_embedder(cli: Run, project: Path) -> None:
    r = cli("explain", "zebra", "-p", "policy.route", "--embedder", "mymod:embed", "--no-color")
    assert r.returncode == 0, r.stderr
    assert "1.000 >= 0.9" in _similar(r.stdout)
    assert "decision   gpt-4o (openai)" in r.stdout
    report = json.loads(cli("explain", "zebra", "-p", "policy.route", "--embedder", "mymod:embed", "--json").stdout)
    assert report["model"] == "gpt-4o" and report["tasks"] == ["legal"]


def test_explain_without_it_uses_the_default_embedder(cli: Run, project: Path) -> None:
    pytest.importorskip("wordllama", reason="the semantic extra is not installed (pip install -e '.[semantic]')")
    r = cli("explain", "zebra", "-p", "policy.route", "--no-color")
    assert r.returncode == 0, r.stderr
    assert "not detected" in _similar(r.stdout) and "1.000" not in _similar(r.stdout)
    assert "decision   gpt-4o-mini (openai)" in r.stdout


def test_test_passes_only_with_the_embedder(cli: Run, project: Path) -> None:
    r = cli("test", "policy.route", "--embedder", "mymod:embed")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed, 0 failed" in r.stdout
    result = json.loads(cli("test", "policy.route", "--embedder", "mymod:embed", "--json").stdout)
    assert result["passed"] == 1 and result["failed"] == 0


def test_check_compiles_with_the_embedder(cli: Run, project: Path) -> None:
    r = cli("check", "policy.route", "--embedder", "mymod:embed")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok: policy.route")
    bad = cli("check", "policy.route", "--embedder", "mymod:nan_embed")  # the examples are embedded by it
    assert bad.returncode == 1
    assert "E321" in bad.stderr and "Traceback" not in bad.stderr


def test_graph_and_diff_take_it(cli: Run, project: Path) -> None:
    assert cli("graph", "policy.route", "--embedder", "mymod:embed").returncode == 0
    (project / "old.route").write_text("otherwise use gpt-4o-mini\n", encoding="utf-8")
    (project / "prompts.jsonl").write_text('{"prompt": "zebra"}\n', encoding="utf-8")
    args = ("diff", "old.route", "policy.route", "--prompts", "prompts.jsonl", "--json", "--embedder", "mymod:embed")
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["changed"] == 1


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("mymod", "write MODULE:NAME"),
        ("nomod:embed", "cannot load nomod:embed: ModuleNotFoundError"),
        ("mymod:missing", "cannot load mymod:missing: AttributeError"),
        ("mymod:NOT_CALLABLE", "mymod:NOT_CALLABLE is not callable (int)"),
    ],
)
@pytest.mark.parametrize(
    "command",
    ["explain zebra -p policy.route", "check policy.route", "test policy.route", "serve -p policy.route --port 1"],
)
def test_a_bad_embedder_is_a_usage_error(cli: Run, project: Path, command: str, value: str, message: str) -> None:
    r = cli(*command.split(), "--embedder", value)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "--embedder" in r.stderr and message in r.stderr
    assert "Traceback" not in r.stderr


def _serve(project: Path, *extra: str, policy: str = "policy.route", tasks: tuple[str, ...] = ("legal",)) -> None:
    """Start `modelroute serve --embedder mymod:embed` (and `extra`) in `project` on a free port, wait until it
    serves, ask /v1/route/explain for "zebra" until two workers answered (with --workers 2; else one) and
    stop it: every answer is the embedder's decision."""
    httpx = pytest.importorskip("httpx")
    from providers.gateway.server import WORKER_HEADER
    from tests.test_redis_store import free_port
    from tests.waiting import wait_until

    port = free_port()
    args = ["-p", policy, "--port", str(port), "--log-level", "warning", "--embedder", "mymod:embed"]
    log = project / "serve.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "serve", *args, *extra],
            cwd=project,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    url = f"http://127.0.0.1:{port}"
    workers: set[str] = set()

    def routed() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode}: {log.read_text()}")
        body = {"model": "auto", "messages": [{"role": "user", "content": "zebra"}]}
        try:  # one connection: the worker that says its pid on /healthz is the one that explains
            with httpx.Client(base_url=url, timeout=10) as client:
                worker = client.get("/healthz").headers[WORKER_HEADER]
                report = client.post("/v1/route/explain", json=body).json()
        except httpx.HTTPError:
            return False
        assert report["model"] == "gpt-4o" and report["tasks"] == list(tasks), report
        workers.add(worker)
        return len(workers) >= (2 if "--workers" in extra else 1)

    try:
        wait_until(routed, f"modelroute serve on port {port} to route by the embedder", timeout=60, interval=0.05)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_serve_routes_with_the_embedder(project: Path) -> None:
    pytest.importorskip("uvicorn", reason="gateway deps not installed (pip install -e '.[test]')")
    _serve(project)


def test_serve_calls_the_policys_python_functions(project: Path) -> None:
    pytest.importorskip("uvicorn", reason="gateway deps not installed (pip install -e '.[test]')")
    (project / "functions.route").write_text("when striped() use gpt-4o\notherwise use gpt-4o-mini\n", encoding="utf-8")
    refused = subprocess.run(
        [sys.executable, "-m", "engine.cli", "serve", "-p", "functions.route", "--port", "0"],
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0 and "E313" in refused.stdout + refused.stderr
    assert "Traceback" not in refused.stderr
    _serve(project, "--functions", "mymod:FUNCTIONS", policy="functions.route", tasks=())


def test_every_worker_routes_with_the_embedder(project: Path) -> None:
    pytest.importorskip("uvicorn", reason="gateway deps not installed (pip install -e '.[test]')")
    from tests.test_redis_store import REDIS_BIN, RedisServer

    if REDIS_BIN is None:
        pytest.skip("no redis-server binary (apt-get install redis-server)")
    redis = RedisServer().start()
    try:
        _serve(project, "--workers", "2", "--redis", redis.url, "--redis-prefix", "embedder-test:")
    finally:
        redis.stop()


def test_follow_compiles_with_the_given_embedder_and_keeps_it_after_a_change(tmp_path: Path) -> None:
    """The loop behind `check --watch` / `explain --watch`: every compile uses --embedder's embedder."""
    import threading

    from engine.reload import follow

    seen: list[int] = []

    def embed(texts: list[str]) -> list[list[float]]:
        seen.append(len(texts))
        return [[1.0, 0.0] if "zebra" in t else [0.0, 1.0] for t in texts]

    policy = tmp_path / "main.route"
    policy.write_text('task z = like ["zebra stripes"] >= 0.5\nwhen task is z use gpt-4o\notherwise use gpt-4o-mini\n')
    stop = threading.Event()
    results = follow(policy, stop_event=stop, embedder=embed)
    first = next(results)
    assert not isinstance(first, Exception) and first.embedder is embed and seen
    policy.write_text('task z = like ["zebra crossing"] >= 0.5\nwhen task is z use gpt-4o\notherwise use gpt-4o-mini\n')
    second = next(results)
    stop.set()
    results.close()
    assert not isinstance(second, Exception) and second.embedder is embed
    assert second.semantic["z"].examples == ("zebra crossing",)
