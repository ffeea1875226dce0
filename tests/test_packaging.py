"""Packaging: the wheel built from a copy of the source tree holds every package and data file, and what a user
installs from it (with its dependencies and the `serve` and `semantic` extras, in a fresh venv) works from another
directory.

One module-scoped fixture builds the wheel (`python -m build` on a copy of the files git tracks, so no build/ or
*.egg-info lands in the checkout) and installs it with `[serve,semantic]` into a venv made without
--system-site-packages: the runtime dependencies come from pip's cache or the package index, as for a user running
README's `python -m pip install '.[semantic]'`.
From a directory outside the checkout the tests then run `modelroute explain` (text and html), `modelroute
check`, `Engine.complete()` against a loopback fake provider (tests/fakeserver.py) and `modelroute serve`
answering the `openai` SDK. A failed build or install fails the tests with pip's output; nothing here skips.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from engine import Engine
from tests.fakeserver import FakeServer, Reply

REPO = Path(__file__).resolve().parent.parent
#: What the wheel is built from when the checkout is not a git work tree (a source archive).
SOURCES = ("pyproject.toml", "setup.py", "README.md", "engine", "providers", "grammar", "policies")
README_PROMPT = "Implement a function that merges two sorted lists"  # README's first command
#: The extras the venv gets: the gateway (`serve`) and the default embedder the bundled policy's `like` tasks need.
EXTRAS = ("serve", "semantic")
BUILD_TIMEOUT = 600.0  # seconds; building fetches setuptools and wheel into an isolated environment
INSTALL_TIMEOUT = 900.0  # installing the dependencies may take a minute or two on a cold pip cache
RUN_TIMEOUT = 120.0

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Installed:
    """A fresh venv with modelroute installed from `wheel`."""

    wheel: Path
    bindir: Path
    site: Path  # the venv's site-packages (purelib)

    @property
    def python(self) -> Path:
        return self.bindir / "python"

    @property
    def modelroute(self) -> Path:
        return self.bindir / "modelroute"


def _env(**extra: str) -> dict[str, str]:
    """The environment for the venv's programs: nothing that points Python at the checkout or another venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(NO_COLOR="1", PYTHONNOUSERSITE="1", **extra)
    return env


def _run(
    args: Sequence[object], cwd: Path, timeout: float = RUN_TIMEOUT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env=_env(**(env or {})), capture_output=True, text=True, timeout=timeout
    )


def _must(proc: subprocess.CompletedProcess[str], what: str) -> None:
    """Fail the test with the command's whole output unless it exited 0."""
    if proc.returncode != 0:
        pytest.fail(
            f"{what} failed (exit {proc.returncode}): {' '.join(proc.args)}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}",
            pytrace=False,
        )


def _source_files() -> list[Path]:
    """The checkout's files as a clean clone would have them: tracked plus untracked-but-not-ignored."""
    try:
        proc = subprocess.run(
            ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except FileNotFoundError:  # no git on this machine
        proc = None
    if proc is not None and proc.returncode == 0 and proc.stdout:
        names = [Path(n) for n in proc.stdout.split("\0") if n]
        return [n for n in names if (REPO / n).is_file()]  # skip files deleted in the work tree
    found: list[Path] = []
    for top in SOURCES:
        path = REPO / top
        if path.is_file():
            found.append(Path(top))
        elif path.is_dir():
            found += [p.relative_to(REPO) for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return found


def _copy_source(dest: Path) -> None:
    for rel in _source_files():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """Build a wheel from a copy of the source tree and install it with `[serve,semantic]` into a fresh venv."""
    root = tmp_path_factory.mktemp("packaging")
    src, dist, venv = root / "src", root / "dist", root / "venv"
    _copy_source(src)
    _must(
        _run([sys.executable, "-m", "build", "--wheel", "--outdir", dist, src], cwd=root, timeout=BUILD_TIMEOUT),
        "building the wheel (python -m build; `build` comes with pip install -e '.[test]')",
    )
    wheels = sorted(dist.glob("modelroute-*.whl"))
    assert len(wheels) == 1, f"expected one wheel in {dist}, found {[w.name for w in wheels]}"
    _must(_run([sys.executable, "-m", "venv", venv], cwd=root), "creating the venv")
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    _must(
        _run(
            [bindir / "python", "-m", "pip", "install", "--progress-bar", "off", f"{wheels[0]}[{','.join(EXTRAS)}]"],
            cwd=root,
            timeout=INSTALL_TIMEOUT,
        ),
        f"installing the wheel with its dependencies and [{','.join(EXTRAS)}]",
    )
    site = _run([bindir / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root)
    _must(site, "asking the venv for its site-packages")
    return Installed(wheel=wheels[0], bindir=bindir, site=Path(site.stdout.strip()))


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A working directory outside the checkout with no policy in it (so commands fall back to the bundled one)."""
    assert REPO not in tmp_path.parents
    return tmp_path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- the wheel's contents -----------------------------------------------------------------------------------
def test_wheel_holds_every_package_of_the_source_tree(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    packages = [
        p.relative_to(REPO)
        for top in ("engine", "providers")
        for p in [REPO / top, *(REPO / top).rglob("*")]
        if p.is_dir() and "__pycache__" not in p.parts and (p / "__init__.py").is_file()
    ]
    assert Path("providers/clients") in packages  # the subpackage a hand-written list once forgot
    missing = [
        f"{pkg.as_posix()}/{module.name}"
        for pkg in packages
        for module in (REPO / pkg).glob("*.py")
        if f"{pkg.as_posix()}/{module.name}" not in names
    ]
    assert not missing, f"modules of the source tree missing from {installed.wheel.name}: {missing}"


def test_wheel_holds_grammar_policies_templates_and_catalog(installed: Installed) -> None:
    data = {
        "engine/_grammar/route.lark": REPO / "grammar" / "route.lark",
        "providers/catalog/catalog.yaml": REPO / "providers" / "catalog" / "catalog.yaml",
        **{f"engine/_policies/{p.name}": p for p in (REPO / "policies").glob("*.route")},
        **{f"engine/_policies/examples/{p.name}": p for p in (REPO / "policies").glob("examples/*.txt")},
        **{f"engine/tools/templates/{p.name}": p for p in (REPO / "engine" / "tools" / "templates").glob("*.j2")},
    }
    assert {"engine/_policies/main.route", "engine/tools/templates/explain.html.j2"} <= data.keys()
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
        missing = sorted(name for name in data if name not in names)
        assert not missing, f"data files missing from {installed.wheel.name}: {missing}"
        for name, source in data.items():
            assert wheel.read(name) == source.read_bytes(), f"{name} in the wheel differs from {source}"


# ---- the installed package, used from outside the checkout --------------------------------------------------
def test_installed_package_is_used_not_the_checkout(installed: Installed, outside: Path) -> None:
    code = (
        "import engine, engine.language.parse, engine.language.load, providers.catalog as c, providers.clients as pc; "
        "print(engine.__file__); print(pc.__file__); print(engine.language.parse.grammar_path()); "
        "print(engine.language.load.bundled_policy_dir()); print(c.default_catalog_path())"
    )
    proc = _run([installed.python, "-c", code], cwd=outside)
    _must(proc, "importing the installed package")
    paths = [Path(line) for line in proc.stdout.splitlines()]
    assert len(paths) == 5, proc.stdout
    for path in paths:
        assert installed.site in path.parents, f"{path} is not inside the venv ({installed.site})"
    grammar, policies = paths[2], paths[3]
    assert grammar.read_text(encoding="utf-8") == (REPO / "grammar" / "route.lark").read_text(encoding="utf-8")
    assert (policies / "main.route").is_file() and (policies / "tasks.route").is_file()


def test_installed_dependencies_are_consistent(installed: Installed, outside: Path) -> None:
    _must(_run([installed.python, "-m", "pip", "check"], cwd=outside), "pip check in the venv")


def test_explain_readme_command_on_the_bundled_policy(installed: Installed, outside: Path) -> None:
    proc = _run([installed.modelroute, "explain", README_PROMPT, "--attr", "tier=pro"], cwd=outside)
    _must(proc, "modelroute explain")
    assert "Traceback" not in proc.stdout + proc.stderr
    decision = re.search(r"^decision\s+(\S+) \((\w+)\) by rule (\S+):(\d+)$", proc.stdout, re.M)
    assert decision, proc.stdout
    bundled = installed.site / "engine" / "_policies"
    assert Path(decision.group(3)).parent == bundled
    expected = Engine.load(REPO / "policies").decide(README_PROMPT, tier="pro")  # the checkout decides alike
    assert (decision.group(1), decision.group(2)) == (expected.model, expected.provider)

    as_json = _run([installed.modelroute, "explain", README_PROMPT, "--attr", "tier=pro", "--json"], cwd=outside)
    _must(as_json, "modelroute explain --json")
    data = json.loads(as_json.stdout)
    assert data["model"] == expected.model and data["tasks"] == ["code"]
    assert Path(data["policy"]).parent == bundled


def test_default_embedder_works_offline_in_the_venv(installed: Installed, outside: Path) -> None:
    code = (
        "from engine.runtime.embedder import default_embedder; import numpy as np; "
        "v = default_embedder()(['write a python function that parses dates']); "
        "print(v.shape[0], v.shape[1], round(float(np.linalg.norm(v[0])), 4))"
    )
    proc = _run([installed.python, "-c", code], cwd=outside, env={"HF_HUB_OFFLINE": "1", "HOME": str(outside)})
    _must(proc, "embedding with the default embedder in the venv")
    assert proc.stdout.split() == ["1", "256", "1.0"]


def test_check_bundled_policy(installed: Installed, outside: Path) -> None:
    proc = _run([installed.modelroute, "check"], cwd=outside)
    _must(proc, "modelroute check")
    assert str(installed.site / "engine" / "_policies" / "main.route") in proc.stdout + proc.stderr
    (outside / "bad.route").write_text("otherwise use gpt-4o-mni\n")
    bad = _run([installed.modelroute, "check", "bad.route"], cwd=outside)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "error[E300]" in bad.stderr and "did you mean gpt-4o-mini?" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_explain_html_is_a_document(installed: Installed, outside: Path) -> None:
    proc = _run([installed.modelroute, "explain", README_PROMPT, "--attr", "tier=pro", "--format", "html"], cwd=outside)
    _must(proc, "modelroute explain --format html")
    html = proc.stdout.strip()
    assert html.lower().startswith("<!doctype html>") and html.endswith("</html>"), html[:200]
    expected = Engine.load(REPO / "policies").decide(README_PROMPT, tier="pro").model
    assert f"<title>modelroute: {expected}</title>" in html


# ---- calling a provider: Engine.complete() and `modelroute serve` -------------------------------------------
FAKE_MODEL, KEY_ENV, FAKE_KEY = "pkg-fake-mini", "MODELROUTE_PACKAGING_TEST_KEY", "sk-packaging-test"
COMPLETE_SCRIPT = """
import json, sys
import engine, providers.clients
with engine.Engine.load(sys.argv[1]) as e:
    c = e.complete("Say hello to the packaging test")
print(json.dumps({"text": c.text, "model": c.model, "provider": c.provider, "engine": engine.__file__,
                  "clients": providers.clients.__file__}))
"""


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with FakeServer(api_key=FAKE_KEY) as server:
        yield server


def _policy_for(server: FakeServer, where: Path) -> Path:
    """A policy folder (main.route + catalog.yaml) whose only model is served by `server`."""
    folder = where / "policy"
    folder.mkdir()
    (folder / "catalog.yaml").write_text(
        "providers:\n"
        f'  fakeai: {{kind: openai, base_url: "{server.base_url("openai")}", api_key_env: {KEY_ENV}, '
        "timeout_s: 30}\n"
        "models:\n"
        f"  {FAKE_MODEL}:\n"
        "    provider: fakeai\n"
        "    context: 8k\n"
        "    price: {input: 0.1, output: 0.4}\n"
        "    latency_ms: 100\n",
        encoding="utf-8",
    )
    (folder / "main.route").write_text(f'catalog "catalog.yaml"\notherwise use {FAKE_MODEL}\n', encoding="utf-8")
    return folder


def test_complete_through_a_loopback_provider(installed: Installed, outside: Path, fake: FakeServer) -> None:
    fake.script(FAKE_MODEL, Reply(text="hello from the fake provider", input_tokens=9, output_tokens=5))
    policy = _policy_for(fake, outside)
    script = outside / "complete.py"
    script.write_text(COMPLETE_SCRIPT, encoding="utf-8")
    proc = _run([installed.python, script, policy], cwd=outside, env={KEY_ENV: FAKE_KEY})
    _must(proc, "Engine.complete() in the venv")
    out = json.loads(proc.stdout)
    assert out["text"] == "hello from the fake provider"
    assert (out["model"], out["provider"]) == (FAKE_MODEL, "fakeai")
    assert installed.site in Path(out["engine"]).parents and installed.site in Path(out["clients"]).parents
    request = fake.last()
    assert request.path == "/v1/chat/completions" and request.model == FAKE_MODEL
    assert request.headers["authorization"] == f"Bearer {FAKE_KEY}"


def test_serve_answers_the_openai_sdk(installed: Installed, outside: Path, fake: FakeServer) -> None:
    fake.script(FAKE_MODEL, Reply(text="served through the gateway", input_tokens=7, output_tokens=4))
    policy = _policy_for(fake, outside)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = outside / "serve.log"
    with log.open("w") as sink:
        server = subprocess.Popen(
            [str(installed.modelroute), "serve", "-p", str(policy), "--port", str(port), "--log-level", "warning"],
            cwd=outside,
            env=_env(**{KEY_ENV: FAKE_KEY}),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                if server.poll() is not None:
                    pytest.fail(f"modelroute serve exited with {server.returncode}:\n{log.read_text()}")
                try:
                    if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"modelroute serve did not answer /healthz within 60 s:\n{log.read_text()}")
                time.sleep(0.1)
            client = openai.OpenAI(base_url=url + "/v1", api_key="no-gateway-key", max_retries=0, timeout=60)
            try:
                raw = client.chat.completions.with_raw_response.create(
                    model="auto", messages=[{"role": "user", "content": "Say hello"}]
                )
            except openai.APIError as exc:
                pytest.fail(f"the gateway did not answer the openai SDK: {exc}\n{log.read_text()}")
            completion = raw.parse()
            assert completion.choices[0].message.content == "served through the gateway", log.read_text()
            assert completion.model == FAKE_MODEL and raw.headers["x-modelroute-model"] == FAKE_MODEL
            assert fake.last().headers["authorization"] == f"Bearer {FAKE_KEY}"
        finally:
            if server.poll() is None:
                server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=30)


# ---- the checkout (no install): grammar and bundled policy found at the repo top ----------------------------
def test_grammar_is_found_from_the_checkout() -> None:
    from engine.language.load import bundled_policy_dir
    from engine.language.parse import grammar_path

    assert grammar_path().resolve() == (REPO / "grammar" / "route.lark").resolve()
    assert bundled_policy_dir().resolve() == (REPO / "policies").resolve()


def test_grammar_is_found_from_the_checkout_in_a_fresh_process(tmp_path: Path) -> None:
    code = (
        "from engine.language.parse import grammar_path; from engine import Engine; print(grammar_path()); "
        "print(Engine.load().decide('hello').model)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=_env(PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    _must(proc, "importing the checkout")
    grammar, model = proc.stdout.split()
    assert Path(grammar).resolve() == (REPO / "grammar" / "route.lark").resolve()
    assert model
