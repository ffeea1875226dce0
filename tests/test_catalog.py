"""Tests for providers/catalog.py: the bundled catalog, the YAML format, every error kind, overlays."""

import datetime
import pickle
import shutil
import subprocess
import sys
import textwrap
from importlib import resources
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from providers.catalog.issues import CatalogError, CatalogIssue, SourceRef
from providers.catalog.loader import load_catalog
from providers.catalog.models import (
    KNOWN_FEATURES,
    STANDARD_CAPABILITIES,
    Catalog,
    ModelSpec,
    ProviderSpec,
    default_catalog,
    default_catalog_path,
)

FIXTURES = Path(__file__).parent / "fixtures" / "catalog"

REQUIRED = {
    "gpt-4o": "openai",
    "gpt-4o-mini": "openai",
    "o1": "openai",
    "o3-mini": "openai",
    "claude-3-5-sonnet": "anthropic",
    "claude-3-5-haiku": "anthropic",
    "claude-3-opus": "anthropic",
    "gemini-1.5-pro": "gemini",
    "gemini-1.5-flash": "gemini",
    "gemini-2.0-flash": "gemini",
    "llama-3.1-8b-instant": "groq",
    "llama-3.3-70b-versatile": "groq",
    "deepseek-chat": "deepseek",
    "deepseek-reasoner": "deepseek",
    "mistral-large": "mistral",
    "codestral": "mistral",
    "llama3.1-local": "ollama",
}


def at(text: str, needle: str, nth: int = 0) -> tuple[int, int]:
    """1-based (line, col) of the nth occurrence of `needle` in `text`; a `|` in the needle marks the spot."""
    offset = max(needle.find("|"), 0)
    needle = needle.replace("|", "", 1)
    index = -1
    for _ in range(nth + 1):
        index = text.index(needle, index + 1)
    index += offset
    return text.count("\n", 0, index) + 1, index - (text.rfind("\n", 0, index) + 1) + 1


def write(tmp_path: Path, text: str, name: str = "catalog.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def issues_of(path: Path) -> list[CatalogIssue]:
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    return info.value.issues


def one_model(tmp_path: Path, **fields: str) -> Path:
    """A catalog with one model `m`; `fields` are YAML snippets that replace or add fields."""
    base = {"provider": "openai", "context": "128k", "price": "{input: 1, output: 2}", "latency_ms": "100"}
    base.update(fields)
    body = "".join(f"    {k}: {v}\n" for k, v in base.items())
    return write(tmp_path, "models:\n  m:\n" + body)


# ---- the bundled catalog -----------------------------------------------------------------------------


def test_default_catalog_has_the_required_models_and_providers() -> None:
    cat = default_catalog()
    assert len(cat.models) >= 18
    assert len({m.provider for m in cat}) >= 7
    for name, provider in REQUIRED.items():
        assert cat.models[name].provider == provider, name
    assert set(cat.providers) >= {"openai", "anthropic", "gemini", "groq", "deepseek", "mistral", "ollama"}
    assert cat.files == (str(default_catalog_path()),)


def test_default_catalog_required_details() -> None:
    cat = default_catalog()
    assert cat.resolve("sonnet") is cat.models["claude-3-5-sonnet"]
    assert cat.resolve("haiku") is cat.models["claude-3-5-haiku"]
    assert cat.resolve("gemini-flash") is cat.models["gemini-1.5-flash"]
    assert cat.models["gemini-1.5-pro"].context == 2_000_000
    assert cat.models["gemini-1.5-flash"].context == 1_000_000
    assert cat.models["claude-3-5-sonnet"].context == 200_000
    assert cat.models["claude-3-5-sonnet"].id == "claude-3-5-sonnet-20241022"
    assert cat.models["gpt-4o"].id == "gpt-4o"  # defaults to the name
    local = cat.models["llama3.1-local"]
    assert (local.id, local.context, local.input_price, local.output_price, local.supports) == (
        "llama3.1:8b",
        128_000,
        0.0,
        0.0,
        frozenset({"tools"}),
    )


def test_default_catalog_prices_are_per_token() -> None:
    cat = default_catalog()
    assert cat.models["gpt-4o"].input_price == pytest.approx(2.50e-6)
    assert cat.models["gpt-4o"].output_price == pytest.approx(10.00e-6)
    assert cat.models["claude-3-5-sonnet"].output_price == pytest.approx(15e-6)
    for spec in cat:
        assert 0 <= spec.input_price < 1e-4 and 0 <= spec.output_price < 1e-3, spec.name  # i.e. not per 1M


def test_audio_and_files_features_mark_the_models_that_read_them() -> None:
    """`audio` (input_audio parts) and `files` (PDF file parts): in the bundled catalog only on models that read
    them, and imported from LiteLLM's supports_audio_input / supports_pdf_input."""
    from providers.catalog.litellm import load_litellm

    assert {"audio", "files"} <= set(KNOWN_FEATURES)
    cat = default_catalog()
    audio = {s.name for s in cat if "audio" in s.supports}
    files = {s.name for s in cat if "files" in s.supports}
    assert audio == {s.name for s in cat if s.provider == "gemini" and "embeddings" not in s.supports}
    assert {"gpt-4o", "gpt-4o-mini", "claude-sonnet-4-6", "claude-3-5-sonnet", "gemini-2.5-flash"} <= files
    for spec in cat:  # documents are read as pages of images: only vision models take them
        assert "files" not in spec.supports or "vision" in spec.supports, spec.name
    assert not {"o3-mini", "deepseek-chat", "llama-3.3-70b-versatile", "mistral-large"} & (audio | files)
    imported = load_litellm(Path(__file__).parent / "fixtures" / "litellm" / "model_prices.json")
    assert {"audio", "files"} <= imported.models["gemini/gemini-2.5-flash"].supports
    assert "files" in imported.models["gpt-4o"].supports and "audio" not in imported.models["gpt-4o"].supports
    assert not {"audio", "files"} & imported.models["deepseek-chat"].supports


def test_default_catalog_scores_every_standard_capability() -> None:
    cat = default_catalog()
    assert cat.capability_names() >= set(STANDARD_CAPABILITIES)
    for spec in cat:
        assert set(spec.capabilities) >= set(STANDARD_CAPABILITIES), spec.name
        assert all(1 <= s <= 10 for s in spec.capabilities.values()), spec.name
        assert spec.supports <= set(KNOWN_FEATURES), spec.name
        # A model that can't take images or call tools scores 1 there, and only then.
        assert (spec.capabilities["VISION"] > 1) == ("vision" in spec.supports), spec.name
        assert (spec.capabilities["TOOLS"] > 1) == ("tools" in spec.supports), spec.name
        assert spec.latency_ms > 0 and spec.context > 0, spec.name
        assert spec.max_output is None or spec.max_output <= spec.context, spec.name


def test_default_catalog_rankings_are_plausible_and_not_ties() -> None:
    cat = default_catalog()

    def m_score(name: str, capability: str) -> float:
        return cat.models[name].capabilities[capability]

    def top(capability: str) -> set[str]:
        best = max(s.capabilities[capability] for s in cat)
        return {s.name for s in cat if s.capabilities[capability] == best}

    for capability in STANDARD_CAPABILITIES:
        assert len({s.capabilities[capability] for s in cat}) >= 4, capability
    assert top("CODING") == {"claude-opus-4-6", "claude-sonnet-4-6", "gpt-5"}
    assert top("REASONING") == {"claude-opus-4-6", "claude-sonnet-4-6", "gpt-5"}
    assert "gemini-1.5-pro" in top("CONTEXT") and "gpt-4o" not in top("CONTEXT")
    # the current generation outranks the models it replaces
    assert m_score("claude-sonnet-4-6", "CODING") > m_score("claude-3-5-sonnet", "CODING")
    assert top("SPEED") == {"llama-3.1-8b-instant"}
    assert "llama3.1-local" in top("COST")
    m = cat.models
    assert m["codestral"].capabilities["CODING"] > m["deepseek-chat"].capabilities["CODING"]
    assert m["gpt-4o-mini"].capabilities["SPEED"] > m["gpt-4o"].capabilities["SPEED"]
    assert m["gemini-2.0-flash"].capabilities["SPEED"] > m["gemini-1.5-pro"].capabilities["SPEED"]
    # SPEED and COST agree with the numbers they summarise.
    assert min(cat, key=lambda s: s.latency_ms).name == "llama-3.1-8b-instant"
    assert max(cat, key=lambda s: s.latency_ms).name == "o1"


def test_default_catalog_providers() -> None:
    providers = default_catalog().providers
    assert providers["gemini"].kind == "gemini"
    assert providers["gemini"].base_url == "https://generativelanguage.googleapis.com"
    assert providers["anthropic"].kind == "anthropic"
    for name in ("openai", "groq", "deepseek", "mistral", "ollama"):
        assert providers[name].kind == "openai", name
        assert providers[name].base_url.startswith("http"), name
    for name in ("groq", "deepseek", "mistral"):
        assert providers[name].api_key_env == f"{name.upper()}_API_KEY"
    assert providers["ollama"].base_url == "http://127.0.0.1:11434/v1"
    assert providers["ollama"].api_key_env is None


def test_default_catalog_is_cached_and_path_is_package_data() -> None:
    assert default_catalog() is default_catalog()
    path = default_catalog_path()
    assert path.name == "catalog.yaml" and path.is_file()
    assert path == Path(str(resources.files("providers.catalog").joinpath("catalog.yaml")))
    assert load_catalog(path) == default_catalog()


@pytest.mark.slow
def test_bundled_catalog_ships_as_package_data(tmp_path: Path) -> None:
    """Build the packages the way a (non-editable) install does, then load the catalog from the build and
    from a zip of it, with the checkout out of sight."""
    root = Path(__file__).parent.parent
    lib = tmp_path / "lib"
    subprocess.run(
        [sys.executable, "setup.py", "-q", "build_py", "-d", str(lib)],  # setup.py lists the packages
        cwd=root,
        check=True,
        capture_output=True,
    )
    assert (lib / "providers" / "catalog" / "catalog.yaml").read_bytes() == default_catalog_path().read_bytes()
    shutil.make_archive(str(tmp_path / "lib"), "zip", lib, "providers")
    code = (
        "import sys; from providers.catalog import default_catalog, default_catalog_path; "
        "print(default_catalog_path()); assert len(default_catalog()) >= 18"
    )
    for entry in (lib, tmp_path / "lib.zip"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            env={"PYTHONPATH": str(entry)},
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        assert str(root) not in out
        if entry == lib:
            assert out.strip() == str(lib / "providers" / "catalog" / "catalog.yaml")


def test_catalog_module_does_not_import_httpx() -> None:
    code = (
        "import sys, providers, providers.catalog; providers.catalog.default_catalog(); "
        "sys.exit('httpx' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent, check=False)
    assert result.returncode == 0


def test_names_and_resolve() -> None:
    cat = default_catalog()
    names = cat.names()
    assert names[: len(cat.models)] == list(cat.models)
    assert {"sonnet", "haiku", "gemini-flash"} <= set(names)
    assert cat.resolve("claude-3-5-sonnet") is cat.resolve("sonnet")
    assert cat.resolve("nope") is None
    assert "sonnet" in cat and "nope" not in cat
    assert cat.aliases["sonnet"] == "claude-3-5-sonnet"


# ---- the format: a valid catalog -----------------------------------------------------------------------


def test_valid_fixture_defaults_and_optional_parts() -> None:
    path = FIXTURES / "valid.yaml"
    cat = load_catalog(path)
    assert list(cat.models) == ["tiny", "big", "plain"]
    tiny, big, plain = cat.models.values()
    # `<<: *defaults` merge keys, suffix counts, lower-case capability names normalised.
    assert (tiny.provider, tiny.latency_ms, tiny.supports) == ("local", 250.0, frozenset({"tools"}))
    assert (tiny.context, tiny.max_output) == (200_000, 1_500)
    assert tiny.capabilities == {"CODING": 3.0, "SPEED": 9.5}
    assert (tiny.capability("coding"), tiny.capability("SPEED"), tiny.capability("X")) == (3.0, 9.5, None)
    assert tiny.id == "tiny" and tiny.aliases == () and tiny.deprecation_date is None
    # Explicit fields override merged ones.
    assert (big.id, big.aliases) == ("big:70b", ("large", "huge"))
    assert (big.context, big.max_output) == (1_000_000, None)
    assert (big.input_price, big.output_price, big.latency_ms) == (pytest.approx(1.25e-6), 1e-5, 900.0)
    assert big.deprecation_date == datetime.date(2030, 1, 31)
    # Open sets: a new capability and a new feature are fine; features are lower-cased.
    assert plain.capabilities == {"MATH": 7.0} and plain.supports == {"streaming", "audio"}
    assert plain.provider == "elsewhere" and "elsewhere" not in cat.providers
    assert cat.capability_names() == {"CODING", "SPEED", "MATH"}
    assert big.source == SourceRef(str(path), 22, 3)
    assert str(big.source) == f"{path}:22:3"


def test_valid_fixture_providers() -> None:
    cat = load_catalog(FIXTURES / "valid.yaml")
    p = cat.providers
    assert p["local"] == ProviderSpec(name="local", kind="openai", base_url="http://127.0.0.1:11434/v1")
    assert p["anthropic"].kind == "anthropic" and p["anthropic"].api_key_env == "ANTHROPIC_API_KEY"
    assert p["anthropic"].headers == {"anthropic-version": "2023-06-01"}  # kept as text, not a date
    assert p["gemini"] == ProviderSpec(name="gemini", kind="gemini", base_url=None, api_key_env=None)
    assert (p["custom"].kind, p["custom"].timeout_s) == ("gemini", 5.0)
    assert p["local"].timeout_s == 60.0
    assert cat.provider_spec("elsewhere") == ProviderSpec(name="elsewhere", kind="openai")
    assert cat.provider_spec("local") is p["local"]


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("200k", 200_000),
        ("1M", 1_000_000),
        ("2M", 2_000_000),
        ("1.5M", 1_500_000),
        ("128K", 128_000),
        ("8192", 8192),
        ("32_768", 32_768),
        ('"64k"', 64_000),
        ("0.5k", 500),
        ("1.0e+3", 1000),
    ],
)
def test_context_suffixes(tmp_path: Path, text: str, tokens: int) -> None:
    assert load_catalog(one_model(tmp_path, context=text)).models["m"].context == tokens


@given(st.integers(min_value=1, max_value=10**6), st.sampled_from([("k", 1000), ("M", 1_000_000), ("", 1)]))
@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_context_suffix_property(tmp_path: Path, number: int, suffix: tuple[str, int]) -> None:
    path = one_model(tmp_path, context=f"{number}{suffix[0]}", max_output=f"{number}{suffix[0]}")
    spec = load_catalog(path).models["m"]
    assert spec.context == spec.max_output == number * suffix[1]


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("big", None),
        ("1.2345k", "a token count is a whole number"),
        ("10m", "use an upper-case `M` for millions (1M = 1,000,000 tokens)"),
        ('"200,000"', "write it without commas: 200000"),
        ("true", None),
        ("1.5", "a token count is a whole number"),
        ("[1]", None),
    ],
)
def test_bad_counts(tmp_path: Path, text: str, hint: str | None) -> None:
    (issue,) = issues_of(one_model(tmp_path, context=text))
    assert issue.key_path == "models.m.context"
    assert issue.message.startswith("expected a context window in tokens like 128000, 200k or 1M, got ")
    assert issue.hint == hint
    assert (issue.line, issue.col) == (4, 14)


def test_zero_and_negative_counts(tmp_path: Path) -> None:
    (zero,) = issues_of(one_model(tmp_path, context="0"))
    assert zero.message == "a context window in tokens must be at least 1 token, got 0"
    (negative,) = issues_of(one_model(tmp_path, max_output="-1k"))
    assert negative.key_path == "models.m.max_output"
    assert negative.message == "a maximum output in tokens can't be negative, got -1k"


# ---- errors ------------------------------------------------------------------------------------------

ERRORS = [  # (needle, nth occurrence, key_path, message, hint) in file order
    ("openapi", 0, "providers.acme.kind", "unknown provider kind `openapi`", "did you mean `openai`?"),
    (
        "ftp:",
        0,
        "providers.acme.base_url",
        "expected an http(s) URL like \"https://api.openai.com/v1\", got 'ftp://acme.example'",
        None,
    ),
    ("timeout_s: |0", 0, "providers.acme.timeout_s", "timeout_s must be greater than 0, got 0", None),
    (
        "sk-proj",
        0,
        "providers.leaky.api_key_env",
        "expected the name of an environment variable like OPENAI_API_KEY, got a value that looks like an API key",
        "`api_key_env` names the variable that holds the key; keep the key itself out of the catalog "
        "(and rotate it if this file was shared)",
    ),
    ("cheap", 0, "models.gpt-4o.price.input", "expected a number of USD per 1M tokens, got 'cheap'", None),
    (
        "capabilites",
        0,
        "models.gpt-4o.capabilites",
        "unknown field `capabilites` in model `gpt-4o`",
        "did you mean `capabilities`?",
    ),
    ("context: |-5", 0, "models.broke.context", "a context window in tokens can't be negative, got -5", None),
    ("input: |-1", 0, "models.broke.price.input", "a price can't be negative, got -1", "use 0 for a free model"),
    (
        "$15",
        0,
        "models.broke.price.output",
        "expected a number of USD per 1M tokens, got '$15'",
        "write the number without `$`: 15",
    ),
    ("fast", 0, "models.broke.latency_ms", "expected a latency in milliseconds, got 'fast'", "e.g. `latency_ms: 800`"),
    (
        "CODING: |11",
        0,
        "models.broke.capabilities.CODING",
        "capability score must be between 1 and 10, got 11",
        "scores run from 1 (weakest) to 10 (strongest)",
    ),
    (
        "REASONNIG",
        0,
        "models.broke.capabilities.REASONNIG",
        "unknown capability `REASONNIG`",
        "did you mean `REASONING`?",
    ),
    (
        "speed: |0",
        0,
        "models.broke.capabilities.speed",
        "capability score must be between 1 and 10, got 0",
        "scores run from 1 (weakest) to 10 (strongest)",
    ),
    ("visoin", 0, "models.broke.supports[1]", "unknown feature `visoin`", "did you mean `vision`?"),
    (
        "2025-13-01",
        0,
        "models.broke.deprecation_date",
        "expected a date like 2025-10-22, got '2025-13-01'",
        "not a real date: month must be in 1..12",
    ),
    (
        "orphan",
        0,
        "models.orphan.provider",
        "model `orphan` is missing the required field `provider`",
        "add `provider: <name>`, e.g. `provider: openai`; providers in this file: acme, leaky, openai",
    ),
    (
        "opnai",
        0,
        "models.typo-provider.provider",
        "provider `opnai` looks like a misspelling of `openai`",
        "did you mean `openai`? (if `opnai` is another provider, give it an entry under `providers:`)",
    ),
    (
        "price: |{input: 1}",
        0,
        "models.typo-provider.price.output",
        "price is missing `output`",
        "add `output: <USD per 1M output tokens>` (0 if free)",
    ),
    (
        "gpt-4o:",
        1,
        "models.gpt-4o",
        "duplicate model name `gpt-4o`",
        "it was first defined at line 7; keep one of them",
    ),
]


def test_every_issue_in_the_file_is_reported_in_order() -> None:
    path = FIXTURES / "errors.yaml"
    text = path.read_text(encoding="utf-8")
    issues = issues_of(path)
    expected = [
        CatalogIssue(str(path), *at(text, needle, nth), key_path, message, hint)
        for needle, nth, key_path, message, hint in ERRORS
    ]
    assert issues == expected
    assert issues[4][:4] == (str(path), 10, 20, "models.gpt-4o.price.input")  # 1-based, spelled out once


def test_error_text_shows_position_source_line_caret_and_hint() -> None:
    path = FIXTURES / "errors.yaml"
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    text = str(info.value)
    assert text.startswith(f"{len(ERRORS)} problems in catalog {path}:\n\nerror: unknown provider kind")
    assert (
        f"error: expected a number of USD per 1M tokens, got 'cheap'\n"
        f"  --> {path}:10:20  (at models.gpt-4o.price.input)\n"
        f"    |\n"
        f" 10 |     price: {{input: cheap, output: 10.00}}\n"
        f"    |                    ^^^^^\n"
    ) in text
    assert "  = hint: did you mean `capabilities`?" in text
    assert "sk-proj" not in text and "<redacted>" in text  # not even in the quoted source line
    assert str(info.value.issues[5]) == (
        f"{path}:12:5: unknown field `capabilites` in model `gpt-4o` (at `models.gpt-4o.capabilites`); "
        "hint: did you mean `capabilities`?"
    )


def test_secret_is_never_echoed_in_messages() -> None:
    for issue in issues_of(FIXTURES / "errors.yaml"):
        assert "sk-proj" not in issue.message and "sk-proj" not in (issue.hint or "")


def test_duplicate_names_and_alias_clashes() -> None:
    path = FIXTURES / "duplicates.yaml"
    text = path.read_text(encoding="utf-8")
    got = [(i.line, i.col, i.key_path, i.message, i.hint) for i in issues_of(path)]
    assert got == [
        (
            *at(text, "beta"),
            "models.alpha.aliases[1]",
            "alias `beta` of model `alpha` clashes with the model `beta` (line 9)",
            "an alias must differ from every model name; rename or remove it",
        ),
        (*at(text, "a, alpha"), "models.alpha.aliases[2]", "alias `a` is listed twice", "remove one"),
        (*at(text, "alpha]"), "models.alpha.aliases[3]", "alias `alpha` is the model's own name", "remove it"),
        (
            *at(text, "a, b]"),
            "models.beta.aliases[0]",
            "alias `a` is already an alias of model `alpha` (line 8)",
            "an alias can point to one model only",
        ),
        (15, 3, "models.alpha", "duplicate model name `alpha`", "it was first defined at line 3; keep one of them"),
        (
            *at(text, "nope"),
            "models.alpha.context",  # the repeated entry is still checked
            "expected a context window in tokens like 128000, 200k or 1M, got 'nope'",
            None,
        ),
    ]


def test_yaml_syntax_error() -> None:
    path = FIXTURES / "syntax_error.yaml"
    (issue,) = issues_of(path)
    assert issue == CatalogIssue(
        str(path),
        5,
        15,
        "",
        "invalid YAML: did not find expected ',' or '}'",
        "a `[...]` or `{...}` is not closed, or two items lack a comma (the `{...}` starts at line 4, column 12)",
    )


@pytest.mark.parametrize(
    ("text", "line", "col", "message", "hint"),
    [
        (
            "models:\n  a:\n\tprovider: x\n",
            3,
            1,
            "invalid YAML: found character that cannot start any token",
            "YAML does not allow tabs here; indent with spaces",
        ),
        (
            "models:\n  a:\n    provider: x: y\n",
            3,
            16,
            "invalid YAML: mapping values are not allowed in this context",
            "a value containing `: ` must be quoted, or the line is mis-indented",
        ),
        (
            "models: {}\n---\nmodels: {}\n",
            2,
            1,
            "invalid YAML: expected a single document in the stream, but found another document",
            "a catalog file holds one YAML document; remove the `---` line",
        ),
        (
            "models:\n  a: *nope\n",
            2,
            6,
            "invalid YAML: found undefined alias",
            "define the anchor with `&name` before using it as `*name`",
        ),
    ],
)
def test_yaml_syntax_errors(tmp_path: Path, text: str, line: int, col: int, message: str, hint: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    assert issues_of(path) == [CatalogIssue(str(path), line, col, "", message, hint)]


def test_missing_file_suggests_a_neighbour(tmp_path: Path) -> None:
    (tmp_path / "models.yaml").write_text("models: {}\n", encoding="utf-8")
    missing = tmp_path / "modles.yaml"
    assert issues_of(missing) == [
        CatalogIssue(str(missing), 0, 0, "", "catalog file not found", f"did you mean `{tmp_path / 'models.yaml'}`?")
    ]
    (issue,) = issues_of(tmp_path / "nothing-like-it.yaml")
    assert issue.message == "catalog file not found" and issue.hint is None
    (issue,) = issues_of(tmp_path / "no" / "such.yaml")
    assert issue.hint == f"the folder `{tmp_path / 'no'}` does not exist either"
    with pytest.raises(CatalogError) as info:
        load_catalog(missing)
    assert str(info.value) == (
        f"1 problem in catalog {missing}:\n\nerror: catalog file not found\n"
        f"  --> {missing}\n  = hint: did you mean `{tmp_path / 'models.yaml'}`?"
    )


def test_directory_empty_file_and_bad_encoding(tmp_path: Path) -> None:
    (issue,) = issues_of(tmp_path)
    assert issue.message == "expected a catalog file, got a directory"
    empty = write(tmp_path, "# nothing here\n", "empty.yaml")
    assert issues_of(empty) == [
        CatalogIssue(str(empty), 1, 1, "", "the catalog file is empty", "add a `models:` section")
    ]
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"models:\n  \xff: 1\n")
    assert issues_of(binary) == [
        CatalogIssue(str(binary), 2, 3, "", "the catalog is not UTF-8 text (byte 0xff)", "save the file as UTF-8")
    ]


@pytest.mark.parametrize(
    ("yaml_text", "key_path", "message", "hint"),
    [
        ("model:\n  a: {}\n", "model", "unknown top-level section `model`", "did you mean `models`?"),
        (
            "gpt-4o: {provider: openai}\n",
            "gpt-4o",
            "unknown top-level section `gpt-4o`",
            "this looks like a model; put it under `models:`",
        ),
        ("- a\n", "", "expected a mapping with `providers:` and `models:` sections, got a list", None),
        (
            "models: [a, b]\n",
            "models",
            "expected a mapping from model name to its fields, got a list",
            "write each model as `name: {provider: ..., context: ..., price: ...}`",
        ),
        (
            "models:\n  m: 3\n",
            "models.m",
            "expected the fields of model `m` (a mapping), got 3",
            "e.g. `{provider: openai, context: 128k, price: {input: 2.5, output: 10}, latency_ms: 800}`",
        ),
        (
            "providers: {p: {kind: openai, api_key: X}}\n",
            "providers.p.api_key",
            "unknown field `api_key` in provider `p`",
            "did you mean `api_key_env`?",
        ),
        (
            "providers: {p: {api_key_env: my key}}\n",
            "providers.p.api_key_env",
            "expected the name of an environment variable like OPENAI_API_KEY, got 'my key'",
            None,
        ),
        (
            "providers: {p: {headers: {bad header: x}}}\n",
            "providers.p.headers.bad header",
            "`bad header` is not a valid HTTP header name",
            "header names are letters, digits and `-`",
        ),
        (
            "providers: {p: {kind: openai}, p: {kind: gemini}}\n",
            "providers.p",
            "duplicate provider `p`",
            "it was first defined at line 1; keep one of them",
        ),
        (
            "models: {m: {<<: 3}}\n",
            "models.m",
            "expected an anchored mapping to merge, like `<<: *defaults`, got 3",
            None,
        ),
    ],
)
def test_structure_errors(tmp_path: Path, yaml_text: str, key_path: str, message: str, hint: str | None) -> None:
    issues = issues_of(write(tmp_path, yaml_text))
    assert (key_path, message, hint) in [(i.key_path, i.message, i.hint) for i in issues]


@pytest.mark.parametrize(
    ("field", "value", "key_path", "message", "hint"),
    [
        (
            "price",
            "3",
            "models.m.price",
            "expected a mapping like {input: 3.00, output: 15.00} (USD per 1M tokens), got 3",
            None,
        ),
        (
            "price",
            "{input: 1, output: 2, cached: 0.5}",
            "models.m.price.cached",
            "unknown field `cached` in price",
            "known fields: input, output",
        ),
        ("price", "{in: 1, output: 2}", "models.m.price.in", "unknown field `in` in price", "did you mean `input`?"),
        (
            "price",
            "{input: .inf, output: 2}",
            "models.m.price.input",
            "expected a number of USD per 1M tokens (a finite number), got .inf",
            None,
        ),
        (
            "aliases",
            "sonnet",
            "models.m.aliases",
            "expected a list of aliases like [sonnet], got 'sonnet'",
            "write a list, e.g. `[sonnet]`",
        ),
        (
            "aliases",
            "[my alias]",
            "models.m.aliases[0]",
            "an alias can't contain spaces, got 'my alias'",
            "use `-` or `_` between words",
        ),
        ("supports", "[tool]", "models.m.supports[0]", "unknown feature `tool`", "did you mean `tools`?"),
        ("supports", "[tools, ~, stream]", "models.m.supports[1]", "expected a feature, got nothing", None),
        (
            "supports",
            "[tools, ~, stream]",
            "models.m.supports[2]",
            "unknown feature `stream`",
            "did you mean `streaming`?",
        ),
        ("aliases", "[[x], y]", "models.m.aliases[0]", "expected an alias, got a list", None),
        (
            "latency_ms",
            "1" + "0" * 400,
            "models.m.latency_ms",
            f"expected a latency in milliseconds (a finite number), got 1{'0' * 56}...",
            None,
        ),
        (
            "capabilities",
            "[CODING]",
            "models.m.capabilities",
            "expected a mapping of capability scores like {REASONING: 8, CODING: 9}, got a list",
            None,
        ),
        (
            "capabilities",
            "{CODING: 85}",
            "models.m.capabilities.CODING",
            "capability score must be between 1 and 10, got 85",
            "scores run from 1 (weakest) to 10 (strongest); on a 1-100 scale, 85 would be 8.5",
        ),
        (
            "capabilities",
            "{CODING: 5, coding: 6}",
            "models.m.capabilities.coding",
            "capability `CODING` is listed twice",
            "names are case-insensitive",
        ),
        (
            "capabilities",
            "{CODING: yes}",
            "models.m.capabilities.CODING",
            "expected a capability score from 1 to 10, got `yes` (a yes/no value in YAML)",
            None,
        ),
        (
            "capabilities",
            "{my-cap: 5}",
            "models.m.capabilities.my-cap",
            "`my-cap` is not a valid capability name",
            "use letters, digits and `_`, e.g. REASONING",
        ),
        ("deprecation_date", "soon", "models.m.deprecation_date", "expected a date like 2025-10-22, got 'soon'", None),
        ("latency_ms", "-3", "models.m.latency_ms", "latency_ms can't be negative, got -3", None),
        (
            "max_output",
            "256k",
            "models.m.max_output",
            "max_output (256,000 tokens) is larger than the context window (128,000 tokens)",
            "the output has to fit in the context",
        ),
        ("provider", "~", "models.m.provider", "expected a provider name, got nothing", None),
        ("provider", "null", "models.m.provider", "expected a provider name, got `null` (null)", None),
        ("id", '""', "models.m.id", "expected the provider's model id, got an empty string", None),
        (
            "max_tokens",
            "4096",
            "models.m.max_tokens",
            "unknown field `max_tokens` in model `m`",
            "did you mean `max_output`?",
        ),
        (
            "colour",
            "blue",
            "models.m.colour",
            "unknown field `colour` in model `m`",
            "known fields: provider, id, aliases, context, max_output, price, latency_ms, capabilities, supports, "
            "service_tiers, deprecation_date",
        ),
    ],
)
def test_field_errors(tmp_path: Path, field: str, value: str, key_path: str, message: str, hint: str | None) -> None:
    path = one_model(tmp_path, **{field: value})
    issues = issues_of(path)
    assert (key_path, message, hint) in [(i.key_path, i.message, i.hint) for i in issues]
    assert len(issues) == (2 if "{in:" in value or "[tools, ~" in value else 1)
    lines = path.read_text(encoding="utf-8").splitlines()
    for issue in issues:  # every issue points into the offending field's line
        assert lines[issue.line - 1].lstrip().startswith(field + ":")
    if "{in:" in value:
        assert issues[0].message == "price is missing `input`"


def test_missing_required_fields_point_at_the_model(tmp_path: Path) -> None:
    path = write(tmp_path, "models:\n  bare: {}\n")
    issues = issues_of(path)
    assert [(i.line, i.col, i.key_path) for i in issues] == [
        (2, 3, f"models.bare.{f}") for f in ("provider", "context", "price", "latency_ms")
    ]
    assert issues[2].hint == ("add `price: {input: <USD per 1M input tokens>, output: <USD per 1M output tokens>}`")


def test_a_merge_loop_is_reported_not_followed(tmp_path: Path) -> None:
    issues = issues_of(write(tmp_path, "models:\n  m: &m\n    <<: *m\n    provider: p\n"))
    assert [(i.line, i.col, i.message) for i in issues][-1] == (
        3,
        5,
        "a mapping can't merge itself (`<<` makes a loop)",
    )


def test_undefined_provider_is_fine_unless_a_near_miss(tmp_path: Path) -> None:
    assert load_catalog(one_model(tmp_path, provider="together")).models["m"].provider == "together"
    (issue,) = issues_of(one_model(tmp_path, provider="antropic"))
    assert issue.message == "provider `antropic` looks like a misspelling of `anthropic`"


def test_new_capabilities_and_features_are_allowed(tmp_path: Path) -> None:
    spec = load_catalog(
        one_model(tmp_path, capabilities="{MULTILINGUAL: 7, math: 6}", supports="[audio, tools, JSON]")
    ).models["m"]
    assert spec.capabilities == {"MULTILINGUAL": 7.0, "MATH": 6.0}
    assert spec.supports == {"audio", "tools", "json"}


# ---- overlays and Python-built catalogs --------------------------------------------------------------


def spec(name: str, *aliases: str, provider: str = "p", source: SourceRef | None = None) -> ModelSpec:
    return ModelSpec(
        name=name,
        provider=provider,
        id=name,
        aliases=aliases,
        context=1000,
        max_output=None,
        input_price=1e-6,
        output_price=2e-6,
        latency_ms=100,
        capabilities={"CODING": 5},
        supports=frozenset(),
        deprecation_date=None,
        source=source,
    )


def test_merged_overrides_and_extends() -> None:
    base = load_catalog(FIXTURES / "valid.yaml")
    overlay = load_catalog(FIXTURES / "overlay.yaml")
    merged = base.merged(overlay)
    assert list(merged.models) == ["tiny", "big", "plain", "extra"]  # replaced in place, new ones appended
    assert merged.models["big"] is overlay.models["big"]
    assert merged.models["big"].context == 2_000_000
    assert dict(merged.aliases) == {"large": "big", "huge": "extra"}
    assert merged.resolve("huge").name == "extra"
    assert merged.providers["local"].base_url == "http://localhost:8080/v1"
    assert merged.providers["custom"] is base.providers["custom"]
    assert merged.files == (str(FIXTURES / "valid.yaml"), str(FIXTURES / "overlay.yaml"))
    assert base.models["big"].context == 1_000_000  # the inputs are untouched
    assert base.merged(Catalog()) == base


def test_merged_other_names_win_over_aliases() -> None:
    base = Catalog.from_models([spec("a", "x", "y"), spec("b")])
    other = Catalog.from_models([spec("x"), spec("c", "b")])
    merged = base.merged(other)
    assert list(merged.models) == ["a", "x", "c"]  # `b` is now an alias of `c`, so base's model b goes
    assert merged.models["a"].aliases == ("y",)  # `x` is now a model name
    assert dict(merged.aliases) == {"y": "a", "b": "c"}
    assert base.models["a"].aliases == ("x", "y")


@st.composite
def _entries(draw: st.DrawFn) -> list[tuple[str, list[str]]]:
    """(name, aliases) pairs for a valid catalog: every name and alias distinct."""
    tokens = draw(st.lists(st.sampled_from("abcdefgh"), unique=True, max_size=7))
    count = draw(st.integers(min(1, len(tokens)), len(tokens)))
    names, rest = tokens[:count], tokens[count:]
    owners = draw(st.lists(st.integers(0, max(count - 1, 0)), min_size=len(rest), max_size=len(rest)))
    return [(name, [a for a, o in zip(rest, owners, strict=True) if o == i]) for i, name in enumerate(names)]


@given(_entries(), _entries())
@settings(max_examples=200, deadline=None)
def test_merged_never_raises_and_other_always_wins(a: list, b: list) -> None:
    base = Catalog.from_models([spec(name, *aliases, provider="base") for name, aliases in a])
    other = Catalog.from_models([spec(name, *aliases, provider="other") for name, aliases in b])
    merged = base.merged(other)
    for name in other.names():
        assert merged.resolve(name) == other.resolve(name)
    for name in base.names():  # base's names still mean what they meant, unless other took them
        found = merged.resolve(name)
        if found is not None and name not in other:
            assert (found.name, found.provider) == (base.resolve(name).name, "base")
    assert set(merged.models) >= set(other.models)
    for found in merged:  # aliases and names stay consistent
        assert all(merged.aliases[a] == found.name for a in found.aliases)


def test_from_models_reports_clashes_with_sources() -> None:
    src = SourceRef("gen.yaml", 3, 5)
    with pytest.raises(CatalogError) as info:
        Catalog.from_models([spec("a", "z"), spec("a", source=src), spec("b", "z"), spec("c", "a")], files=["gen.yaml"])
    assert info.value.issues == [
        CatalogIssue("gen.yaml", 3, 5, "models.a", "duplicate model name `a`", "each model name may be defined once"),
        CatalogIssue("gen.yaml", 0, 0, "models.b", "alias `z` is used by both `a` and `b`", "aliases must be unique"),
        CatalogIssue(
            "gen.yaml",
            0,
            0,
            "models.c",
            "alias `a` of model `c` is also a model name",
            "aliases must differ from every model name",
        ),
    ]


def test_from_models_accepts_provider_mapping_or_iterable() -> None:
    prov = ProviderSpec(name="p", kind="openai")
    one = Catalog.from_models([spec("a")], [prov])
    two = Catalog.from_models([spec("a")], {"p": prov})
    assert one == two and one.providers["p"] is prov
    assert repr(one) == "<Catalog 1 models, 1 providers from no file>"


def test_catalog_and_specs_are_immutable() -> None:
    cat = default_catalog()
    with pytest.raises(AttributeError):
        cat.models = {}  # type: ignore[misc]
    with pytest.raises(TypeError):
        cat.models["x"] = cat.models["gpt-4o"]  # type: ignore[index]
    with pytest.raises(Exception, match="frozen"):
        cat.models["gpt-4o"].context = 1  # type: ignore[misc]
    assert len({*cat}) == len(cat)  # specs are hashable
    assert hash(ProviderSpec(name="p", kind="openai", headers={"a": "b"})) is not None


def test_pickle_round_trip() -> None:
    cat = default_catalog()
    assert pickle.loads(pickle.dumps(cat)) == cat
    with pytest.raises(CatalogError) as info:
        load_catalog(FIXTURES / "errors.yaml")
    again = pickle.loads(pickle.dumps(info.value))
    assert again.issues == info.value.issues and str(again) == str(info.value)


def test_modelspec_validates_direct_construction() -> None:
    with pytest.raises(ValueError):
        ModelSpec(**{**spec("a").model_dump(), "capabilities": {"X": 11}})
    with pytest.raises(ValueError):
        ModelSpec(**{**spec("a").model_dump(), "input_price": -1})


def test_many_issues_are_all_kept_but_rendering_is_capped(tmp_path: Path) -> None:
    body = "".join(
        f"  m{i}: {{provider: p, context: x, price: {{input: 1, output: 1}}, latency_ms: 1}}\n" for i in range(60)
    )
    with pytest.raises(CatalogError) as info:
        load_catalog(write(tmp_path, "models:\n" + body))
    assert len(info.value.issues) == 60
    assert [i.line for i in info.value.issues] == list(range(2, 62))
    assert str(info.value).endswith("... and 10 more (see CatalogError.issues)")


# ---- size and robustness -------------------------------------------------------------------------------


def test_building_4000_specs() -> None:
    caps = dict.fromkeys(STANDARD_CAPABILITIES, 5.0)
    specs = [
        ModelSpec(
            name=f"m{i}",
            provider="p",
            id=f"m{i}",
            aliases=(f"a{i}",),
            context=128_000,
            max_output=4096,
            input_price=1e-6,
            output_price=2e-6,
            latency_ms=500.0,
            capabilities=caps,
            supports=frozenset({"tools"}),
            deprecation_date=None,
            source=None,
        )
        for i in range(4000)
    ]
    cat = Catalog.from_models(specs)
    assert len(cat) == 4000 and cat.resolve("a3999").name == "m3999" and cat.resolve("m0").name == "m0"


def test_loading_the_bundled_catalog() -> None:
    cat = load_catalog(default_catalog_path())
    assert len(cat) > 0
    assert all(cat.resolve(name).name == name for name in cat.models)


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**7),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.sampled_from(["200k", "1M", "openai", "tools", "2025-01-01"]),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(
                [
                    "provider",
                    "context",
                    "price",
                    "input",
                    "output",
                    "aliases",
                    "supports",
                    "capabilities",
                    "CODING",
                    "latency_ms",
                    "id",
                    "x",
                ]
            ),
            inner,
            max_size=5,
        ),
    ),
    max_leaves=12,
)


@given(st.dictionaries(st.text(min_size=1, max_size=6), _values, max_size=4))
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
def test_arbitrary_models_load_or_raise_catalog_error(tmp_path: Path, models: dict) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump({"models": models}), encoding="utf-8")
    try:
        cat = load_catalog(path)
    except CatalogError as exc:
        assert exc.issues and all(i.file == str(path) and i.line >= 1 and i.col >= 1 for i in exc.issues)
        assert str(exc)
    else:
        assert set(cat.models) <= set(map(str, models))
