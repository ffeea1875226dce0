"""A fake OpenAI-compatible chat server on 127.0.0.1 for the examples: scripted answers and errors per model id,
no network, no keys, standard library only.

    with FakeOpenAI() as server:                      # listens on a free port
        server.script("alpha-mini", [503, 503])       # the next two calls of alpha-mini get HTTP 503
        server.script("beta-chat", ["Paris."])        # then this text
        server.base_url                               # "http://127.0.0.1:PORT/v1": a catalog's base_url
        server.requests                               # every request received: path, headers, JSON body

A model with nothing scripted answers "hello from <model id>". Only `POST /v1/chat/completions` without
streaming is served; anything else gets a 404.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FakeOpenAI", "Received"]

Scripted = int | str  # an HTTP error status, or the text of an answer


@dataclass(frozen=True)
class Received:
    """One request the server received."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class FakeOpenAI:
    """The server; see the module docstring. Thread-safe: requests are served on their own threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scripts: dict[str, deque[Scripted]] = {}
        self.requests: list[Received] = []
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._http.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}/v1"

    def script(self, model_id: str, answers: list[Scripted]) -> None:
        """Queue answers for `model_id`: an int is an HTTP error status, a str the text of a reply."""
        with self._lock:
            self._scripts.setdefault(model_id, deque()).extend(answers)

    def start(self) -> FakeOpenAI:
        self._thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-openai", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def answer(self, path: str, headers: dict[str, str], body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """The status and JSON the server sends for one request."""
        with self._lock:
            self.requests.append(Received(path, headers, body))
            queue = self._scripts.get(str(body.get("model")))
            scripted = queue.popleft() if queue else None
        if path != "/v1/chat/completions":
            return 404, _error(f"no route for {path}", "invalid_request_error")
        if isinstance(scripted, int):
            return scripted, _error("The server had an error while processing your request", "server_error")
        model = str(body.get("model"))
        text = scripted if scripted is not None else f"hello from {model}"
        prompt = sum(len(str(m.get("content", ""))) for m in body.get("messages", []))
        usage = {"prompt_tokens": prompt // 4 + 1, "completion_tokens": len(text) // 4 + 1}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return 200, {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": usage,
        }


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": None, "param": None}}


def _handler_for(server: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real providers do

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length") or 0))
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                body = {}
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, payload = server.answer(self.path, headers, body if isinstance(body, dict) else {})
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # quiet: the examples print what matters
            pass

    return Handler
