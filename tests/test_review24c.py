"""Review of Completion.cached / cache_similarity (providers/execution/outcome.py, cache.py) and of the quality
bench's second set (bench/data/make_prompts.py, bench/quality_bench.py): streams (sync and async, with and
without middleware), group strategies and their cached replays against the FakeServer on loopback, and a copy of
the shared data folder with one changed row or a bad label line, in; `cached`, the exit codes and messages out."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.engines import engine_for
from tests.fakeserver import FakeServer, Reply

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
CACHED = "set cache.ttl = 1h\nset retry.attempts = 0\n"
POLICY = """
when s == "consensus" consensus [alpha-mini, beta-chat, gamma-flash]
when s == "race" race [alpha-mini, beta-chat]
otherwise use alpha-mini
"""


@pytest.fixture
def engine(fake_server: FakeServer) -> Iterator[Any]:
    fake_server.default = Reply(text="four")
    e = engine_for(fake_server, CACHED + POLICY)
    try:
        yield e
    finally:
        e.close()


# ---- Completion.cached ---------------------------------------------------------------------------------------------
def test_a_stream_says_whether_the_cache_answered(engine: Any, fake_server: FakeServer) -> None:
    with engine.stream("hi", temperature=0) as live:
        assert live.text() == "four"
    assert live.completion is not None and not live.completion.cached and live.completion.attempts
    with engine.stream("hi", temperature=0) as again:  # the streamed answer was stored: replayed
        assert again.text() == "four"
    done = again.completion
    assert done is not None and done.cached and done.cache_similarity is None and done.cost == 0
    hit = engine.complete("hi", temperature=0)
    assert hit.cached and "cached, " in repr(hit) and len(fake_server.requests) == 1


def test_an_async_stream_replay_is_cached(engine: Any) -> None:
    assert not engine.complete("hi", temperature=0).cached

    async def replay() -> Any:
        stream = engine.astream("hi", temperature=0)
        texts = [e.text async for e in stream if e.kind == "delta"]
        assert texts == ["four"]
        return stream.completion

    done = asyncio.run(replay())
    assert done is not None and done.cached


class Shout:
    """An `after` hook that returns a changed Completion (dataclasses.replace keeps the other fields)."""

    def after(self, request: Any, response: Any) -> Any:
        return dataclasses.replace(response, text=response.text.upper())


def test_middleware_sees_and_keeps_cached(engine: Any) -> None:
    engine.use(Shout())
    first = engine.complete("hi", temperature=0)
    assert first.text == "FOUR" and not first.cached
    second = engine.complete("hi", temperature=0)
    assert second.text == "FOUR" and second.cached  # the stored answer is the model's, the hook runs again
    with engine.stream("hi", temperature=0) as s:
        assert s.text() == "four"  # a stream's deltas are the model's; its completion is the hook's
    assert s.completion is not None and s.completion.cached and s.completion.text == "FOUR"


@pytest.mark.parametrize("strategy", ["consensus", "race"])
def test_a_group_answer_replayed_from_the_cache(engine: Any, fake_server: FakeServer, strategy: str) -> None:
    """docs/cache.md: group answers are stored without their per-member answers and agreement."""
    fresh = engine.complete("what is 2+2?", temperature=0, s=strategy)
    calls = len(fake_server.requests)
    assert fresh.strategy == strategy and not fresh.cached and fresh.text == "four"
    if strategy == "consensus":
        assert fresh.agreement == 1.0 and len(fresh.answers) == 3
    again = engine.complete("what is 2+2?", temperature=0, s=strategy)
    assert again.cached and again.strategy == strategy and again.text == "four"
    assert again.model == fresh.model and again.cost == 0 and again.attempts == []
    assert again.answers == {} and again.agreement is None and again.judge is None
    if strategy == "consensus":  # a race's loser may still reach the server after the winner answered
        assert len(fake_server.requests) == calls


def test_a_stream_answered_by_meaning_carries_its_cosine(fake_server: FakeServer) -> None:
    pytest.importorskip("numpy", reason="the semantic extra is not installed")
    from tests.semantic_kit import cosine
    from tests.test_semantic_cache import FIRST, PARAPHRASE
    from tests.test_semantic_cache_claims import cached_engine

    engine = cached_engine(fake_server)
    try:
        assert not engine.complete(FIRST, temperature=0).cached
        with engine.stream(PARAPHRASE, temperature=0) as s:
            s.text()
        done = s.completion
        assert done is not None and done.cached
        assert done.cache_similarity == pytest.approx(cosine(FIRST, PARAPHRASE), abs=1e-4)
        assert f"cached at {done.cache_similarity:.3f}" in repr(done)
    finally:
        engine.close()


def test_a_request_the_cache_is_not_asked_for_is_not_cached(engine: Any) -> None:
    engine.complete("hi", temperature=0)
    assert not engine.complete("hi", temperature=0, cache=False).cached
    assert not engine.complete("hi", temperature=0.7).cached  # sampled: not cached unless cache.sampled


# ---- the quality bench's second set --------------------------------------------------------------------------------
needs_data = pytest.mark.skipif(
    not (ROOT.parent / "shared" / "data" / "awesome_chatgpt_prompts.csv").is_file(),
    reason="the shared data folder (../shared/data) is not here",
)


def bench_module(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def data_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A writable copy of the shared data folder, named by $MODELROUTE_BENCH_DATA."""
    folder = tmp_path / "data"
    shutil.copytree(ROOT.parent / "shared" / "data", folder)
    for f in folder.iterdir():
        f.chmod(0o644)
    monkeypatch.setenv("MODELROUTE_BENCH_DATA", str(folder))
    return folder


def make_prompts(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH / "data" / "make_prompts.py"), *args], capture_output=True, text=True, timeout=120
    )


def rest_row() -> dict[str, Any]:
    return json.loads((BENCH / "data" / "rest.jsonl").read_text(encoding="utf-8").splitlines()[5])


def change_row(folder: Path, row: int) -> None:
    import csv

    path = folder / "awesome_chatgpt_prompts.csv"
    csv.field_size_limit(10**8)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    rows[row]["prompt"] += " (edited)"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields or ()))
        writer.writeheader()
        writer.writerows(rows)


@needs_data
def test_check_passes_on_the_shared_data() -> None:
    result = make_prompts("--check")
    assert result.returncode == 0, result.stderr


@needs_data
def test_a_changed_shared_row_is_caught_by_check_and_by_the_digest(data_copy: Path) -> None:
    row = rest_row()
    change_row(data_copy, row["row"])
    check = make_prompts("--check")
    assert check.returncode == 1 and "rest.jsonl is not what bench/data/make_prompts.py builds" in check.stderr
    bench = bench_module("quality_bench_review24", BENCH / "quality_bench.py")
    with pytest.raises(SystemExit) as info:
        bench.labelled_prompts()
    assert f"row {row['row']} of the shared awesome prompts is not the labelled text" in str(info.value.code)


@needs_data
def test_a_shorter_shared_file_is_a_message_not_a_traceback(data_copy: Path) -> None:
    path = data_copy / "awesome_chatgpt_prompts.csv"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines[:50]), encoding="utf-8")
    bench = bench_module("quality_bench_review24", BENCH / "quality_bench.py")
    with pytest.raises(SystemExit) as info:
        bench.labelled_prompts()
    assert "rest.jsonl" in str(info.value.code) and "row" in str(info.value.code)


LABELS = "# header\nacp-0|code|simple\n"  # read_labels: ID|TASKS|COMPLEXITY
EVERYDAY = "# header\nf-1|code|simple|fix this\\nplease\n"  # read_everyday: ID|TASKS|COMPLEXITY|TEXT


@pytest.mark.parametrize(
    ("reader", "first", "line", "why"),
    [
        ("read_labels", LABELS, "acp-1|cod|simple", "bad label line"),
        ("read_labels", LABELS, "acp-1|code|compex", "bad label line"),
        ("read_labels", LABELS, "acp-1|code", "bad label line"),
        ("read_labels", LABELS, "acp-1|code|simple|extra", "bad label line"),
        ("read_labels", LABELS, "acp-1|code, math|simple", "bad label line"),
        ("read_labels", LABELS, "acp-1|code,code|simple", "bad label line"),
        ("read_everyday", EVERYDAY, "f-9|code|simple", "bad line"),  # no text
        ("read_everyday", EVERYDAY, "f-9|cod|simple|hello", "bad labels"),
        ("read_everyday", EVERYDAY, "f-9|code|compex|hello", "bad labels"),
        ("read_everyday", EVERYDAY, "f-9|code,code|simple|hello", "bad labels"),
        ("read_everyday", EVERYDAY, "f-1|code|simple|again", "a repeated id"),
        ("read_everyday", EVERYDAY, "|code|simple|hello", "an empty id or text"),
        ("read_everyday", EVERYDAY, "f-9|code|simple|   ", "an empty id or text"),
    ],
)
def test_label_lines_are_read_strictly(tmp_path: Path, reader: str, first: str, line: str, why: str) -> None:
    mp = bench_module("make_prompts_review24", BENCH / "data" / "make_prompts.py")
    path = tmp_path / "labels.txt"
    path.write_text(f"{first}{line}\n", encoding="utf-8")
    with pytest.raises(SystemExit) as info:
        getattr(mp, reader)(path)
    assert f"{path}:3: {why}" in str(info.value.code)


def test_a_label_given_twice_is_refused(tmp_path: Path) -> None:
    mp = bench_module("make_prompts_review24", BENCH / "data" / "make_prompts.py")
    path = tmp_path / "labels.txt"
    path.write_text("acp-0|code|simple\nacp-0|math|simple\n", encoding="utf-8")
    with pytest.raises(SystemExit) as info:
        mp.read_labels(path)
    assert f"{path}:2: acp-0 is labelled twice" in str(info.value.code)


@needs_data
def test_the_second_reader_s_labels_are_read_as_strictly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A misspelt task in labels_second_reader.txt is refused (before: read as a label nobody else uses, a silent
    disagreement); an id that is in neither set is refused (before: a KeyError traceback)."""
    bench = bench_module("quality_bench_review24", BENCH / "quality_bench.py")
    prompts = bench.labelled_prompts()
    good = (BENCH / "data" / "labels_second_reader.txt").read_text(encoding="utf-8")
    assert bench.agreement(prompts)[0].startswith("== label agreement")
    for bad in ("si-1|cod|simple\n", "nobody|code|simple\n"):
        second = tmp_path / "second.txt"
        second.write_text(good + bad, encoding="utf-8")
        monkeypatch.setattr(bench, "SECOND_READER", second)
        with pytest.raises(SystemExit) as info:
            bench.agreement(prompts)
        assert str(second) in str(info.value.code)


def test_the_committed_everyday_sets_read_and_keep_their_line_breaks() -> None:
    mp = bench_module("make_prompts_review25", BENCH / "data" / "make_prompts.py")
    tuning, check = (mp.read_everyday(BENCH / "data" / name) for name in ("everyday.txt", "everyday_check.txt"))
    assert (len(tuning), len(check)) == (420, 300)
    assert any("\n" in text for *_, text in tuning) and not any("\\n" in text for *_, text in tuning)
    both = {text for *_, text in tuning} & {text for *_, text in check}
    assert "how many seconds are in a week" in both  # two writers wrote a few common requests alike
    bench = bench_module("quality_bench_review25", BENCH / "quality_bench.py")
    sets = bench.everyday_sets()
    overlap = bench.CHECK_OVERLAP["everyday_check.txt"]
    assert len(both) == overlap and len(sets["everyday_check.txt"]) == 300 - len(both)
    assert not {text for *_, text in sets["everyday_check.txt"]} & both  # the check set scores none of them
    third = mp.read_everyday(BENCH / "data" / "everyday_check2.txt")
    earlier = {text for *_, text in tuning} | {text for *_, text in check}
    again = {text for *_, text in third} & earlier
    assert len(third) == 300 and len(again) == bench.CHECK_OVERLAP["everyday_check2.txt"]
    assert (
        len(sets["everyday_check2.txt"]) == 300 - len(again)
        and not {t for *_, t in sets["everyday_check2.txt"]} & again
    )
