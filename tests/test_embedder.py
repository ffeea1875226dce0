"""The embedder stage (engine/runtime/embedder.py, embedder_adapters.py): the default WordLlama model loads offline
and gives 256-d unit vectors equal to WordLlama's own `embed(norm=True)`, the cut of a request's text keeps its head
and tail, example vectors are cached by content, and the errors say what to install. The sentence-transformers and
fastembed adapters are checked against small stand-in modules (the real packages need a model on disk)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.runtime import embedder as emb
from engine.runtime.embedder import (
    EXTRA_HINT,
    HEAD_CHARS,
    TAIL_CHARS,
    EmbedderUnavailable,
    WordLlamaEmbedder,
    default_embedder,
    embed_examples,
    embed_text,
    nearest,
    task_text,
)
from engine.runtime.embedder_adapters import LocalEmbedder, fastembed_embedder, sentence_transformers_embedder
from tests.semantic_kit import BagOfWords, cosine

REPO = Path(__file__).resolve().parent.parent
pytest.importorskip("wordllama", reason=f"the default embedder needs the semantic extra: {EXTRA_HINT}")

MARK = "\u2581"  # the tokenizer's word mark
TEXTS = [
    "write a python function that parses dates",
    "Implement a function that merges two sorted lists",
    "What's the weather today?",
    "  two  spaces, a\ttab\n\nand new lines  ",
    f"a word mark {MARK} typed by the user {MARK}{MARK}x",
    "émoji 🎉, 中文 and кириллица",
    "special tokens </s> and <s> and <unk> read as such",
    "<b>html</b> is not special",
    "x" * 3000,
    " leading space",
    "trailing space ",
]


def _run_python(code: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter that imports the checkout, with HOME and the caches in `tmp_path`."""
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "VIRTUAL_ENV")}
    base.update(
        PYTHONPATH=str(REPO), HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path / "cache"), HF_HOME=str(tmp_path / "hf")
    )
    base.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=base, capture_output=True, text=True, timeout=120
    )


# ---- the default model ---------------------------------------------------------------------------------------
NO_NETWORK = """
import socket
def refuse(*args, **kwargs):
    raise OSError("network used")
socket.socket.connect = refuse
socket.create_connection = refuse
"""


def test_the_default_model_loads_offline_and_downloads_nothing(tmp_path: Path) -> None:
    code = NO_NETWORK + (
        "import json, numpy as np\n"
        "from engine.runtime.embedder import default_embedder\n"
        "v = default_embedder()(['write a python function that parses dates', 'hello'])\n"
        "print(json.dumps({'shape': list(v.shape), 'norms': np.linalg.norm(v, axis=1).round(5).tolist()}))\n"
    )
    proc = _run_python(code, tmp_path, HF_HUB_OFFLINE="1")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"shape": [2, 256], "norms": [1.0, 1.0]}
    assert sorted(p.name for p in tmp_path.rglob("*")) == [], "nothing written to HOME or the caches"


def test_loading_the_default_model_leaves_logging_alone(tmp_path: Path) -> None:
    """wordllama's import calls logging.basicConfig(level=INFO); the engine's logging is the application's."""
    code = (
        "import logging\n"
        "from engine.runtime.embedder import default_embedder\n"
        "default_embedder()\n"
        "root = logging.getLogger()\n"
        "print(len(root.handlers), logging.getLevelName(root.level))\n"
    )
    proc = _run_python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0", "WARNING"]


def test_the_default_model_is_loaded_once_and_gives_256_d_unit_vectors() -> None:
    model = default_embedder()
    assert default_embedder() is model and isinstance(model, WordLlamaEmbedder)
    vector = embed_text(model, "write a python function that parses dates")
    assert vector.shape == (256,) and vector.dtype == np.float32
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5


def test_the_default_model_gives_wordllamas_own_vectors() -> None:
    model = default_embedder()
    assert isinstance(model, WordLlamaEmbedder) and model.wordwise, "WordLlama's tokenizer splits at words"
    ours = model(TEXTS)
    theirs = model.model.embed(TEXTS, norm=True)
    assert ours.shape == theirs.shape == (len(TEXTS), 256)
    assert np.abs(ours - theirs).max() < 1e-6


ALPHABET = [*"abc XYZ1.,;:!?\n\t'\"<>/s-_", MARK, "é", "🎉", "中"]


@given(st.text(alphabet=st.sampled_from(ALPHABET), max_size=200))
def test_word_by_word_tokens_are_the_tokenizers_tokens(text: str) -> None:
    model = default_embedder()
    assert isinstance(model, WordLlamaEmbedder)
    if any(s in text for s in model.specials):
        return  # such texts take WordLlama's own path (the test above covers them)
    assert model.token_ids(text) == model.tokenizer.encode(text, add_special_tokens=False).ids
    ours = model([text])[0]
    with np.errstate(invalid="ignore"):  # a text of no tokens: WordLlama divides 0 by 0
        theirs = np.nan_to_num(model.model.embed([text], norm=True)[0])
    assert np.abs(ours - theirs).max() < 1e-6


def test_a_text_with_no_tokens_is_a_zero_vector() -> None:
    assert not default_embedder()([""]).any()
    assert embed_text(default_embedder(), "").tolist() == [0.0] * 256


def test_another_tokenizer_falls_back_to_wordllamas_embed() -> None:
    from tokenizers import Tokenizer

    model = default_embedder()
    assert isinstance(model, WordLlamaEmbedder)
    config = json.loads(model.tokenizer.to_str())
    config["pre_tokenizer"] = {"type": "Whitespace"}
    calls: list[list[str]] = []

    def embed(texts: list[str], norm: bool = False) -> Any:
        calls.append(texts)
        return model.model.embed(texts, norm=norm)

    stand_in = types.SimpleNamespace(
        embedding=model.weights, tokenizer=Tokenizer.from_str(json.dumps(config)), embed=embed
    )
    other = WordLlamaEmbedder(stand_in)
    assert not other.wordwise
    assert np.abs(other(TEXTS[:3]) - model(TEXTS[:3])).max() < 1e-6
    assert calls == [[t] for t in TEXTS[:3]]


def test_the_cosine_scale_of_the_default_model() -> None:
    """The scale docs/semantic.md states: a paraphrase about 0.7, a related request about 0.3, unrelated about 0.1."""
    model = default_embedder()
    a = embed_text(model, "write a python function that parses dates")
    paraphrase = embed_text(model, "write a python function to parse a date string")
    related = embed_text(model, "Implement a function that merges two sorted lists")
    unrelated = embed_text(model, "What's the weather today?")
    assert float(a @ paraphrase) > 0.6 > float(a @ related) > float(a @ unrelated)


def test_without_wordllama_the_error_names_the_extra(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['wordllama'] = None\n"
        "from engine.runtime.embedder import default_embedder, EmbedderUnavailable\n"
        "try:\n"
        "    default_embedder()\n"
        "except EmbedderUnavailable as exc:\n"
        "    print(exc)\n"
    )
    proc = _run_python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        "no default embedder (the `semantic` extra is not installed): pip install 'modelroute[semantic]', "
        "or pass Engine.load(embedder=...)"
    )


# ---- the cut --------------------------------------------------------------------------------------------------
def test_a_short_text_is_embedded_whole() -> None:
    whole = "h" * (HEAD_CHARS + TAIL_CHARS)
    assert task_text(whole) is whole
    assert task_text("") == ""


def test_the_cut_keeps_the_head_and_the_tail() -> None:
    text = "H" * HEAD_CHARS + "middle " * 1000 + "T" * TAIL_CHARS
    cut = task_text(text)
    assert cut == "H" * HEAD_CHARS + "\n" + "T" * TAIL_CHARS
    one_more = "x" * (HEAD_CHARS + TAIL_CHARS + 1)
    assert task_text(one_more) == "x" * HEAD_CHARS + "\n" + "x" * TAIL_CHARS


def test_embed_text_embeds_the_cut() -> None:
    seen = BagOfWords()
    embed_text(seen, "python " * HEAD_CHARS + "weather today")
    assert seen.embedded == [task_text("python " * HEAD_CHARS + "weather today")]


# ---- examples, cached by content ------------------------------------------------------------------------------
def test_examples_are_embedded_once_by_content() -> None:
    seen = BagOfWords()
    examples = ["parse dates in python", "a stack trace error", "parse dates in python"]
    rows = embed_examples(seen, examples)
    assert rows.shape == (3, 16) and rows.dtype == np.float32
    assert seen.embedded == ["parse dates in python", "a stack trace error"]  # a duplicate once
    again = embed_examples(seen, ["a stack trace error", "translate to french", "parse dates in python"])
    assert seen.embedded[2:] == ["translate to french"]  # known texts are not embedded again
    assert np.array_equal(again[0], rows[1]) and np.array_equal(again[2], rows[0])
    assert abs(float(again[1] @ rows[0]) - cosine("translate to french", "parse dates in python")) < 1e-6


def test_each_embedder_has_its_own_example_cache() -> None:
    first, second = BagOfWords(), BagOfWords()
    embed_examples(first, ["parse dates in python"])
    embed_examples(second, ["parse dates in python"])
    assert first.embedded == second.embedded == ["parse dates in python"]


def test_no_examples_is_an_empty_array() -> None:
    seen = BagOfWords()
    assert embed_examples(seen, []).shape == (0, 0) and seen.calls == []


def test_an_embedder_answering_the_wrong_shape_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"expected \(2, d\): one vector per text"):
        embed_examples(lambda texts: [[1.0, 0.0]], ["python one", "python two"])


def test_rows_are_normalised_and_a_zero_vector_stays_zero() -> None:
    rows = embed_examples(lambda texts: [[3.0, 4.0], [0.0, 0.0]], ["a 3 4", "a zero"])
    assert rows.tolist() == [[pytest.approx(0.6), pytest.approx(0.8)], [0.0, 0.0]]


def test_nearest_gives_the_index_and_the_cosine() -> None:
    rows = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=np.float32)
    index, score = nearest(rows, np.array([0.0, 1.0], dtype=np.float32))
    assert index == 2 and score == pytest.approx(1.0)
    index, score = nearest(rows, np.array([0.8, 0.6], dtype=np.float32))
    assert index == 1 and score == pytest.approx(0.96)


# ---- adapters -------------------------------------------------------------------------------------------------
class FakeSentenceTransformer:
    """Stands in for sentence_transformers.SentenceTransformer: records its arguments, answers unnormalised rows."""

    made: list[tuple[str, dict[str, Any]]] = []

    def __init__(self, path: str, **kw: Any) -> None:
        self.made.append((path, kw))
        self.encoded: list[tuple[list[str], dict[str, Any]]] = []

    def encode(self, texts: list[str], **kw: Any) -> np.ndarray:
        self.encoded.append((texts, kw))
        return np.array([[3.0, 4.0] if t else [0.0, 0.0] for t in texts], dtype=np.float64)


class FakeTextEmbedding:
    """Stands in for fastembed.TextEmbedding: records its arguments; `embed` yields one row at a time."""

    made: list[dict[str, Any]] = []

    def __init__(self, **kw: Any) -> None:
        self.made.append(kw)

    def embed(self, texts: list[str]) -> Any:
        for t in texts:
            yield np.array([0.0, 2.0, 0.0]) if t else np.zeros(3)


def install_fake(monkeypatch: pytest.MonkeyPatch, module_name: str, name: str, fake: Any) -> None:
    """Make `import module_name` give a stand-in module whose `name` is `fake` (its record of instances emptied)."""
    module = types.ModuleType(module_name)
    setattr(module, name, fake)
    monkeypatch.setitem(sys.modules, module_name, module)
    fake.made.clear()


@pytest.fixture
def fake_sentence_transformers(monkeypatch: pytest.MonkeyPatch) -> type[FakeSentenceTransformer]:
    install_fake(monkeypatch, "sentence_transformers", "SentenceTransformer", FakeSentenceTransformer)
    return FakeSentenceTransformer


@pytest.fixture
def fake_fastembed(monkeypatch: pytest.MonkeyPatch) -> type[FakeTextEmbedding]:
    install_fake(monkeypatch, "fastembed", "TextEmbedding", FakeTextEmbedding)
    return FakeTextEmbedding


def test_sentence_transformers_adapter_loads_locally_and_normalises(
    fake_sentence_transformers: type[FakeSentenceTransformer], tmp_path: Path
) -> None:
    embedder = sentence_transformers_embedder(tmp_path, trust_remote_code=False, local_files_only=False)
    assert fake_sentence_transformers.made == [
        (str(tmp_path), {"device": "cpu", "trust_remote_code": False, "local_files_only": True})
    ]
    rows = embedder(["a text", ""])
    assert rows.dtype == np.float32 and rows.tolist() == [[pytest.approx(0.6), pytest.approx(0.8)], [0.0, 0.0]]
    assert isinstance(embedder, LocalEmbedder) and embedder.model.encoded == [
        (["a text", ""], {"convert_to_numpy": True, "normalize_embeddings": True, "show_progress_bar": False})
    ]
    assert embed_text(embedder, "a text").tolist() == [pytest.approx(0.6), pytest.approx(0.8)]


def test_sentence_transformers_adapter_needs_a_folder(fake_sentence_transformers: type[Any], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="modelroute downloads no model"):
        sentence_transformers_embedder(tmp_path / "absent")
    assert fake_sentence_transformers.made == []


def test_fastembed_adapter_from_a_folder(fake_fastembed: type[FakeTextEmbedding], tmp_path: Path) -> None:
    embedder = fastembed_embedder(tmp_path, model_name="BAAI/bge-small-en-v1.5", threads=1)
    assert fake_fastembed.made == [
        {
            "threads": 1,
            "model_name": "BAAI/bge-small-en-v1.5",
            "specific_model_path": str(tmp_path),
            "local_files_only": True,
        }
    ]
    assert embedder(["x", ""]).tolist() == [[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="needs model_name="):
        fastembed_embedder(tmp_path)


def test_fastembed_adapter_from_its_cache(fake_fastembed: type[FakeTextEmbedding], tmp_path: Path) -> None:
    fastembed_embedder("BAAI/bge-small-en-v1.5", cache_dir=str(tmp_path))
    assert fake_fastembed.made == [
        {"model_name": "BAAI/bge-small-en-v1.5", "cache_dir": str(tmp_path), "local_files_only": True}
    ]
    with pytest.raises(FileNotFoundError, match="no model folder"):
        fastembed_embedder(str(tmp_path / "absent"))


@pytest.mark.parametrize(
    ("module", "make", "install"),
    [
        ("sentence_transformers", sentence_transformers_embedder, "pip install sentence-transformers"),
        ("fastembed", lambda p: fastembed_embedder(p, model_name="BAAI/bge-small-en-v1.5"), "pip install fastembed"),
    ],
)
def test_an_adapter_without_its_package_names_it(
    module: str, make: Any, install: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(EmbedderUnavailable, match=install):
        make(tmp_path)


def test_the_example_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(emb, "EXAMPLE_CACHE", 2)
    seen = BagOfWords()
    embed_examples(seen, ["python one", "python two", "python three"])
    embed_examples(seen, ["python one"])  # pushed out by the third: embedded again
    assert seen.embedded == ["python one", "python two", "python three", "python one"]


# ---- with the engine: the default model routes by meaning ------------------------------------------------------
POLICY = """\
task code = like ["write a python function that parses dates", "why does this stack trace happen",
                  "fix the bug in this code", "implement a binary search in java"] >= 0.3
task chat = like "examples/chat.txt" >= 0.3
when task is code use claude-opus-4-6
when task is chat use gpt-4o-mini
otherwise use claude-sonnet-4-6
"""
CHAT = "# small talk\nhi, how are you today?\ntell me a joke\n\ngood morning! how was your weekend?\n"


@pytest.fixture
def semantic_policy(tmp_path: Path) -> Path:
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "chat.txt").write_text(CHAT, encoding="utf-8")
    (tmp_path / "main.route").write_text(POLICY, encoding="utf-8")
    return tmp_path / "main.route"


def test_the_default_model_routes_obvious_prompts_by_meaning(semantic_policy: Path) -> None:
    from engine import Engine

    engine = Engine.load(semantic_policy)
    assert engine.embedder is default_embedder()
    code = engine.decide("Fix this bug: my loop never ends in JavaScript")
    assert (code.model, code.tasks) == ("claude-opus-4-6", ["code"])
    assert code.vector is not None and code.vector.shape == (256,)
    assert [n.example for n in code.nearest if n.task == "code"] == ["fix the bug in this code"]
    chat = engine.decide("tell me something funny")
    assert (chat.model, chat.tasks) == ("gpt-4o-mini", ["chat"])
    assert [n.example for n in chat.nearest if n.task == "chat"] == ["tell me a joke"]
    other = engine.decide("Analyze this complex financial report and identify the main risks")
    assert (other.model, other.tasks) == ("claude-sonnet-4-6", [])


def test_explain_shows_the_nearest_example(semantic_policy: Path, cli: Any) -> None:
    proc = cli("explain", "-p", str(semantic_policy), "Fix this bug: my loop never ends in JavaScript")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert 'nearest example 3 "fix the bug in this code"' in proc.stdout
    assert "decision   claude-opus-4-6" in proc.stdout


def test_example_vectors_are_kept_for_the_recent_embedders_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(emb, "EMBEDDERS_KEPT", 2)
    first, second, third = BagOfWords(), BagOfWords(), BagOfWords()
    for embedder in (first, second, first, third):  # first was used after second: second goes
        embed_examples(embedder, ["python one"])
    embed_examples(first, ["python one"])
    embed_examples(second, ["python one"])
    assert (len(first.embedded), len(second.embedded), len(third.embedded)) == (1, 2, 1)
