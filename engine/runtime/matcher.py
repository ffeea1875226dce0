"""Pattern matching: policy regexes and phrases in, one RE2 set that scans a prompt once out."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import re2

from engine.language import nodes as n

#: Regex flags a policy may put after the closing slash.
FLAGS = {
    "i": "case-insensitive (the default)",
    "c": "case-sensitive",
    "s": "`.` also matches newline",
    "m": "`^` and `$` match at line breaks",
}

#: RE2's memory budget for one compiled set (bytes); large policies need more than the 8 MiB default.
SET_MAX_MEM = 256 << 20

_UNSUPPORTED = [
    (re.compile(r"\\[1-9]"), "backreferences"),
    (re.compile(r"\\k<"), "named backreferences"),
    (re.compile(r"\(\?<?[=!]"), "lookaround assertions"),
    (re.compile(r"\(\?>"), "atomic groups"),
    (re.compile(r"[*+?}][+]"), "possessive quantifiers"),
    (re.compile(r"\(\?\("), "conditionals"),
]


#: RE2's memory budget for one pattern (its default): a bigger program is refused as too large.
PATTERN_MAX_MEM = 8 << 20


def _options(max_mem: int = SET_MAX_MEM) -> re2.Options:
    opts = re2.Options()
    opts.case_sensitive = True  # case is set per pattern with (?i)
    opts.log_errors = False
    opts.max_mem = max_mem
    return opts


def to_re2(pattern: n.Pattern, bounded: bool = True) -> str:
    """The RE2 source for a policy pattern: flags become inline groups, phrases become whole-word regexes
    (bounded=False leaves out the word boundaries, to show which text a phrase matched)."""
    flags = set(pattern.flags)
    prefix = "" if "c" in flags else "(?i)"
    if "s" in flags:
        prefix += "(?s)"
    if "m" in flags:
        prefix += "(?m)"
    if pattern.is_regex:
        return prefix + pattern.source
    words = pattern.source.split()
    if not words:
        return prefix + r"\A\z" if not pattern.source else prefix + re2.escape(pattern.source)
    body = r"\s+".join(re2.escape(w) for w in words)
    phrase = " ".join(words)
    # Whole words in any script. RE2's \b only knows ASCII, and a full Unicode class ([^\pL\pN]) makes the set
    # ~150x slower to compile, so a phrase is bounded by the text's edge, ASCII non-word characters, or the
    # common Unicode spaces and punctuation (Latin-1, General Punctuation, CJK and fullwidth punctuation).
    start = rf"(?:\A|{_BOUNDARY})" if bounded and _is_word(phrase[0]) else ""
    end = rf"(?:{_BOUNDARY}|\z)" if bounded and _is_word(phrase[-1]) else ""
    return f"{prefix}{start}{body}{end}"


_BOUNDARY = (
    r"[\x00-\x2f\x3a-\x40\x5b-\x5e\x60\x7b-\x7f\x{a0}-\x{bf}\x{d7}\x{f7}\x{2000}-\x{206f}"
    r"\x{3000}-\x{303f}\x{ff01}-\x{ff0f}\x{ff1a}-\x{ff20}]"
)


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def check(pattern: n.Pattern, raw: str) -> tuple[str, str, int, int] | None:
    """Validate one pattern; return (code, message, offset into raw token, width) for a problem, else None."""
    return _check(pattern.source, pattern.flags, pattern.is_regex, raw)


def forget_checks() -> None:
    """Drop the remembered pattern checks (engine/compiler/reuse.py's forget)."""
    _check.cache_clear()


@functools.lru_cache(maxsize=4096)
def _check(source: str, flags: str, is_regex: bool, raw: str) -> tuple[str, str, int, int] | None:
    """check() by value: a reload recompiles every unchanged pattern of a policy, and RE2 compiling each one
    again to validate it was a fifth of the compile of the bundled policy."""
    pattern = n.Pattern(source, flags, is_regex, n.Span("", 0, 0, 0, 0))
    bad_flags = [f for f in pattern.flags if f not in FLAGS]
    if bad_flags:
        return (
            "E502",
            f"unknown regex flag `{bad_flags[0]}`",
            raw.rfind("/") + 1 + pattern.flags.index(bad_flags[0]),
            1,
        )
    if not pattern.is_regex:
        return None
    for rx, what in _UNSUPPORTED:
        m = rx.search(pattern.source)
        if m:
            idx = raw.find(m.group(0))
            return "E501", f"RE2 cannot run {what} (`{m.group(0)}`)", max(idx, 1), len(m.group(0))
    source = to_re2(pattern)
    try:
        re2.compile(source, _options(PATTERN_MAX_MEM))
    except re2.error as exc:
        msg = exc.args[0] if exc.args else str(exc)
        if isinstance(msg, bytes):
            msg = msg.decode("utf-8", "replace")
        if "too large" in msg or "bad repetition" in msg or "invalid repetition size" in msg:
            return (
                "E500",
                "regex too large: RE2 limits a pattern to 1000 repetitions in all and "
                f"{PATTERN_MAX_MEM >> 20} MiB of program",
                1,
                len(raw),
            )
        msg = msg.replace(source, pattern.source).replace(source[len(source) - len(pattern.source) :], pattern.source)
        msg = msg.replace("(?i)", "").replace("(?s)", "").replace("(?m)", "")
        return "E500", f"invalid regex: {msg}", 1, len(raw)
    return None


_LEADING = rf"(?:\A|{_BOUNDARY})"
_FLAGS = re.compile(r"(?:\(\?[ism]\))*")


def set_entries(source: str) -> tuple[str, ...]:
    r"""The RE2 set entries for one pattern: the pattern itself, or, for a phrase bounded on the left, two entries
    (`\A` + phrase, boundary class + phrase) that together match exactly where it does.

    Why: RE2 factors the common prefixes of a set's patterns into a trie, but only prefixes made of simple
    pieces (a literal, a character class, `\A`), not an alternation like `(?:\A|[...])`. Unfactored, every
    DFA state of a scan carries every phrase of the policy, so a prompt that touches thousands of phrases builds
    thousands of states of 10,000 threads each: with 10,000 phrases and 5,000 of them in the prompt, one scan
    took 20-30 s. Split, the phrases share one trie and the same scan takes a few milliseconds."""
    flags = _FLAGS.match(source)
    at = flags.end() if flags else 0
    if not source.startswith(_LEADING, at):
        return (source,)
    head, rest = source[:at], source[at + len(_LEADING) :]
    return (f"{head}\\A{rest}", f"{head}{_BOUNDARY}{rest}")


class Matcher:
    """All patterns of a policy in one RE2 set; `scan(text)` returns the bitmask of patterns that match."""

    __slots__ = ("_set", "display", "entry_pid", "match_bytes", "patterns", "sources")

    def __init__(self, sources: Sequence[str], display: Sequence[str] | None = None):
        self.sources = tuple(sources)
        self.display = tuple(display) if display is not None else self.sources
        self._set = re2.Set.SearchSet(_options())
        pid_of: list[int] = []
        for pid, src in enumerate(self.sources):
            for entry in set_entries(src):
                self._set.Add(entry)
                pid_of.append(pid)
        self._set.Compile()
        # the C++ set's Match (UTF-8 bytes in, set entries out): skips the wrapper's per-call dispatch
        self.match_bytes = self._set._set.Match
        # set entry -> pattern id, when a pattern has more than one entry (None: they are the same)
        self.entry_pid: tuple[int, ...] | None = tuple(pid_of) if len(pid_of) != len(self.sources) else None
        self.patterns: tuple | None = None  # compiled one by one, only when explain asks which text matched

    def scan(self, text: str) -> int:
        return self.mask(self.hits(text))

    def scan_hits(self, text: str) -> tuple[int, list[int]]:
        """(the bitmask of the patterns that match `text`, their ids)."""
        hits = self.match_bytes(text.encode("utf-8", "surrogatepass"))  # hits(), inline: decide() calls this
        if not hits:
            return 0, []
        if self.entry_pid is not None:
            pid = self.entry_pid
            hits = list({pid[e] for e in hits}) if len(hits) > 1 else [pid[hits[0]]]
        if len(hits) <= 32:
            mask = 0
            for pid in hits:
                mask |= 1 << pid
            return mask, hits
        return self.mask(hits), hits

    def hits(self, text: str) -> list[int]:
        """The ids of the patterns that match `text` (each once, in no particular order)."""
        hits = self.match_bytes(text.encode("utf-8", "surrogatepass"))
        if not hits:
            return []
        pid = self.entry_pid
        if pid is None:
            return hits
        return list({pid[e] for e in hits}) if len(hits) > 1 else [pid[hits[0]]]

    def mask(self, hits: list[int]) -> int:
        """The bitmask of these pattern ids."""
        if len(hits) <= 32:
            mask = 0
            for pid in hits:
                mask |= 1 << pid
            return mask
        buf = bytearray((len(self.sources) >> 3) + 1)  # many hits: one pass, not one big-int OR per hit
        for pid in hits:
            buf[pid >> 3] |= 1 << (pid & 7)
        return int.from_bytes(buf, "little")

    def first_match(self, pid: int, text: str) -> str | None:
        """The text a single pattern matched (for explain only; decide() never calls this)."""
        if self.patterns is None:
            self.patterns = tuple(re2.compile(s, _options()) for s in self.display)
        text = text.encode("utf-8", "replace").decode("utf-8")  # lone surrogates: the wrapper cannot encode them
        bounded = re2.compile(self.sources[pid], _options())
        found = bounded.search(text)
        if found is None:
            return None
        m = self.patterns[pid].search(text, found.start())  # the phrase itself, without its boundary characters
        return m.group(0) if m else found.group(0)
