"""Hot reload for the Engine: the engine's policy path and compile options in, recompiled policies swapped in (and
watchers, reload callbacks and health checks started or stopped) out; engine/reload.py does the work."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from engine.compiling import compile_policy
from engine.runtime.embedder import Embedder
from engine.runtime.policy import CompiledPolicy
from engine.runtime.tokenizer import policy_estimator
from engine.runtime.tokens import TokenEstimator

if TYPE_CHECKING:
    from engine.api import Engine
    from engine.diagnostics import PolicyError
    from engine.reload import Reloader, ReloadEvent
    from providers.execution import Executor


class ReloadMethods:
    """reloader, swap(), recompile(), reload(), watch(), awatch(), stop(), on_reload(), last_error: a base class of
    engine.api.Engine, which provides the attributes below and its `executor`."""

    _snapshot: tuple[CompiledPolicy, TokenEstimator]
    _default_estimate: TokenEstimator
    _path: str | Path | None
    _catalog: Any
    _today: datetime.date | None
    _functions: Mapping[str, Callable[..., Any]]
    _rankers: Mapping[str, Callable[..., Any]]
    _embedder: Embedder | None
    _reload: Reloader | None
    _exec: Executor | None
    _health_watch: bool

    @property
    def executor(self) -> Executor:
        raise NotImplementedError

    @property
    def reloader(self) -> Reloader:
        """This engine's Reloader (created on first use): reload(), watchers, callbacks, `poll_interval_s`."""
        if self._reload is None:
            from engine.reload import Reloader

            self._reload = Reloader(cast("Engine", self))
        return self._reload

    def swap(self, policy: CompiledPolicy) -> None:
        """Install a compiled policy: one reference assignment of the (policy, text counter) pair, so each decide()
        sees one version, its rules and its token counts alike. The reloader calls it with each policy that
        compiled; callers may too (e.g. to install a policy compiled elsewhere). The text counter follows the
        policy's `tokens.estimator` (its encoder was loaded when it compiled)."""
        estimate = policy_estimator(getattr(policy, "settings", None), self._default_estimate)
        self._snapshot = (policy, estimate)  # the one publication decide() reads

    def recompile(self) -> CompiledPolicy:
        """Compile the policy from its path again (raises PolicyError); does not install it."""
        if self._path is None:
            raise ValueError("this engine was built from source text, not a path: nothing to reload")
        return compile_policy(
            self._path,
            catalog=self._catalog,
            today=self._today,
            functions=self._functions,
            rankers=self._rankers,
            embedder=self._embedder,
        )

    def reload(self) -> bool:
        """Recompile now and swap in the result if it compiles; False (last good policy kept) if not."""
        return self.reloader.reload()

    def watch(self, *, poll: bool = False, debounce_ms: int = 50) -> Engine:
        """Watch every file the policy uses and reload on change, in a background thread. A policy that sets
        `health.interval` (now or after a reload) also gets its background health checks (see health())."""
        self.reloader.start(poll=poll, debounce_ms=debounce_ms)
        if not self._health_watch:
            self._health_watch = True
            self.on_reload(lambda event: self._watch_health())
        self._watch_health()
        return cast("Engine", self)

    def _watch_health(self) -> None:
        """Start the background health checks on the sync API's loop when the policy sets `health.interval`."""
        settings = self._snapshot[0].settings
        if settings is not None and settings.get("health.interval"):
            ex = self.executor
            ex.health.ensure(ex.background_loop())

    async def awatch(self, *, poll: bool = False, debounce_ms: int = 50) -> None:
        """The asyncio form of watch(): runs until cancelled."""
        await self.reloader.awatch(poll=poll, debounce_ms=debounce_ms)

    def stop(self) -> None:
        """Stop watching (files and health checks)."""
        if self._reload is not None:
            self._reload.stop()
        if self._exec is not None:
            self._exec.health.stop()

    def on_reload(self, callback: Callable[[ReloadEvent], None]) -> None:
        """Call `callback(event)` after every reload attempt (success or rejection)."""
        self.reloader.callbacks.append(callback)

    @property
    def last_error(self) -> PolicyError | None:
        """The PolicyError of the last rejected reload, or None after a good one."""
        return self._reload.last_error if self._reload is not None else None
