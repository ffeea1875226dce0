"""Connections: an Executor's provider settings (`providers=`, `api_keys=`, transports, limits) and a policy's
catalog in; each provider's spec, why it cannot be called (no key, no settings), the pooled client per event loop
and provider, and the private background event loop the sync API runs on, out. `Connections` is the part of the
Executor that does it (a mixin: the Executor sets the attributes in its __init__); see
providers/execution/executor.py.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from providers.clients import ProviderClient, client_for

if TYPE_CHECKING:
    from engine.runtime.policy import CompiledPolicy
    from providers.execution.health import HealthMonitor

__all__ = ["Connections"]


class _LoopThread:
    """A private event loop on a daemon thread: the sync API runs the async core here."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="modelroute-execute", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        if threading.current_thread() is self.thread:
            raise RuntimeError("the sync API cannot be called from an event callback; use the async API")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        if not self.thread.is_alive():
            self.loop.close()


class Connections:
    """The Executor's providers and clients, and its background loop (a mixin: the Executor provides the provider
    settings, the API keys, the transports and limits, the client pools, the lock and the health monitor)."""

    health: HealthMonitor
    _providers: dict[str, Any]
    _keys: dict[str, str]
    _max_response_bytes: int | None
    _transport: Any
    _async_transport: Any
    _limits: Any
    _clients: weakref.WeakKeyDictionary[Any, dict[str, ProviderClient]]
    _lock: threading.Lock
    _bg: _LoopThread | None

    def provider_spec(self, policy: CompiledPolicy, provider: str) -> Any:
        spec = self._providers.get(provider)
        return spec if spec is not None else policy.catalog.provider_spec(provider)

    def unconfigured(self, policy: CompiledPolicy, provider: str) -> str | None:
        """Why `provider` cannot be called (no API key / no settings), or None."""
        spec = self.provider_spec(policy, provider)
        if provider in self._keys:
            return None
        if spec.api_key_env:
            return (
                None
                if os.environ.get(spec.api_key_env)
                else (f"no API key: environment variable {spec.api_key_env} is not set")
            )
        if not spec.base_url:
            return f"provider {provider} is not configured (no base_url or api_key_env under `providers:`)"
        return None

    def client(self, policy: CompiledPolicy, provider: str) -> ProviderClient:
        """The pooled client for `provider` on the running event loop."""
        loop = asyncio.get_running_loop()
        with self._lock:
            clients = self._clients.setdefault(loop, {})
            c = clients.get(provider)
            if c is None:
                spec = self.provider_spec(policy, provider)
                c = clients[provider] = client_for(
                    spec,
                    api_key=self._keys.get(provider),
                    transport=self._transport,
                    async_transport=self._async_transport,
                    limits=self._limits,
                    max_response_bytes=self._max_response_bytes,
                )
            return c

    def _background(self) -> _LoopThread:
        with self._lock:
            if self._bg is None:
                self._bg = _LoopThread()
                loop = self._bg.loop  # stop the thread when this executor is garbage-collected unclosed
                weakref.finalize(self, lambda: loop.is_closed() or loop.call_soon_threadsafe(loop.stop))
            return self._bg

    def run_sync(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self._background().run(coro)

    async def aclose(self) -> None:
        """Close the clients of the running event loop."""
        with self._lock:
            clients = self._clients.pop(asyncio.get_running_loop(), {})
        for c in clients.values():
            await c.aclose()

    def background_loop(self) -> asyncio.AbstractEventLoop:
        """The private event loop the sync API runs on (started on first use)."""
        return self._background().loop

    def close(self) -> None:
        self.health.stop()
        bg = self._bg
        if bg is not None:
            bg.run(self.aclose())
            bg.stop()
            self._bg = None
