"""Reserved request attributes: the names a request from outside (the gateway's body, `metadata` and `x-route-*`
headers) may not set, in one place for the engine and the gateway.

Each name is reserved together with every dotted name under it: `budget` covers `budget.left`, and so does a
nested `{"budget": {"left": 1}}`, which a policy's `budget.left` would otherwise read when no budget applies.

* `tokens`, `images`, `max_tokens`: derived from what is sent upstream (the messages, the image parts, the
  body's `max_tokens` / `max_completion_tokens`); budget holds are computed from them.
* `spend`, `budget`: `spend.today` and `budget.left`, set from the budget book.
* `key`: the gateway key's name.
* `ratelimit`: `ratelimit.left`, the fraction (0-1) left of the tightest rate limit that applies to the request
  (policy `limit` statements and the key's `rpm` / `tpm`), set by the gateway before deciding.
* `endpoint`: the API the request came through: `chat`, `completions`, `messages`, `responses` or `embeddings`
  (set by the gateway per endpoint; a Python caller's requests are `chat`), so a policy can route by it.
* `self`, `prompt`, `messages`, `model`: the parameters of `Engine.decide()` / `Engine.pin()`, which take the
  attributes as keyword arguments.
* `messages`, `turns`, `words`: also counts derived from the request itself (the number of messages, of user
  messages, of words in the task text; engine/runtime/messages.py `request_counts`), set for a policy that
  reads them, over anything a caller passes.
"""

from __future__ import annotations

__all__ = ["EMBEDDINGS_ENDPOINT", "ENDPOINTS", "RESERVED_ATTRS", "reserved"]

RESERVED_ATTRS: tuple[str, ...] = (
    "tokens",
    "images",
    "max_tokens",
    "spend",
    "budget",
    "key",
    "ratelimit",
    "endpoint",
    "self",
    "prompt",
    "messages",
    "model",
    "turns",
    "words",
)
_RESERVED = frozenset(RESERVED_ATTRS)
#: The `endpoint` of an embedding request (POST /v1/embeddings). An API name, not the catalog feature of embedding
#: models (engine/runtime/features.py EMBEDDINGS), though both are spelt "embeddings".
EMBEDDINGS_ENDPOINT = "embeddings"
#: The values of the reserved attribute `endpoint`, one per API the gateway serves.
ENDPOINTS: tuple[str, ...] = ("chat", "completions", "messages", "responses", EMBEDDINGS_ENDPOINT)


def reserved(name: str) -> bool:
    """Whether a request may not set the attribute `name` (a reserved name, or a dotted name under one); the
    empty name is reserved too."""
    return not name or name.partition(".")[0] in _RESERVED
