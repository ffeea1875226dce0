"""Editing the gateway keys file (`modelroute keys add / revoke / list`): a keys file path and one change in; the file
rewritten atomically (a temp file in the same directory, fsync, os.replace) under a lock file, or a KeyEditError
saying why not, out. The gateway follows the file (providers/gateway/keys.py), so a change applies within its
poll interval.

A YAML file is edited as text: the new entry is appended after the last one, a revoked entry's lines (with the
comment lines right above it) are cut, and everything else (comments, other top-level fields, layout) is kept. The
result is read back and compared with the intended data; when the text edit cannot be made exactly (a flow-style
`keys: [...]`, an unusual layout), the whole file is rewritten from its data and its comments are lost (`kept` is
False then, and the command says so). A JSON file is rewritten with two-space indentation. The file must be a
regular file (a symlink is followed to one); a file that does not pass the gateway's checks is not edited."""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from providers.catalog.nodes import compose_data
from providers.gateway.keyfields import expires_text, parse_expires
from providers.gateway.keyformat import GatewayKey, KeysFileError, hash_key, keys_from, new_key, parse_keys
from providers.gateway.keys import NotRegularFile, read_regular

__all__ = [
    "Edited",
    "KeyEditError",
    "add_key",
    "expires_text",
    "key_rows",
    "parse_expires",
    "read_keys",
    "revoke_key",
]

LOCK_WAIT_S = 10.0  # how long a command waits for another one editing the same file
_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_.@/-]*")


class KeyEditError(Exception):
    """Why the keys file was not changed; `usage` when the file itself cannot be read or is not a keys file."""

    def __init__(self, message: str, usage: bool = False):
        super().__init__(message)
        self.usage = usage


@dataclass(frozen=True)
class Edited:
    """What an edit did: the file written, the key it added or removed, the new key (add only, shown once)."""

    path: Path
    key: GatewayKey
    secret: str | None
    created: bool  # the file did not exist before
    kept: bool  # comments and layout were kept (False: the file was rewritten from its data)


# ---- reading -------------------------------------------------------------------------------------------------
def _target(path: Path) -> Path:
    """The file to edit: `path`, a symlink followed to what it points at (so the link stays)."""
    return Path(os.path.realpath(path))


def _load(path: Path, must_exist: bool) -> tuple[bytes, os.stat_result | None]:
    """The file's content and stat (b"" and None when it does not exist and need not), read as the gateway reads
    it: a regular file only, opened without blocking (a FIFO or a device is refused, never waited on)."""
    try:
        data, st, _ = read_regular(str(path))
    except FileNotFoundError:
        if must_exist:
            raise KeyEditError(f"{path}: no such keys file", usage=True) from None
        return b"", None
    except NotRegularFile as exc:
        raise KeyEditError(f"{path}: refusing to edit: {exc.strerror}", usage=True) from None
    except OSError as exc:
        raise KeyEditError(f"{path}: cannot read keys file: {exc.strerror or exc}", usage=True) from None
    return data, st


def _keys(raw: bytes, where: str, json_file: bool) -> list[GatewayKey]:
    if not raw.strip():
        return []
    try:
        return parse_keys(raw, where, json_file)
    except KeysFileError as exc:
        raise KeyEditError(f"{exc}\nthe keys file does not pass the gateway's checks: fix it first") from None


def read_keys(path: Path) -> list[GatewayKey]:
    """The keys of the file at `path`, checked as the gateway checks them; raises KeyEditError."""
    raw, _ = _load(_target(path), must_exist=True)
    return _keys(raw, str(path), path.suffix == ".json")


def key_rows(keys: list[GatewayKey], now: float) -> list[dict[str, Any]]:
    """One row per key for `keys list`: everything but the digest (no secrets, nothing that identifies the key)."""
    rows = []
    for k in keys:
        rows.append(
            {
                "name": k.name,
                "expires": expires_text(k.expires) if k.expires is not None else None,
                "expired": k.expires is not None and now >= k.expires,
                "policies": sorted(k.policies) if k.policies is not None else None,
                "models": sorted(k.models) if k.models is not None else None,
                "rpm": k.rpm,
                "tpm": k.tpm,
                "daily_budget": k.daily_budget,
                "attributes": dict(k.attributes),
                "created": k.created,
            }
        )
    return rows


# ---- writing -------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `.<name>.lock` beside the keys file, so two commands never edit it at once."""
    lock = path.with_name(f".{path.name}.lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError as exc:
        raise KeyEditError(f"{lock}: cannot create the lock file: {exc.strerror or exc}", usage=True) from None
    try:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise KeyEditError(
                        f"{path}: another `modelroute keys` command is editing it (lock {lock}); try again"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write(path: Path, data: bytes, old: os.stat_result | None) -> None:
    """Replace `path` by `data` atomically: a temp file in the same directory, fsync, os.replace, fsync the dir."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with open(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if old is not None:
            os.chmod(tmp, old.st_mode & 0o7777)
        else:
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _scalar(value: Any) -> str:
    """A YAML flow value: plain when it reads back as the same string, JSON (valid YAML) otherwise."""
    if isinstance(value, str) and _PLAIN.fullmatch(value) and yaml.safe_load(value) == value:
        return value
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_scalar(str(k))}: {_scalar(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def _entry_text(entry: Mapping[str, Any], dash: int) -> str:
    pad = " " * (dash + 2)
    lines = [f"{pad}{k}: {_scalar(v)}" for k, v in entry.items()]
    return " " * dash + "- " + lines[0].lstrip() + "\n" + "".join(line + "\n" for line in lines[1:])


def _entries(root: Node | None) -> tuple[Node | None, Node | None]:
    """(the `keys` key node or None for a top-level list, the entries' node or None)."""
    if isinstance(root, MappingNode):
        return next(((k, v) for k, v in root.value if getattr(k, "value", None) == "keys"), (None, None))
    return None, root


def _items(root: Node | None) -> SequenceNode | None:
    """The block sequence of entries (`keys:` of a mapping, or the top-level list); None for anything else."""
    node = _entries(root)[1]
    if isinstance(node, SequenceNode) and not node.flow_style and node.value:
        return node
    return None


def _content_end(lines: list[str], item: Node) -> int:
    """The index of the line after an entry's last line of content (trailing blank and comment lines excluded)."""
    end = min(item.end_mark.line, len(lines))  # the line of the token after it: the next entry, or what follows
    while end > item.start_mark.line + 1 and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith("#")):
        end -= 1
    return max(end, item.start_mark.line + 1)


def _comment_at(line: str, column: int) -> bool:
    """Whether `line` is a comment indented at least to `column` (an entry's comment, not a heading's)."""
    body = line.lstrip(" ")
    return body.startswith("#") and len(line) - len(body) >= column


def _text_add(text: str, entry: Mapping[str, Any]) -> str | None:
    if not text.strip():
        return text + ("" if not text or text.endswith("\n") else "\n") + "keys:\n" + _entry_text(entry, 2)
    text = text if text.endswith("\n") else text + "\n"
    _, root = compose_data(text)
    seq = _items(root)
    if seq is None:
        key, node = _entries(root)
        if key is None or not isinstance(node, SequenceNode) or node.value:
            return None
        # `keys: []`: the empty list becomes a block list of the one entry
        start, end = node.start_mark.index, node.end_mark.index
        return text[:start].rstrip(" ") + "\n" + _entry_text(entry, key.start_mark.column + 2) + text[end:].lstrip("\n")
    lines = text.splitlines(keepends=True)
    at = _content_end(lines, seq.value[-1])
    return "".join(lines[:at]) + _entry_text(entry, seq.start_mark.column) + "".join(lines[at:])


def _text_remove(text: str, index: int) -> str | None:
    text = text if text.endswith("\n") else text + "\n"
    _, root = compose_data(text)
    seq = _items(root)
    if seq is None or index >= len(seq.value):
        return None
    lines = text.splitlines(keepends=True)
    item = seq.value[index]
    start = item.start_mark.line
    floor = _content_end(lines, seq.value[index - 1]) if index else 0
    dash = seq.start_mark.column
    while start > floor and _comment_at(lines[start - 1], dash):  # the comments right above it go with it
        start -= 1
    end = _content_end(lines, item)
    out = "".join(lines[:start] + lines[end:])
    key = _entries(root)[0]
    if len(seq.value) == 1 and key is not None:  # the last one: `keys:` keeps an empty list
        colon = text.index(":", key.end_mark.index) + 1
        out = text[:colon] + " []" + out[colon:]
    return out


def _apply(
    path: Path, *, revoke: str | None = None, entry: dict[str, Any] | None = None
) -> tuple[GatewayKey, bool, bool]:
    """Add `entry` or remove the key named `revoke` in the file at `path` (under the lock); returns (the key added
    or removed, kept comments, created the file)."""
    target = _target(path)
    where, json_file = str(path), path.suffix == ".json"
    if revoke is not None and not os.path.lexists(target):  # before the lock: a failing revoke creates nothing
        raise KeyEditError(f"{target}: no such keys file", usage=True)
    with _locked(target):
        raw, st = _load(target, must_exist=revoke is not None)
        keys = _keys(raw, where, json_file)
        text = raw.decode("utf-8-sig")
        data: Any = (json.loads(text) if json_file else compose_data(text)[0]) if text.strip() else None
        if data is None:
            data = {"keys": []}
        wanted = copy.deepcopy(data)
        wanted_items: list[Any] = wanted["keys"] if isinstance(wanted, Mapping) else wanted
        if revoke is not None:
            index = next((i for i, k in enumerate(keys) if k.name == revoke), None)
            if index is None:
                known = ", ".join(k.name for k in keys) or "none"
                raise KeyEditError(f"{where}: no key named `{revoke}` (keys: {known})")
            done = keys[index]
            del wanted_items[index]
            edited = None if json_file else _text_remove(text, index)
        else:
            assert entry is not None
            if any(k.name == entry["name"] for k in keys):
                raise KeyEditError(f"{where}: a key named `{entry['name']}` already exists (revoke it first)")
            wanted_items.append(entry)
            edited = None if json_file else _text_add(text, entry)
        kept = False
        if json_file:
            out = json.dumps(wanted, indent=2, ensure_ascii=False) + "\n"
            kept = True
        elif edited is not None and _reads_as(edited, wanted):
            out, kept = edited, True
        else:
            out = yaml.safe_dump(wanted, sort_keys=False, allow_unicode=True, default_flow_style=None)
        new_keys = parse_keys(out.encode("utf-8"), where, json_file)  # never write what the gateway would refuse
        if revoke is None:
            done = new_keys[-1]
        try:
            _write(target, out.encode("utf-8"), st)
        except OSError as exc:
            raise KeyEditError(
                f"{where}: cannot write the keys file: {exc.strerror or exc} (it is unchanged)"
            ) from None
    return done, kept, st is None


def _reads_as(text: str, wanted: Any) -> bool:
    try:
        return bool(compose_data(text)[0] == wanted)
    except (yaml.YAMLError, ValueError):
        return False


def add_key(
    path: Path,
    name: str,
    *,
    attributes: Mapping[str, Any] | None = None,
    policies: list[str] | None = None,
    models: list[str] | None = None,
    expires: str | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
    daily_budget: float | None = None,
    now: float,
) -> Edited:
    """Add a new key named `name` (a fresh random key, stored as its sha256 only); raises KeyEditError (the file
    is unchanged then). The entry is checked by the gateway's own checks before the file is written."""
    secret = new_key()
    entry: dict[str, Any] = {"name": name, "sha256": hash_key(secret), "created": expires_text(int(now))}
    optional = {
        "attributes": dict(attributes) if attributes else None,
        "policies": policies or None,
        "models": models or None,
        "expires": expires,
        "rpm": rpm,
        "tpm": tpm,
        "daily_budget": daily_budget,
    }
    entry.update({k: v for k, v in optional.items() if v is not None})
    try:
        keys_from([entry], "-")
    except KeysFileError as exc:
        raise KeyEditError(f"key `{name}`: " + str(exc).removeprefix(f"-: keys[0] ({name}): ")) from None
    key, kept, created = _apply(path, entry=entry)
    return Edited(path, key, secret, created, kept)


def revoke_key(path: Path, name: str) -> Edited:
    """Remove the key named `name`; raises KeyEditError (the file is unchanged then)."""
    key, kept, _ = _apply(path, revoke=name)
    return Edited(path, key, None, False, kept)
