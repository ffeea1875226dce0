"""Diagnostics: one golden file per code (policy in, rendered PolicyError text out), several errors in one run,
the JSON form, and the quality of the messages (location, caret, what was expected, a hint).

Golden files: tests/golden/diagnostics/<CODE>_<name>.route -> <CODE>_<name>.txt, compiled with the golden
directory as the working directory so paths render relative. Codes whose input is impractical as a file (E203,
E700) are built in a temp directory and compared with <CODE>_<name>.txt. Regenerate with
`UPDATE_GOLDEN=1 python -m pytest tests/test_diagnostics.py` and review the diff.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from engine import Diagnostic, PolicyError, compile_policy, compile_source
from engine.diagnostics import CODES
from providers.catalog.loader import load_catalog

DIAG = Path(__file__).parent / "golden" / "diagnostics"
CATALOG = Path(__file__).parent / "fixtures" / "policies" / "catalog.yaml"
GOLDEN_ROUTES = sorted(DIAG.glob("*.route"))
CODE_FILE = re.compile(r"^(E\d{3})_")
#: codes whose golden input is built by a test instead of a .route file
PROGRAMMATIC = {
    "E106": "E106_lone_surrogate",
    "E203": "E203_include_too_deep",
    "E700": "E700_too_many_rules",
}


def compile_error(path: str | Path) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        compile_policy(path)
    return info.value


def source_error(text: str, catalog=None) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        compile_source(text, "policy.route", catalog=catalog)
    return info.value


def assert_well_formed(err: PolicyError) -> None:
    """Every diagnostic names file:line:col, shows its line with a caret under the span, and says what to do."""
    for d in err.diagnostics:
        assert d.code in CODES
        assert d.span is not None, f"{d.code} has no location"
        rendered = err.render()
        assert f"--> {d.span.file}:{d.span.line}:{d.span.col}" in rendered
        src = err.sources.line(d.span.file, d.span.line)
        assert src is not None, f"{d.code}: source line not available"
        assert f"{d.span.line} | {src.expandtabs(1)}" in rendered
        width = (d.span.end_col - d.span.col) if d.span.end_line == d.span.line else len(src) - d.span.col + 1
        caret = " " * (d.span.col - 1) + "^" * max(width, 1)
        assert f"| {caret}" in rendered, f"{d.code}: no caret under {d.span}"
        assert d.hint or "expected" in (d.message + d.label), f"{d.code}: no hint and no 'expected'"


# ---- golden files ------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", GOLDEN_ROUTES, ids=[p.stem for p in GOLDEN_ROUTES])
def test_golden(route: Path, monkeypatch, golden) -> None:
    monkeypatch.chdir(DIAG)
    err = compile_error(route.name)
    m = CODE_FILE.match(route.stem)
    if m:
        assert err.codes[0] == m.group(1), err.render()
        assert set(err.codes) == {m.group(1)}, err.render()
    assert_well_formed(err)
    golden(route.with_suffix(".txt"), err.render())


#: the diagnostic codes of the language core; later features add codes with their own goldens
CORE_CODES = {
    "E100",
    "E101",
    "E102",
    "E103",
    "E104",
    "E105",
    "E200",
    "E201",
    "E202",
    "E203",
    "E300",
    "E301",
    "E302",
    "E303",
    "E304",
    "E305",
    "E306",
    "E400",
    "E401",
    "E500",
    "E501",
    "E502",
    "E600",
    "E601",
    "E700",
}


def test_every_code_has_a_golden() -> None:
    have = {CODE_FILE.match(p.stem).group(1) for p in GOLDEN_ROUTES if CODE_FILE.match(p.stem)}
    have |= set(PROGRAMMATIC)
    assert sorted(CORE_CODES - have) == []
    assert have <= set(CODES), "a golden file is named after a code that does not exist"
    for name in PROGRAMMATIC.values():
        assert (DIAG / f"{name}.txt").is_file() or _updating()


def _updating() -> bool:
    import os

    return bool(os.environ.get("UPDATE_GOLDEN"))


def test_codes_are_stable() -> None:
    """Codes are a public contract: never renumbered or renamed (new ones may be added)."""
    assert set(CODES) >= CORE_CODES
    assert (CODES["E300"], CODES["E400"], CODES["E501"]) == (
        "unknown model",
        "unit mismatch",
        "regex feature RE2 cannot run",
    )


def test_E203_include_too_deep(tmp_path: Path, monkeypatch, golden) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "catalog.yaml").write_bytes(CATALOG.read_bytes())
    (tmp_path / "main.route").write_text('catalog "catalog.yaml"\ninclude "f1.route"\notherwise use alpha-mini\n')
    for i in range(1, 20):
        (tmp_path / f"f{i}.route").write_text(f'include "f{i + 1}.route"\n')
    (tmp_path / "f20.route").write_text("")
    err = compile_error("main.route")
    assert err.codes == ["E203"]
    assert_well_formed(err)
    golden(DIAG / "E203_include_too_deep.txt", err.render())


def test_E106_lone_surrogate(golden) -> None:
    """Text given as a str (Engine.from_source, compile_source) may hold lone surrogates: each is a positioned
    error, every one in one run, and the rendered report prints (no UnicodeEncodeError)."""
    text = 'task x = "caf\udce9"\nwhen tier == "\ud800" use alpha-mini # \udfff\notherwise use alpha-mini\n'
    err = source_error(text, catalog=load_catalog(CATALOG))
    assert err.codes == ["E106", "E106", "E106"]
    assert [(d.span.line, d.span.col) for d in err.diagnostics] == [(1, 14), (2, 15), (2, 35)]
    assert_well_formed(err)
    err.render().encode("utf-8")
    golden(DIAG / "E106_lone_surrogate.txt", err.render())


def test_E203_sixteen_levels_are_fine(tmp_path: Path) -> None:
    (tmp_path / "catalog.yaml").write_bytes(CATALOG.read_bytes())
    (tmp_path / "main.route").write_text('catalog "catalog.yaml"\ninclude "f1.route"\n')
    for i in range(1, 15):
        (tmp_path / f"f{i}.route").write_text(f'include "f{i + 1}.route"\n')
    (tmp_path / "f15.route").write_text("otherwise use delta-tiny\n")
    assert compile_policy(tmp_path / "main.route").rules[0].file.endswith("f15.route")


def test_E700_too_many_rules(tmp_path: Path, monkeypatch, golden) -> None:
    import engine.compiler.strategies

    assert engine.compiler.strategies.MAX_RULES == 10_000
    monkeypatch.setattr(engine.compiler.strategies, "MAX_RULES", 100)  # the same check, without compiling 10,001 rules
    monkeypatch.chdir(tmp_path)
    (tmp_path / "catalog.yaml").write_bytes(CATALOG.read_bytes())
    rules = "".join(f"when n == {i} use alpha-mini\n" for i in range(101))
    (tmp_path / "main.route").write_text('catalog "catalog.yaml"\n' + rules)
    err = compile_error("main.route")
    assert err.codes == ["E700"]
    assert err.diagnostics[0].span.line == 102  # the first rule over the limit
    assert_well_formed(err)
    golden(DIAG / "E700_too_many_rules.txt", err.render())


def test_E700_included_file_too_large(tmp_path: Path, monkeypatch, golden) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "catalog.yaml").write_bytes(CATALOG.read_bytes())
    (tmp_path / "big.route").write_text("# padding\n" * 100_001)
    (tmp_path / "main.route").write_text('catalog "catalog.yaml"\ninclude "big.route"\notherwise use alpha-mini\n')
    err = compile_error("main.route")
    assert err.codes == ["E700"]
    assert_well_formed(err)
    golden(DIAG / "E700_file_too_large.txt", err.render())


# ---- several errors in one run -----------------------------------------------------------------------


def test_all_syntax_errors_in_one_run_in_order(monkeypatch) -> None:
    monkeypatch.chdir(DIAG)
    err = compile_error("multi_syntax_errors.route")
    assert err.codes == ["E101", "E104", "E105", "E100", "E102"]
    lines = [d.span.line for d in err.diagnostics]
    assert lines == sorted(lines) == [2, 3, 4, 5, 6]
    assert err.render().endswith("5 errors")


def test_all_semantic_errors_in_one_run() -> None:
    err = source_error(_SEMANTIC)
    assert sorted(err.codes) == sorted(["E501", "E400", "E301", "E300", "E302", "E600"])
    assert err.render().endswith("6 errors")


_SEMANTIC = f'''catalog "{CATALOG}"
task code = /(a)\\1/
when tier == "pro" prefer cheapest where latency < 30k
when task is cod use gpt-4o-mni
when tier == "x" prefer capability(CODNG)
otherwise use alpha-mini
when x use alpha-mini
'''


def test_semantic_errors_are_reported_in_source_order() -> None:
    err = source_error(_SEMANTIC)
    positions = [(d.span.line, d.span.col) for d in err.diagnostics]
    assert positions == sorted(positions)
    assert err.codes == ["E501", "E400", "E301", "E300", "E302", "E600"]


def test_errors_across_included_files(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "catalog.yaml").write_bytes(CATALOG.read_bytes())
    (tmp_path / "main.route").write_text('catalog "catalog.yaml"\ninclude "a.route"\notherwise use alpha-mni\n')
    (tmp_path / "a.route").write_text('when tier == "x" use nosuch\n')
    err = compile_error("main.route")
    assert err.codes == ["E300", "E300"]
    assert sorted((d.span.file, d.span.line) for d in err.diagnostics) == [("a.route", 1), ("main.route", 3)]
    assert "--> a.route:1:22" in err.render()
    assert "did you mean alpha-mini?" in err.render()


# ---- the JSON form and the API ------------------------------------------------------------------------


def test_policy_error_json_and_fields() -> None:
    err = source_error(f'catalog "{CATALOG}"\notherwise use gpt-4o-mni\n')
    assert isinstance(err, ValueError) is False and isinstance(err, Exception)
    assert err.codes == ["E300"]
    d = err.diagnostics[0]
    assert isinstance(d, Diagnostic)
    assert (d.code, d.severity, d.is_error) == ("E300", "error", True)
    data = json.loads(err.to_json())
    assert data == {
        "ok": False,
        "diagnostics": [
            {
                "code": "E300",
                "severity": "error",
                "message": "unknown model `gpt-4o-mni`",
                "file": "policy.route",
                "line": 2,
                "col": 15,
                "end_line": 2,
                "end_col": 25,
                "label": "not in the catalog",
                "hint": "did you mean gpt-4o-mini?",
                "notes": [],
            }
        ],
    }
    assert str(err) == err.render()


def test_compile_source_renders_the_source_line() -> None:
    err = source_error('when tier == "pro" use gpt-4o fallback gpt-4o-mni\n', catalog=None)
    # no catalog statement and no catalog argument: the bundled catalog, where gpt-4o-mini exists
    assert err.render() == (
        "error[E300]: unknown model `gpt-4o-mni`\n"
        " --> policy.route:1:40\n"
        "  |\n"
        '1 | when tier == "pro" use gpt-4o fallback gpt-4o-mni\n'
        "  |                                        ^^^^^^^^^^ not in the catalog\n"
        "  = help: did you mean gpt-4o-mini?\n"
        "\n"
        "1 error"
    )


def test_catalog_argument_overrides_the_catalog_statement(fixture_catalog) -> None:
    policy = compile_source('catalog "does/not/exist.yaml"\notherwise use delta-tiny\n', catalog=fixture_catalog)
    assert [r.selector.use.name for r in policy.rules] == ["delta-tiny"]


# ---- message quality: each of these is a reported bug or UX problem ------------------------------------


def test_missing_catalog_file_is_E200(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "main.route").write_text('catalog "models.yaml"\notherwise use gpt-4o-mini\n')
    assert compile_error("main.route").codes == ["E200"]


def test_missing_catalog_file_names_the_file_and_the_statement(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "main.route").write_text('catalog "models.yaml"\notherwise use gpt-4o-mini\n')
    err = compile_error("main.route")
    assert err.codes in (["E200"], ["E202"])
    d = err.diagnostics[0]
    assert "models.yaml" in d.message
    assert (d.span.file, d.span.line, d.span.col) == ("main.route", 1, 1)
    assert_well_formed(err)


def test_unknown_constraint_hint_lists_constraints(fixture_catalog) -> None:
    err = source_error('when tier == "pro" prefer fastest where speed < 2s\n', catalog=fixture_catalog)
    assert err.codes == ["E100"]
    hint = err.diagnostics[0].hint or ""
    assert "not a ranking" not in hint
    assert "latency" in hint


def test_bad_regex_message_shows_the_regex_as_written(fixture_catalog) -> None:
    err = source_error("task code = /write (a|the/\n", catalog=fixture_catalog)
    assert err.codes == ["E500"]
    assert "(?i)" not in err.diagnostics[0].message


def test_unknown_model_hint_names_a_real_command(cli, fixture_catalog) -> None:
    err = source_error("otherwise use zzzz\n", catalog=fixture_catalog)
    hint = err.diagnostics[0].hint or ""
    command = re.search(r"`modelroute (\w+)", hint)
    assert command, hint
    proc = cli(command.group(1), "--help")
    assert proc.returncode == 0, proc.stderr


def test_expected_tokens_are_only_those_that_can_follow(fixture_catalog) -> None:
    err = source_error('when tier == "pro" alpha-mini\n', catalog=fixture_catalog)
    label = err.diagnostics[0].label
    assert "`]`" not in label and "`,`" not in label and "`)`" not in label


def test_misquoted_string_in_task_gets_a_relevant_hint(fixture_catalog) -> None:
    err = source_error('task legal = "contract, "nda"\notherwise use alpha-mini\n', catalog=fixture_catalog)
    assert "a rule needs an action" not in (err.diagnostics[0].hint or "")


def test_duplicate_otherwise_hint(fixture_catalog) -> None:
    err = source_error("otherwise use alpha-mini\notherwise use alpha-large\n", catalog=fixture_catalog)
    assert err.codes == ["E601"]
    assert "move this rule above" not in (err.diagnostics[0].hint or "")


def test_re2_feature_caret_covers_the_construct(fixture_catalog) -> None:
    err = source_error("task t = /(a)\\1/\n", catalog=fixture_catalog)
    span = err.diagnostics[0].span
    assert (span.col, span.end_col) == (14, 16)


def test_keyword_names_are_rejected_for_every_keyword(fixture_catalog) -> None:
    from engine.language.parse import KEYWORDS

    for word in sorted(KEYWORDS):
        err = source_error(f'task {word} = "x"\notherwise use alpha-mini\n', catalog=fixture_catalog)
        assert err.codes == ["E103"], (word, err.render())
        assert f"`{word}` is a keyword" in err.diagnostics[0].message


@pytest.mark.parametrize("name", ["timeout", "deadline", "stream.first_token_timeout", "stream.idle_timeout"])
def test_a_time_bound_of_zero_is_refused_with_its_position(name: str) -> None:
    err = source_error(f"set {name} = 0s\notherwise use alpha-mini\n", catalog=load_catalog(CATALOG))
    assert err.codes == ["E401"] and err.diagnostics[0].span.line == 1
    assert f"set {name} = 30s" in (err.diagnostics[0].hint or "")
    assert_well_formed(err)


# ---- compile advice: embedding models in a rule that serves chat (W110), repeats in `among` (W111) ----------


def _advice(text: str) -> list[Diagnostic]:
    """Compile `text` over the bundled catalog and return its advice, checked for a location, caret and hint."""
    from engine.compiler.advice import ADVICE_CODES, advise
    from engine.tools.testing import aliases

    policy = compile_source(text, "policy.route")
    names = aliases(policy)

    def entry(ref):
        spec = policy.catalog.resolve(names.get(ref.name, ref.name))
        return policy.models.get(spec.name) if spec is not None else None

    warnings = advise([r.node for r in policy.rules], entry)
    rendered = PolicyError(warnings, policy.sources).render() if warnings else ""
    for w in warnings:
        assert w.code in ADVICE_CODES and w.severity == "warning" and w.span is not None and w.hint
        assert f"--> {w.span.file}:{w.span.line}:{w.span.col}" in rendered
        assert f"{w.span.line} | " in rendered and f"^ {w.label}" in rendered
    return warnings


def test_embedding_model_in_a_chat_rule_is_a_warning() -> None:
    warnings = _advice(
        'when tier == "pro" prefer cheapest among [gpt-4o-mini, text-embedding-3-small]\n'
        "otherwise use gpt-4o-mini fallback text-embedding-3-small\n"
    )
    assert [(w.code, w.span.line) for w in warnings] == [("W110", 1), ("W110", 2)]
    assert "/v1/embeddings" in warnings[0].message and "`among`" in warnings[0].message
    assert 'when endpoint == "embeddings" use text-embedding-3-small' in (warnings[1].hint or "")


def test_embedding_model_in_a_rule_reading_endpoint_is_fine() -> None:
    assert (
        _advice(
            'when endpoint == "embeddings" use text-embedding-3-small\n'
            'when endpoint in ["embeddings"] and tier == "pro" use text-embedding-3-small\n'
            "otherwise use gpt-4o-mini\n"
        )
        == []
    )


def test_model_listed_twice_in_among_is_a_warning_at_the_second() -> None:
    warnings = _advice(
        "model small = gpt-4o-mini\n"
        'when tier == "pro" prefer cheapest among [gpt-4o-mini, gpt-4o, gpt-4o-mini]\n'
        "otherwise prefer cheapest among [small, gpt-4o, gpt-4o-mini]\n"
    )
    assert [(w.code, w.span.line, w.span.col) for w in warnings] == [("W111", 2, 64), ("W111", 3, 49)]
    assert warnings[0].notes == ("first listed at policy.route:2:43",)
    assert "`small` and `gpt-4o-mini` are both `gpt-4o-mini`" in warnings[1].message


def test_the_bundled_policy_gets_no_advice() -> None:
    from engine.compiler.advice import advise
    from engine.tools.testing import aliases

    policy = compile_policy(Path(__file__).parent.parent / "policies" / "main.route")
    names = aliases(policy)

    def entry(ref):
        spec = policy.catalog.resolve(names.get(ref.name, ref.name))
        return policy.models.get(spec.name) if spec is not None else None

    assert any(e.embeds for e in policy.models.values())  # it does route embeddings, in a rule of their own
    assert advise([r.node for r in policy.rules], entry) == []
