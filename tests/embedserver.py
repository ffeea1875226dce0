"""A loopback HTTP server for the embeddings and Azure tests: scripted statuses in; OpenAI `/v1/embeddings`, Gemini
`:batchEmbedContents`, OpenAI chat completions and Azure OpenAI's deployment and v1 URLs (chat, streamed chat,
embeddings) answered in each wire format, with every request recorded (path, query, headers, body) out.

    with EmbedServer(azure_key="az-key") as server:
        server.url                                   # http://127.0.0.1:<port>
        server.fail("text-embedding-x", 503)         # that model (body `model`, path id or deployment) answers 503
        server.requests[-1].path / .query / .headers / .body

Vectors are a function of the text: `vector(text, dims)` (dims 3 unless the request asks for fewer or more), so a
test can check what came back. `embedding_catalog()` is the fixture catalog plus two embedding models (embed-small
of acme, embed-gamma of gammalabs), kept out of the shared fixture file so other tests' counts and golden files do
not change. Helpers only: no tests here.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from providers.catalog.loader import load_catalog
from providers.catalog.models import Catalog, ModelSpec

#: Azure deployment URLs: /openai/deployments/{deployment}/{operation}
_DEPLOYMENT = re.compile(r"/openai/deployments/([^/]+)/(chat/completions|embeddings)")
_GEMINI = re.compile(r"/v1beta/models/([^/:]+):batchEmbedContents")


FIXTURE_CATALOG = Path(__file__).resolve().parent / "fixtures" / "policies" / "catalog.yaml"


def embedding_catalog() -> Catalog:
    """tests/fixtures/policies/catalog.yaml plus embed-small (acme, 8k, $0.02/1M) and embed-gamma (gammalabs, 2k,
    $0.10/1M), both `supports: [embeddings]`."""
    embeddings = frozenset({"embeddings"})
    extra = [
        ModelSpec(name="embed-small", provider="acme", id="embed-small", context=8192, input_price=0.02e-6,
                  output_price=0.0, latency_ms=200, supports=embeddings),
        ModelSpec(name="embed-gamma", provider="gammalabs", id="embed-gamma", context=2048, input_price=0.10e-6,
                  output_price=0.0, latency_ms=300, supports=embeddings),
    ]  # fmt: skip
    return load_catalog(FIXTURE_CATALOG).merged(Catalog.from_models(extra))


def vector(text: str, dims: int = 3) -> list[float]:
    """The embedding this server gives `text`: its length, then fixed values (exact in float32)."""
    base = [float(len(text)), 0.5, -0.25, 1.0, 2.0, -3.5, 0.125, 8.0]
    return [base[i % len(base)] for i in range(dims)]


@dataclass
class Recorded:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


class EmbedServer:
    """See the module docstring. `azure_key`: Azure routes answer 401 (Azure's shape) without that `api-key`."""

    def __init__(self, azure_key: str | None = None) -> None:
        self.azure_key = azure_key
        self.requests: list[Recorded] = []
        self.failures: dict[str, int] = {}
        self.remaining: dict[str, int] = {}
        self.omit_usage = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                parts = urlsplit(self.path)
                size = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(size) or b"null")
                headers = {k.lower(): v for k, v in self.headers.items()}
                server.requests.append(Recorded(parts.path, parse_qs(parts.query), headers, body))
                server.handle(self, parts.path, headers, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def fail(self, model: str, status: int, times: int | None = None) -> None:
        """`model` answers `status` from now on, or for its next `times` requests."""
        self.failures[model] = status
        if times is not None:
            self.remaining[model] = times

    def __enter__(self) -> EmbedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # ---- answers ----------------------------------------------------------------------------------------------
    def handle(self, h: BaseHTTPRequestHandler, path: str, headers: dict[str, str], body: Any) -> None:
        deployment = _DEPLOYMENT.fullmatch(path)
        gemini = _GEMINI.fullmatch(path)
        if path.startswith("/openai/"):
            if self.azure_key is not None and headers.get("api-key") != self.azure_key:
                return self.send(h, 401, {"error": {"code": "401", "message": "Access denied due to invalid key."}})
            if deployment is not None:
                model, operation = deployment.group(1), deployment.group(2)
            elif path in ("/openai/v1/chat/completions", "/openai/v1/embeddings"):
                model, operation = body.get("model", ""), path.rsplit("/v1/", 1)[1]
            else:
                return self.send(h, 404, {"error": {"code": "404", "message": "Resource not found"}})
        elif gemini is not None:
            model, operation = gemini.group(1), "gemini"
        elif path in ("/v1/embeddings", "/v1/chat/completions"):
            model, operation = body.get("model", ""), path.removeprefix("/v1/")
        else:
            return self.send(h, 404, {"error": {"message": f"no route {path}"}})
        status = self.failures.get(model)
        if status is not None and model in self.remaining:
            self.remaining[model] -= 1
            if self.remaining[model] <= 0:
                del self.failures[model], self.remaining[model]
        if status is not None:
            return self.send(h, status, {"error": {"message": f"scripted {status}", "code": "scripted"}})
        if operation == "embeddings":
            return self.send(h, 200, self.openai_embeddings(model, body))
        if operation == "gemini":
            items = body["requests"]
            values = [vector(r["content"]["parts"][0]["text"], r.get("outputDimensionality", 3)) for r in items]
            return self.send(h, 200, {"embeddings": [{"values": v} for v in values]})
        if body.get("stream"):
            return self.stream_chat(h, model)
        reply = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        }
        return self.send(h, 200, reply)

    def openai_embeddings(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        dims = body.get("dimensions", 3)
        texts = [i if isinstance(i, str) else "t" * len(i) for i in inputs]
        data = [{"object": "embedding", "index": i, "embedding": vector(t, dims)} for i, t in enumerate(texts)]
        data.reverse()  # out of order on purpose: the client sorts by index
        answer: dict[str, Any] = {"object": "list", "data": data, "model": f"{model}-v1"}
        if not self.omit_usage:
            tokens = sum(len(t) for t in texts)
            answer["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        return answer

    def stream_chat(self, h: BaseHTTPRequestHandler, model: str) -> None:
        chunks = [
            # Azure's first chunk: no choices, only the prompt filter results
            {"id": "", "object": "", "created": 0, "model": "", "choices": [], "prompt_filter_results": []},
            {"id": "c1", "model": model, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hel"}}]},
            {
                "id": "c1",
                "model": model,
                "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}],
            },
            {"id": "c1", "model": model, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}},
        ]
        data = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
        h.send_response(200)
        h.send_header("content-type", "text/event-stream")
        h.send_header("content-length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    @staticmethod
    def send(h: BaseHTTPRequestHandler, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("content-type", "application/json")
        h.send_header("content-length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
