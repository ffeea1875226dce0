"""The LiteLLM catalog importer (providers/litellm.py), on a 15-entry fixture cut from LiteLLM's price file."""

from __future__ import annotations

import datetime
import shutil
from pathlib import Path

import pytest

from engine.api import Engine
from engine.diagnostics import PolicyError
from providers.catalog.issues import CatalogError
from providers.catalog.litellm import DEFAULT_LATENCY_MS, import_litellm, load_litellm

HERE = Path(__file__).resolve().parent
FIX = HERE / "fixtures" / "litellm"
PRICES = FIX / "model_prices.json"
SNAPSHOT = HERE.parent.parent / "shared" / "data" / "litellm_model_prices.json"
#: The date policies here compile for: before every deprecation_date in the fixture (the earliest is 2026-07-24).
TODAY = datetime.date(2026, 1, 1)


def test_imports_chat_models_only() -> None:
    catalog, stats = import_litellm(PRICES)
    assert set(catalog.models) == {
        "gpt-4o",
        "gpt-4o-mini",
        "claude-sonnet-4-5",
        "claude-haiku-4-5",
        "deepseek-chat",
        "deepseek/deepseek-chat",
        "gemini/gemini-2.5-flash",
        "ai21.jamba-1-5-mini-v1:0",
    }
    assert stats.entries == 15 and stats.imported == 8
    assert stats.skipped == {
        "sample_spec": 1,
        "mode embedding": 1,
        "mode responses": 1,
        "mode image_generation": 1,
        "no token prices": 1,
        "no context window": 2,
    }


def test_field_mapping() -> None:
    catalog = load_litellm(PRICES)
    m = catalog.models["gpt-4o"]
    assert m.provider == "openai" and m.id == "gpt-4o"
    assert m.input_price == pytest.approx(2.5e-06) and m.output_price == pytest.approx(1e-05)  # already per token
    assert m.context == 128000 and m.max_output == 16384
    assert m.supports == {"tools", "vision", "json", "files"}  # supports_pdf_input: files
    assert m.latency_ms == DEFAULT_LATENCY_MS and m.capabilities == {}
    assert m.source is not None and m.source.line > 1 and m.source.file == str(PRICES)
    assert catalog.models["claude-sonnet-4-5"].deprecation_date == datetime.date(2026, 11, 30)
    assert catalog.models["gemini/gemini-2.5-flash"].provider == "gemini"


def test_overlay_merges_scores_latency_aliases() -> None:
    catalog = load_litellm(PRICES, overlay=FIX / "scores.yaml")
    sonnet = catalog.models["claude-sonnet-4-5"]
    assert sonnet.capabilities == {"REASONING": 9, "CODING": 10}
    assert sonnet.latency_ms == 1500 and sonnet.aliases == ("sonnet",)
    assert sonnet.input_price == pytest.approx(3e-06)  # untouched fields stay imported
    assert catalog.resolve("four-o").name == "gpt-4o"
    assert catalog.models["deepseek-chat"].latency_ms == DEFAULT_LATENCY_MS


def _overlay_error(tmp_path: Path, text: str) -> CatalogError:
    path = tmp_path / "scores.yaml"
    path.write_text(text)
    with pytest.raises(CatalogError) as info:
        load_litellm(PRICES, overlay=path)
    return info.value


def test_overlay_unknown_model_did_you_mean(tmp_path: Path) -> None:
    err = _overlay_error(tmp_path, "models:\n  gpt-4o:\n    latency_ms: 900\n  gpt-40-mini:\n    latency_ms: 5\n")
    (issue,) = err.issues
    assert (issue.line, issue.col) == (4, 3)
    assert "unknown model `gpt-40-mini`" in issue.message and "gpt-4o-mini" in (issue.hint or "")


def test_overlay_bad_values_have_positions(tmp_path: Path) -> None:
    err = _overlay_error(tmp_path, "models:\n  gpt-4o:\n    capabilities: {REASONING: 12}\n    latncy_ms: 5\n")
    assert [(i.line, i.col) for i in err.issues] == [(3, 31), (4, 5)]
    assert "between 1 and 10" in err.issues[0].message
    assert "latency_ms" in (err.issues[1].hint or "")
    err = _overlay_error(tmp_path, "models:\n  gpt-4o:\n    aliases: [gpt-4o-mini]\n")
    assert "already a model name" in err.issues[0].message


def test_bad_json_has_line_and_col(tmp_path: Path) -> None:
    bad = tmp_path / "prices.json"
    bad.write_text('{\n  "gpt-4o": {"mode": "chat",\n    "input_cost_per_token": 1e-6,,\n  }\n}\n')
    with pytest.raises(CatalogError) as info:
        load_litellm(bad)
    (issue,) = info.value.issues
    assert (issue.line, issue.col) == (3, 34) and "invalid JSON" in issue.message
    with pytest.raises(CatalogError) as info:
        load_litellm(tmp_path / "missing.json")
    assert "not found" in info.value.issues[0].message


def test_policy_uses_litellm_catalog_with_slash_names(write_policy) -> None:
    """claude-sonnet-4-5 (deprecated 2026-11-30 in the fixture) ranks first for CODING on TODAY, whatever the clock."""
    root = write_policy(
        'catalog litellm "prices.json" overlay "scores.yaml"\n'
        "task code = /implement/\n"
        'when task is code prefer capability(CODING) fallback "gemini/gemini-2.5-flash"\n'
        'otherwise use "deepseek/deepseek-chat"\n'
    )
    shutil.copy(PRICES, root / "prices.json")
    shutil.copy(FIX / "scores.yaml", root / "scores.yaml")
    engine = Engine.load(root, today=TODAY)
    d = engine.decide("implement a parser")
    assert d.model == "claude-sonnet-4-5" and d.fallbacks == ["gemini/gemini-2.5-flash"]
    assert engine.decide("hello").model == "deepseek/deepseek-chat"


def test_policy_reports_overlay_errors_as_diagnostics(write_policy) -> None:
    root = write_policy('catalog litellm "prices.json" overlay "scores.yaml"\notherwise use "gpt-4o"\n')
    shutil.copy(PRICES, root / "prices.json")
    (root / "scores.yaml").write_text("models:\n  gpt-4oo: {latency_ms: 3}\n")
    with pytest.raises(PolicyError) as info:
        Engine.load(root, today=TODAY)
    (diag,) = info.value.diagnostics
    assert diag.code == "E202" and diag.span.line == 2 and "did you mean `gpt-4o`" in (diag.hint or "")


def test_catalog_command_on_litellm_policy(cli) -> None:
    r = cli("catalog", str(FIX), "--sort", "CODING", "--json")
    assert r.returncode == 0, r.stderr
    import json

    rows = json.loads(r.stdout)
    assert rows[0]["name"] == "claude-sonnet-4-5" and rows[0]["aliases"] == ["sonnet"]
    assert rows[0]["input_per_1m"] == pytest.approx(3.0)
    r = cli("catalog", str(FIX), "--provider", "gemini", "--supports", "vision")
    assert r.returncode == 0 and "gemini/gemini-2.5-flash" in r.stdout and "gpt-4o" not in r.stdout


@pytest.mark.skipif(not SNAPSHOT.is_file(), reason="the full LiteLLM snapshot (../shared/data) is not here")
def test_full_snapshot_loads() -> None:
    """The whole real snapshot imports (how fast is bench/speed_bench.py's business, not a test's)."""
    _, stats = import_litellm(SNAPSHOT)
    assert stats.imported > 2000


def test_catalog_command_default_policy_filters_and_errors(cli) -> None:
    r = cli("catalog", "--supports", "tools", "--sort", "price")
    assert r.returncode == 0, r.stderr
    assert "$ in/1M" in r.stdout and "models, sorted by price" in r.stdout
    r = cli("catalog", "--sort", "CODNG")
    assert r.returncode == 2 and "CODING" in r.stderr and "Traceback" not in r.stderr
    r = cli("catalog", "--provider", "antropic")
    assert r.returncode == 2 and "anthropic" in r.stderr
    r = cli("catalog", "--help")
    assert r.returncode == 0 and "Examples" in r.stdout
    import json

    rows = json.loads(cli("catalog", "--sort", "context", "--limit", "2", "--json").stdout)
    assert len(rows) == 2 and rows[0]["context"] >= rows[1]["context"]
