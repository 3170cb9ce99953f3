"""A local server speaking OpenAI's /v1/embeddings protocol, errors and outages included."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web
from aiohttp.test_utils import TestServer

DIM = 8
KEY = "sk-test"


def fake_vector(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [b - 128.0 for b in digest[:DIM]]


class FakeOpenAI:
    """Answers POST /v1/embeddings like OpenAI; ``script`` holds statuses to answer first."""

    def __init__(self) -> None:
        self.script: list[int] = []
        self.requests: list[dict] = []
        #: While True every request gets 503, as from a server that is down.
        self.down = False
        #: time.monotonic() of every request that reached the server.
        self.request_times: list[float] = []

    async def embeddings(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {KEY}":
            return web.json_response(
                {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}},
                status=401,
            )
        self.request_times.append(time.monotonic())
        if self.down:
            return web.json_response(
                {"error": {"message": "The server is overloaded", "type": "server_error", "code": "overloaded"}}, status=503
            )
        body = await request.json()
        self.requests.append(body)
        if self.script:
            status = self.script.pop(0)
            kinds = {
                429: ("Rate limit reached", "rate_limit_exceeded"),
                500: ("The server had an error", "server_error"),
                400: ("'input' is invalid", "invalid_request_error"),
            }
            message, code = kinds[status]
            return web.json_response(
                {"error": {"message": message, "type": code, "param": None, "code": code}},
                status=status,
                headers={"Retry-After": "0"} if status == 429 else {},
            )
        data = [{"object": "embedding", "index": i, "embedding": fake_vector(t)} for i, t in enumerate(body["input"])]
        data.reverse()  # the protocol orders by "index", not by position
        return web.json_response(
            {"object": "list", "data": data, "model": body["model"], "usage": {"prompt_tokens": 1, "total_tokens": 1}}
        )


@asynccontextmanager
async def serve_fake_openai() -> AsyncIterator[tuple[FakeOpenAI, str]]:
    """The fake server on a free local port; yields it and its base URL (ending in /v1)."""
    fake = FakeOpenAI()
    app = web.Application()
    app.router.add_post("/v1/embeddings", fake.embeddings)
    server = TestServer(app)
    await server.start_server()
    try:
        yield fake, str(server.make_url("/v1"))
    finally:
        await server.close()
