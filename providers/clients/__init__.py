"""Provider HTTP clients: `client_for(spec)` turns a ProviderSpec into the ProviderClient for its wire format.

client = client_for(spec)                    # OpenAIClient | AnthropicClient | GeminiClient | AzureClient
response = client.chat(model, ChatRequest(messages=[Message.user("hi")]))
for event in client.stream(model, request): ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from providers.catalog.models import PROVIDER_KINDS
from providers.clients.anthropic import AnthropicClient
from providers.clients.azure import AzureClient
from providers.clients.base import ProviderClient
from providers.clients.gemini import GeminiClient
from providers.clients.openai import OpenAIClient
from providers.clients.reply import ParsedReply, StreamParser

if TYPE_CHECKING:
    from providers.types import ProviderSpecLike as ProviderSpec

CLIENTS: dict[str, type[ProviderClient]] = {
    cls.kind: cls for cls in (OpenAIClient, AnthropicClient, GeminiClient, AzureClient)
}
if set(CLIENTS) != set(PROVIDER_KINDS):  # a kind without a client (or the reverse) fails at import
    raise ImportError(f"provider kinds {sorted(PROVIDER_KINDS)} and clients {sorted(CLIENTS)} differ")


def client_for(spec: ProviderSpec, **kw: Any) -> ProviderClient:
    """The client for `spec.kind`; `kw` (api_key, transport, async_transport, ...) go to its constructor."""
    try:
        cls = CLIENTS[spec.kind]
    except KeyError:
        raise ValueError(f"unknown provider kind {spec.kind!r}; expected one of {sorted(CLIENTS)}") from None
    return cls(spec, **kw)


__all__ = [
    "CLIENTS",
    "AnthropicClient",
    "AzureClient",
    "GeminiClient",
    "OpenAIClient",
    "ParsedReply",
    "ProviderClient",
    "StreamParser",
    "client_for",
]
