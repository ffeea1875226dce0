"""`modelroute diff` (engine/diff.py): decision changes, rule transitions, no-route requests and cost."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.api import Engine
from engine.tools.diff import CorpusError, diff_policies, parse_corpus, render_text, rule_ids

CATALOG = Path(__file__).resolve().parent / "fixtures" / "policies" / "catalog.yaml"

OLD = """catalog "catalog.yaml"
task code = /implement/
when task is code use beta-coder
when tier == "free" use delta-tiny
otherwise use alpha-mini
"""
NEW = """catalog "catalog.yaml"
task code = /implement/

when task is code use alpha-large
when tier == "free" use delta-tiny
when tier == "blocked" use delta-tiny where context >= 1M
"""
CORPUS = [
    {"prompt": "implement a parser"},  # beta-coder -> alpha-large
    {"prompt": "implement a lexer", "attrs": {"tier": "free"}},  # beta-coder -> alpha-large
    {"prompt": "hello", "attrs": {"tier": "free"}},  # delta-tiny by the same rule (moved a line)
    {"prompt": "hello"},  # alpha-mini -> no route
    {
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "attrs": {"max_tokens": 100},
    },  # alpha-mini -> no route
]


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path, Path]:
    for name, text in (("old", OLD), ("new", NEW)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "main.route").write_text(text)
        shutil.copy(CATALOG, tmp_path / name / "catalog.yaml")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(c) for c in CORPUS) + "\n\n")
    return tmp_path / "old", tmp_path / "new", prompts


def test_transitions_rules_and_cost(pair) -> None:
    old, new, prompts = pair
    old_e, new_e = Engine.load(old), Engine.load(new)
    corpus = list(parse_corpus(prompts.read_text().splitlines()))
    result = diff_policies(old_e, new_e, corpus)
    assert len(result.rows) == 5 and len(result.changed) == 4
    assert result.transitions() == [("alpha-mini", "(no route)", 2), ("beta-coder", "alpha-large", 2)]
    # rules are shown as file:line, the file relative to the policy's root
    assert result.rule_transitions() == [("main.route:3", "main.route:4", 2), ("main.route:5", "(no route)", 2)]
    s = result.summary()
    # "hello" with tier free: delta-tiny by the same rule, which only moved down a line
    assert s["rule_changed_same_model"] == 0 and s["no_route"] == {"old": 0, "new": 2}
    # cost is the engine's estimate: tokens x input price + output tokens x output price
    expected_old = expected_new = 0.0
    for req in corpus:
        for eng, side in ((old_e, "old"), (new_e, "new")):
            try:
                d = eng.decide(req.prompt, messages=req.messages, **req.attrs)
            except Exception:
                continue
            cost = eng.policy.models[d.model].cost(d.request.tokens, d.request.out_tokens)
            if side == "old":
                expected_old += cost
            else:
                expected_new += cost
    assert result.old_cost == pytest.approx(expected_old) and result.new_cost == pytest.approx(expected_new)
    assert result.new_cost > 0 and result.old_cost > 0
    text = render_text(result)
    assert "5 requests: 4 decisions changed\n" in text
    assert "beta-coder" in text and "-> alpha-large" in text and "(no route)" in text
    assert "projected cost for this corpus" in text


@pytest.mark.parametrize(
    "line,message",
    [
        ("not json", "not JSON"),
        ("[1]", "expected a JSON object"),
        ('{"attrs": {}}', "exactly one of"),
        ('{"prompt": "x", "messages": []}', "exactly one of"),
        ('{"prompt": 3}', "must be a string"),
        ('{"prompt": "x", "attrs": []}', "must be an object"),
        ('{"prompt": "x", "attrs": {"prompt": "y"}}', "cannot be attributes"),
    ],
)
def test_bad_corpus_lines(line: str, message: str) -> None:
    with pytest.raises(CorpusError, match=message):
        list(parse_corpus(['{"prompt": "ok"}', line], "p.jsonl"))
    with pytest.raises(CorpusError, match=r"p\.jsonl:2:"):
        list(parse_corpus(['{"prompt": "ok"}', line], "p.jsonl"))


def test_cli_text_json_and_exit_codes(cli, pair) -> None:
    old, new, prompts = pair
    r = cli("diff", str(old), str(new), "--prompts", str(prompts))
    assert r.returncode == 0, r.stderr
    assert "4 decisions changed" in r.stdout
    r = cli("diff", str(old), str(new), "--prompts", str(prompts), "--fail-on-change")
    assert r.returncode == 1
    r = cli("diff", str(old), str(old), "--prompts", str(prompts), "--fail-on-change")
    assert r.returncode == 0 and "0 decisions changed" in r.stdout
    r = cli("diff", str(old), str(new), "--prompts", str(prompts), "--json")
    data = json.loads(r.stdout)
    assert data["changed"] == 4 and data["transitions"][0] == {"from": "alpha-mini", "to": "(no route)", "count": 2}
    assert data["changes"][0]["line"] == 1 and data["changes"][0]["new"]["model"] == "alpha-large"
    assert data["cost"]["delta"] == pytest.approx(data["cost"]["new"] - data["cost"]["old"])


def test_cli_errors_have_no_traceback(cli, pair, tmp_path: Path) -> None:
    old, new, prompts = pair
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n{oops\n')
    r = cli("diff", str(old), str(new), "--prompts", str(bad))
    assert r.returncode == 2 and "bad.jsonl:2" in r.stderr
    broken = tmp_path / "broken.route"
    broken.write_text("otherwise use nope\n")
    r = cli("diff", str(broken), str(new), "--prompts", str(prompts))
    assert r.returncode == 1 and "E300" in r.stderr
    r = cli("diff", str(old), str(new), "--prompts", str(tmp_path / "missing.jsonl"))
    assert r.returncode == 2
    weird = tmp_path / "weird.jsonl"
    weird.write_text('{"prompt": "x", "attrs": {"tokens": "many"}}\n')
    r = cli("diff", str(old), str(new), "--prompts", str(weird))
    assert r.returncode == 2 and "line 1" in r.stderr
    for out in (r.stdout, r.stderr):
        assert "Traceback" not in out


# ---- rule identity: file relative to the policy's root, text, index among rules of equal text ------------

MAIN = """catalog "../shared/catalog.yaml"
include "rules/code.route"
when tier == "free" use delta-tiny
otherwise use alpha-mini
"""
CODE = """task code = /implement/
when task is code use beta-coder
"""
# MAIN and CODE with comments, blank lines, a rule spread over two lines and a moved task declaration
MAIN_COMMENTED = """# the default policy
catalog "../shared/catalog.yaml"

include "rules/code.route"   # coding requests


# free users get the tiny model
when tier == "free"
    use delta-tiny  # cheapest
otherwise use alpha-mini
"""
CODE_COMMENTED = """
# coding
when task is code use beta-coder

task code = /implement/
"""
REQUESTS = [
    {"prompt": "implement a parser"},  # rules/code.route
    {"prompt": "hello", "attrs": {"tier": "free"}},  # main.route, delta-tiny
    {"prompt": "hello"},  # main.route, otherwise
]


def write_copy(root: Path, main: str = MAIN, code: str = CODE, entry: str = "main.route") -> Path:
    """A policy folder `root` (entry file, rules/code.route) with the fixture catalog in a sibling folder."""
    (root / "rules").mkdir(parents=True)
    (root / entry).write_text(main)
    (root / "rules" / "code.route").write_text(code)
    (root.parent / "shared").mkdir(exist_ok=True)
    shutil.copy(CATALOG, root.parent / "shared" / "catalog.yaml")
    return root


def run_diff(old: Path, new: Path):
    corpus = list(parse_corpus([json.dumps(r) for r in REQUESTS]))
    return diff_policies(Engine.load(old), Engine.load(new), corpus)


def assert_no_changes(result) -> None:
    s = result.summary()
    assert (s["changed"], s["rule_changed_same_model"], s["fallbacks_changed_same_model"]) == (0, 0, 0), s
    assert render_text(result).startswith("3 requests: 0 decisions changed\n")


def test_two_copies_in_different_folders_compare_equal(tmp_path: Path) -> None:
    old = write_copy(tmp_path / "base" / "policies")
    new = write_copy(tmp_path / "branch" / "deeper" / "policies")
    result = run_diff(old, new)
    assert_no_changes(result)
    # shown relative to each policy's root, whichever folder it lives in
    assert [r.old.rule for r in result.rows] == ["rules/code.route:2", "main.route:3", "main.route:4"]
    assert [r.new.rule for r in result.rows] == [r.old.rule for r in result.rows]


def test_copies_loaded_by_relative_and_absolute_paths_compare_equal(tmp_path: Path, monkeypatch) -> None:
    old = write_copy(tmp_path / "work" / "policies")
    new = write_copy(tmp_path / "elsewhere" / "policies")
    monkeypatch.chdir(tmp_path / "work")  # old loads as "policies/main.route", new by its absolute path
    assert_no_changes(run_diff(Path("policies"), new))
    monkeypatch.chdir(old)
    assert_no_changes(run_diff(Path("."), new))


def test_comments_blank_lines_and_moved_lines_change_nothing(tmp_path: Path) -> None:
    old = write_copy(tmp_path / "old" / "policies")
    new = write_copy(tmp_path / "new" / "policies", MAIN_COMMENTED, CODE_COMMENTED)
    result = run_diff(old, new)
    assert_no_changes(result)
    # the lines moved; they are shown, not compared
    assert [r.new.rule for r in result.rows] == ["rules/code.route:3", "main.route:8", "main.route:10"]


def test_entry_files_of_other_names_match(tmp_path: Path) -> None:
    # `modelroute diff old.route new.route`: two entry files side by side, including the same rules file
    root = write_copy(tmp_path / "policies", entry="old.route")
    (root / "new.route").write_text(MAIN_COMMENTED)
    result = run_diff(root / "old.route", root / "new.route")
    assert_no_changes(result)
    assert [r.new.rule for r in result.rows] == ["rules/code.route:2", "new.route:8", "new.route:10"]


def test_a_rule_edit_is_reported(tmp_path: Path) -> None:
    old = write_copy(tmp_path / "old" / "policies")
    # same model for the same requests, but another rule text decides the coding request
    new = write_copy(tmp_path / "new" / "policies", code=CODE.replace("beta-coder", "beta-coder where context >= 32k"))
    result = run_diff(old, new)
    s = result.summary()
    assert (s["changed"], s["rule_changed_same_model"]) == (0, 1)
    assert [r.request.line for r in result.rows if r.rule_changed] == [1]
    assert "3 requests: 0 decisions changed, 1 same model by another rule" in render_text(result)
    # a rule moved into another file is another rule
    moved = write_copy(
        tmp_path / "moved" / "policies",
        MAIN.replace('when tier == "free" use delta-tiny\n', ""),
        CODE + 'when tier == "free" use delta-tiny\n',
    )
    result = run_diff(old, moved)
    assert [r.request.line for r in result.rows if r.rule_changed] == [2]
    assert result.rows[1].new.rule == "rules/code.route:3"
    # an edit that changes the model is a changed decision
    result = run_diff(old, write_copy(tmp_path / "model" / "policies", code=CODE.replace("beta-coder", "alpha-large")))
    assert result.rule_transitions() == [("rules/code.route:2", "rules/code.route:2", 1)]
    assert result.transitions() == [("beta-coder", "alpha-large", 1)]


def test_rules_of_equal_text_are_told_apart_by_index(tmp_path: Path) -> None:
    twice = MAIN.replace("otherwise", 'when tier == "free" use delta-tiny\notherwise')
    old = write_copy(tmp_path / "old" / "policies", twice, CODE + 'when tier == "free" use delta-tiny\n')
    new = write_copy(
        tmp_path / "new" / "policies",
        "# free tier, twice\n\n" + twice.replace("\nwhen", "\n\n# again\nwhen"),
        "\n" + CODE + 'when tier == "free" use delta-tiny\n',
    )
    old_ids, new_ids = rule_ids(Engine.load(old).policy), rule_ids(Engine.load(new).policy)
    free = 'when tier == "free" use delta-tiny'
    dupes = [i for i in old_ids.values() if i.text == free]
    assert [(i.file, i.index, i.shown) for i in dupes] == [
        ("rules/code.route", 0, "rules/code.route:3"),
        ("", 0, "main.route:3"),
        ("", 1, "main.route:4"),
    ]
    assert len(set(old_ids.values())) == len(old_ids)  # every rule has its own identity
    # the same rules, one for one, though every line moved
    assert list(old_ids.values()) == list(new_ids.values())
    assert [i.shown for i in old_ids.values()] != [i.shown for i in new_ids.values()]
    assert list(old_ids.values()) != list(reversed(old_ids.values()))


def test_cli_copies_with_comments_compare_equal(cli, tmp_path: Path) -> None:
    old = write_copy(tmp_path / "base" / "policies")
    new = write_copy(tmp_path / "work" / "policies", MAIN_COMMENTED, CODE_COMMENTED)
    prompts = tmp_path / "traffic.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in REQUESTS))
    # cwd inside one copy: one policy is named relative to the cwd, the other by its absolute path
    r = cli("diff", str(old), "policies", "--prompts", str(prompts), "--fail-on-change", cwd=tmp_path / "work")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("3 requests: 0 decisions changed\n")
    r = cli("diff", str(old), str(new), "--prompts", str(prompts), "--json")
    data = json.loads(r.stdout)
    assert (data["changed"], data["rule_changed_same_model"], data["fallbacks_changed_same_model"]) == (0, 0, 0)
    (new / "rules" / "code.route").write_text(CODE.replace("beta-coder", "beta-coder where context >= 32k"))
    r = cli("diff", str(old), str(new), "--prompts", str(prompts), "--fail-on-change")
    assert r.returncode == 0 and "0 decisions changed, 1 same model by another rule" in r.stdout
    (new / "rules" / "code.route").write_text(CODE.replace("beta-coder", "alpha-large"))
    r = cli("diff", str(old), str(new), "--prompts", str(prompts), "--fail-on-change")
    assert r.returncode == 1
    assert "rules/code.route:2 -> rules/code.route:2" in r.stdout and "beta-coder -> alpha-large" in r.stdout


# ---- docs/diff.md ------------------------------------------------------------------------------------------

DOC = Path(__file__).resolve().parent.parent / "docs" / "diff.md"


def _fenced(lang: str) -> list[str]:
    """The bodies of the fenced blocks of docs/diff.md whose info string is `lang` ("" for plain blocks)."""
    blocks = re.findall(r"^```(\w*)\n(.*?)^```$", DOC.read_text(encoding="utf-8"), flags=re.S | re.M)
    return [body for info, body in blocks if info == lang]


def test_docs_report_is_what_diff_prints(pair) -> None:
    old, new, prompts = pair
    result = diff_policies(Engine.load(old), Engine.load(new), list(parse_corpus(prompts.read_text().splitlines())))
    reports = [b for b in _fenced("") if "decisions changed" in b]
    assert reports == [render_text(result) + "\n"]


@pytest.mark.skipif(shutil.which("git") is None or shutil.which("bash") is None, reason="needs git and bash")
def test_docs_ci_recipe(tmp_path: Path) -> None:
    """The CI recipe of docs/diff.md, run as written in a git repository: base branch committed, branch in the
    working tree."""
    [recipe] = [b for b in _fenced("sh") if "git archive" in b]
    repo = tmp_path / "repo"
    write_copy(repo / "policies")
    (repo / "traffic.jsonl").write_text("".join(json.dumps(r) + "\n" for r in REQUESTS))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "modelroute"  # `modelroute` runs this checkout
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m engine.cli "$@"\n')
    shim.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(DOC.parent.parent),
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),
        "GIT_CONFIG_NOSYSTEM": "1",
        "BASE": "HEAD",
    }

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=120)

    git = ("git", "-c", "user.name=t", "-c", "user.email=t@example.com")
    for args in (("init", "-q"), ("add", "-A"), ("commit", "-q", "-m", "base")):
        assert run(*git, *args).returncode == 0
    # the branch only adds comments, blank lines and moves lines
    (repo / "policies" / "main.route").write_text(MAIN_COMMENTED)
    (repo / "policies" / "rules" / "code.route").write_text(CODE_COMMENTED)
    r = run("bash", "-euo", "pipefail", "-c", recipe)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("3 requests: 0 decisions changed\n")
    # the branch changes a decision: the gate fails
    (repo / "policies" / "rules" / "code.route").write_text(CODE.replace("beta-coder", "alpha-large"))
    r = run("bash", "-euo", "pipefail", "-c", recipe)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "beta-coder -> alpha-large" in r.stdout
