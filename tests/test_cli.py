"""The CLI end to end, through a subprocess (`python -m engine.cli ...`): explain (prompt argument, -f FILE,
- for stdin, --messages, --attr JSON values, --json), check (exit 0 clean, 1 with diagnostics on stderr), usage
errors (exit 2), no traceback for bad input, colour only on a terminal and never with NO_COLOR, and the
default policy every command uses (./main.route, else ./policies/main.route, else the bundled one, named on
stderr)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "policies"
EXPLAIN = Path(__file__).parent / "golden" / "explain"
DIAG = Path(__file__).parent / "golden" / "diagnostics"
CODE_PROMPT = "Implement a function that merges two sorted lists"


def no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "internal error" not in proc.stdout + proc.stderr


# ---- explain --------------------------------------------------------------------------------------------


def test_explain_prompt_argument_matches_golden(cli, golden, mask_explain) -> None:
    proc = cli("explain", "-p", "main.route", CODE_PROMPT, "--attr", "tier=pro", "--attr", "tools=true", cwd=FIXTURES)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "\x1b[" not in proc.stdout  # piped: plain text
    golden(EXPLAIN / "code_with_tools.txt", mask_explain(proc.stdout))


def test_explain_no_route_exits_1_with_the_trace(cli, golden, mask_explain) -> None:
    proc = cli("explain", "-p", "noroute.route", "hello", "-a", "tier=pro", "--attr", "tools=true", cwd=FIXTURES)
    assert proc.returncode == 1
    no_traceback(proc)
    golden(EXPLAIN / "no_route.txt", mask_explain(proc.stdout))


def test_explain_no_route_json(cli) -> None:
    proc = cli("explain", "-p", "noroute.route", "hello", "--attr", "tools=true", "--json", cwd=FIXTURES)
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert data["model"] is None and data["rule"] is None
    assert [r["outcome"] for r in data["rules"]] == ["no match", "no viable model"]


def _decision(proc: subprocess.CompletedProcess) -> tuple:
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    return data["model"], data["rule"]["line"], data["tasks"], data["tokens"]


def test_explain_prompt_from_file_and_stdin(cli, tmp_path: Path) -> None:
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("Please summarize this report", encoding="utf-8")
    policy = str(FIXTURES / "main.route")
    by_arg = _decision(cli("explain", "-p", policy, "Please summarize this report", "--json"))
    by_file = _decision(cli("explain", "-p", policy, "-f", str(prompt_file), "--json"))
    by_stdin = _decision(cli("explain", "-p", policy, "-", "--json", input="Please summarize this report"))
    assert by_arg == by_file == by_stdin == ("gamma-flash", 14, ["summarize"], 7)


def test_explain_large_prompt_from_stdin(cli) -> None:
    proc = cli("explain", "-p", str(FIXTURES), "-", "--json", input="debug " + "." * 140_000)
    assert _decision(proc) == ("beta-coder", 10, ["code"], 35_002)


def test_explain_messages_file(cli, tmp_path: Path) -> None:
    messages = [{"role": "system", "content": "You write code."}, {"role": "user", "content": "tl;dr of this please"}]
    path = tmp_path / "messages.json"
    path.write_text(json.dumps(messages), encoding="utf-8")
    proc = cli("explain", "-p", str(FIXTURES), "--messages", str(path), "--json")
    # tokens: (15+3)//4 + 4 + (20+3)//4 + 4
    assert _decision(proc) == ("gamma-flash", 14, ["summarize"], 17)


def test_explain_attr_values_are_json(cli) -> None:
    proc = cli(
        "explain",
        "-p",
        str(FIXTURES),
        "hello",
        "--json",
        "--attr",
        'spend={"today": 80}',
        "--attr",
        "n=3",
        "--attr",
        'code="3"',
        "--attr",
        "tier=pro",
        "--attr",
        "ratio=0.5",
        "--attr",
        "flag=false",
        "--attr",
        "none=null",
        "--attr",
        "tags=[1, 2]",
        "--attr",
        "eq=a=b",
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["attrs"] == {
        "spend": {"today": 80},
        "n": 3,
        "code": "3",
        "tier": "pro",
        "ratio": 0.5,
        "flag": False,
        "none": None,
        "tags": [1, 2],
        "eq": "a=b",
    }
    assert (data["model"], data["rule"]["line"]) == ("beta-chat", 12)  # spend.today >= $50 via the dict


def test_explain_attr_string_value_is_truthy(cli) -> None:
    as_string = _decision(cli("explain", "-p", str(FIXTURES), "summarize it", "--json", "--attr", "tools=yes"))
    assert as_string[:2] == ("alpha-mini", 17)  # "yes" is a truthy string: `not tools` is false


def test_explain_json_equals_the_api(cli) -> None:
    from engine import Engine

    proc = cli("explain", "-p", str(FIXTURES), CODE_PROMPT, "--attr", "tier=pro", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    api = Engine.load(FIXTURES).decide(CODE_PROMPT, tier="pro").model_dump()
    for d in (data, api):
        d.pop("elapsed_us")
        d.pop("policy_version")  # depends on the working directory: see test_api.py
        d["policy"] = Path(d["policy"]).name
        for r in [d["rule"], *(t["rule"] for t in d["rules"])]:
            r["file"] = Path(r["file"]).name
    assert data == api


# ---- check ----------------------------------------------------------------------------------------------


def test_check_clean(cli) -> None:
    proc = cli("check", "main.route", cwd=FIXTURES)
    assert proc.returncode == 0
    assert proc.stdout.startswith("ok: main.route (10 rules, 3 tasks, 8 models, 3 files, version ")
    assert proc.stderr == ""


def test_check_clean_json(cli) -> None:
    proc = cli("check", str(FIXTURES), "--json")
    assert proc.returncode == 0
    data = json.loads(proc.stdout)
    assert data["ok"] is True and data["diagnostics"] == []
    assert (data["rules"], data["tasks"], data["models"]) == (10, 3, 8)


def test_check_errors(cli) -> None:
    proc = cli("check", "multi_syntax_errors.route", cwd=DIAG)
    assert proc.returncode == 1
    no_traceback(proc)
    assert proc.stdout == ""
    expected = (DIAG / "multi_syntax_errors.txt").read_text(encoding="utf-8")
    assert proc.stderr.strip() == expected.strip()


def test_check_errors_json(cli) -> None:
    proc = cli("check", "E300_unknown_model.route", "--json", cwd=DIAG)
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert data["ok"] is False
    assert [(d["code"], d["file"], d["line"], d["col"], d["hint"]) for d in data["diagnostics"]] == [
        ("E300", "E300_unknown_model.route", 2, 45, "did you mean gpt-4o-mini?")
    ]


def test_explain_with_a_bad_policy_exits_1(cli) -> None:
    proc = cli("explain", "-p", "E400_unit_mismatch.route", "hello", cwd=DIAG)
    assert proc.returncode == 1
    no_traceback(proc)
    assert proc.stdout == ""
    assert "error[E400]" in proc.stderr and "--> E400_unit_mismatch.route:2:51" in proc.stderr


@pytest.mark.parametrize("command", [["check"], ["explain", "hello", "-p"]])
def test_nonexistent_policy_path(cli, tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "no" / "such.route"
    proc = cli(*command, str(missing))
    assert proc.returncode == 1
    no_traceback(proc)
    assert "error[E200]" in proc.stderr
    assert "cannot read policy file no/such.route: No such file or directory" in proc.stderr


def test_policy_directory_without_main_route(cli, tmp_path: Path) -> None:
    proc = cli("check", str(tmp_path))
    assert proc.returncode == 1
    no_traceback(proc)
    assert "a policy directory needs a main.route" in proc.stderr


# ---- usage errors ---------------------------------------------------------------------------------------

USAGE = {
    "no-prompt": ["explain"],
    "prompt-twice": ["explain", "hello", "-f", "prompt.txt"],
    "attr-without-equals": ["explain", "hello", "--attr", "tier"],
    "attr-empty-name": ["explain", "hello", "--attr", "=pro"],
    "unknown-command": ["route"],
    "unknown-option": ["explain", "hello", "--fast"],
    "missing-prompt-file": ["explain", "-f", "does-not-exist.txt"],
    "messages-not-json": ["explain", "--messages", "bad.json"],
    "messages-not-a-list-of-objects": ["explain", "--messages", "list.json"],
    "prompt-not-utf8": ["explain", "-f", "latin1.txt"],
    "check-two-policies": ["check", "a.route", "b.route"],
}
#: the usage errors also run through a real subprocess (the rest in-process, to keep the suite fast)
USAGE_SUBPROCESS = ("no-prompt", "attr-without-equals", "unknown-command", "prompt-not-utf8")


def _usage_files(root: Path) -> None:
    (root / "prompt.txt").write_text("hi")
    (root / "bad.json").write_text("{")
    (root / "list.json").write_text("[1, 2]")
    (root / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))


@pytest.mark.parametrize("name", USAGE_SUBPROCESS)
def test_usage_errors_exit_2(cli, tmp_path: Path, name: str) -> None:
    _usage_files(tmp_path)
    proc = cli(*USAGE[name], cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    no_traceback(proc)
    assert "Usage:" in proc.stderr
    assert "Error:" in proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize("args", list(USAGE.values()), ids=list(USAGE))
def test_usage_errors_exit_2_in_process(tmp_path: Path, monkeypatch, args: list[str]) -> None:
    from click.testing import CliRunner

    from engine.cli.app import main

    _usage_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "Usage:" in result.output and "Error:" in result.output


def test_help_and_version(cli) -> None:
    for args in (["explain", "--help"],):
        proc = cli(*args)
        assert proc.returncode == 0 and "Usage:" in proc.stdout
    proc = cli("--version")
    assert proc.returncode == 0 and "0.1.0" in proc.stdout


# ---- colour ---------------------------------------------------------------------------------------------


def _run_on_tty(args: list[str], env: dict[str, str], cwd: Path) -> str:
    """Run the CLI with stdout and stderr on a pseudo-terminal; return everything it wrote."""
    pty = pytest.importorskip("pty")
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", *args],
            stdin=subprocess.DEVNULL,
            stdout=slave,
            stderr=slave,
            env=env,
            cwd=cwd,
        )
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(master)
    return b"".join(chunks).decode("utf-8", "replace")


def test_colour_on_a_terminal_only(clean_env, tmp_path: Path) -> None:
    args = ["explain", "-p", str(FIXTURES), CODE_PROMPT]
    env = clean_env({"TERM": "xterm-256color"})
    assert "\x1b[" in _run_on_tty(args, env, tmp_path)
    assert "\x1b[" not in _run_on_tty(args, {**env, "NO_COLOR": "1"}, tmp_path)
    assert "\x1b[" not in _run_on_tty([*args, "--no-color"], env, tmp_path)


def test_no_colour_when_piped_or_no_color(cli) -> None:
    args = ["explain", "-p", str(FIXTURES), CODE_PROMPT]
    assert "\x1b[" not in cli(*args).stdout
    errors = cli("check", "multi_syntax_errors.route", cwd=DIAG, env={"NO_COLOR": "1"})
    assert "\x1b[" not in errors.stderr


def test_color_flag_forces_colour_when_piped(cli) -> None:
    forced = cli("explain", "-p", str(FIXTURES), CODE_PROMPT, "--color")
    assert forced.returncode == 0
    assert "\x1b[" in forced.stdout


# ---- the default policy ---------------------------------------------------------------------------------


def test_default_policy_is_policies_in_cwd(cli, tmp_path: Path) -> None:
    shutil.copytree(FIXTURES, tmp_path / "policies")
    proc = cli("explain", CODE_PROMPT, "--attr", "tier=pro", "--json", cwd=tmp_path)
    data = json.loads(proc.stdout)
    assert (data["policy"], data["model"]) == ("policies/main.route", "beta-coder")
    assert proc.stderr == "using policy ./policies/main.route\n"
    check = cli("check", cwd=tmp_path)
    assert check.returncode == 0 and check.stdout.startswith("ok: policies/main.route (10 rules")


def test_default_policy_is_main_route_in_cwd_before_policies(cli, tmp_path: Path) -> None:
    """`modelroute check` in a folder holding main.route checks that file (it used to check the bundled policy)."""
    shutil.copytree(FIXTURES, tmp_path, dirs_exist_ok=True)
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "main.route").write_text("this is not a policy\n")
    check = cli("check", cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith("ok: main.route (10 rules")
    assert check.stderr == "using policy ./main.route\n"
    as_json = cli("check", "--json", cwd=tmp_path)
    assert json.loads(as_json.stdout)["policy"] == "main.route"  # stdout stays pure JSON
    assert as_json.stderr == "using policy ./main.route\n"


def test_default_policy_is_bundled_without_policies_dir(cli, tmp_path: Path) -> None:
    from engine.language.load import bundled_policy_dir

    bundled = bundled_policy_dir() / "main.route"
    proc = cli("explain", CODE_PROMPT, "--attr", "tier=pro", "--json", "--today", "2026-06-01", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert Path(data["policy"]) == bundled
    assert data["model"] == "claude-sonnet-4-6"
    assert proc.stderr == f"using policy {bundled} (bundled)\n"
    check = cli("check", cwd=tmp_path)
    assert check.returncode == 0
    assert check.stdout.startswith(f"ok: {bundled} (")


def test_a_policies_dir_without_main_route_is_not_the_default(cli, tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "notes.txt").write_text("not a policy")
    from engine.language.load import bundled_policy_dir

    proc = cli("check", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"ok: {bundled_policy_dir() / 'main.route'} (")


def test_default_policy_is_decided_in_one_place(tmp_path: Path, monkeypatch) -> None:
    from engine.cli.common import default_policy
    from engine.language.load import bundled_policy_dir

    monkeypatch.chdir(tmp_path)
    assert default_policy() == bundled_policy_dir()
    (tmp_path / "main.route").mkdir()  # a directory named main.route is not a policy file
    (tmp_path / "policies").mkdir()
    assert default_policy() == bundled_policy_dir()
    (tmp_path / "policies" / "main.route").write_text("otherwise use gpt-4o\n")
    assert default_policy() == Path("policies")
    (tmp_path / "main.route").rmdir()
    (tmp_path / "main.route").write_text("otherwise use gpt-4o\n")
    assert default_policy() == Path("main.route")


@pytest.mark.parametrize(
    "args",
    [
        ["explain", "hello", "--json"],
        ["check", "--json"],
        ["test", "--json"],
        ["graph"],
        ["catalog", "--json"],
    ],
    ids=lambda a: a[0],
)
def test_every_command_uses_and_names_the_default_policy(tmp_path: Path, monkeypatch, args: list[str]) -> None:
    from click.testing import CliRunner

    from engine.cli.app import main

    shutil.copytree(FIXTURES, tmp_path, dirs_exist_ok=True)
    shutil.copytree(FIXTURES, tmp_path / "policies")
    (tmp_path / "policies" / "main.route").write_text('catalog "catalog.yaml"\notherwise use gamma-long\n')
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.stderr == "using policy ./main.route\n"
    if "--json" in args:
        json.loads(result.stdout)
    if args[0] == "graph":  # the fixture's rules, not the decoy's single `use gamma-long`
        assert "beta-coder" in result.stdout or "CODING" in result.stdout


def test_catalog_supports_an_unknown_feature_is_usage(cli) -> None:
    proc = cli("catalog", "--supports", "teleport")
    assert proc.returncode == 2 and "no model supports 'teleport'" in proc.stderr
