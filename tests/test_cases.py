"""Data-driven routing cases (OPA style): every tests/cases/*.yaml holds a policy and requests with expected
outcomes. Adding a case needs no Python.

File format::

    policy: |                   # .route text, written as main.route next to copies of the fixture catalog
      catalog "catalog.yaml"    # (tests/fixtures/policies/catalog.yaml, also copied as models.yaml)
      ...
    files:                      # optional: more files next to main.route (for include)
      tasks.route: |
        ...
    functions: [complexity]     # optional: the Python functions and rankers the policy calls, by name, from
    rankers: [quality]          # tests/case_functions.py (Engine.load(functions=..., rankers=...))
    cases:
      - name: short-id
        policy: |               # optional: this case's own policy (for error cases)
        prompt: "text"          # or messages: [{role: user, content: ...}]
        pad_tokens: 40000       # optional: append 4*N dots (matches no pattern) to reach ~N more tokens
        attrs: {tier: pro}      # request attributes (nested mappings for dotted names)
        expect:
          model: beta-coder     # canonical model name
          provider: betacorp
          rule: 8               # line of the deciding rule
          file: main.route      # file of the deciding rule (basename; default main.route)
          fallbacks: [a, b]     # exact list
          tasks: [code]         # exact list, in declaration order
          tokens: 13
          ranked: [a, b, c]     # the ranked (viable) candidates, best first, exact
          rejected: {model: "reason"}   # subset of the rejected candidates and their reasons
          skipped: {model: "reason"}    # fallbacks skipped, with the reason
          no_route: true        # decide() raises NoRouteError
          error: [E300, E400]   # compiling the policy fails with exactly these codes, in order

Every routed case also checks that the fast decide() and the traced report agree on model and rule, and
that the report's first-ranked candidate is the chosen model.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from case_functions import FUNCTIONS, RANKERS

from engine import Engine, NoRouteError, PolicyError

CASES_DIR = Path(__file__).parent / "cases"
FIXTURE_CATALOG = Path(__file__).parent / "fixtures" / "policies" / "catalog.yaml"
KNOWN_KEYS = {"name", "policy", "files", "prompt", "messages", "pad_tokens", "attrs", "expect", "xfail"}
KNOWN_EXPECT = {
    "model",
    "plan",
    "note",
    "provider",
    "rule",
    "file",
    "fallbacks",
    "tasks",
    "tokens",
    "ranked",
    "rejected",
    "skipped",
    "no_route",
    "error",
}


def _load_cases() -> list[Any]:
    params = []
    for path in sorted(CASES_DIR.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for i, case in enumerate(doc["cases"]):
            name = case.get("name", str(i))
            marks = []
            if case.get("xfail"):
                marks.append(pytest.mark.xfail(strict=True, reason=case["xfail"]))
            params.append(pytest.param(path.stem, doc, case, id=f"{path.stem}::{name}", marks=marks))
    return params


CASES = _load_cases()


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """Compiled engines cached by (policy, files): each distinct policy is written and compiled once."""
    cache: dict[tuple, Any] = {}

    def get(policy: str, files: dict[str, str], python: dict[str, list[str]] | None = None) -> Any:
        python = python or {}
        key = (policy, tuple(sorted(files.items())), tuple((k, tuple(v)) for k, v in sorted(python.items())))
        if key not in cache:
            root = tmp_path_factory.mktemp("case")
            for copy in ("catalog.yaml", "models.yaml"):
                shutil.copyfile(FIXTURE_CATALOG, root / copy)
            for rel, body in files.items():
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_text(body, encoding="utf-8")
            (root / "main.route").write_text(policy, encoding="utf-8")
            functions: dict[str, Any] = {name: FUNCTIONS[name] for name in python.get("functions", ())}
            rankers: dict[str, Any] = {name: RANKERS[name] for name in python.get("rankers", ())}
            try:
                cache[key] = Engine.load(root, functions=functions or None, rankers=rankers or None)
            except PolicyError as err:
                cache[key] = err
        return cache[key]

    return get


def test_case_files_are_well_formed():
    assert CASES, "no cases found in tests/cases"
    for param in CASES:
        _stem, doc, case = param.values
        assert set(case) <= KNOWN_KEYS, f"{param.id}: unknown keys {set(case) - KNOWN_KEYS}"
        assert set(case["expect"]) <= KNOWN_EXPECT, f"{param.id}: unknown expect {set(case['expect']) - KNOWN_EXPECT}"
        assert "policy" in case or "policy" in doc, f"{param.id}: no policy"
    ids = [p.id for p in CASES]
    assert len(ids) == len(set(ids)), "duplicate case names"


@pytest.mark.parametrize(("stem", "doc", "case"), CASES)
def test_case(stem: str, doc: dict, case: dict, engines) -> None:
    policy = case.get("policy", doc.get("policy"))
    files = {**doc.get("files", {}), **case.get("files", {})}
    expect = case["expect"]
    engine = engines(policy, files, {k: doc[k] for k in ("functions", "rankers") if k in doc})

    if "error" in expect:
        assert isinstance(engine, PolicyError), f"expected {expect['error']}, but the policy compiled"
        assert engine.codes == list(expect["error"]), engine.render()
        return
    assert not isinstance(engine, PolicyError), engine.render()

    attrs = dict(case.get("attrs") or {})
    prompt = case.get("prompt")
    if case.get("pad_tokens"):
        prompt = (prompt or "") + "." * (4 * int(case["pad_tokens"]))
    kwargs: dict[str, Any] = {"messages": case["messages"]} if "messages" in case else {}

    if expect.get("no_route"):
        with pytest.raises(NoRouteError) as info:
            engine.decide(prompt, **kwargs, **attrs)
        report = info.value.report()
        assert report.model is None
        assert report.rule is None
        return

    d = engine.decide(prompt, **kwargs, **attrs)
    if "model" in expect:
        assert d.model == expect["model"]
    if "provider" in expect:
        assert d.provider == expect["provider"]
    if "rule" in expect:
        assert d.rule.line == expect["rule"], f"decided by {d.rule.file}:{d.rule.line} {d.rule.text}"
    assert Path(d.rule.file).name == expect.get("file", "main.route")
    if "fallbacks" in expect:
        assert d.fallbacks == expect["fallbacks"]
    if "tasks" in expect:
        assert d.tasks == expect["tasks"]
    if "tokens" in expect:
        assert d.tokens == expect["tokens"]

    # the fast path and the traced report must agree
    report = d.report()
    assert (report.model, report.rule.line, report.rule.file) == (d.model, d.rule.line, d.rule.file)
    assert report.fallbacks == d.fallbacks
    assert report.plan == d.plan and d.chain == [step.model for step in d.plan] and d.chain[0] == d.model
    ranked = [c for c in report.candidates if c.rank is not None]
    if report.note is None:  # the rule's own pick (not a fallback standing in for it)
        assert ranked and ranked[0].model == d.model and ranked[0].status == "chosen"
    if "plan" in expect:
        assert d.chain == expect["plan"], d.plan
    if "note" in expect:
        assert report.note == expect["note"]
    if "ranked" in expect:
        assert [c.model for c in ranked] == expect["ranked"]
    if "rejected" in expect:
        rejected = {c.model: c.reason for c in report.candidates if c.status == "rejected"}
        for model, reason in expect["rejected"].items():
            assert rejected.get(model) == reason, f"{model}: {rejected.get(model)!r} (all: {rejected})"
    if "skipped" in expect:
        skipped = {f.model: f.reason for f in report.fallback_checks if f.status == "skipped"}
        assert skipped == expect["skipped"]
