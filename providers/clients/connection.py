"""The provider client's configuration and connections: a ProviderSpec (plus an API key, transports, limits) in,
the resolved API key, timeouts, response-size cap and pooled HTTP clients (httpx and the lean transport) out.

`ClientConnection` is the bottom layer of ProviderClient (providers/clients/base.py): it holds the client's state
and declares the wire format its subclasses describe (URL, auth headers, JSON body, response parsing).

Answers are capped: a body (or a stream, in total) larger than `max_response_bytes` raises ResponseTooLarge and
drops its connection. The cap is the provider spec's `max_response_bytes`, else the client's own (constructor),
else the process default (`set_default_max_response_bytes`, 32 MiB unless changed; `modelroute serve
--max-response-bytes` changes it).
"""

from __future__ import annotations

import functools
import os
import ssl
import threading
import urllib.request
from typing import TYPE_CHECKING, Any, ClassVar

import httpx
from pydantic import SecretStr

from providers.clients.lean import LeanTransport
from providers.errors import ProviderUnavailable, register_secret

if TYPE_CHECKING:
    from providers.clients.reply import ParsedReply
    from providers.types import ChatRequest
    from providers.types import ModelSpecLike as ModelSpec
    from providers.types import ProviderSpecLike as ProviderSpec

TimeoutArg = float | httpx.Timeout | None

DEFAULT_MAX_RESPONSE_BYTES = 32 << 20  # 33554432: the cap on an answer when nothing else sets one
_max_response_bytes = [DEFAULT_MAX_RESPONSE_BYTES]


def default_max_response_bytes() -> int:
    """The process-wide cap on a provider answer's size, in bytes, for providers whose spec sets none."""
    return _max_response_bytes[0]


def set_default_max_response_bytes(limit: int | None) -> int:
    """Set the process-wide cap (None: back to DEFAULT_MAX_RESPONSE_BYTES); returns the previous one. Applies to
    clients already created too (each call reads it)."""
    if limit is not None and limit < 1:
        raise ValueError(f"max_response_bytes must be at least 1, got {limit}")
    previous = _max_response_bytes[0]
    _max_response_bytes[0] = DEFAULT_MAX_RESPONSE_BYTES if limit is None else int(limit)
    return previous


@functools.cache
def _shared_ssl_context() -> ssl.SSLContext:
    """httpx's default verifying context, built once and shared by every client (building one is slow)."""
    return httpx.create_ssl_context()


def _environment_proxied() -> bool:
    """Whether the environment names an HTTP proxy (then the async path goes through httpx.AsyncClient)."""
    return any(k in ("http", "https", "all") for k in urllib.request.getproxies_environment())


class _HeaderCache:
    """The built headers for the current API key (the key may change); its repr shows neither."""

    __slots__ = ("_entry",)

    def __init__(self) -> None:
        self._entry: tuple[str | None, list[tuple[bytes, bytes]]] | None = None

    def get(self, key: str | None) -> list[tuple[bytes, bytes]] | None:
        entry = self._entry  # one read: the key and its headers always belong together
        return entry[1] if entry is not None and entry[0] == key else None

    def set(self, key: str | None, headers: list[tuple[bytes, bytes]]) -> None:
        self._entry = (key, headers)

    def __repr__(self) -> str:
        return "_HeaderCache(...)"


class ClientConnection:
    """A provider client's state, configuration and pooled HTTP clients; ProviderClient builds on it."""

    kind: ClassVar[str] = ""
    #: whose error bodies the provider answers with (the format classify_http reads): its own kind unless set
    error_kind: ClassVar[str] = ""
    default_base_url: ClassVar[str] = ""

    def __init__(
        self,
        spec: ProviderSpec,
        *,
        api_key: str | None = None,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
        limits: httpx.Limits | None = None,
        trust_env: bool = True,
        max_response_bytes: int | None = None,
    ) -> None:
        self.spec = spec
        self._api_key = SecretStr(api_key) if api_key else None
        register_secret(api_key)
        self._max_response = max_response_bytes
        self._transport = transport
        self._async_transport = async_transport
        self._limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20)
        self._trust_env = trust_env
        self._client: httpx.Client | None = None
        self._aclient: httpx.AsyncClient | None = None
        self._lean: LeanTransport | None = None
        self._urls: dict[str, httpx.URL] = {}
        self._timeouts: dict[float | None, dict[str, float | None]] = {}
        self._headers = _HeaderCache()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        key = "set" if self._secret() else "unset"
        return f"{type(self).__name__}(provider={self.spec.name!r}, base_url={self.base_url!r}, api_key={key})"

    # ---- configuration -------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return (self.spec.base_url or self.default_base_url).rstrip("/")

    @property
    def max_response_bytes(self) -> int:
        """The cap on one answer's size in bytes: the spec's, else this client's, else the process default."""
        return getattr(self.spec, "max_response_bytes", None) or self._max_response or _max_response_bytes[0]

    def _secret(self) -> str | None:
        if self._api_key is not None:
            return self._api_key.get_secret_value()
        env = self.spec.api_key_env
        key = (os.environ.get(env) or None) if env else None
        if key is not None:
            register_secret(key)  # a set lookup once known
        return key

    def _require_key(self) -> str | None:
        key = self._secret()
        if key is None and self.spec.api_key_env:
            raise ProviderUnavailable(
                f"no API key: environment variable {self.spec.api_key_env} is not set",
                provider=self.spec.name,
            )
        return key

    def _timeout(self, timeout: TimeoutArg) -> httpx.Timeout:
        if isinstance(timeout, httpx.Timeout):
            return timeout
        return httpx.Timeout(self.spec.timeout_s if timeout is None else timeout)

    # ---- the wire format (subclasses) -------------------------------------------------------------------
    def url(self, model: ModelSpec, *, stream: bool) -> str:
        raise NotImplementedError

    def auth_headers(self, key: str | None) -> dict[str, str]:
        raise NotImplementedError

    def build_body(self, model: ModelSpec, req: ChatRequest, *, stream: bool) -> dict[str, Any]:
        raise NotImplementedError

    def parse_reply(self, data: Any) -> ParsedReply:
        raise NotImplementedError

    # ---- pooled HTTP clients ----------------------------------------------------------------------------
    def http(self) -> httpx.Client:
        """The (lazily created, pooled) synchronous httpx client."""
        with self._lock:
            if self._client is None or self._client.is_closed:
                self._client = httpx.Client(
                    verify=_shared_ssl_context(),
                    transport=self._transport,
                    limits=self._limits,
                    trust_env=self._trust_env,
                    timeout=self._timeout(None),
                )
            return self._client

    def ahttp(self) -> httpx.AsyncClient:
        """The (lazily created, pooled) async httpx client; bound to the event loop that first uses it."""
        with self._lock:
            if self._aclient is None or self._aclient.is_closed:
                self._aclient = httpx.AsyncClient(
                    verify=_shared_ssl_context(),
                    transport=self._async_transport,
                    limits=self._limits,
                    trust_env=self._trust_env,
                    timeout=self._timeout(None),
                )
            return self._aclient

    def lean(self) -> LeanTransport | None:
        """The lean transport the async path sends through (providers/clients/lean.py), or None when a custom
        `async_transport` was given or the environment names a proxy: then `ahttp()` is used."""
        if self._lean is not None:
            return self._lean
        if self._async_transport is not None or (self._trust_env and _environment_proxied()):
            return None
        with self._lock:
            if self._lean is None:
                self._lean = LeanTransport(ssl_context=_shared_ssl_context(), limits=self._limits)
            return self._lean

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def aclose(self) -> None:
        if self._aclient is not None:
            await self._aclient.aclose()
            self._aclient = None
        if self._lean is not None:
            await self._lean.aclose()
            self._lean = None
        self.close()
