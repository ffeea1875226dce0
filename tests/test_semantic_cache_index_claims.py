"""The claims of docs/cache.md, "Semantic cache", about counting, a failing embedder, the index and its bounds
and the measured cosines, that tests/test_semantic_cache.py leaves unproven (the others:
tests/test_semantic_cache_claims.py): requests through the gateway (the official openai SDK against uvicorn on
loopback, the FakeServer as upstream, a real redis-server) and the Python API, the SemanticIndex itself, and
`bench/semantic_bench.py --cosines`, in; what the upstream saw, the headers, the log and the index's contents out."""

from __future__ import annotations

import ast
import hashlib
import logging
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

np = pytest.importorskip("numpy", reason="the semantic extra is not installed (pip install -e '.[semantic]')")
pytest.importorskip("starlette", reason="gateway deps not installed (pip install -e '.[test]')")
pytest.importorskip("uvicorn", reason="gateway deps not installed (pip install -e '.[test]')")
pytest.importorskip("openai", reason="the openai SDK is not installed (pip install -e '.[test]')")

from engine.runtime.settings import SETTINGS  # noqa: E402
from engine.runtime.state import MemoryStore  # noqa: E402
from providers.execution.cache import CACHE_HEADER, ResponseCache  # noqa: E402
from providers.execution.semantic_cache import INDEX_MAX_BYTES, SCOPE_MAX, SemanticIndex  # noqa: E402
from tests.clocks import Clock  # noqa: E402
from tests.engines import engine_for  # noqa: E402
from tests.fakeserver import FakeServer  # noqa: E402
from tests.gateway_kit import redis_or_skip  # noqa: E402
from tests.gateway_kit import sdk_client as client  # noqa: E402
from tests.semantic_kit import BagOfWords, cosine  # noqa: E402
from tests.test_cache import ask, upstream_calls  # noqa: E402
from tests.test_semantic_cache import FIRST, PARAPHRASE, POLICY, SEMANTIC, user  # noqa: E402
from tests.test_semantic_cache_claims import cached_engine, embedded, semantic_gateways  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def gateway(fake_server: FakeServer) -> Iterator[Callable[..., Any]]:
    """tests/test_semantic_cache_claims.py's: `gateway(policy, embedder=..., ...)` gives (engine, url)."""
    yield from semantic_gateways(fake_server)


# ---- Counting, the Python API, a failing embedder --------------------------------------------------------------------
def test_cache_similarity_gives_the_cosine_of_a_prepared_run(fake_server: FakeServer) -> None:
    """Claim: "`cache.similarity(run)` gives the cosine a request's answer was found at": a Run of executor.prepare(),
    read before it is settled."""
    engine = cached_engine(fake_server)
    ex = engine.executor
    try:
        engine.complete(FIRST, temperature=0)
        for text, expected in ((FIRST, None), (PARAPHRASE, cosine(FIRST, PARAPHRASE))):
            run = ex.prepare(text, None, None, {"temperature": 0}, {})
            assert ex.cached(run) is not None
            found = ex.cache.similarity(run)
            assert found == (None if expected is None else pytest.approx(expected, abs=1e-4))
            ex.settle(run)
            assert ex.cache.similarity(run) is None  # settled: forgotten
        assert ex.cache.semantic_hits == 1 and upstream_calls(fake_server) == 1
    finally:
        engine.close()


def test_complete_says_whether_the_cache_answered_and_at_what_cosine(fake_server: FakeServer) -> None:
    """Engine.complete()'s Completion carries `cached` and `cache_similarity`: a fresh answer, an exact hit (no
    cosine), a hit by meaning (the cosine the gateway sends as x-modelroute-cache-similarity)."""
    engine = cached_engine(fake_server)
    try:
        fresh = engine.complete(FIRST, temperature=0)
        assert not fresh.cached and fresh.cache_similarity is None and fresh.attempts
        exact = engine.complete(FIRST, temperature=0)
        assert exact.cached and exact.cache_similarity is None and not exact.attempts and exact.cost == 0
        near = engine.complete(PARAPHRASE, temperature=0)
        assert near.cached and near.cache_similarity == pytest.approx(cosine(FIRST, PARAPHRASE), abs=1e-4)
        assert "cached at" in repr(near) and upstream_calls(fake_server) == 1
    finally:
        engine.close()


class EmbedderDown(Exception):
    """A cause of its own, so the one warning per cause is this test's."""


def test_a_failing_embedder_warns_once_per_cause_and_never_fails_a_request(
    gateway, fake_server: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Claim: "If the embedder fails ..., the request is cached by its exact key only. One WARNING is logged per cause,
    and the request never fails because of it"."""

    def down(texts: list[str]) -> Any:
        raise EmbedderDown("the embedding service is down")

    _, url = gateway(embedder=down)
    c = client(url)
    with caplog.at_level(logging.WARNING, logger="modelroute.cache"):
        statuses = [ask(c, messages=user(t))[1][CACHE_HEADER] for t in (FIRST, PARAPHRASE, FIRST, PARAPHRASE + "!")]
    assert statuses == ["miss", "miss", "hit", "miss"] and upstream_calls(fake_server) == 3
    warnings = [r.getMessage() for r in caplog.records if "EmbedderDown" in r.getMessage()]
    assert len(warnings) == 1 and "exact" in warnings[0]


# ---- The index and its bounds ------------------------------------------------------------------------------------
def unit(rng: Any, dim: int) -> Any:
    v = rng.standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def test_the_default_bounds_and_no_policy_setting_for_them() -> None:
    """Claim: "per scope at most 1,000 vectors ... and 16 MiB in all ... The bounds are `SemanticIndex(max_bytes=...,
    per_scope=...)` ..., given as `ResponseCache(index=...)`; there is no policy setting for them"."""
    assert (SCOPE_MAX, INDEX_MAX_BYTES) == (1000, 16 * 1024 * 1024)
    index = ResponseCache().index
    assert (index.per_scope, index.max_bytes) == (SCOPE_MAX, INDEX_MAX_BYTES)
    given = SemanticIndex(max_bytes=10, per_scope=2)
    assert ResponseCache(index=given).index is given
    assert sorted(n for n in SETTINGS if n.startswith("cache.")) == [
        "cache.max_bytes",
        "cache.sampled",
        "cache.semantic",
        "cache.shared",
        "cache.ttl",
    ]


def test_a_scope_keeps_1000_vectors_and_drops_the_least_recently_used() -> None:
    """Claim: "per scope at most 1,000 vectors (the least recently used goes first)"."""
    rng, embedder, index = np.random.default_rng(1), object(), SemanticIndex()
    vectors = [unit(rng, 16) for _ in range(SCOPE_MAX + 1)]
    for i, v in enumerate(vectors[:SCOPE_MAX]):
        index.add("scope", embedder, v, f"k{i}", expires=1e18, now=0.0)
    assert index.nearest("scope", embedder, vectors[0], 0.999, now=0.0) == ("k0", pytest.approx(1.0, abs=1e-5))
    index.add("scope", embedder, vectors[SCOPE_MAX], f"k{SCOPE_MAX}", expires=1e18, now=0.0)
    assert len(index) == SCOPE_MAX and "k0" in index and "k1" not in index and f"k{SCOPE_MAX}" in index


def test_16_mib_hold_about_15000_wordllama_vectors_the_least_recently_used_scope_first() -> None:
    """Claim: "16 MiB in all (vectors, keys and bookkeeping). Past that, the least recently used vector of the least
    recently used scope goes. A 256-d WordLlama vector takes 1 KiB (1,104 bytes with its key and bookkeeping), so
    the index holds about 15,000 requests"."""
    rng, embedder, index = np.random.default_rng(2), object(), SemanticIndex()
    v = unit(rng, 256)
    row = 256 * 4 + 64 + 16  # the vector, a sha256 key, bookkeeping
    for i in range(16_000):
        key = hashlib.sha256(str(i).encode()).hexdigest()
        index.add(f"scope {i}", embedder, v, key, expires=1e18, now=0.0)
    assert len(index) == INDEX_MAX_BYTES // row == 15_196 and index.bytes <= INDEX_MAX_BYTES
    assert index.nearest("scope 803", embedder, v, 0.9, now=0.0) is None  # the oldest scopes went
    assert index.nearest("scope 804", embedder, v, 0.9, now=0.0) is not None

    small = SemanticIndex(max_bytes=3 * (4 * 2 + 1 + 16))  # three rows of 2-d vectors and 1-character keys
    x, y = np.array([1.0, 0.0], dtype=np.float32), np.array([0.0, 1.0], dtype=np.float32)
    small.add("a", embedder, x, "1", expires=1e18, now=0.0)
    small.add("a", embedder, y, "2", expires=1e18, now=0.0)
    small.add("b", embedder, x, "3", expires=1e18, now=0.0)
    assert small.nearest("a", embedder, x, 0.9, now=0.0) is not None  # scope a, row 1: used last
    small.add("c", embedder, x, "4", expires=1e18, now=0.0)  # b is the least recently used scope
    assert ["1" in small, "2" in small, "3" in small, "4" in small] == [True, True, False, True]
    small.add("c", embedder, y, "5", expires=1e18, now=0.0)  # a now: its least recently used row, 2
    assert ["1" in small, "2" in small, "4" in small, "5" in small] == [True, False, True, True]


def test_an_expired_answer_leaves_the_index(fake_server: FakeServer) -> None:
    """Claim: "An answer the in-memory LRU evicts leaves the index (tests/test_semantic_cache.py). One that expires
    leaves it when its scope is next searched or added to, or its exact key looked up"."""
    clock = Clock()
    engine = cached_engine(fake_server, clock=clock)
    index = engine.executor.cache.index
    try:
        engine.complete(FIRST, temperature=0)
        one = index.bytes
        assert len(index) == 1 and one > 0
        clock.t += 3601
        assert engine.complete(PARAPHRASE, temperature=0).attempts != []  # searched: FIRST's row went
        assert len(index) == 1 and index.bytes == one  # one row, of the same size
        assert engine.complete(FIRST.upper(), temperature=0).attempts == []  # PARAPHRASE's answer, by meaning
        clock.t += 3601
        assert engine.complete(FIRST, temperature=0).attempts != []  # PARAPHRASE's row went, FIRST's came
        assert len(index) == 1 and upstream_calls(fake_server) == 3
    finally:
        engine.close()

    embedder, x = object(), np.array([1.0, 0.0], dtype=np.float32)
    direct = SemanticIndex()
    direct.add("scope", embedder, x, "old", expires=10.0, now=0.0)
    direct.add("scope", embedder, x, "new", expires=30.0, now=20.0)  # added to: the expired row went
    assert "old" not in direct and "new" in direct and direct.bytes == 4 * 2 + 3 + 16
    direct.add("other", embedder, x, "k", expires=100.0, now=40.0)
    assert direct.nearest("scope", embedder, x, 0.5, now=40.0) is None  # searched: "new" went, and its scope
    assert len(direct) == 1 and direct.scopes == 1


def test_two_embedders_on_one_state_store_never_compare_vectors(fake_server: FakeServer) -> None:
    """Claim: "Vectors from two different embedders (two engines on one state store with different `embedder=`) are
    never compared: a scope embedded by another embedder starts over"; the answers themselves are shared."""
    store = MemoryStore()
    one, two = BagOfWords(), BagOfWords()
    engines = [engine_for(fake_server, SEMANTIC + POLICY, state=store, embedder=e) for e in (one, two)]
    try:
        assert engines[0].executor.cache is engines[1].executor.cache
        engines[0].complete(FIRST, temperature=0)
        assert engines[1].complete(PARAPHRASE, temperature=0).attempts != []  # one's vectors: not compared
        assert engines[1].complete(FIRST, temperature=0).attempts == []  # an exact hit: the answer is shared
        assert engines[0].complete(PARAPHRASE.upper(), temperature=0).attempts != []  # the scope started over
        assert engines[1].complete(FIRST.upper(), temperature=0).attempts != []  # ...and over again
        assert one.embedded == [FIRST, PARAPHRASE.upper()] and upstream_calls(fake_server) == 4
    finally:
        for engine in engines:
            engine.close()


def test_an_answer_gone_from_redis_leaves_the_index(gateway, fake_server: FakeServer, request) -> None:
    """Claim: "An answer that vanished from Redis is dropped from the index when a lookup finds it gone"; a replica
    serving another's answer as an exact hit embeds it "once per answer"."""
    import redis

    with redis_or_skip() as server:
        from providers.state.redis_store import RedisStore

        prefix = f"semclaims{abs(hash(request.node.nodeid)) % 10**8}:"
        stores = [RedisStore(server.url, prefix=prefix) for _ in range(2)]
        (first, one), (second, two) = (gateway(state=store) for store in stores)
        ask(client(one), messages=user(FIRST))
        for _ in range(2):
            assert ask(client(two), messages=user(FIRST))[1][CACHE_HEADER] == "hit"
        assert embedded(second) == [FIRST] and len(second.executor.cache.index) == 1
        redis.Redis.from_url(server.url).flushdb()
        assert ask(client(one), messages=user(PARAPHRASE))[1][CACHE_HEADER] == "miss"  # gone: asked again
        assert len(first.executor.cache.index) == 1  # FIRST dropped, PARAPHRASE indexed
        assert ask(client(one), messages=user(FIRST))[1][CACHE_HEADER] == "hit"  # by meaning, PARAPHRASE's answer
        assert upstream_calls(fake_server) == 2
        for store in stores:
            store.close()


# ---- Choosing the threshold, the risk: the tables -----------------------------------------------------------------
def semantic_section() -> str:
    text = (ROOT / "docs" / "cache.md").read_text()
    start = text.index("## Semantic cache")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def printed_cosines() -> list[tuple[float, str, str]]:
    """What `python bench/semantic_bench.py --cosines` prints: (cosine, first text, second text) per pair."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "semantic_bench.py"), "--cosines"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    pairs = []
    for line in proc.stdout.splitlines():
        if re.match(r"^ *-?\d\.\d\d  ", line):
            body = ast.parse(line[8 + 24 + 1 :], mode="eval").body
            assert isinstance(body, ast.BinOp) and isinstance(body.left, ast.Constant)
            assert isinstance(body.right, ast.Constant)
            pairs.append((float(line[:6]), str(body.left.value), str(body.right.value)))
    return pairs


def names(cell: str, text: str) -> bool:
    """Whether a table cell's side (`"full text"`, `"... its end"`, or a few words) names `text`."""
    cell = cell.strip()
    if cell.startswith('"') and cell.endswith('"'):
        quoted = cell[1:-1]
        return text.endswith(quoted[4:]) if quoted.startswith("... ") else text == quoted
    words = re.findall(r"[a-z']+", text.lower())
    return all(any(w.startswith(c) for w in words) for c in re.findall(r"[a-z']+", cell.lower()))


def test_the_documented_cosines_are_what_the_bench_prints() -> None:
    """Claim: "Measured with WordLlama, the default embedder (`python bench/semantic_bench.py --cosines` prints every
    pair below)": every row of both tables, the paraphrases in other words "about 0.3", and "No threshold separates
    these pairs from harmless rewordings"."""
    pytest.importorskip("wordllama", reason="the semantic extra is not installed (pip install -e '.[semantic]')")
    printed = printed_cosines()
    rows = re.findall(r"^\| (.+) \| (-?\d\.\d\d) \|$", semantic_section(), re.M)
    assert len(rows) == 10
    tables: list[float] = []
    for pair, value in rows:
        inner = re.search(r"\((.*)\)$", pair)
        left, right = (inner.group(1) if inner else pair).split(" / ")
        found = [c for c, a, b in printed if names(left, a) and names(right, b)]
        assert found == [float(value)], (pair, value, found)
        tables.append(float(value))
    rewordings, risks = tables[:4], tables[7:]
    assert min(risks) >= min(rewordings)  # a threshold that lets every rewording hit lets these pairs hit too
    other_words = [c for c, a, b in printed if "NullPointer" in b or "hey there" in b or "short summary" in b]
    assert len(other_words) == 3 and all(0.2 <= c <= 0.4 for c in other_words)


def test_a_wordllama_vector_takes_1_kib() -> None:
    """Claim: "A 256-d WordLlama vector takes 1 KiB"."""
    pytest.importorskip("wordllama", reason="the semantic extra is not installed (pip install -e '.[semantic]')")
    from engine.runtime.embedder import default_embedder, embed_text

    vector = embed_text(default_embedder(), FIRST)
    assert vector.shape == (256,) and vector.nbytes == 1024


NO_EXTRA = """
import sys
sys.modules["wordllama"] = None  # the `semantic` extra is not installed
from engine.diagnostics import PolicyError
from tests.engines import engine_for
from tests.fakeserver import FakeServer
from tests.semantic_kit import BagOfWords
from tests.test_semantic_cache import FIRST, PARAPHRASE, POLICY, SEMANTIC
with FakeServer() as server:
    try:
        engine_for(server, SEMANTIC + POLICY)
    except PolicyError as exc:
        print("refused", "E320" in str(exc), "cache.semantic" in str(exc), "modelroute[semantic]" in str(exc))
    engine = engine_for(server, SEMANTIC + POLICY, embedder=BagOfWords())  # an embedder of its own: no extra needed
    print("called", *[bool(engine.complete(t, temperature=0).attempts) for t in (FIRST, PARAPHRASE)])
    engine.close()
"""


def test_without_the_extra_a_policy_setting_cache_semantic_is_refused_when_it_loads() -> None:
    """Claim: "Without the `semantic` extra and without `embedder=`, a policy that sets `cache.semantic` is refused
    when it loads (E320, naming the extra)", and with an embedder of its own it needs no extra (in a process of its
    own, where WordLlama cannot be imported)."""
    proc = subprocess.run([sys.executable, "-c", NO_EXTRA], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["refused True True True", "called True False"]


def test_the_documented_embedding_costs_are_the_bench_results() -> None:
    """Claim: "one embedding per exact miss (... bench/results/semantic.txt: 31.6 us warm and 43.9 us cold at 200 B,
    80.5 us warm and 152.4 us cold at the cut's 1,000 characters ...)": the rows of the results file say so."""
    doc = re.search(
        r"([\d.]+) us warm and ([\d.]+) us cold at 200 B,\s+([\d.]+) us warm and ([\d.]+) us cold at the cut",
        semantic_section(),
    )
    assert doc is not None
    results = (ROOT / "bench" / "results" / "semantic.txt").read_text()
    alone = results[results.index("== embedding alone") :]  # the table of embed_text() by prompt size
    rows = {}
    for line in alone.splitlines():
        cells = line.split()
        if cells[:2] == ["200", "B"] and "200 B" not in rows:
            rows["200 B"] = cells
        if cells[:1] == ["1000"]:  # the table of the cut's length
            rows["1000"] = cells
    assert doc.groups() == (rows["200 B"][2], rows["200 B"][4], rows["1000"][1], rows["1000"][3])
