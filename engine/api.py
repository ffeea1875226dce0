"""The Engine: a policy path in, a thread-safe object whose decide() returns a Decision out."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.compile import compile_loaded
from engine.decision import Decision, NoRouteError
from engine.evaluate import decide as _decide
from engine.load import bundled_policy_dir, load, load_source
from engine.policy import DEFAULT_OUTPUT_TOKENS, CompiledPolicy, Request
from engine.state import MemoryStore, StateStore
from engine.tokens import TokenEstimator, estimate_tokens, from_messages, has_images


def compile_policy(path: str | Path | None = None, *, catalog: Any = None) -> CompiledPolicy:
    """Load and compile a policy file or directory (default: the bundled policy). Raises PolicyError."""
    return compile_loaded(load(path if path is not None else bundled_policy_dir()), catalog)


def compile_source(text: str, file: str = "<string>", *, catalog: Any = None) -> CompiledPolicy:
    return compile_loaded(load_source(text, file), catalog)


class Engine:
    """Routes requests with a compiled policy. Safe to share between threads: the policy is immutable and
    swapped as one reference."""

    def __init__(self, policy: CompiledPolicy, *, token_estimator: TokenEstimator | None = None,
                 path: str | Path | None = None, catalog: Any = None, state: StateStore | None = None):
        self._policy = policy
        self._estimate = token_estimator or estimate_tokens
        self._path = path
        self._catalog = catalog
        self._reload: Any = None
        self.state: StateStore = state if state is not None else MemoryStore()

    @classmethod
    def load(cls, path: str | Path | None = None, *, catalog: Any = None,
             token_estimator: TokenEstimator | None = None, watch: bool = False, poll: bool = False) -> Engine:
        """A .route file, or a directory with main.route; None loads the bundled default policy.

        With watch=True, every file the policy uses is watched and reloaded on change (see watch())."""
        path = path if path is not None else bundled_policy_dir()
        engine = cls(compile_policy(path, catalog=catalog), token_estimator=token_estimator, path=path,
                     catalog=catalog)
        return engine.watch(poll=poll) if watch else engine

    @classmethod
    def from_source(cls, text: str, *, file: str = "<string>", catalog: Any = None,
                    token_estimator: TokenEstimator | None = None) -> Engine:
        return cls(compile_source(text, file, catalog=catalog), token_estimator=token_estimator)

    @property
    def policy(self) -> CompiledPolicy:
        return self._policy

    # -- hot reload (engine/reload.py does the work) --------------------------------------------------
    def _reloader(self):
        if self._reload is None:
            from engine.reload import Reloader

            self._reload = Reloader(self)
        return self._reload

    def _swap(self, policy: CompiledPolicy) -> None:
        """Install a new compiled policy: one reference assignment, so each decide() sees one version."""
        self._policy = policy

    def recompile(self) -> CompiledPolicy:
        """Compile the policy from its path again (raises PolicyError); does not install it."""
        if self._path is None:
            raise ValueError("this engine was built from source text, not a path: nothing to reload")
        return compile_policy(self._path, catalog=self._catalog)

    def reload(self) -> bool:
        """Recompile now and swap in the result if it compiles; False (last good policy kept) if not."""
        return self._reloader().reload()

    def watch(self, *, poll: bool = False, debounce_ms: int = 50) -> Engine:
        """Watch every file the policy uses and reload on change, in a background thread."""
        self._reloader().start(poll=poll, debounce_ms=debounce_ms)
        return self

    async def awatch(self, *, poll: bool = False, debounce_ms: int = 50) -> None:
        """The asyncio form of watch(): runs until cancelled."""
        await self._reloader().awatch(poll=poll, debounce_ms=debounce_ms)

    def stop(self) -> None:
        if self._reload is not None:
            self._reload.stop()

    def on_reload(self, callback) -> None:
        """Call `callback(event)` after every reload attempt (success or rejection)."""
        self._reloader().callbacks.append(callback)

    @property
    def last_error(self):
        """The PolicyError of the last rejected reload, or None after a good one."""
        return self._reload.last_error if self._reload is not None else None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def version(self) -> str:
        return self._policy.version

    def request(self, prompt: str | None = None, *, messages: list[Mapping[str, Any]] | None = None,
                policy: CompiledPolicy | None = None, **attrs: Any) -> Request:
        """The Request decide() evaluates (exposed for tools that trace without deciding).

        `tokens=N` overrides the estimate (for callers that count tokens exactly)."""
        policy = policy or self._policy
        if messages is not None:
            text, tokens = from_messages(messages, self._estimate)
            if "images" not in attrs and has_images(messages):
                attrs["images"] = True
        else:
            text = prompt or ""
            tokens = self._estimate(text)
        if "tokens" in attrs:
            tokens = int(attrs.pop("tokens"))
        out = attrs.get("max_tokens")
        if not (isinstance(out, (int, float)) and not isinstance(out, bool) and out > 0):
            out = policy.settings["output_tokens"] if policy.settings is not None else DEFAULT_OUTPUT_TOKENS
        state = self.state
        return Request(text, tokens, attrs, bool(attrs.get("tools")), bool(attrs.get("images")), float(out),
                       state.unavailable(), state, state.latency_ms())

    def decide(self, prompt: str | None = None, *, messages: list[Mapping[str, Any]] | None = None,
               **attrs: Any) -> Decision:
        """Pick a model for a prompt (or OpenAI-format messages) and request attributes.

        Raises NoRouteError when no rule yields a viable model."""
        start = time.perf_counter_ns()
        policy = self._policy  # one read: the whole decision uses one policy version
        req = self.request(prompt, messages=messages, policy=policy, **attrs)
        result = _decide(policy, req)
        if result is None:
            raise NoRouteError(policy, req)
        rule, entry, fallbacks, matched, scanned = result
        return Decision(policy, rule, entry, fallbacks, req, matched, scanned, time.perf_counter_ns() - start)
