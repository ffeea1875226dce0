"""Which files a reload watches: a policy's files in, the directories and paths to watch (symlink hops included),
stat() snapshots for polling and on-disk text checks out; engine/reload.py watches and reloads with them."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from engine.runtime.policy import CompiledPolicy
from providers.catalog.files import LARGE_FILE_BYTES, StatIdentity, read_text, stat_identity

_EDITOR_TEMP = re.compile(r"(\.sw.|~|\.tmp|\.bak|^4913|^\.#.*)$")  # ignored in error state (see _WatchSet)


# ---- which paths to watch ---------------------------------------------------------------------------------


def _norm(path: str) -> str:
    """An absolute path with its directory resolved but not its last component (which may be a symlink)."""
    head, tail = os.path.split(os.path.abspath(path))
    return os.path.join(os.path.realpath(head), tail)


def _symlinks(path: str) -> list[tuple[str, str]]:
    """Every symlink met while resolving `path`, in order, with its target: e.g. the ConfigMap `..data` hop."""
    p = Path(os.path.abspath(path))
    cur, todo = Path(p.anchor), list(reversed(p.parts[1:]))
    links: list[tuple[str, str]] = []
    while todo and len(links) < 40:
        part = todo.pop()
        if part == "..":
            cur = cur.parent
            continue
        nxt = cur / part
        try:
            target = os.readlink(nxt) if nxt.is_symlink() else None
        except OSError:
            target = None
        if target is None:
            cur = nxt
            continue
        links.append((str(nxt), target))
        t = Path(target)
        if t.is_absolute():
            cur = Path(t.anchor)
        todo.extend(reversed(t.parts[1:] if t.is_absolute() else t.parts))
    return links


class _WatchSet(NamedTuple):
    """Directories to watch (non-recursively, as resolved paths) and the paths in them that matter."""

    files: tuple[str, ...]
    dirs: tuple[str, ...]
    paths: frozenset[str]
    links: bool  # a symlink is involved, so the targets can move without the file list changing

    @classmethod
    def of(cls, files: Sequence[str]) -> _WatchSet:
        paths: set[str] = set()
        links = False
        for f in files:
            a = os.path.abspath(f)
            hops = [link for link, _ in _symlinks(a)]
            links = links or bool(hops)
            paths.update(_norm(x) for x in (a, *hops, os.path.realpath(a)))
        dirs = {os.path.dirname(p) for p in paths}
        return cls(tuple(files), tuple(sorted(d for d in dirs if os.path.isdir(d))), frozenset(paths), links)

    def stale(self, files: Sequence[str]) -> bool:
        """Whether the watch set must be rebuilt for these files (cheap unless symlinks are involved)."""
        return tuple(files) != self.files or (self.links and _WatchSet.of(files) != self)

    def hits(self, changes: set[tuple[Any, str]], widen: bool) -> set[str]:
        """The changed paths that matter; `widen` (after a rejection) takes any non-temp file in a watched dir,
        so creating a missing include retries. String work only: events start with the resolved dir watched."""
        out = set()
        for _, p in changes:
            if (
                p in self.paths
                or p in self.dirs
                or (widen and os.path.dirname(p) in self.dirs and not _EDITOR_TEMP.search(os.path.basename(p)))
            ):
                out.add(p)
        return out


def _stat(path: str) -> StatIdentity | None:
    with contextlib.suppress(OSError):
        return stat_identity(os.stat(path))
    return None


def _snapshot(files: Sequence[str], widen: bool) -> tuple[Any, ...]:
    """What polling compares: each file's symlink chain (link -> target) and the stat of what it resolves to."""
    out: list[Any] = [(f, tuple(_symlinks(f)), _stat(f)) for f in files]
    if widen:  # a new file in a policy directory changes the directory's mtime
        out.extend((d, (), _stat(d)) for d in sorted({os.path.dirname(os.path.abspath(f)) for f in files}))
    return tuple(out)


def _on_disk(texts: Mapping[str, str]) -> bool:
    """True when every file still holds the text a compile read from it (read the way engine.load reads)."""
    for name, text in texts.items():
        try:
            if read_text(name, LARGE_FILE_BYTES) != text:  # never blocks on a FIFO swapped in
                return False
        except (OSError, UnicodeDecodeError):
            return False
    return True


def _changed(old: Mapping[str, str], new: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(sorted(f for f in old.keys() | new.keys() if old.get(f) != new.get(f)))


def _texts(policy: CompiledPolicy) -> dict[str, str]:
    texts = policy.sources.texts
    return {f: texts[f] for f in policy.files if f in texts}
