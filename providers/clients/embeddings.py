"""Embedding calls: a provider's chat client, a catalog model and an EmbeddingRequest in, a ChatResponse out whose
`raw` is the provider's JSON (read by `vectors()`) and whose usage and cost are the input tokens at the model's
input price.

Three wire formats: OpenAI-compatible `POST {base_url}/embeddings`, Azure's deployment (or v1) `embeddings` URL
with `api-key`, and Gemini's `POST {base_url}/v1beta/models/{id}:batchEmbedContents` (which reports no usage: the
execution's metering estimates it from what was sent). Each is a subclass of the provider's chat client that
describes only the URL, the body and the reply, so the key, headers, transports, size cap, error classification
and redaction are the chat client's (providers/clients/connection.py,
request.py and answers.py). `embedding_client(chat_client)` gives the
embedding client sharing a chat client's settings (one per chat client, pooled with it).
"""

from __future__ import annotations

import base64
import struct
import weakref
from typing import TYPE_CHECKING, Any

from providers.clients.azure import AzureClient
from providers.clients.base import ProviderClient
from providers.clients.gemini import GeminiClient
from providers.clients.openai import OpenAIClient
from providers.clients.reply import ParsedReply
from providers.errors import BadRequest, MalformedResponse
from providers.types import ChatRequest, Usage

if TYPE_CHECKING:
    from providers.types import ChatResponse
    from providers.types import ModelSpecLike as ModelSpec

__all__ = [
    "EMBEDDING_KINDS",
    "EmbeddingRequest",
    "embedding_client",
    "float32_base64",
    "response_vectors",
    "vectors",
]


class EmbeddingRequest(ChatRequest):
    """What to embed: `inputs` are texts, or token arrays (OpenAI-compatible and Azure providers only);
    `dimensions` asks for shorter vectors (where the model supports it); `user` goes to OpenAI-kind providers.
    A ChatRequest without messages, so that it travels where a chat request does."""

    inputs: list[str] | list[list[int]]
    dimensions: int | None = None
    user: str | None = None

    def texts(self) -> list[str]:
        """The inputs as texts (token arrays have none: empty strings)."""
        return [i if isinstance(i, str) else "" for i in self.inputs]


def _request(req: ChatRequest) -> EmbeddingRequest:
    if not isinstance(req, EmbeddingRequest):
        raise TypeError("an embedding client sends EmbeddingRequests only")
    return req


def float32_base64(vector: list[float]) -> str:
    """A vector as OpenAI's `encoding_format: base64` gives it: little-endian float32 values, base64-encoded."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def _floats(value: Any) -> list[float]:
    """One embedding from a reply: a list of numbers, or (from a server that answers base64 anyway) its base64."""
    if isinstance(value, str):
        raw = base64.b64decode(value, validate=True)
        return list(struct.unpack(f"<{len(raw) // 4}f", raw[: len(raw) // 4 * 4]))
    if not isinstance(value, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
        raise MalformedResponse("an embedding is not a list of numbers")
    return [float(x) for x in value]


def vectors(raw: Any) -> list[list[float]]:
    """The embeddings of a reply in input order: OpenAI's `data[].embedding` (ordered by `index`) or Gemini's
    `embeddings[].values`. Raises MalformedResponse for anything else."""
    if isinstance(raw, dict) and isinstance(raw.get("data"), list):
        items = raw["data"]
        if not all(isinstance(d, dict) for d in items):
            raise MalformedResponse("an embedding reply's `data` holds a non-object")
        ordered = sorted(items, key=lambda d: d.get("index", 0) if isinstance(d.get("index"), int) else 0)
        return [_floats(d.get("embedding")) for d in ordered]
    if isinstance(raw, dict) and isinstance(raw.get("embeddings"), list):
        return [_floats(e.get("values") if isinstance(e, dict) else None) for e in raw["embeddings"]]
    raise MalformedResponse("the reply holds no embeddings (`data` or `embeddings`)")


def _checked(data: Any, usage: Usage, model_version: Any) -> ParsedReply:
    vectors(data)  # a malformed reply fails here, as a failed call of this model
    return ParsedReply(usage=usage, finish_reason="stop", model_version=str(model_version) if model_version else None)


class OpenAIEmbeddingWire:
    """The OpenAI embeddings body and reply (OpenAI-compatible and Azure providers); always asks for floats (the
    gateway encodes base64 itself)."""

    def build_body(self, model: ModelSpec, req: ChatRequest, *, stream: bool) -> dict[str, Any]:
        ereq = _request(req)
        body: dict[str, Any] = {"model": model.id, "input": ereq.inputs, "encoding_format": "float"}
        if ereq.dimensions is not None:
            body["dimensions"] = ereq.dimensions
        if ereq.user is not None:
            body["user"] = ereq.user
        return body

    def parse_reply(self, data: Any) -> ParsedReply:
        used = data.get("usage") or {}
        tokens = used.get("prompt_tokens") or used.get("total_tokens") or 0
        return _checked(data, Usage(input_tokens=int(tokens)), data.get("model"))


class OpenAIEmbeddingClient(OpenAIEmbeddingWire, OpenAIClient):
    """OpenAI-compatible `POST {base_url}/embeddings`."""

    def url(self, model: ModelSpec, *, stream: bool) -> str:
        return f"{self.base_url}/embeddings"


class AzureEmbeddingClient(OpenAIEmbeddingWire, AzureClient):
    """Azure's `.../deployments/{deployment}/embeddings?api-version=...` (or the v1 API's `/embeddings`)."""

    def url(self, model: ModelSpec, *, stream: bool) -> str:
        return self.operation_url(model, "embeddings")


class GeminiEmbeddingClient(GeminiClient):
    """Gemini's `batchEmbedContents` (one request per input, in order); texts only."""

    def url(self, model: ModelSpec, *, stream: bool) -> str:
        return f"{self.base_url}/v1beta/models/{model.id.removeprefix('models/')}:batchEmbedContents"

    def build_body(self, model: ModelSpec, req: ChatRequest, *, stream: bool) -> dict[str, Any]:
        ereq = _request(req)
        if any(not isinstance(i, str) for i in ereq.inputs):
            raise BadRequest(
                "token arrays cannot be sent to a Gemini model: send the input as text",
                provider=self.spec.name,
                model=model.name,
                code="unsupported_input",
            )
        name = f"models/{model.id.removeprefix('models/')}"
        requests = []
        for text in ereq.texts():
            item: dict[str, Any] = {"model": name, "content": {"parts": [{"text": text}]}}
            if ereq.dimensions is not None:
                item["outputDimensionality"] = ereq.dimensions
            requests.append(item)
        return {"requests": requests}

    def parse_reply(self, data: Any) -> ParsedReply:
        return _checked(data, Usage(), None)  # no usage in Gemini's reply: metering estimates the input tokens


#: The embedding client of each provider kind that has an embeddings API.
EMBEDDING_CLIENTS: dict[str, type[ProviderClient]] = {
    "openai": OpenAIEmbeddingClient,
    "azure": AzureEmbeddingClient,
    "gemini": GeminiEmbeddingClient,
}
EMBEDDING_KINDS: tuple[str, ...] = tuple(EMBEDDING_CLIENTS)
_PAIRED: weakref.WeakKeyDictionary[ProviderClient, ProviderClient] = weakref.WeakKeyDictionary()


def embedding_client(chat: ProviderClient) -> ProviderClient:
    """The embedding client for `chat`'s provider, with its settings (spec, key, transports, limits, size cap):
    made once per chat client and kept as long as it is. Raises BadRequest for a kind without embeddings."""
    paired = _PAIRED.get(chat)
    if paired is None:
        cls = EMBEDDING_CLIENTS.get(chat.kind)
        if cls is None:
            raise BadRequest(
                f"provider {chat.spec.name} ({chat.kind}) has no embeddings API in modelroute; embeddings go to "
                f"providers of kind {', '.join(EMBEDDING_KINDS)}",
                provider=chat.spec.name,
                code="unsupported_endpoint",
            )
        paired = _PAIRED[chat] = cls(
            chat.spec,
            api_key=chat._api_key.get_secret_value() if chat._api_key is not None else None,
            transport=chat._transport,
            async_transport=chat._async_transport,
            limits=chat._limits,
            trust_env=chat._trust_env,
            max_response_bytes=chat._max_response,
        )
        lean = chat.lean()  # one connection pool per provider: closed with the chat client
        if lean is not None:
            paired._lean = lean
    return paired


def response_vectors(response: ChatResponse) -> list[list[float]]:
    """The vectors of an embedding call's ChatResponse (its `raw` reply)."""
    return vectors(response.raw)
