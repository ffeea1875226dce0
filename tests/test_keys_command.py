"""Tests for `modelroute keys add / revoke / list` (engine/cli/keys.py, providers/gateway/keyfile.py): keys files
(YAML with comments, JSON, missing, broken, not regular) and command lines in; the file as the gateway reads it,
what is kept of it, the key printed once, the exit codes and messages out. The wall clock is a fixed fake."""

from __future__ import annotations

import datetime
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engine.cli import main
from providers.gateway.keyfields import expires_text, parse_expires
from providers.gateway.keyfile import KeyEditError, add_key, read_keys, revoke_key
from providers.gateway.keys import KeyRing, KeysFileError, hash_key

keys_cli = importlib.import_module("engine.cli.keys")  # the module (`engine.cli.keys` is also the command's name)
NOW = datetime.datetime(2026, 3, 10, 12, 0, tzinfo=datetime.timezone.utc).timestamp()
COMMENTED = f"""# gateway keys for the staging gateway
listen_note: kept   # an unknown top-level field the gateway ignores
keys:
  # the analytics team
  - name: analytics
    sha256: {hash_key("mr-analytics")}  # issued 2026-01
    attributes: {{team: analytics}}

  # the bot
  - name: bot
    sha256: {hash_key("mr-bot")}
    policies: [auto]
# end of keys
"""


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys_cli, "_wall", lambda: NOW)


def run(*args: str, ok: bool = True) -> Any:
    result = CliRunner().invoke(main, ["keys", *args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def ring(path: Path) -> KeyRing:
    return KeyRing.load(path, poll_interval_s=None, clock=lambda: NOW)


def holder(path: Path, key: str) -> str | None:
    """The name of the key `key` in the file at `path`, as the gateway reads it (None: not there)."""
    found = ring(path).check(key)
    return found.name if found is not None else None


# ---- add ---------------------------------------------------------------------------------------------------
def test_add_prints_the_key_once_and_stores_only_its_digest(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    result = run(
        "add", "team-a", "--keys", str(path), "--attr", "tier=pro", "--attr", "level=3", "--policy", "auto",
        "--model", "alpha-mini", "--model", "beta-chat", "--expires", "2026-12-31", "--rpm", "60", "--tpm", "100000",
        "--daily-budget", "$5",
    )  # fmt: skip
    key = result.stdout.strip()
    assert key.startswith("mr-") and len(key) > 40 and key not in path.read_text()
    assert "shown only this once" in result.stderr and "not enforce" not in result.stderr  # rpm / tpm are enforced
    found = ring(path).check(key)
    assert found is not None and found.name == "team-a" and hash_key(key) in path.read_text()
    assert found.attributes == {"tier": "pro", "level": 3} and found.policies == {"auto"}
    assert found.models == {"alpha-mini", "beta-chat"} and (found.rpm, found.tpm, found.daily_budget) == (60, 100000, 5)
    assert expires_text(found.expires or 0) == "2027-01-01T00:00:00Z"  # a date: the end of that day UTC
    assert found.created == expires_text(NOW)


def test_add_keeps_comments_and_other_content_and_json_is_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(COMMENTED)
    run("add", "new", "--keys", str(path))
    text = path.read_text()
    assert text.startswith(COMMENTED.split("# end of keys")[0]) and text.endswith("# end of keys\n")
    assert "  - name: new\n    sha256: " in text and [k.name for k in read_keys(path)] == ["analytics", "bot", "new"]
    js = tmp_path / "keys.json"
    js.write_text(json.dumps({"note": "kept", "keys": [{"name": "a", "sha256": hash_key("x")}]}))
    key = run("add", "b", "--keys", str(js), "--json").stdout
    out = json.loads(key)
    assert json.loads(js.read_text())["note"] == "kept" and holder(js, out["key"]) == "b"


def test_add_creates_a_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = run("add", "first")
    assert "(new file)" in result.stderr and holder(tmp_path / "keys.yaml", result.stdout.strip()) == "first"
    monkeypatch.setenv("MODELROUTE_KEYS", str(tmp_path / "other.yaml"))
    run("add", "second")
    assert [k.name for k in read_keys(tmp_path / "other.yaml")] == ["second"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["add", "analytics"], 1, "a key named `analytics` already exists"),
        (["add", "x", "--attr", "model=big"], 1, "`model` cannot be bound to a key"),
        (["add", "x", "--attr", "novalue"], 2, "is not NAME=VALUE"),
        (["add", "x", "--expires", "2026-03-09"], 2, "already past"),  # by the injected clock, not today's date
        (["add", "x", "--expires", "next week"], 2, "not an ISO 8601 date"),
        (["add", "x", "--rpm", "0"], 2, "--rpm"),
        (["add", "x", "--daily-budget", "lots"], 2, "not an amount of USD"),
        (["add", "two words"], 2, "without spaces"),
        (["revoke", "nobody"], 1, "no key named `nobody` (keys: analytics, bot)"),
    ],
)
def test_refusals_leave_the_file_unchanged(tmp_path: Path, args: list[str], code: int, message: str) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(COMMENTED)
    result = run(*args, "--keys", str(path), ok=False)
    assert result.exit_code == code and message in result.output and "Traceback" not in result.output
    assert path.read_text() == COMMENTED


def test_a_broken_or_odd_file_is_not_edited(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(COMMENTED + "  - name: broken\n    sha256: nope\n")
    result = run("add", "x", "--keys", str(path), ok=False)
    assert result.exit_code == 1 and "sha256 must be 64 hex digits" in result.output and "fix it first" in result.output
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    result = run("add", "x", "--keys", str(fifo), ok=False)  # refused without blocking on the FIFO
    assert result.exit_code == 2 and "not a regular file" in result.output
    result = run("list", "--keys", str(tmp_path / "missing.yaml"), ok=False)
    assert result.exit_code == 2 and "no such keys file" in result.output


def test_a_symlinked_file_is_edited_where_it_points(tmp_path: Path) -> None:
    real = tmp_path / "real.yaml"
    real.write_text(COMMENTED)
    link = tmp_path / "keys.yaml"
    link.symlink_to(real)
    run("add", "via-link", "--keys", str(link))
    assert link.is_symlink() and [k.name for k in read_keys(real)][-1] == "via-link"


# ---- revoke ------------------------------------------------------------------------------------------------
def test_revoke_cuts_the_entry_and_its_comment_only(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(COMMENTED)
    run("revoke", "analytics", "--keys", str(path))
    text = path.read_text()
    assert "analytics" not in text and "# the bot\n  - name: bot" in text and text.startswith("# gateway keys for")
    assert "listen_note: kept" in text and ring(path).check("mr-analytics") is None and ring(path).check("mr-bot")
    run("revoke", "bot", "--keys", str(path))
    assert read_keys(path) == [] and "# end of keys" in path.read_text()
    run("add", "again", "--keys", str(path))  # an empty list is flow style (`keys: []`): rewritten from its data
    assert [k.name for k in read_keys(path)] == ["again"]


def test_text_edits_fall_back_to_a_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(f'keys: [{{name: a, sha256: "{hash_key("a")}"}}]  # flow style\n')
    done = add_key(path, "b", now=NOW)
    assert not done.kept and [k.name for k in read_keys(path)] == ["a", "b"]
    assert revoke_key(path, "a").key.name == "a" and [k.name for k in read_keys(path)] == ["b"]


# ---- list --------------------------------------------------------------------------------------------------
def test_list_shows_no_secrets_and_marks_expired_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(COMMENTED)
    add_key(path, "old", expires="2026-03-10T11:00:00Z", now=NOW - 86400)  # expired an hour before NOW
    add_key(path, "capped", models=["alpha-mini"], rpm=5, daily_budget=2.5, now=NOW)
    table = run("list", "--keys", str(path)).stdout
    assert "alpha-mini" in table and "$2.50" in table
    lines = [line.split() for line in table.splitlines()]
    head = lines[0]
    assert head[:3] == ["NAME", "EXPIRES", "STATE"] and all(len(line) == len(head) for line in lines), table
    cells = {line[0]: dict(zip(head, line, strict=True)) for line in lines[1:]}
    assert cells["old"]["EXPIRES"] == "2026-03-10T11:00:00Z" and cells["old"]["STATE"] == "expired"
    assert cells["capped"]["STATE"] == "active" and cells["capped"]["MODELS"] == "alpha-mini"
    assert "team=analytics" in table and "sha256" not in table and hash_key("mr-bot")[:12] not in table
    rows = json.loads(run("list", "--keys", str(path), "--json").stdout)
    assert [r["name"] for r in rows] == ["analytics", "bot", "old", "capped"]
    assert rows[2]["expired"] and not rows[3]["expired"] and rows[3]["rpm"] == 5
    assert not any("sha256" in r for r in rows)


# ---- the file format ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "instant"),
    [
        ("2026-12-31", "2027-01-01T00:00:00Z"),
        (datetime.date(2026, 12, 31), "2027-01-01T00:00:00Z"),  # unquoted in YAML
        ("2026-12-31T18:00:00Z", "2026-12-31T18:00:00Z"),
        ("2026-12-31T18:00:00", "2026-12-31T18:00:00Z"),  # no offset: UTC
        ("2026-12-31T20:00:00+02:00", "2026-12-31T18:00:00Z"),
    ],
)
def test_expires_forms(value: Any, instant: str) -> None:
    assert expires_text(parse_expires(value)) == instant


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("rpm: 0", "rpm must be a whole number of at least 1"),
        ("tpm: 1.5", "tpm must be a whole number"),
        ("rpm: true", "rpm must be a whole number"),
        ("models: []", "models must be a non-empty list"),
        ("expires: soon", "expires: `soon` is not an ISO 8601"),
    ],
)
def test_bad_new_fields_name_the_line(tmp_path: Path, field: str, message: str) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(f"keys:\n  - name: a\n    sha256: {hash_key('a')}\n    {field}\n")
    with pytest.raises(KeysFileError, match=f"keys.yaml:4: keys\\[0\\] \\(a\\): {message}"):
        KeyRing.load(path)


def test_an_impossible_date_is_a_keys_file_error(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(f"keys:\n  - name: a\n    sha256: {hash_key('a')}\n    expires: 2026-13-01\n")
    with pytest.raises(KeysFileError, match=r"keys\.yaml: not valid YAML: month must be in 1\.\.12"):
        KeyRing.load(path)


# ---- two commands at once ----------------------------------------------------------------------------------
def test_concurrent_adds_lose_nothing(tmp_path: Path) -> None:
    """Several `modelroute keys add` processes at once: the lock file serialises them, every key lands."""
    path = tmp_path / "keys.yaml"
    path.write_text(COMMENTED)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "keys", "add", f"k{i}", "--keys", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(4)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outs
    assert sorted(k.name for k in ring(path).keys) == ["analytics", "bot", "k0", "k1", "k2", "k3"]
    assert [holder(path, out.strip()) for out, _ in outs] == ["k0", "k1", "k2", "k3"]
    assert "# the bot" in path.read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temp file left behind


def test_a_failed_write_leaves_the_file_and_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(COMMENTED)

    def refuse(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(KeyEditError, match="cannot write the keys file: No space left on device"):
        add_key(path, "x", now=NOW)
    assert path.read_text() == COMMENTED and [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_keyedit_errors_say_usage_for_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(KeyEditError) as err:
        revoke_key(tmp_path / "none.yaml", "a")
    assert err.value.usage


# ---- the far future ----------------------------------------------------------------------------------------
def test_the_last_representable_date_is_a_key_that_never_expires(tmp_path: Path) -> None:
    """`--expires 9999-12-31`: the end of that day is past datetime's range; it is stored, listed and loaded."""
    path = tmp_path / "keys.yaml"
    key = run("add", "forever", "--keys", str(path), "--expires", "9999-12-31", "--rpm", "3").stdout.strip()
    table = run("list", "--keys", str(path)).stdout
    assert "9999-12-31T23:59:59.999999Z" in table and "expired" not in table
    found = ring(path).check(key)
    assert found is not None and found.name == "forever"
    assert run("add", "x", "--keys", str(path), "--expires", "10000-01-01", ok=False).exit_code == 2
