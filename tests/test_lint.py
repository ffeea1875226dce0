"""The linter (engine/lint.py) and `modelroute check --strict`: one golden file per warning code, the soundness of
the shadowing analysis (a property test against the compiled conditions), and the CLI through a subprocess.

Golden files: tests/golden/lint/<CODE>_<name>.route -> <CODE>_<name>.txt, linted with the golden directory as the
working directory and today = 2026-01-01. Regenerate with `UPDATE_GOLDEN=1 python -m pytest tests/test_lint.py`.
"""

from __future__ import annotations

import datetime
import json
import random
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import compile_policy, compile_source
from engine.diagnostics import CODES, render_all
from engine.tools.lint import LINT_CODES, Facts, Linter, dnf, holds, lint

LINT = Path(__file__).parent / "golden" / "lint"
CATALOG = Path(__file__).parent / "fixtures" / "policies" / "catalog.yaml"
ROUTES = sorted(p for p in LINT.glob("W*.route"))
TODAY = datetime.date(2026, 1, 1)


def warnings_of(text: str, today: datetime.date = TODAY):
    from providers.catalog.loader import load_catalog

    return lint(compile_source(text, "p.route", catalog=load_catalog(CATALOG), today=today), today=today)


def codes(text: str) -> list[str]:
    """The warning codes for a policy, leaving out W106 (HEAD declares tasks not every policy uses)."""
    return [d.code for d in warnings_of(text) if d.code != "W106"]


# ---- golden files -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES, ids=[p.stem for p in ROUTES])
def test_golden(route: Path, golden, monkeypatch) -> None:
    monkeypatch.chdir(LINT)
    policy = compile_policy(route.name, today=TODAY)
    found = lint(policy, today=TODAY)
    code = route.name[:4]
    assert found and {d.code for d in found} == {code}, [d.code for d in found]
    for d in found:
        assert d.severity == "warning" and d.span is not None and d.hint and d.label
    golden(route.with_suffix(".txt"), render_all(found, policy.sources))


def test_every_code_has_a_golden_file_and_a_title() -> None:
    covered = {p.name[:4] for p in ROUTES}
    assert covered == set(LINT_CODES)
    assert all(re.fullmatch(r"W1\d\d", c) for c in LINT_CODES)
    assert not set(LINT_CODES) & set(CODES)


def test_clean_policies_have_no_warnings(monkeypatch) -> None:
    monkeypatch.chdir(LINT)
    assert lint(compile_policy("clean.route", today=TODAY), today=TODAY) == []
    assert lint(compile_policy(CATALOG.parent, today=TODAY), today=TODAY) == []
    before = datetime.date(2025, 1, 1)  # before every deprecation in the bundled catalog
    bundled = lint(compile_policy(Path(__file__).parent.parent / "policies", today=before), today=before)
    assert bundled == []


# ---- individual checks --------------------------------------------------------------------------------------

HEAD = 'task code = /implement/\ntask legal = "contract"\n'


def test_issue_example_is_reported_as_overflow_only() -> None:
    # `task is code` has no token bound, so a huge prompt can fall through it: W101, not W100
    assert codes(
        HEAD + "when task is code prefer capability(CODING)\n"
        "when task is code and tokens > 30k prefer cheapest\notherwise use alpha-mini\n"
    ) == ["W101"]


def test_shadowing_needs_a_proof_of_viability() -> None:
    base = 'when tier == "free" and tokens < 8k {a}\nwhen tier == "free" and tokens < 4k and not tools use beta-chat\n'
    end = "otherwise use alpha-mini\n"
    assert "W100" in codes(base.format(a="prefer cheapest") + end)
    # a cost limit can fail on any request (max_tokens is the caller's): no proof, so only W101
    assert "W101" in codes(base.format(a="prefer cheapest where cost <= $0.001") + end)
    # delta-tiny (8k, no tools, no vision) serves every request of the later rule only if it has neither
    assert "W101" in codes(base.format(a="use delta-tiny") + end)
    assert "W100" in codes(base.replace("not tools", "not tools and not images").format(a="use delta-tiny") + end)
    # without `not tools`, a tools request skips delta-tiny (no tools support): W101
    text = 'when tier == "free" and tokens < 8k use delta-tiny\nwhen tier == "free" and tokens < 4k use beta-chat\n'
    assert "W101" in codes(text + end) and "W100" not in codes(text + end)


def test_no_shadowing_between_unrelated_rules() -> None:
    text = HEAD + (
        "when task is code prefer capability(CODING)\nwhen task is legal use alpha-large\n"
        'when tier == "free" prefer cheapest\nwhen tier == "pro" prefer cheapest\n'
        'when not tier == "free" use alpha-mini\nwhen budget > 10 use alpha-mini\n'
        "when budget > 5 use beta-coder\notherwise use alpha-mini\n"
    )
    assert not {"W100", "W101", "W102"} & set(codes(text))


@pytest.mark.parametrize(
    "earlier, later",
    [
        ('tier in ["free", "trial"]', 'tier == "free"'),
        ("budget > 5", "budget > 10"),
        ("budget >= 5", "budget == 7"),
        ("task is code or task is legal", "task is legal and tier"),
        ("not tools", "not tools and tokens > 5"),
        ('tier != "pro"', 'tier == "free"'),
        ("tokens > 1000", "tokens > 2k"),
        ("task ~ /implement/", "task is code"),
        ('not tier == "pro"', 'tier != "pro"'),
        ("tools", "tools == 1"),
    ],
)
def test_implications_found(earlier: str, later: str) -> None:
    found = codes(HEAD + f"when {earlier} use alpha-mini\nwhen {later} use beta-coder\notherwise use alpha-mini\n")
    assert {"W100", "W101"} & set(found), found


@pytest.mark.parametrize(
    "earlier, later",
    [
        ('tier == "free"', 'tier in ["free", "trial"]'),
        ("budget > 10", "budget > 5"),
        ('tier != "pro"', 'not tier == "pro"'),  # missing tier matches the later rule only
        ("task is code", "task ~ /implement|debug/"),
        ("tokens > 1000", "tokens >= 1000"),
    ],
)
def test_non_implications_not_claimed(earlier: str, later: str) -> None:
    found = codes(HEAD + f"when {earlier} use alpha-mini\nwhen {later} use beta-coder\notherwise use alpha-mini\n")
    assert not {"W100", "W101"} & set(found), found


def test_unconditional_rule() -> None:
    found = warnings_of('when tokens >= 0 prefer cheapest\nwhen tier == "x" use alpha-mini\notherwise use beta-chat\n')
    assert [d.code for d in found] == ["W102", "W102"]
    assert "decides only when rule 1 has no viable model" in found[0].message
    bounded = warnings_of(
        "when not tokens < 0 use gamma-long\nwhen tokens < 100 use beta-chat\notherwise use beta-chat\n"
    )
    assert "can never decide" in bounded[0].message and bounded[0].code == "W102"


def test_deprecation_window_is_relative_to_today() -> None:
    text = (
        f'catalog "{CATALOG}" overlay "{LINT / "deprecations.yaml"}"\n'
        'when tier == "x" use beta-chat\notherwise use alpha-mini\n'
    )
    dep = datetime.date(2026, 1, 20)
    p = compile_source(text, "p.route", today=dep)  # the rules `use` the models: W108 only counts from lint's date
    assert [d.code for d in lint(p, today=dep - datetime.timedelta(days=31))] == []
    assert [d.code for d in lint(p, today=dep - datetime.timedelta(days=30))] == ["W108"]
    assert "is deprecated today" in lint(p, today=dep)[0].message
    assert "was deprecated on 2026-01-20" in lint(p, today=dep + datetime.timedelta(days=1))[0].message


def test_fallback_checks() -> None:
    found = codes(
        'when tier == "x" prefer cheapest where supports vision fallback beta-chat\n'
        "when tools use alpha-mini fallback delta-tiny\notherwise use alpha-mini\n"
    )
    assert found == ["W104", "W105"]


# ---- soundness: every implication the linter claims holds on concrete requests ---------------------------------

ATOMS = [
    'tier == "free"',
    'tier == "pro"',
    'tier != "free"',
    'tier in ["free", "trial"]',
    "tools",
    "tokens > 100",
    "tokens <= 100",
    "tokens >= 50",
    "tokens == 100",
    "budget > 5",
    "budget <= 5",
    "budget == 5",
    "task is code",
    "task is legal",
    "task ~ /implement/",
    "tokens in [1, 100]",
    "budget",
    "tokens",
]


def cond_strategy():
    atom = st.sampled_from(ATOMS)
    return st.recursive(
        atom,
        lambda inner: st.one_of(
            inner.map(lambda c: f"not ({c})"),
            st.tuples(inner, inner).map(lambda t: f"({t[0]}) and ({t[1]})"),
            st.tuples(inner, inner).map(lambda t: f"({t[0]}) or ({t[1]})"),
        ),
        max_leaves=5,
    )


REQUESTS = [
    (text, tokens, attrs)
    for text in ("hi", "implement it", "a contract", "implement the contract")
    for tokens in (0, 1, 49, 50, 100, 101, 5000)
    for attrs in (
        {},
        {"tier": "free"},
        {"tier": "pro", "tools": True},
        {"tier": "trial", "budget": 5},
        {"budget": 5.5},
        {"budget": 0},
        {"budget": "x"},
        {"tools": 1, "budget": True},
    )
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cond_strategy(), cond_strategy())
def test_claimed_implications_hold(a: str, b: str) -> None:
    p = compile_source(
        HEAD + f"when {a} use alpha-mini\nwhen {b} use beta-coder\notherwise use alpha-mini\n",
        "p.route",
        catalog=_catalog(),
        today=TODAY,
    )
    linter = Linter(p, TODAY)
    first, second = p.rules[:2]
    terms = linter.terms[1]
    if terms is None or not all(holds(f, first.node.cond) for f in terms):
        return
    for text, tokens, attrs in REQUESTS:  # wherever the later condition holds, the earlier one must too
        m = p.matcher.scan(text)
        if _value(second, m, tokens, attrs):
            assert _value(first, m, tokens, attrs), (a, b, text, tokens, attrs)


def _value(rule, m: int, tokens: int, attrs: dict) -> bool:
    try:
        return bool(rule.cond(m, tokens, attrs))
    except TypeError:
        from engine.runtime.traced import cond_value as _cond_value

        return _cond_value(rule, rule.node.cond, m, tokens, attrs, None, 0)


_CAT: list = []


def _catalog():
    if not _CAT:
        from providers.catalog.loader import load_catalog

        _CAT.append(load_catalog(CATALOG))
    return _CAT[0]


def test_dnf_gives_up_on_huge_conditions() -> None:
    big = " and ".join(f'(tier == "a{i}" or tier == "b{i}")' for i in range(8))
    p = compile_source(
        f"when {big} use alpha-mini\notherwise use alpha-mini\n", "p.route", catalog=_catalog(), today=TODAY
    )
    assert dnf(p.rules[0].node.cond) is None
    assert lint(p, today=TODAY) == []
    assert holds(Facts([], {}), None) is True


def test_lint_never_raises_on_random_valid_policies() -> None:
    rng = random.Random(5)
    for _ in range(200):
        rules = [
            f"when {rng.choice(ATOMS)} {rng.choice(['and', 'or'])} {rng.choice(ATOMS)} "
            f"{rng.choice(['use alpha-mini', 'prefer cheapest', 'use delta-tiny fallback gamma-long'])}"
            for _ in range(rng.randrange(1, 6))
        ]
        text = HEAD + "\n".join(rules) + "\notherwise use beta-chat\n"
        lint(compile_source(text, "p.route", catalog=_catalog(), today=TODAY), today=TODAY)


# ---- modelroute check --------------------------------------------------------------------------------------


def test_check_prints_warnings_and_exits_0(cli) -> None:
    proc = cli("check", "W106_unused_task.route", "--today", "2026-01-01", cwd=LINT, env={"NO_COLOR": "1"})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    assert proc.stdout.startswith("ok: W106_unused_task.route")
    expected = (LINT / "W106_unused_task.txt").read_text(encoding="utf-8").strip()
    assert proc.stderr.strip() == expected


def test_check_strict_turns_warnings_into_errors(cli) -> None:
    proc = cli("check", "W107_unused_alias.route", "--strict", "--today", "2026-01-01", cwd=LINT, env={"NO_COLOR": "1"})
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("error[W107]: model alias `cheap` is never used")
    assert proc.stderr.strip().endswith("1 error")
    clean = cli("check", "clean.route", "--strict", "--today", "2026-01-01", cwd=LINT)
    assert clean.returncode == 0 and clean.stderr == ""


def test_check_json_includes_warnings(cli) -> None:
    proc = cli("check", "W105_fallback_never_used.route", "--json", "--today", "2026-01-01", cwd=LINT)
    data = json.loads(proc.stdout)
    assert proc.returncode == 0 and data["ok"] is True
    assert [(d["code"], d["severity"], d["line"]) for d in data["diagnostics"]] == [
        ("W105", "warning", 2),
        ("W105", "warning", 3),
    ]
    strict = cli("check", "W105_fallback_never_used.route", "--json", "--strict", "--today", "2026-01-01", cwd=LINT)
    data = json.loads(strict.stdout)
    assert strict.returncode == 1 and data["ok"] is False
    assert {d["severity"] for d in data["diagnostics"]} == {"error"}


def test_check_help_mentions_strict_and_today(cli) -> None:
    proc = cli("check", "--help")
    assert proc.returncode == 0 and "--strict" in proc.stdout and "--today YYYY-MM-DD" in proc.stdout
