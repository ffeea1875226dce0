"""The gateway: OpenAI-compatible HTTP requests in, routed and executed completions out (starlette, uvicorn)."""
