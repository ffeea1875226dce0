"""Review of this session's loader and parser changes: the parse cache of engine/language/load.py (stale parses,
the same shown name in two directories, symlink swaps, diamond includes, threads, its memory bound), reading
only regular files of bounded size, and `include` in the fast parser (every form agrees with lark), in; what
load(), Engine.load() and reload() give out."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fastparse import agree

from engine import Engine, PolicyError
from engine.language import load as loader
from engine.language import nodes as n
from engine.language.load import PARSE_CACHE, PARSE_CACHE_BYTES, PARSE_CACHE_TOTAL, load
from engine.language.parse import parse
from tests.engines import CATALOG


def codes(path: Path) -> list[str]:
    with pytest.raises(PolicyError) as info:
        Engine.load(path)
    return [d.code for d in info.value.diagnostics]


def cached_texts(shown: str) -> list[str]:
    """The texts the parse cache holds for the file shown as `shown`."""
    with loader._parsed_lock:
        found = loader._parsed.get(shown)
    return [] if found is None else [found[0]]


# ---- the parse cache never serves a stale or foreign parse ---------------------------------------------------------
def test_an_edited_file_is_parsed_again_and_an_old_text_is_not_kept(tmp_path: Path) -> None:
    """Same name, new text: the new statements (and the old text's parse is dropped, not kept beside it)."""
    policy = tmp_path / "main.route"
    for i in range(PARSE_CACHE + 3):
        policy.write_text(f'catalog "{CATALOG}"\nmodel m = alpha-mini\notherwise use m\n# edit {i}\n')
        body = load(policy).body
        assert body[-1].span.file.endswith("main.route")
        engine = Engine.load(policy)
        assert engine.decide("hi").model == "alpha-mini"
    shown = loader.display_name(policy)
    assert cached_texts(shown) == [policy.read_text()]  # before: every edit stayed, up to 32 dead parses


def test_the_same_shown_name_in_two_directories_resolves_paths_in_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both directories hold main.route with the same text, loaded as `main.route` from each: the cached parse is
    shared, but `catalog` and `like "file"` paths are the directory's own (the loader rewrites copies)."""
    text = 'include "tasks.route"\ncatalog "models.yaml" overlay "scores.yaml"\notherwise use alpha-mini\n'
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "main.route").write_text(text)
        (tmp_path / name / "tasks.route").write_text('task t = /x/, like "ex.txt"\n')
    bodies: dict[str, list[list[n.Stmt]]] = {}
    for name in ("a", "b", "a"):
        monkeypatch.chdir(tmp_path / name)
        loaded = load("main.route")
        assert loaded.files == ["main.route", "tasks.route"] and not loaded.diagnostics
        bodies.setdefault(name, []).append(loaded.body)
        task, ref = loaded.body[0], loaded.body[1]
        assert isinstance(task, n.TaskDecl) and isinstance(ref, n.CatalogRef)
        here = tmp_path / name
        assert Path(ref.path).resolve() == here / "models.yaml"
        assert ref.overlay is not None and Path(ref.overlay).resolve() == here / "scores.yaml"
        assert task.likes[0].path is not None and Path(task.likes[0].path).resolve() == here / "ex.txt"
    # the cache was used: the rule is the very same object in every load, the rewritten ones are not
    rules = [b[2] for bs in bodies.values() for b in bs]
    assert all(r is rules[0] for r in rules)
    assert bodies["a"][0][1] is not bodies["b"][0][1]


def test_a_symlink_swap_serves_the_new_target_s_includes(tmp_path: Path) -> None:
    """policy -> v1 then policy -> v2, main.route identical in both: tasks.route is read from the new target."""
    for version, word in (("v1", "alpha"), ("v2", "omega")):
        (tmp_path / version).mkdir()
        (tmp_path / version / "main.route").write_text(
            f'catalog "{CATALOG}"\ninclude "tasks.route"\nwhen task is t use beta-chat\notherwise use alpha-mini\n'
        )
        (tmp_path / version / "tasks.route").write_text(f'task t = "{word}"\n')
    link = tmp_path / "policy"
    link.symlink_to("v1")
    engine = Engine.load(link)
    assert engine.decide("alpha").model == "beta-chat" and engine.decide("omega").model == "alpha-mini"
    swap = tmp_path / "policy.new"
    swap.symlink_to("v2")
    os.replace(swap, link)
    assert engine.reload()
    assert engine.decide("alpha").model == "alpha-mini" and engine.decide("omega").model == "beta-chat"


def test_a_file_included_twice_compiles_as_without_the_cache(tmp_path: Path) -> None:
    """A diamond include splices the same cached statements twice: the result is what two parses gave."""
    (tmp_path / "rules.route").write_text('when task ~ /refund/ use beta-chat\nwhen task ~ "refund" use gamma-flash\n')
    (tmp_path / "a.route").write_text('include "rules.route"\n')
    (tmp_path / "b.route").write_text('include "rules.route"\n')
    (tmp_path / "main.route").write_text(
        f'catalog "{CATALOG}"\ninclude "a.route"\ninclude "b.route"\notherwise use alpha-mini\n'
    )
    warm = Engine.load(tmp_path)
    with loader._parsed_lock:
        loader._parsed.clear()
        loader._parsed_chars[0] = 0
    cold = Engine.load(tmp_path)
    for prompt in ("refund please", "hello"):
        assert warm.decide(prompt).model == cold.decide(prompt).model
    assert warm.decide("refund please").model == "beta-chat"


def test_a_file_with_errors_is_not_cached_and_its_fix_is_read(tmp_path: Path) -> None:
    policy = tmp_path / "main.route"
    policy.write_text(f'catalog "{CATALOG}"\nmodel m =\notherwise use m\n')
    assert codes(policy) == ["E100"]
    assert codes(policy) == ["E100"]  # still reported: an error is never remembered as a good parse
    policy.write_text(f'catalog "{CATALOG}"\nmodel m = alpha-mini\notherwise use m\n')
    assert Engine.load(policy).decide("x").model == "alpha-mini"


def test_the_cache_is_bounded_in_files_and_characters(tmp_path: Path) -> None:
    for i in range(PARSE_CACHE + 5):
        (tmp_path / f"f{i}.route").write_text(f"model m{i} = alpha-mini\n" + "# pad\n" * 2000)
        load(tmp_path / f"f{i}.route")
    with loader._parsed_lock:
        assert len(loader._parsed) <= PARSE_CACHE
        assert loader._parsed_chars[0] == sum(len(t) for t, _ in loader._parsed.values()) <= PARSE_CACHE_TOTAL
    big = tmp_path / "big.route"
    big.write_text("model big = alpha-mini\n" + "#" * PARSE_CACHE_BYTES + "\n")
    load(big)
    assert cached_texts(loader.display_name(big)) == []


def test_concurrent_loads_each_get_their_own_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight threads load twelve files (the cache holds three, so entries are evicted all the time) while two files
    are rewritten: every load gives the statements of a text the file held."""
    monkeypatch.setattr(loader, "PARSE_CACHE", 3)
    files = [tmp_path / f"p{i}.route" for i in range(12)]
    for i, f in enumerate(files):
        f.write_text(f"model m{i} = alpha-mini\nlimit 60\n")  # a limit without a unit: lark parses it
    failures: list[str] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(150):
            i = rng.randrange(len(files))
            if i < 2 and rng.random() < 0.3:
                tmp = files[i].with_suffix(f".{seed}.tmp")
                target = "beta-chat" if rng.random() < 0.5 else "alpha-mini"
                tmp.write_text(f"model m{i} = {target}\n" + ("limit 60\n" if rng.random() < 0.5 else ""))
                os.replace(tmp, files[i])
            body = load(files[i]).body
            alias = body[0]
            if not (isinstance(alias, n.ModelAlias) and alias.name == f"m{i}"):
                failures.append(f"{files[i].name}: {body}")

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    with loader._parsed_lock:
        assert len(loader._parsed) <= 3
        assert loader._parsed_chars[0] == sum(len(t) for t, _ in loader._parsed.values())
        for shown, (text, module) in loader._parsed.items():
            assert module.source == text and module.file == shown


def test_concurrent_compiles_leave_the_garbage_collector_on() -> None:
    """gc_paused reads gc.isenabled() then calls gc.disable(): when another thread's gc.enable() falls between the
    two, this thread saw it off, turns it off again and never turns it back on (concurrent reloads of a gateway's
    policies). A short switch interval makes the interleaving likely."""
    import gc

    from engine.language.parse import gc_paused

    def work() -> None:
        for _ in range(20_000):
            with gc_paused():
                pass

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        on = gc.isenabled()
    finally:
        sys.setswitchinterval(interval)
        gc.enable()
    assert on


# ---- only regular files, and at most MAX_FILE_BYTES of them --------------------------------------------------------
def _check_in_subprocess(tmp_path: Path, policy: Path) -> subprocess.CompletedProcess[str]:
    """`modelroute check` in a child with 1.5 GB of address space and a timeout (the old loader read /dev/zero until
    memory ran out, and blocked on a FIFO)."""
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1_500_000_000, 1_500_000_000)); "
        "from engine.cli import main; sys.argv = ['modelroute', 'check', sys.argv[1]]; main()"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(policy)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )


@pytest.mark.skipif(not Path("/dev/zero").exists() or sys.platform != "linux", reason="needs /dev/zero and mkfifo")
@pytest.mark.parametrize("target", ["/dev/zero", "fifo.route"])
def test_an_include_of_a_device_or_fifo_is_an_e200_not_a_hang(tmp_path: Path, target: str) -> None:
    os.mkfifo(tmp_path / "fifo.route")
    (tmp_path / "main.route").write_text(f'include "{target}"\notherwise use gpt-4o-mini\n')
    try:
        result = _check_in_subprocess(tmp_path, tmp_path / "main.route")
    except subprocess.TimeoutExpired:
        pytest.fail("modelroute check blocked on the include")
    assert result.returncode == 1, result.stderr
    assert "error[E200]: cannot read included file" in result.stdout + result.stderr
    assert "not a regular file" in result.stdout + result.stderr and "Traceback" not in result.stderr


def test_a_directory_include_and_an_oversized_file_keep_their_messages(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "main.route").write_text('include "d"\notherwise use gpt-4o-mini\n')
    with pytest.raises(PolicyError) as info:
        Engine.load(tmp_path)
    assert [d.code for d in info.value.diagnostics] == ["E200"] and "Is a directory" in str(info.value)
    (tmp_path / "main.route").write_text("#" * (loader.MAX_FILE_BYTES + 1))
    assert codes(tmp_path) == ["E700"]


def test_crlf_files_read_as_before(tmp_path: Path) -> None:
    (tmp_path / "main.route").write_bytes(
        f'catalog "{CATALOG}"\r\nmodel m = alpha-mini\r\notherwise use m\r\n'.encode()
    )
    loaded = load(tmp_path)
    assert "\r" not in loaded.sources.texts[loaded.files[0]] and not loaded.diagnostics


# ---- include in the fast parser ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        'include "a.route"',
        'include "a.route" otherwise use m',
        'include "a.route" # c\notherwise use m\n',
        'include"a.route"\n',
        'include\t"a.route"\r\n',
        'include\r\n"a.route"\r\n',
        'include "a\\\\b.route"\n',
        'include "a\\nb" "c"\n',
        'include "a\\qb"\n',
        'include "a\\u00e9"\n',
        'include ""\n',
        'include "é.route"\n',
        'include "a\rb"\n',
        'include "x"include "y"\n',
        'include\f"x"\n',
        'include "x" model m = gpt-4o\n',
        'include "x" task t = /a/\n',
        'include "x" limit 60 rpm\n',
        'include "x"\nlimit 60\n',
        'include "x" catalog "y"\n',
        'include "x"#c',
        'include "\\"',
        'include "a\\\n"',
        'include.x "a"',
        'include-x "a"',
        'includes "a"',
        "include 5",
        "include /a/",
        'include "x" include',
    ],
)
def test_every_include_form_agrees_with_lark(text: str) -> None:
    agree(text)
    for variant in ("\ufeff" + text, text.replace("\n", "\r\n")):
        try:
            lark = parse(variant, "f.route", fast=False).body
        except PolicyError:
            with pytest.raises(PolicyError):
                parse(variant, "f.route")
            continue
        assert parse(variant, "f.route").body == lark


PATH_CHARS = st.lists(st.sampled_from([*'ab./ é\t\r"\\#nqu0', "\\\\", '\\"', "\\n"]), max_size=12).map("".join)
AROUND = st.sampled_from([" ", "", "\n", "\r\n", "\t", " # c\n", "\n\n  ", "\f"])
AFTER = st.sampled_from(["", "otherwise use m", "model m = a", 'include "z"', "limit 5 rpm", "# end", "when"])


@settings(max_examples=300, deadline=None)
@given(PATH_CHARS, AROUND, AROUND, AFTER)
def test_generated_includes_agree_with_lark(path: str, sep: str, tail: str, after: str) -> None:
    agree(f'include{sep}"{path}"{tail}{after}')


# ---- the semantic passes are skipped only while a file does not load -----------------------------------------------
def test_after_the_syntax_error_is_fixed_the_semantic_errors_appear(tmp_path: Path) -> None:
    (tmp_path / "tasks.route").write_text("task code = /python/ /x/\n")
    (tmp_path / "main.route").write_text(
        f'catalog "{CATALOG}"\ninclude "tasks.route"\nwhen task is code use alpha-mini\n'
        "when task is nothing use alpha-mni\notherwise use alpha-mini\n"
    )
    assert codes(tmp_path) == ["E100"]
    (tmp_path / "tasks.route").write_text("task code = /python/\n")
    found = codes(tmp_path)
    assert "E100" not in found and "E301" in found and len(found) == 2  # the unknown task and the unknown model


def test_a_warning_among_the_load_diagnostics_does_not_skip_the_checks() -> None:
    """No load diagnostic is a warning today; if one ever is, the semantic passes still run."""
    from engine.compiler.passes import compile_loaded
    from engine.diagnostics import Diagnostic
    from engine.language.load import load_source

    text = f'catalog "{CATALOG}"\nwhen task is nothing use alpha-mini\notherwise use alpha-mini\n'
    loaded = load_source(text, "p.route")
    loaded.diagnostics.append(Diagnostic("W199", "a load warning", None, "", "", severity="warning"))
    with pytest.raises(PolicyError) as info:
        compile_loaded(loaded)
    assert sorted(d.code for d in info.value.diagnostics) == ["E301", "W199"]
    ok = load_source(f'catalog "{CATALOG}"\notherwise use alpha-mini\n', "q.route")
    ok.diagnostics.append(Diagnostic("W199", "a load warning", None, "", "", severity="warning"))
    assert compile_loaded(ok).rules


def test_a_lone_surrogate_hides_the_other_errors_only_until_it_is_fixed() -> None:
    from engine import compile_source

    text = f'catalog "{CATALOG}"\n# \ud800\nwhen task is nothing use alpha-mini\notherwise use alpha-mini\n'
    with pytest.raises(PolicyError) as info:
        compile_source(text, "p.route")
    assert [d.code for d in info.value.diagnostics] == ["E106"]
    with pytest.raises(PolicyError) as info:
        compile_source(text.replace("\ud800", "x"), "p.route")
    assert [d.code for d in info.value.diagnostics] == ["E301"]


def test_check_json_reports_the_load_error_then_the_semantic_one(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from engine.cli import main

    (tmp_path / "tasks.route").write_text("task code = /python/ /x/\n")
    (tmp_path / "main.route").write_text(
        f'catalog "{CATALOG}"\ninclude "tasks.route"\nwhen task is nothing use alpha-mini\notherwise use alpha-mini\n'
    )
    runs = []
    for fixed in ("task code = /python/\n", None):
        result = CliRunner().invoke(main, ["check", "--json", str(tmp_path)])
        runs.append((result.exit_code, [d["code"] for d in json.loads(result.stdout)["diagnostics"]]))
        if fixed is not None:
            (tmp_path / "tasks.route").write_text(fixed)
    assert runs == [(1, ["E100"]), (1, ["E301"])]


def test_reload_keeps_the_last_good_policy_and_names_each_error_in_turn(tmp_path: Path) -> None:
    good = f'catalog "{CATALOG}"\ninclude "tasks.route"\nwhen task is code use beta-chat\notherwise use alpha-mini\n'
    (tmp_path / "tasks.route").write_text('task code = "python"\n')
    (tmp_path / "main.route").write_text(good)
    engine = Engine.load(tmp_path)
    version = engine.policy.version
    steps = [
        ('task code = "python" "x"\n', "E100"),  # a syntax error in the include
        ('task code = "python"\nwhen task is nothing use alpha-mini\n', "E301"),  # fixed; a semantic one shows
        ('task code = "python" "x"\n', "E100"),  # the very text that failed before: not a cached good parse
    ]
    for text, code in steps:
        (tmp_path / "tasks.route").write_text(text)
        assert engine.reload() is False
        assert engine.last_error is not None and [d.code for d in engine.last_error.diagnostics] == [code]
        assert engine.policy.version == version and engine.decide("python").model == "beta-chat"
    (tmp_path / "tasks.route").write_text('task code = "rust"\n')
    assert engine.reload() and engine.last_error is None
    assert engine.decide("rust").model == "beta-chat" and engine.decide("python").model == "alpha-mini"
