"""The date a policy is compiled for (`today`): compile_policy / compile_source / Engine.load take it, `None` reads
the date at each compile (reloads included), lint counts from the same source, and `--today YYYY-MM-DD` sets it on
check, explain, test, diff and graph. Every test names its dates or moves the one clock
(engine.compiler.passes.current_date), so none depends on the day it runs. Fixture: tests/fixtures/today
(sage-old ranks first until 2030-06-30)."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import engine.compiler.passes
from engine import Engine, compile_policy, compile_source
from engine.cli.app import main
from engine.runtime.decision import Decision
from engine.tools.lint import lint

FIX = Path(__file__).parent / "fixtures" / "today"
RETIRES = datetime.date(2030, 6, 30)  # sage-old's deprecation_date in FIX/catalog.yaml
DAY = datetime.timedelta(days=1)


def ranked(d: Decision) -> dict[str, str | None]:
    """model -> why it lost (None for the chosen and the eligible ones)."""
    return {c.model: c.reason for c in d.candidates}


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[datetime.date], None]:
    """Set the date a compile without `today` reads (the one clock: engine.compiler.passes.current_date)."""
    now = [datetime.date(2000, 1, 1)]
    monkeypatch.setattr(engine.compiler.passes, "current_date", lambda: now[0])

    def set_date(day: datetime.date) -> None:
        now[0] = day

    return set_date


# ---- the API ---------------------------------------------------------------------------------------------


def test_prefer_ranks_a_model_before_its_deprecation_date_and_not_after() -> None:
    before = Engine(compile_policy(FIX, today=RETIRES - DAY)).decide("think hard")
    assert before.model == "sage-old"
    assert ranked(before) == {"sage-old": None, "sage-new": None}
    for day in (RETIRES, RETIRES + DAY):  # the date itself counts
        after = Engine(compile_policy(FIX, today=day)).decide("think hard")
        assert after.model == "sage-new"
        assert ranked(after) == {"sage-new": None, "sage-old": "deprecated since 2030-06-30"}
    legacy = Engine(compile_policy(FIX, today=RETIRES + DAY)).decide("think hard", tier="legacy")
    assert legacy.model == "sage-old"  # `use` still names it (check warns: W108)


def test_compile_source_and_engine_load_take_today(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(FIX)  # compile_source resolves the catalog path from the working directory
    text = (FIX / "main.route").read_text(encoding="utf-8")
    assert Engine(compile_source(text, today=RETIRES - DAY)).decide("x").model == "sage-old"
    assert Engine(compile_source(text, today=RETIRES)).decide("x").model == "sage-new"
    assert Engine.from_source(text, today=RETIRES).decide("x").model == "sage-new"
    assert Engine.load(FIX, today=RETIRES - DAY).decide("x").model == "sage-old"
    assert Engine.load(FIX, today=RETIRES).decide("x").model == "sage-new"


def test_a_datetime_counts_by_its_date_and_anything_else_is_refused() -> None:
    late_evening = datetime.datetime(2030, 6, 29, 23, 59)
    assert Engine(compile_policy(FIX, today=late_evening)).decide("x").model == "sage-old"
    with pytest.raises(TypeError, match=r"today must be a datetime\.date, not str"):
        compile_policy(FIX, today="2030-06-29")  # type: ignore[arg-type]  # the wrong type, on purpose


def test_the_version_changes_when_a_model_retires_and_only_then() -> None:
    def version(day: datetime.date) -> str:
        return compile_policy(FIX, today=day).version

    assert version(datetime.date(2030, 1, 1)) == version(RETIRES - DAY)
    assert version(RETIRES - DAY) != version(RETIRES)
    assert version(RETIRES) == version(datetime.date(2031, 1, 1))


def test_none_reads_the_date_at_each_compile_reloads_included(clock) -> None:
    clock(RETIRES - DAY)
    live = Engine.load(FIX)  # today=None: the date of each compile
    pinned = Engine.load(FIX, today=RETIRES - DAY)
    assert live.decide("x").model == pinned.decide("x").model == "sage-old"
    first = live.version
    clock(RETIRES)
    assert live.reload() and pinned.reload()
    assert live.decide("x").model == "sage-new" and live.version != first
    assert pinned.decide("x").model == "sage-old" and pinned.version == first
    assert compile_policy(FIX).version == live.version


def test_lint_counts_from_the_same_clock(clock) -> None:
    policy = compile_policy(FIX, today=RETIRES - 20 * DAY)
    clock(RETIRES - 40 * DAY)
    assert lint(policy) == []
    clock(RETIRES - 20 * DAY)
    assert [d.code for d in lint(policy)] == ["W108"]
    assert "is deprecated on 2030-06-30 (in 20 days)" in lint(policy)[0].message


# ---- the CLI ---------------------------------------------------------------------------------------------


def test_explain_today(cli) -> None:
    def model(day: datetime.date) -> str:
        proc = cli("explain", "-p", str(FIX), "think hard", "--json", "--today", day.isoformat())
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)["model"]

    assert model(RETIRES - DAY) == "sage-old"
    assert model(RETIRES) == "sage-new"


def test_check_today_compiles_and_lints_for_that_date(cli) -> None:
    def codes(day: datetime.date) -> list[str]:
        proc = cli("check", str(FIX), "--json", "--today", day.isoformat())
        assert proc.returncode == 0, proc.stderr
        return [d["code"] for d in json.loads(proc.stdout)["diagnostics"]]

    assert codes(RETIRES - 40 * DAY) == []
    assert codes(RETIRES - 20 * DAY) == ["W108"]


def test_test_and_diff_and_graph_today(tmp_path: Path) -> None:
    runner = CliRunner()

    def run(*args: str) -> click.testing.Result:
        return runner.invoke(main, list(args), catch_exceptions=False)

    assert run("test", str(FIX), "--today", "2030-06-29").exit_code == 0
    failed = run("test", str(FIX), "--today", "2030-06-30", "--json")
    assert failed.exit_code == 1 and json.loads(failed.stdout)["failed"] == 1

    new = tmp_path / "new.route"
    new.write_text(f'catalog "{(FIX / "catalog.yaml").as_posix()}"\notherwise use sage-old\n', encoding="utf-8")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "think hard"}\n', encoding="utf-8")

    def transitions(day: str) -> list[dict]:
        result = run("diff", str(FIX), str(new), "--prompts", str(prompts), "--json", "--today", day)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["transitions"]

    assert transitions("2030-06-29") == []
    assert transitions("2030-06-30") == [{"from": "sage-new", "to": "sage-old", "count": 1}]

    before, after = run("graph", str(FIX), "--today", "2030-06-29"), run("graph", str(FIX), "--today", "2030-06-30")
    assert before.exit_code == after.exit_code == 0 and before.stdout != after.stdout


@pytest.mark.parametrize("command", ["check", "explain", "test", "diff", "graph"])
def test_every_command_shares_one_today_option(command: str) -> None:
    params = {p.name: p for p in main.commands[command].params}
    today = params["today"]
    shared = {p.name: p for p in main.commands["check"].params}["today"]
    assert isinstance(today, click.Option) and today.opts == ["--today"] and today.metavar == "YYYY-MM-DD"
    assert (today.help, today.callback) == (shared.help, shared.callback)


@pytest.mark.parametrize(
    "args", [["check", str(FIX)], ["explain", "-p", str(FIX), "hi"], ["test", str(FIX)], ["graph", str(FIX)]]
)
def test_a_bad_today_is_a_usage_error(args: list[str]) -> None:
    result = CliRunner().invoke(main, [*args, "--today", "30/06/2030"])
    assert result.exit_code == 2 and "--today" in result.output and "Traceback" not in result.output
