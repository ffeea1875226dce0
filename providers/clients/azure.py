"""The Azure OpenAI wire format: a ChatRequest in, `POST` to the deployment's chat-completions URL (or the v1 API's)
with the `api-key` header out, and its OpenAI-shaped replies back (the OpenAI client's parsing, unchanged).

Two URL forms, chosen by the provider's `base_url`:

* the resource endpoint (`https://RESOURCE.openai.azure.com`): deployment URLs,
  `{base_url}/openai/deployments/{deployment}/chat/completions?api-version={api_version}`, where the deployment is
  the catalog model's `id` and `api_version` the provider's (default DEFAULT_API_VERSION);
* a base_url ending in `/openai/v1` (`https://RESOURCE.openai.azure.com/openai/v1`): the v1 API,
  `{base_url}/chat/completions` with the deployment as the body's `model`, and no api-version unless the provider
  sets one.

Embeddings use the same forms with `embeddings` for `chat/completions` (providers/clients/embeddings.py). Azure's
error bodies are OpenAI's plus extras (`innererror`, a numeric `status`): they are classified as OpenAI's. A
stream's first chunk may carry no choices (only `prompt_filter_results`); the OpenAI parser skips it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar
from urllib.parse import quote

from providers.clients.openai import OpenAIClient
from providers.errors import ProviderUnavailable

if TYPE_CHECKING:
    from providers.catalog.models import ProviderKind
    from providers.types import ModelSpecLike as ModelSpec

__all__ = ["DEFAULT_API_VERSION", "AzureClient"]

#: The api-version of deployment URLs when the provider sets none: the latest dated GA version for inference.
DEFAULT_API_VERSION = "2024-10-21"
V1_SUFFIX = "/openai/v1"


class AzureClient(OpenAIClient):
    """Azure OpenAI (`api-key` header); a model's `id` is its deployment name. See the module docstring."""

    kind: ClassVar[ProviderKind] = "azure"
    error_kind: ClassVar[str] = "openai"  # Azure's error bodies are OpenAI's (plus `innererror`)
    default_base_url = ""

    @property
    def v1(self) -> bool:
        """Whether the provider's base_url is the v1 API (`.../openai/v1`) rather than the resource endpoint."""
        return self.base_url.endswith(V1_SUFFIX)

    def api_version(self) -> str | None:
        """The api-version query parameter sent: the provider's; for deployment URLs DEFAULT_API_VERSION without."""
        version: str | None = getattr(self.spec, "api_version", None)
        return version if version or self.v1 else DEFAULT_API_VERSION

    def operation_url(self, model: ModelSpec, operation: str) -> str:
        """The URL of `operation` (`chat/completions`, `embeddings`) for `model`'s deployment."""
        base = self.base_url
        if not base:
            raise ProviderUnavailable(
                f"provider {self.spec.name} of kind azure has no base_url (the resource endpoint, "
                "https://RESOURCE.openai.azure.com)",
                provider=self.spec.name,
            )
        if self.v1:
            url = f"{base}/{operation}"
        else:
            url = f"{base.removesuffix('/openai')}/openai/deployments/{quote(model.id, safe='')}/{operation}"
        version = self.api_version()
        return f"{url}?api-version={quote(version, safe='')}" if version else url

    def url(self, model: ModelSpec, *, stream: bool) -> str:
        return self.operation_url(model, "chat/completions")

    def auth_headers(self, key: str | None) -> dict[str, str]:
        return {"api-key": key} if key else {}
