"""Tests for following the gateway keys file (providers/gateway/keys.py): real files changed in every way a deploy
does (in place, rename over, symlink swaps, broken edits, deletion) in; the keys `KeyRing.check()` accepts, the
`last_error` it reports and its log records out, directly and through the gateway's ASGI app. The ring's
clock (`gateway_auth._monotonic`) is a fake the tests advance wherever a poll interval or a wait must pass."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from providers.gateway import keys as gateway_auth
from providers.gateway.keys import POLL_INTERVAL_S, GatewayKey, KeyRing, KeysFileError, hash_key
from tests.waiting import DEADLINE_S

A, B, C = "mr-key-a", "mr-key-b", "mr-key-c"
LOGGER = "modelroute.gateway.keys"
Entry = tuple[str, str] | tuple[str, str, dict[str, Any]]


def text(*entries: Entry) -> str:
    out = "keys:\n"
    for name, key, *attrs in entries:
        out += f"  - name: {name}\n    sha256: {hash_key(key)}\n"
        if attrs:
            out += "    attributes: {" + ", ".join(f"{k}: {v}" for k, v in attrs[0].items()) + "}\n"
    return out


def write(path: Path, content: str) -> None:
    """An in-place save: truncate and write the same inode."""
    with open(path, "r+" if path.exists() else "w", encoding="utf-8") as f:
        f.truncate(0)
        f.write(content)


def replace(path: Path, content: str) -> None:
    """An atomic save: a temp file in the same directory renamed over the original."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(content, encoding="utf-8")
    os.replace(tmp, path)


def names(ring: KeyRing, *keys: str) -> list[str | None]:
    return [(k.name if (k := ring.check(key)) is not None else None) for key in keys]


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


class FakeClock:
    """The monotonic clock KeyRing reads, standing still until a test advances it."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(gateway_auth, "_monotonic", fake)
    return fake


# ---- save styles -----------------------------------------------------------------------------------------------
def test_in_place_edit_adds_edits_and_revokes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "keys.yaml"
    write(path, text(("team-a", A), ("team-b", B)))
    ring = KeyRing.load(path, poll_interval_s=0)
    inode = path.stat().st_ino
    assert names(ring, A, B, C) == ["team-a", "team-b", None] and len(ring) == 2
    with caplog.at_level(logging.INFO, LOGGER):
        write(path, text(("team-a", A), ("team-b", B), ("team-c", C)))  # add
        assert names(ring, A, B, C) == ["team-a", "team-b", "team-c"]
        write(path, text(("team-a", A), ("team-c", C, {"tier": "pro"})))  # revoke b, bind an attribute to c
        assert names(ring, A, B, C) == ["team-a", None, "team-c"]
        assert ring.check(C).attributes == {"tier": "pro"}
    assert path.stat().st_ino == inode  # really in place
    infos = [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.INFO]
    assert infos[-1].startswith(f"gateway keys reloaded from {path}: 2 key(s) in force")
    assert "removed: team-b" in infos[-1] and "changed: team-c" in infos[-1]
    assert ring.last_error is None and ring.refresh() and not warnings(caplog)


def test_atomic_rename_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    replace(path, text(("team-a", A)))
    ring = KeyRing.load(path, poll_interval_s=0)
    version = ring.version
    replace(path, text(("team-b", B)))
    assert names(ring, A, B) == [None, "team-b"] and ring.version != version
    replace(path, text(("team-a", A), ("team-b", B)))
    assert names(ring, A, B) == ["team-a", "team-b"]


def test_symlink_swaps(tmp_path: Path) -> None:
    (tmp_path / "one.yaml").write_text(text(("team-a", A)))
    (tmp_path / "two.yaml").write_text(text(("team-b", B)))
    path = tmp_path / "keys.yaml"
    path.symlink_to("one.yaml")
    ring = KeyRing.load(path, poll_interval_s=0)
    assert names(ring, A, B) == ["team-a", None]
    (tmp_path / "keys.new").symlink_to("two.yaml")  # re-point the link atomically
    os.replace(tmp_path / "keys.new", path)
    assert names(ring, A, B) == [None, "team-b"]

    # a Kubernetes ConfigMap volume: keys.yaml -> ..data/keys.yaml, and the kubelet swaps ..data to a new dir
    mount = tmp_path / "mount"
    for stamp, content in (("..2024_1", text(("team-a", A))), ("..2024_2", text(("team-c", C)))):
        (mount / stamp).mkdir(parents=True)
        (mount / stamp / "keys.yaml").write_text(content)
    (mount / "..data").symlink_to("..2024_1")
    (mount / "keys.yaml").symlink_to("..data/keys.yaml")
    ring = KeyRing.load(mount / "keys.yaml", poll_interval_s=0)
    assert names(ring, A, C) == ["team-a", None]
    (mount / "..data_tmp").symlink_to("..2024_2")
    os.replace(mount / "..data_tmp", mount / "..data")
    assert names(ring, A, C) == [None, "team-c"]


# ---- broken edits and deletion ------------------------------------------------------------------------------
BAD_DIGEST = "zz" + hash_key(B)[2:]


@pytest.mark.parametrize(
    ("content", "where", "what"),
    [
        (text(("team-a", A)) + "  - name: team-b\n   sha256: x: y\n", "keys.yaml:5:", "not valid YAML"),
        (
            text(("team-a", A)) + f"  - name: team-b\n    sha256: {BAD_DIGEST}\n",
            "keys.yaml:5:",
            "keys[1] (team-b): sha256 must be 64 hex digits",
        ),
        (text(("team-a", A), ("team-a", B)), "keys.yaml:4:", "duplicate name 'team-a' (also keys[0], line 2)"),
        (text(("team-a", A), ("team-b", A)), "keys.yaml:5:", "keys[1] (team-b): duplicate sha256"),
        (text(("team-a", A)) + f"    sha256: {hash_key(B)}\n", "keys.yaml:4:", "`sha256` is given twice"),
        (text(("team-a", A)) + "    budget: 5\n", "keys.yaml:4:", "unknown field(s) budget"),
        (text(("team-a", A)) + "    daily_budget: lots\n", "keys.yaml:4:", "daily_budget must be a number of USD"),
        ("keys:\n  team-a: 1\n", "keys.yaml:2:", "expected a `keys:` list"),
    ],
)
def test_a_broken_edit_keeps_the_last_good_keys_until_fixed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str, where: str, what: str
) -> None:
    path = tmp_path / "keys.yaml"
    write(path, text(("team-a", A), ("team-b", B)))
    ring = KeyRing.load(path, poll_interval_s=0)
    with caplog.at_level(logging.INFO, LOGGER):
        write(path, content)
        for _ in range(20):  # every request looks at the file; the warning is logged once
            assert names(ring, A, B, C) == ["team-a", "team-b", None]
        assert ring.last_error is not None and ring.last_error.startswith(f"{path}:")
        assert where in ring.last_error and what in ring.last_error
        # /healthz (ring.status()) says the file was rejected, not what the parser quoted from it
        assert ring.status()["last_keys_error"] == gateway_auth.REJECTED and not ring.refresh()
        [warning] = warnings(caplog)
        assert warning.startswith("gateway keys file rejected, the last good 2 key(s) stay in force")
        assert warning.endswith(ring.last_error)
        # startup with the same file fails with the same message
        with pytest.raises(KeysFileError) as err:
            KeyRing.load(path)
        assert str(err.value) == ring.last_error
        replace(path, text(("team-c", C)))  # fixed
        assert names(ring, A, B, C) == [None, None, "team-c"]
    assert ring.last_error is None and "last_keys_error" not in ring.status() and len(warnings(caplog)) == 1


def test_broken_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    a = '{"name": "a", "sha256": "' + hash_key(A) + '"}'
    path.write_text('{"keys": [' + a + "]}")
    ring = KeyRing.load(path, poll_interval_s=0)
    path.write_text('{"keys": [\n  ' + a + ',\n  {"name": "b" "sha256": 1}\n]}')
    assert names(ring, A) == ["a"] and ring.last_error == f"{path}:3: not valid JSON: Expecting ',' delimiter"
    path.write_text('{"keys": [\n  ' + a + ',\n  {"name": "b",\n   "sha256": "1"}\n]}')
    assert names(ring, A) == ["a"] and ring.last_error.startswith(f"{path}:4: keys[1] (b): sha256 must be 64 hex")


def test_an_emptied_file_is_waited_for_then_rejected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, clock: FakeClock
) -> None:
    path = tmp_path / "keys.yaml"
    write(path, text(("team-a", A)))
    ring = KeyRing.load(path, poll_interval_s=0)
    with caplog.at_level(logging.INFO, LOGGER):
        write(path, "")  # an in-place save between its truncate and its write: not worth a warning yet
        assert names(ring, A) == ["team-a"] and ring.last_error is None and not warnings(caplog)
        write(path, text(("team-b", B)))  # the rest of the write
        assert names(ring, A, B) == [None, "team-b"] and not warnings(caplog)
        write(path, "")  # and one that stays empty
        assert names(ring, B) == ["team-b"]
        clock.advance(gateway_auth._EMPTIED_WAIT_S / 2)
        assert names(ring, B) == ["team-b"] and ring.last_error is None and not warnings(caplog)  # still waiting
        clock.advance(gateway_auth._EMPTIED_WAIT_S / 2)
        assert names(ring, B) == ["team-b"] and "(the file is empty)" in ring.last_error
        assert len(warnings(caplog)) == 1


def test_a_deleted_file_keeps_the_keys_and_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "keys.yaml"
    write(path, text(("team-a", A)))
    ring = KeyRing.load(path, poll_interval_s=0)
    with caplog.at_level(logging.INFO, LOGGER):
        path.unlink()
        for _ in range(10):
            assert names(ring, A) == ["team-a"]
        assert ring.last_error == f"{path}: cannot read keys file: No such file or directory"
        [warning] = warnings(caplog)
        assert warning == f"{ring.last_error}; the last good 1 key(s) stay in force until it is back"
        write(path, text(("team-a", A)))  # back, unchanged
        assert names(ring, A) == ["team-a"] and ring.last_error is None
        assert caplog.records[-1].getMessage() == f"gateway keys file {path} is back, unchanged: 1 key(s) in force"
        path.unlink()
        assert names(ring, A) == ["team-a"] and ring.last_error is not None
        replace(path, text(("team-b", B)))  # back, changed
        assert names(ring, A, B) == [None, "team-b"] and ring.last_error is None
    assert len(warnings(caplog)) == 2


# ---- how soon ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("save", [write, replace])
def test_revocation_applies_within_the_documented_bound(tmp_path: Path, save: Any, clock: FakeClock) -> None:
    path = tmp_path / "keys.yaml"
    save(path, text(("team-a", A), ("team-b", B)))
    ring = KeyRing.load(path)  # the default interval, as `modelroute serve` uses it
    assert ring.poll_interval_s == POLL_INTERVAL_S <= 0.5
    assert names(ring, A, B) == ["team-a", "team-b"]
    save(path, text(("team-a", A)))  # right after a look at the file (the load): the worst case
    clock.advance(POLL_INTERVAL_S / 2)
    assert names(ring, A, B) == ["team-a", "team-b"]  # not looked at again yet: at most every poll_interval_s
    clock.advance(POLL_INTERVAL_S / 2)
    assert names(ring, A, B) == ["team-a", None]  # poll_interval_s after the save: revoked


def test_a_same_size_rewrite_within_one_timestamp_tick_is_seen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A filesystem with coarse timestamps can leave (inode, size, mtime, ctime) unchanged by an in-place rewrite
    of the same size (a key's digest replaced by another): a recently modified file has its content compared."""
    path = tmp_path / "keys.yaml"
    write(path, text(("team-a", A)))
    monkeypatch.setattr(gateway_auth, "stat_identity", lambda st: (1, 2, 3, 4, 5))  # stat() never shows a change
    ring = KeyRing.load(path, poll_interval_s=0)
    write(path, text(("team-c", C)))  # same size
    assert names(ring, A, C) == [None, "team-c"]
    monkeypatch.setattr(gateway_auth, "_racy", lambda st: False)  # without that safeguard it would go unnoticed
    ring = KeyRing.load(path, poll_interval_s=0)
    write(path, text(("team-a", A)))
    assert names(ring, A, C) == [None, "team-c"]
    assert ring.refresh() and names(ring, A, C) == ["team-a", None]  # refresh() re-reads regardless of stat()


def test_concurrent_checks_during_swaps_see_one_whole_version(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    one, two = text(("team-a", A), ("team-b", B)), text(("team-c", C))
    replace(path, one)
    ring = KeyRing.load(path, poll_interval_s=0)
    stop, seen, errors = threading.Event(), set(), []

    def reader() -> None:
        try:
            while not stop.is_set():
                key = ring.check(A)
                assert key is None or key.name == "team-a"
                seen.add(frozenset(k.name for k in ring.keys))
        except Exception as exc:  # pragma: no cover - what the test is looking for
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + DEADLINE_S
    i = 0
    while i < 60 or len(seen) < 2 or i % 2:  # 60 saves at least, until the readers saw both, ending with `two`
        assert time.monotonic() < deadline, f"the readers saw only {seen} after {i} saves"
        replace(path, two if i % 2 else one)
        time.sleep(0.002)  # pacing: the readers get the GIL between saves
        i += 1
    stop.set()
    for t in threads:
        t.join(5)
    assert not errors and seen == {frozenset({"team-a", "team-b"}), frozenset({"team-c"})} and ring.last_error is None
    assert names(ring, A, C) == [None, "team-c"]  # the last save wrote `two`


def test_fixed_rings_and_startup_errors(tmp_path: Path) -> None:
    ring = KeyRing([GatewayKey("team-a", hash_key(A))])  # no file: never looks at the disk
    assert (
        names(ring, A, B) == ["team-a", None] and ring.refresh() and ring.status() == {"keys": 1, "keys_version": None}
    )
    path = tmp_path / "keys.yaml"
    write(path, text(("team-a", A)))
    ring = KeyRing.load(path, poll_interval_s=None)  # loaded once, not followed
    write(path, text(("team-b", B)))
    assert names(ring, A, B) == ["team-a", None]
    with pytest.raises(KeysFileError, match="cannot read keys file: No such file or directory"):
        KeyRing.load(tmp_path / "missing.yaml")
    assert KeyRing.from_data({"keys": [{"name": "x", "sha256": hash_key(A)}]}).check(A).name == "x"


def test_the_hot_path_reads_the_clock_once_and_looks_at_the_file_once_per_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    """check() on a followed ring adds one clock read and a comparison; the file is looked at (one stat(), and a
    read only when it changed or was modified recently) at most once per poll_interval_s. What that costs in
    microseconds is a bench/ question, not asserted here."""
    path = tmp_path / "keys.yaml"
    write(path, text(("team-a", A), ("team-b", B)))
    monkeypatch.setattr(gateway_auth, "_racy", lambda st: False)  # not modified recently: stat() tells changes
    looks, reads = [0], [0]
    refresh, read = KeyRing._refresh, gateway_auth._read

    def counted_refresh(self: KeyRing, force: bool) -> None:
        looks[0] += 1
        refresh(self, force)

    def counted_read(file: str) -> Any:
        reads[0] += 1
        return read(file)

    monkeypatch.setattr(KeyRing, "_refresh", counted_refresh)
    monkeypatch.setattr(gateway_auth, "_read", counted_read)
    ring = KeyRing.load(path)
    reads[0], clock.reads = 0, 0
    for _ in range(1000):
        assert ring.check(A) is not None
    assert (clock.reads, looks[0], reads[0]) == (1000, 0, 0)  # the hot path: one clock read per call, no look
    clock.advance(POLL_INTERVAL_S)
    for _ in range(1000):
        assert ring.check(A) is not None
    assert (looks[0], reads[0]) == (1, 0)  # due: one look, and the file unchanged is not read
    write(path, text(("team-b", B)))
    clock.advance(POLL_INTERVAL_S)
    for _ in range(1000):
        assert names(ring, A, B) == [None, "team-b"]
    assert (looks[0], reads[0]) == (2, 1)  # changed: read once


# ---- through the gateway ----------------------------------------------------------------------------------------
POLICY = """
set retry.attempts = 1
when tier == "pro" use alpha-large
otherwise use alpha-mini
"""


def test_the_gateway_follows_its_keys_file(tmp_path: Path, fake_server: Any, clock: FakeClock) -> None:
    pytest.importorskip("starlette", reason="gateway deps not installed (pip install -e '.[test]')")
    from starlette.testclient import TestClient

    from providers.gateway.app import create_app
    from tests.engines import engine_for

    path = tmp_path / "keys.yaml"
    replace(path, text(("team-a", A)))
    ring = KeyRing.load(path, poll_interval_s=0.05)
    wait = 0.05  # poll_interval_s: the next request looks at the file

    with TestClient(create_app(engine_for(fake_server, POLICY), keys=ring)) as client:

        def chat(key: str) -> Any:
            return client.post(
                "/v1/chat/completions",
                headers={"authorization": f"Bearer {key}"},
                json={"model": "auto", "messages": [{"role": "user", "content": "Hi"}]},
            )

        def models(key: str) -> int:
            return client.get("/v1/models", headers={"authorization": f"Bearer {key}"}).status_code

        assert chat(A).status_code == 200 and models(B) == 401
        replace(path, text(("team-a", A), ("team-b", B, {"tier": "pro"})))  # add b, bound to tier pro
        clock.advance(wait)
        r = chat(B)
        assert r.status_code == 200 and r.headers["x-modelroute-model"] == "alpha-large"
        write(path, text(("team-b", B, {"tier": "pro"})))  # revoke a
        clock.advance(wait)
        r = chat(A)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key" and models(A) == 401
        write(path, text(("team-b", B)) + "    sha256: nope\n")  # a broken edit: b keeps working, a stays out
        clock.advance(wait)
        assert chat(B).status_code == 200 and models(A) == 401
        assert ring.last_error is not None and ring.last_error.startswith(f"{path}:4: `sha256` is given twice")
        assert ring.status()["last_keys_error"] == gateway_auth.REJECTED
        path.unlink()  # deleted: the last good keys stay
        clock.advance(wait)
        assert models(B) == 200 and "No such file" in ring.status()["last_keys_error"]
        replace(path, text(("team-c", C)))
        clock.advance(wait)
        assert models(C) == 200 and models(B) == 401 and "last_keys_error" not in ring.status()
        assert client.get("/healthz").status_code == 200  # needs no key


@pytest.mark.parametrize(
    ("name", "text", "error"),
    [
        ("cycle.yaml", "keys:\n  - &x [*x]\n", r"keys\[0\]"),  # an alias that contains itself
        ("bomb.yaml", "a: &a [x, x]\nb: &b [*a, *a]\nc: &c [*b, *b]\nd: &d [*c, *c]\nkeys: [*d]\n", "keys"),
        ("deep.json", '{"keys": ' + "[" * 5000 + "]" * 5000 + "}", "nested too deeply"),
    ],
)
def test_hostile_keys_files_fail_with_one_line(tmp_path: Path, name: str, text: str, error: str) -> None:
    """Alias cycles, alias bombs and deep JSON are refused promptly with a KeysFileError, never a hang or crash."""
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(gateway_auth.KeysFileError, match=error):
        gateway_auth.KeyRing.load(path)
