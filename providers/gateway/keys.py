"""Gateway keys: a YAML/JSON keys file in, a KeyRing that turns a presented bearer key into a GatewayKey (name,
bound request attributes, daily budget, ...) or None out. Keys are stored as sha256 hex digests, never in clear;
the format is read and checked by providers/gateway/keyformat.py.

    keys:
      - name: team-a                       # shown in logs and metrics, and passed as the `key` attribute
        sha256: 9f86d081884c7d659a2f...     # `modelroute serve --hash-key` prints one
        attributes: {tier: pro, team: a}   # bound: they override whatever the request says
        daily_budget: 5.00                 # USD per UTC day for this key (optional)
        policies: [auto, cheap]            # the policies (`model: "<name>"`) it may use (optional: all)
        models: [gpt-4o-mini, claude-haiku]  # the models its requests may be routed to or pin (optional: all)
        expires: 2026-12-31                # refused (401 key_expired) from then on; a date: the end of that day UTC
        rpm: 60                            # requests / tokens per minute (429 beyond: providers/gateway/ratelimits.py)
        tpm: 100000
        created: "2026-12-06T10:00:00Z"    # informational (`modelroute keys add` writes it)

A ring loaded from a file follows it: `check()` stat()s the file at most every `poll_interval_s` (0.25 s) and
re-reads it when its identity, size or timestamps changed, so adding, editing or revoking a key applies to the
next request after that, with no restart and no file-notification support needed. A broken edit or a deleted
file keeps the last good keys in force (one WARNING, and `last_error` until fixed; `status()`, which the
unauthenticated /healthz shows, says only that the file is broken, never what it holds). Only a regular file is
read, opened without blocking: a FIFO, a directory or a device at the path is refused like an unreadable file.
`modelroute keys add / revoke / list` edit the file atomically (providers/gateway/keyfile.py). See docs/gateway.md.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from providers.catalog.files import stat_identity
from providers.gateway.keyfields import KeyExpired
from providers.gateway.keyformat import GatewayKey, KeysFileError, hash_key, keys_from, new_key, parse_keys

# the format's names are re-exported: the gateway, `serve` and the tests import them from here
__all__ = [
    "POLL_INTERVAL_S",
    "REJECTED",
    "GatewayKey",
    "KeyRing",
    "KeysFileError",
    "NotRegularFile",
    "bearer",
    "hash_key",
    "new_key",
    "parse_keys",
    "read_regular",
]

log = logging.getLogger("modelroute.gateway.keys")

#: Seconds between two looks at the keys file (one stat(); a read only when it changed). The bound on how long a
#: saved change, a revocation in particular, can take to apply to requests.
POLL_INTERVAL_S = 0.25
_RACY_NS = 3_000_000_000  # a file modified this recently may change again within one timestamp tick (FAT: 2 s)
_READ_TRIES = 3  # reads when the file changes while being read
_EMPTIED_WAIT_S = 1.0  # how long a file that became empty (an in-place save under way?) may stay so unreported

#: What the unauthenticated /healthz says about a keys file that does not parse or check: that it is broken, never
#: its text (a key pasted into the file by mistake would be in the parser's message).
REJECTED = "the keys file was rejected: the last good keys stay in force (the gateway log names the line and problem)"
_NONBLOCK = getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}
_monotonic = time.monotonic


class NotRegularFile(OSError):
    """The keys path is not a regular file (a FIFO, a directory, a device): refused before it is read."""


# ---- following the file on disk -------------------------------------------------------------------------------


def _racy(st: os.stat_result) -> bool:
    """Whether the file was modified so recently that another write within the same timestamp tick, keeping the
    size, would leave its fingerprint unchanged (git's "racy clean" problem): then compare contents next time too."""
    return time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < _RACY_NS


def _regular(st: os.stat_result) -> os.stat_result:
    """`st` if it is a regular file's; raises NotRegularFile naming what it is otherwise."""
    if not stat.S_ISREG(st.st_mode):
        what = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise NotRegularFile(0, f"not a regular file ({what})")
    return st


def read_regular(path: str) -> tuple[bytes, os.stat_result, bool]:
    """(content, stat, stable) of a regular file, read without blocking (see _read); raises NotRegularFile."""
    return _read(path)


def _read(path: str) -> tuple[bytes, os.stat_result, bool]:
    """(content, stat of what was read, stable): stable unless the file kept changing while it was read. Only a
    regular file is read (NotRegularFile otherwise): its type is checked before opening, and it is opened
    non-blocking and checked again, so a FIFO or device swapped in between never blocks the caller (the event
    loop, for the gateway)."""
    _regular(os.stat(path))
    for _ in range(_READ_TRIES):
        fd = os.open(path, os.O_RDONLY | _NONBLOCK)
        with open(fd, "rb") as f:
            before = _regular(os.fstat(fd))
            data = f.read()
            after = os.fstat(fd)
        if stat_identity(before) == stat_identity(after) and len(data) == after.st_size:
            return data, after, True
    return data, after, False


def _diff(old: Mapping[str, GatewayKey], new: Mapping[str, GatewayKey]) -> str:
    old_by = {k.name: k for k in old.values()}
    new_by = {k.name: k for k in new.values()}
    parts = [
        (what, sorted(names))
        for what, names in (
            ("added", new_by.keys() - old_by.keys()),
            ("removed", old_by.keys() - new_by.keys()),
            ("changed", {n for n in old_by.keys() & new_by.keys() if old_by[n] != new_by[n]}),
        )
    ]
    return "; ".join(f"{what}: {', '.join(names)}" for what, names in parts if names) or "no key changed"


class KeyRing:
    """Looks presented keys up by their digest; `KeyRing([])` accepts nothing, `None` (no keys file) means an
    open gateway, decided by the caller. `KeyRing.load(path)` follows the file (see the module docstring);
    `KeyRing(keys)` and `KeyRing.from_data(...)` are fixed."""

    def __init__(self, keys: list[GatewayKey], *, clock: Callable[[], float] = time.time):
        self.clock = clock  # wall time (Unix seconds) that `expires` is compared with; tests pass a fake
        self._by_digest: dict[str, GatewayKey] = {k.digest: k for k in keys}  # replaced whole, never mutated
        self._due = float("inf")  # monotonic time of the next look at the file: never without one
        self.path: Path | None = None
        self.poll_interval_s: float = POLL_INTERVAL_S
        self.version: str | None = None  # sha256 (12 hex) of the keys file content in force
        self.last_error: str | None = None  # why the file on disk is not the one in force; None when it is
        self._where = ""
        self._file = ""
        self._json = False
        self._lock = threading.Lock()  # one look at the file at a time; check() never waits for it otherwise
        self._fp: tuple[int, int, int, int, int] | None = None  # fingerprint of the content last read
        self._racy = False
        self._seen: bytes | None = None  # the content last read, good or bad
        self._seen_error: str | None = None  # its error, if it was bad
        self._gone_error: str | None = None  # set while the file cannot be read
        self._gone_reason = ""  # and why, in the system's words (no file content)
        self._emptied_at: float | None = None

    def __len__(self) -> int:
        return len(self._by_digest)

    @property
    def keys(self) -> list[GatewayKey]:
        """The keys in force now."""
        return list(self._by_digest.values())

    def check(self, presented: str | None) -> GatewayKey | None:
        """The key whose digest matches `presented`, or None. Raises KeyExpired (an ApiError: 401 `key_expired`)
        when it matches a key whose `expires` has passed by `clock`. Looks at the keys file first when it is due (at
        most every poll_interval_s): the hot path is one clock read and one comparison (and one wall-clock read
        for a key that expires)."""
        if _monotonic() >= self._due:
            self._poll()
        if not presented:
            return None
        digest = hash_key(presented)
        found = self._by_digest.get(digest)
        # constant-time confirmation (the dict lookup is on a digest, so it leaks nothing useful either way)
        if found is None or not hmac.compare_digest(found.digest, digest):
            return None
        if found.expires is not None and self.clock() >= found.expires:
            raise KeyExpired(found.name, found.expires)
        return found

    def status(self) -> dict[str, Any]:
        """For /healthz (which needs no key): `keys` (how many are in force), `keys_version`, and
        `last_keys_error` while the file on disk is not the one in force. That says only whether the file was
        rejected or cannot be read (and the system's reason, like "No such file or directory"), never the
        parser's message: it quotes the file, and a key may have been pasted into it. `last_error` has the details
        (and the WARNING in the log). Looks at the file first when due."""
        if _monotonic() >= self._due:
            self._poll()
        out: dict[str, Any] = {"keys": len(self._by_digest), "keys_version": self.version}
        if self.last_error is not None:
            out["last_keys_error"] = (
                REJECTED
                if self._gone_error is None
                else f"the keys file cannot be read ({self._gone_reason}): the last good keys stay in force"
            )
        return out

    def refresh(self, force: bool = True) -> bool:
        """Look at the keys file now (force: re-read it even if stat() shows no change, e.g. on SIGHUP). True when
        the file's current content is the one in force, False when it was rejected or cannot be read. Not from a
        signal handler (it takes the ring's lock): hand it to a thread, as docs/reload.md does for SIGHUP."""
        if self.path is None:
            return True
        with self._lock:
            self._look(force)
        return self.last_error is None

    def _poll(self) -> None:
        with self._lock:
            if _monotonic() < self._due:  # another thread just looked
                return
            self._look(False)

    def _look(self, force: bool) -> None:
        try:
            self._refresh(force)
        except Exception:  # never fail a request over this: the keys in force stay
            log.exception(
                "checking the gateway keys file %s failed; the %d key(s) in force stay",
                self._where,
                len(self._by_digest),
            )
        finally:
            self._due = _monotonic() + max(0.0, self.poll_interval_s)

    def _refresh(self, force: bool) -> None:
        try:
            fp = stat_identity(_regular(os.stat(self._file)))
            if fp == self._fp and not self._racy and not force:
                return  # the common case: one stat(), nothing changed
            data, st, stable = _read(self._file)
        except OSError as exc:
            self._gone(exc)
            return
        self._fp, self._racy = stat_identity(st), _racy(st)
        if not stable:  # still being written: try again at the next look
            self._fp = None
            log.debug("gateway keys file %s changed while being read; reading it again at the next check", self._where)
            return
        if not data.strip() and self._seen is not None and self._seen.strip():
            now = _monotonic()
            self._emptied_at = self._emptied_at if self._emptied_at is not None else now
            if now - self._emptied_at < _EMPTIED_WAIT_S:  # an in-place save between truncate and write?
                self._fp = None
                log.debug("gateway keys file %s just became empty: waiting for the rest of the write", self._where)
                return
        self._emptied_at = None
        back = self._gone_error is not None
        self._gone_error = None
        if data == self._seen:
            self.last_error = self._seen_error
            if back and self._seen_error is None:
                log.info(
                    "gateway keys file %s is back, unchanged: %d key(s) in force", self._where, len(self._by_digest)
                )
            elif back:
                self._warn(self._seen_error)
            return
        self._seen = data
        try:
            keys = parse_keys(data, self._where, self._json)
        except KeysFileError as exc:
            self._seen_error = self.last_error = str(exc)
            self._warn(str(exc))
            return
        new = {k.digest: k for k in keys}
        changes = _diff(self._by_digest, new)
        self._by_digest = new
        self._seen_error = self.last_error = None
        self.version = hashlib.sha256(data).hexdigest()[:12]
        log.info("gateway keys reloaded from %s: %d key(s) in force (%s)", self._where, len(new), changes)

    def _warn(self, error: str | None) -> None:
        log.warning(
            "gateway keys file rejected, the last good %d key(s) stay in force until it is fixed: %s",
            len(self._by_digest),
            error,
        )

    def _gone(self, exc: OSError) -> None:
        error = f"{self._where}: cannot read keys file: {exc.strerror or exc}"
        self._gone_reason = exc.strerror or type(exc).__name__
        self._fp, self.last_error = None, error
        if self._gone_error != error:
            self._gone_error = error
            log.warning("%s; the last good %d key(s) stay in force until it is back", error, len(self._by_digest))

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        poll_interval_s: float | None = POLL_INTERVAL_S,
        clock: Callable[[], float] = time.time,
    ) -> KeyRing:
        """The keys of the file at `path` (raises KeysFileError if it is unreadable or malformed), followed from
        then on: every `poll_interval_s` at most (None: never) check() looks at the file again. `clock`: the wall
        time keys expire by."""
        where = str(path)
        file = os.path.abspath(path)  # not resolved: a symlink at `path` may be re-pointed later
        json_file = Path(path).suffix == ".json"
        try:
            data, st, stable = _read(file)
        except OSError as exc:
            raise KeysFileError(f"{where}: cannot read keys file: {exc.strerror or exc}") from None
        ring = cls(parse_keys(data, where, json_file), clock=clock)
        ring.version = hashlib.sha256(data).hexdigest()[:12]
        if poll_interval_s is None:
            return ring
        ring.path, ring._where, ring._file, ring._json = Path(path), where, file, json_file
        ring.poll_interval_s = poll_interval_s
        ring._seen = data
        ring._fp = stat_identity(st) if stable else None
        ring._racy = _racy(st)
        ring._due = _monotonic() + poll_interval_s
        return ring

    @classmethod
    def from_data(cls, data: Any, where: str = "<keys>") -> KeyRing:
        """A fixed ring from already-parsed data (a mapping with `keys:`, or the list itself)."""
        return cls(keys_from(data, where))


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer ...` header."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None
