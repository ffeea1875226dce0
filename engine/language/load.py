"""Loading: a policy path in, the parsed statements of the entry file with every include spliced in place out."""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.diagnostics import Diagnostic, PolicyError, Sources
from engine.language import nodes as n
from engine.language.parse import gc_paused, parse
from providers.catalog.files import FileTooLarge, read_text

if TYPE_CHECKING:
    from _hashlib import HASH

MAX_INCLUDE_DEPTH = 16
MAX_FILE_BYTES = 1_000_000

_paths: ContextVar[dict[tuple[str, str], Any] | None] = ContextVar("modelroute_paths", default=None)


@contextmanager
def one_reading() -> Iterator[None]:
    """Inside it, real_path() and display_name() work out each path once: one compile reads the disk as one snapshot
    (a symlink swapped during it is seen by the next compile, which the reloader runs when the files it read
    have changed)."""
    token = _paths.set({})
    try:
        yield
    finally:
        _paths.reset(token)


def _once(kind: str, path: str | Path, work: Callable[[], Any]) -> Any:
    memo = _paths.get()
    if memo is None:
        return work()
    key = (kind, os.fspath(path))
    if key not in memo:
        memo[key] = work()
    return memo[key]


def real_path(path: str | Path) -> Path:
    """`path` with symlinks and `..` resolved (Path.resolve()), once per path inside one_reading(). A symlink loop
    (RuntimeError before Python 3.13) gives the absolute path unresolved: reading it then fails with ELOOP, which
    every reader reports as a file it cannot read."""
    real: Path = _once("real", path, lambda: _resolve(path))
    return real


def _resolve(path: str | Path) -> Path:
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError):
        return Path(os.path.abspath(path))


@dataclass
class Loaded:
    """Everything read for one policy: statements in evaluation order, files, sources, diagnostics."""

    entry: str
    body: list[n.Stmt] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    sources: Sources = field(default_factory=Sources)
    diagnostics: list[Diagnostic] = field(default_factory=list)

    def digest(self) -> HASH:
        """A hash of every file's content and its path relative to the entry file: the same wherever it runs."""
        h = hashlib.sha256()
        root = real_path(self.entry).parent
        for f in self.files:
            try:
                name = Path(os.path.relpath(real_path(f), root)).as_posix()
            except ValueError:  # another drive (Windows)
                name = Path(f).name
            h.update(name.encode())
            h.update(b"\0")
            h.update(self.sources.texts.get(f, "").encode())
            h.update(b"\0")
        return h


def bundled_policy_dir() -> Path:
    """The default policy shipped with modelroute (policies/ in a checkout)."""
    engine_dir = Path(__file__).resolve().parent.parent
    packaged = engine_dir / "_policies"  # where pyproject.toml installs policies/
    return packaged if (packaged / "main.route").is_file() else engine_dir.parent / "policies"


def resolve_entry(path: str | Path) -> Path:
    """A .route file as given, or DIR/main.route for a directory."""
    p = Path(path)
    return p / "main.route" if p.is_dir() else p


def display_name(path: Path) -> str:
    """A path as diagnostics show it: relative to the working directory when below it."""
    shown: str = _once("shown", path, lambda: _shown(path))
    return shown


def _shown(path: Path) -> str:
    """Below the working directory as named, symlinks kept: a file reached through a link is watched through it (a
    link retargeted is an edit). Else below it once resolved (the working directory reached through a link), else as
    given."""
    named, here = os.path.abspath(path), os.getcwd()
    if named.startswith(here.rstrip(os.sep) + os.sep):
        return os.path.relpath(named, here)
    try:
        return str(real_path(path).relative_to(real_path(here)))
    except ValueError:
        return str(path)


def load(path: str | Path) -> Loaded:
    """Read and parse the entry file and every include. Never raises for bad input: see .diagnostics."""
    entry = resolve_entry(path)
    loaded = Loaded(entry=display_name(entry))
    with gc_paused():
        _load_file(entry, loaded, stack=[], at=None)
    return loaded


def load_source(text: str, file: str = "<string>") -> Loaded:
    loaded = Loaded(entry=file)
    if len(text) > MAX_FILE_BYTES:
        loaded.diagnostics.append(
            Diagnostic(
                "E700",
                f"the policy text is larger than {MAX_FILE_BYTES:,} bytes",
                None,
                "",
                "split the policy into smaller files",
            )
        )
        return loaded
    loaded.files.append(file)
    if "\r" in text:  # line ends as a file's are read (providers/catalog/files.read_text): CRLF and CR to LF
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _without_surrogates(text, file, loaded)
    loaded.sources.add(file, text)
    with gc_paused():
        _splice(text, file, Path.cwd() / "__string__", loaded, stack=[], cached=False)  # a text is not reloaded
    return loaded


_SURROGATE = re.compile("[\ud800-\udfff]")


def _without_surrogates(text: str, file: str, loaded: Loaded) -> str:
    """Policy text given as a str may hold lone surrogates (no file read as UTF-8 can): each is an E106 at its
    position, and is replaced by U+FFFD so the rest still parses and every diagnostic can be printed."""
    if _SURROGATE.search(text) is None:
        return text
    for line_no, line in enumerate(text.split("\n"), 1):
        for m in _SURROGATE.finditer(line):
            col = m.start() + 1
            loaded.diagnostics.append(
                Diagnostic(
                    "E106",
                    f"character U+{ord(m.group()):04X} is a lone surrogate, not valid Unicode",
                    n.Span(file, line_no, col, line_no, col + 1),
                    "here",
                    "write the character itself (encoded as UTF-8), or remove it",
                )
            )
    return _SURROGATE.sub("\ufffd", text)


def _load_file(path: Path, loaded: Loaded, stack: list[Path], at: n.Span | None) -> None:
    shown = display_name(path)
    real = real_path(path)
    if real in stack:
        chain = " -> ".join(display_name(p) for p in [*stack, real])
        loaded.diagnostics.append(
            Diagnostic(
                "E201",
                f"include cycle: {chain}",
                at,
                "includes a file that is already being included",
                "remove one of the includes in the cycle",
            )
        )
        return
    if len(stack) >= MAX_INCLUDE_DEPTH:
        loaded.diagnostics.append(
            Diagnostic(
                "E203", f"includes nested deeper than {MAX_INCLUDE_DEPTH}", at, "too deep", "flatten the include chain"
            )
        )
        return
    try:
        text = read_text(
            path, MAX_FILE_BYTES
        )  # a regular file only: never a FIFO or a device (providers/catalog/files.py)
    except FileTooLarge:
        loaded.diagnostics.append(
            Diagnostic(
                "E700",
                f"{shown} is larger than {MAX_FILE_BYTES:,} bytes",
                at,
                "too large",
                "split the policy into smaller files",
            )
        )
        return
    except UnicodeDecodeError as exc:  # where the first bad byte is, in the file itself
        raw = exc.object if isinstance(exc.object, bytes) else b""
        line_start = raw.rfind(b"\n", 0, exc.start) + 1
        line = raw.count(b"\n", 0, exc.start) + 1
        col = len(raw[line_start : exc.start].decode("utf-8", "replace")) + 1
        lossy = raw.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
        loaded.sources.add(shown, lossy)
        loaded.diagnostics.append(
            Diagnostic(
                "E200",
                f"cannot read {'policy file' if at is None else 'included file'} {shown}: not valid UTF-8",
                n.Span(shown, line, col, line, col + 1),
                f"byte 0x{raw[exc.start]:02x}" if exc.start < len(raw) else "here",
                "save the file as UTF-8",
            )
        )
        return
    except OSError as exc:
        what = "policy file" if at is None else "included file"
        reason = exc.strerror or str(exc)
        hint = "check the path; include paths are relative to the file that includes them"
        if at is None:
            hint = "a policy directory needs a main.route" if path.name == "main.route" else "check the path"
        loaded.diagnostics.append(Diagnostic("E200", f"cannot read {what} {shown}: {reason}", at, "here", hint))
        return
    if shown not in loaded.files:  # a file included twice is one file of the policy
        loaded.files.append(shown)
    loaded.sources.add(shown, text)
    _splice(text, shown, path, loaded, [*stack, real])


#: Parsed files by name, each with the text it was parsed from: a reload re-reads every file of the policy, and most
#: of them did not change (the bundled tasks.route is 27 KB of patterns). Only a file's latest text is kept (an
#: edited file's old parse can never be served again, and would only hold memory), at most PARSE_CACHE files and
#: PARSE_CACHE_TOTAL characters in all (a parse takes about 25 times its text: ~25 MB at most). Statements are
#: immutable, so a cached parse is shared safely. Files over PARSE_CACHE_BYTES, and texts given as strings
#: (Engine.from_source), are parsed each time.
PARSE_CACHE = 32
PARSE_CACHE_BYTES = 256_000
PARSE_CACHE_TOTAL = 1_000_000
_parsed: OrderedDict[str, tuple[str, n.Module]] = OrderedDict()
_parsed_chars = [0]  # the characters of every text in _parsed
_parsed_lock = threading.Lock()


def forget_parses() -> None:
    """Drop the parsed files kept for later loads (engine/compiler/reuse.py's forget)."""
    with _parsed_lock:
        _parsed.clear()
        _parsed_chars[0] = 0


def _parse_cached(text: str, shown: str) -> n.Module:
    with _parsed_lock:
        found = _parsed.get(shown)
        if found is not None and found[0] == text:
            _parsed.move_to_end(shown)
            return found[1]
    module = parse(text, shown)  # raises PolicyError: a file with errors is parsed again next time (not kept)
    if len(text) > PARSE_CACHE_BYTES:
        return module
    with _parsed_lock:
        old = _parsed.pop(shown, None)
        if old is not None:
            _parsed_chars[0] -= len(old[0])
        _parsed[shown] = (text, module)
        _parsed_chars[0] += len(text)
        while len(_parsed) > PARSE_CACHE or _parsed_chars[0] > PARSE_CACHE_TOTAL:
            _, (gone, _module) = _parsed.popitem(last=False)
            _parsed_chars[0] -= len(gone)
    return module


def _splice(text: str, shown: str, path: Path, loaded: Loaded, stack: list[Path], cached: bool = True) -> None:
    try:
        module = _parse_cached(text, shown) if cached else parse(text, shown)
    except PolicyError as err:
        loaded.diagnostics.extend(err.diagnostics)
        return
    for stmt in module.body:
        if isinstance(stmt, n.Include):
            _load_file(path.parent / stmt.path, loaded, stack, stmt.span)
        else:
            if isinstance(stmt, n.CatalogRef):
                overlay = str(path.parent / stmt.overlay) if stmt.overlay else None
                stmt = n.CatalogRef(str(path.parent / stmt.path), stmt.span, stmt.format, overlay)
            elif isinstance(stmt, n.TaskDecl) and any(like.file is not None for like in stmt.likes):
                # `like "examples.txt"`: relative to the file that names it (the compiler reads it)
                likes = tuple(
                    like if like.file is None else replace(like, path=str(path.parent / like.file))
                    for like in stmt.likes
                )
                stmt = replace(stmt, likes=likes)
            loaded.body.append(stmt)
