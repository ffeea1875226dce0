"""Gateway keys: a YAML/JSON keys file in, a KeyRing that turns a presented bearer key into a GatewayKey (name,
bound request attributes, daily budget) or None out. Keys are stored as sha256 hex digests, never in clear.

    keys:
      - name: team-a                       # shown in logs and metrics, and passed as the `key` attribute
        sha256: 9f86d081884c7d659a2f...     # `modelroute serve --hash-key` prints one
        attributes: {tier: pro, team: a}   # bound: they override whatever the request says
        daily_budget: 5.00                 # USD per UTC day for this key (optional)
        policies: [auto, cheap]            # the policies (`model: "<name>"`) it may use (optional: all)

A ring loaded from a file follows it: `check()` stat()s the file at most every `poll_interval_s` (0.25 s) and
re-reads it when its identity, size or timestamps changed, so adding, editing or revoking a key applies to the
next request after that, with no restart and no file-notification support needed. A broken edit or a deleted
file keeps the last good keys in force (one WARNING, and `last_error` until fixed; `status()`, which the
unauthenticated /healthz shows, says only that the file is broken, never what it holds). Only a regular file is
read, opened without blocking: a FIFO, a directory or a device at the path is refused like an unreadable file.
See docs/gateway.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from providers.catalog.files import stat_identity
from providers.catalog.nodes import compose_data, duplicate_key, error_line
from providers.gateway.openai_wire import RESERVED_ATTRS, reserved

log = logging.getLogger("modelroute.gateway.keys")

#: Seconds between two looks at the keys file (one stat(); a read only when it changed). The bound on how long a
#: saved change, a revocation in particular, can take to apply to requests.
POLL_INTERVAL_S = 0.25
_RACY_NS = 3_000_000_000  # a file modified this recently may change again within one timestamp tick (FAT: 2 s)
_READ_TRIES = 3  # reads when the file changes while being read
_EMPTIED_WAIT_S = 1.0  # how long a file that became empty (an in-place save under way?) may stay so unreported

_HEX = re.compile(r"^[0-9a-f]{64}$")
_FIELDS = ("name", "sha256", "attributes", "daily_budget", "policies")
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


class KeysFileError(ValueError):
    """The keys file is missing, unreadable or malformed (the message says where: `file:line: ...`)."""


class NotRegularFile(OSError):
    """The keys path is not a regular file (a FIFO, a directory, a device): refused before it is read."""


def hash_key(key: str) -> str:
    """The sha256 hex digest of a gateway key, as the keys file stores it."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    """A fresh random gateway key (`mr-` + 43 URL-safe characters, 256 bits)."""
    return "mr-" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class GatewayKey:
    name: str
    digest: str = field(repr=False)
    attributes: Mapping[str, Any] = field(default_factory=dict)
    daily_budget: float | None = None
    policies: frozenset[str] | None = None  # the policies it may use (`auto` and named ones); None: all of them


# ---- reading a keys file: text in, keys or a KeysFileError naming file:line out -----------------------------


class _Lines:
    """Line numbers (1-based) of the parts of a composed YAML document, for error messages; None where unknown."""

    def __init__(self, root: Any):
        items = root
        if isinstance(root, MappingNode):
            items = next((v for k, v in root.value if isinstance(k, ScalarNode) and k.value == "keys"), root)
        self.root = items.start_mark.line + 1 if items is not None else None  # where the `keys:` list should be
        self.items: list[tuple[int, dict[str, int]]] = []
        if isinstance(items, SequenceNode):
            for node in items.value:
                fields = {}
                if isinstance(node, MappingNode):
                    fields = {str(k.value): v.start_mark.line + 1 for k, v in node.value if isinstance(k, ScalarNode)}
                self.items.append((node.start_mark.line + 1, fields))

    def item(self, i: int, name: str | None = None) -> int | None:
        if i >= len(self.items):
            return None
        line, fields = self.items[i]
        return fields.get(name, line) if name else line


def _yaml_error(exc: yaml.YAMLError, where: str, text: str) -> KeysFileError:
    line = error_line(exc, text)
    problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    at = f"{where}:{line}" if line else where
    return KeysFileError(f"{at}: not valid YAML: {problem}" + (f" ({context})" if context else ""))


def _parse(raw: bytes, where: str, json_file: bool) -> list[GatewayKey]:
    """The keys of a keys file's bytes, checked; raises KeysFileError naming `where:line` and the problem."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise KeysFileError(f"{where}:{line}: not UTF-8 text (byte {exc.start})") from None
    root = None
    if json_file:
        try:
            data = json.loads(text)
        except RecursionError:
            raise KeysFileError(f"{where}: not valid JSON: nested too deeply") from None
        except ValueError as exc:
            json_line: int | None = getattr(exc, "lineno", None)
            msg = getattr(exc, "msg", None) or str(exc).splitlines()[0]
            raise KeysFileError(
                f"{where}:{json_line}: not valid JSON: {msg}" if json_line else f"{where}: not valid JSON: {msg}"
            ) from None
        try:  # JSON is (nearly always) YAML too: compose it for line numbers and duplicate names, best effort
            root = compose_data(text)[1]
        except yaml.YAMLError:
            root = None
    else:
        try:
            data, root = compose_data(text)
        except yaml.YAMLError as exc:
            raise _yaml_error(exc, where, text) from None
    if root is not None:
        dup = duplicate_key(root)
        if dup is not None:
            raise KeysFileError(f"{where}:{dup[0]}: `{dup[1]}` is given twice in the same mapping")
    return _keys_from(data, where, _Lines(root))


def _keys_from(data: Any, where: str, lines: _Lines | None = None) -> list[GatewayKey]:
    items = data.get("keys") if isinstance(data, Mapping) else data
    if not isinstance(items, list):
        line = lines.root if lines is not None else None
        raise KeysFileError(
            f"{where}:{line or 1}: expected a `keys:` list" + (" (the file is empty)" if data is None else "")
        )
    keys: list[GatewayKey] = []
    digests: dict[str, int] = {}
    names: dict[str, int] = {}

    def fail(i: int, item: Any, what: str, name: str | None = None) -> KeysFileError:
        line = lines.item(i, name) if lines is not None else None
        label = f" ({item.get('name')})" if isinstance(item, Mapping) and item.get("name") else ""
        return KeysFileError(
            f"{where}:{line}: keys[{i}]{label}: {what}" if line else f"{where}: keys[{i}]{label}: {what}"
        )

    def first(j: int) -> str:
        line = lines.item(j) if lines is not None else None
        return f"keys[{j}]" + (f", line {line}" if line else "")

    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise fail(i, item, "expected a mapping with name and sha256")
        unknown = set(item) - set(_FIELDS)
        if unknown:
            bad = sorted(map(str, unknown))
            raise fail(i, item, f"unknown field(s) {', '.join(bad)} (allowed: {', '.join(_FIELDS)})", bad[0])
        digest = str(item.get("sha256", "")).strip().lower().removeprefix("sha256:")
        if not _HEX.match(digest):
            raise fail(i, item, "sha256 must be 64 hex digits (the key's digest, not the key itself)", "sha256")
        if digest in digests:
            raise fail(i, item, f"duplicate sha256 (the same key as {first(digests[digest])})", "sha256")
        digests[digest] = i
        name = str(item.get("name") or f"key{i}")
        if name in names:
            raise fail(i, item, f"duplicate name {name!r} (also {first(names[name])})", "name")
        names[name] = i
        attrs = item.get("attributes") or {}
        if not isinstance(attrs, Mapping):
            raise fail(i, item, "attributes must be a mapping", "attributes")
        for attr in attrs:
            if not isinstance(attr, str) or reserved(attr):
                raise fail(
                    i,
                    item,
                    f"attributes: `{attr}` cannot be bound to a key (reserved: {', '.join(RESERVED_ATTRS)} and "
                    "names under them)",
                    "attributes",
                )
        odd = _not_json(attrs)
        if odd is not None:
            raise fail(i, item, f"attributes: {odd}", "attributes")
        policies = item.get("policies")
        if policies is not None:
            if not (
                isinstance(policies, list) and policies and all(isinstance(p, str) and p.strip() for p in policies)
            ):
                raise fail(i, item, "policies must be a non-empty list of policy names, like [auto, cheap]", "policies")
            policies = frozenset(p.strip() for p in policies)
        budget = item.get("daily_budget")
        if budget is not None:
            try:
                budget = float(str(budget).lstrip("$"))
            except ValueError:
                raise fail(i, item, "daily_budget must be a number of USD", "daily_budget") from None
            if not budget >= 0:
                raise fail(i, item, "daily_budget must not be negative", "daily_budget")
        keys.append(GatewayKey(name, digest, dict(attrs), budget, policies))
    return keys


def _not_json(value: Any) -> str | None:
    """Why a bound attribute value is not plain JSON data (a YAML date, a set, NaN, a key that is not a string),
    or None. Each distinct object once: YAML aliases share objects (and may form cycles)."""
    seen: set[int] = set()
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, (str, bool, int, type(None))):
            continue
        if isinstance(node, float):
            if not math.isfinite(node):
                return "NaN and infinite numbers are not allowed"
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, Mapping):
            if not all(isinstance(k, str) for k in node):
                return "mapping keys must be strings"
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        else:
            return f"{type(node).__name__} values are not allowed (quote a date to make it a string)"
    return None


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

    def __init__(self, keys: list[GatewayKey]):
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
        """The key whose digest matches `presented`, or None. Looks at the keys file first when it is due (at
        most every poll_interval_s): the hot path is one clock read and one comparison."""
        if _monotonic() >= self._due:
            self._poll()
        if not presented:
            return None
        digest = hash_key(presented)
        found = self._by_digest.get(digest)
        # constant-time confirmation (the dict lookup is on a digest, so it leaks nothing useful either way)
        return found if found is not None and hmac.compare_digest(found.digest, digest) else None

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
            keys = _parse(data, self._where, self._json)
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
    def load(cls, path: str | Path, *, poll_interval_s: float | None = POLL_INTERVAL_S) -> KeyRing:
        """The keys of the file at `path` (raises KeysFileError if it is unreadable or malformed), followed from
        then on: every `poll_interval_s` at most (None: never) check() looks at the file again."""
        where = str(path)
        file = os.path.abspath(path)  # not resolved: a symlink at `path` may be re-pointed later
        json_file = Path(path).suffix == ".json"
        try:
            data, st, stable = _read(file)
        except OSError as exc:
            raise KeysFileError(f"{where}: cannot read keys file: {exc.strerror or exc}") from None
        ring = cls(_parse(data, where, json_file))
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
        return cls(_keys_from(data, where))


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer ...` header."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None
