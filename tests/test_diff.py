"""`modelroute diff` (engine/diff.py): decision changes, rule transitions, no-route requests and cost."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engine.api import Engine
from engine.diff import CorpusError, diff_policies, parse_corpus, render_text

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
    {"prompt": "hello", "attrs": {"tier": "free"}},  # delta-tiny, rule moved a line
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
    assert any(
        a.endswith("old/main.route:3") and b.endswith("new/main.route:4") and c == 2
        for a, b, c in result.rule_transitions()
    )
    s = result.summary()
    assert s["rule_changed_same_model"] == 1 and s["no_route"] == {"old": 0, "new": 2}
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
    assert "5 requests: 4 decisions changed, 1 same model by another rule" in text
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
