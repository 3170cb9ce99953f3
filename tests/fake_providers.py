"""One local server speaking every provider's embeddings protocol (OpenAI, Azure OpenAI, Ollama,
Cohere, Voyage AI, Portkey): their paths, headers, bodies and error shapes, rate limits with
Retry-After, and outages. Vectors depend on the text (and on the input type where the protocol
has one), so a test can tell what was embedded as what."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from aiohttp import web
from aiohttp.test_utils import TestServer

from vectorize.embedding import providers

DIM = 8
KEY = "provider-test-key"
PROVIDERS = ("openai", "azure", "ollama", "cohere", "voyage", "portkey")


def fake_vector(text: str, kind: str = "document") -> list[float]:
    digest = hashlib.sha256(f"{kind}:{text}".encode()).digest()
    return [b - 128.0 for b in digest[:DIM]]


def normalised(text: str, kind: str = "document") -> np.ndarray:
    vector = np.array(fake_vector(text, kind), dtype=np.float32)
    return vector / np.linalg.norm(vector)


class FakeProviders:
    def __init__(self) -> None:
        #: Per provider: statuses to answer first (429 carries Retry-After: 0).
        self.script: dict[str, list[int]] = {p: [] for p in PROVIDERS}
        #: While True every request gets 503.
        self.down = False
        self.requests: dict[str, list[dict[str, Any]]] = {p: [] for p in PROVIDERS}

    def _error(self, provider: str, status: int, message: str) -> web.Response:
        shapes = {
            "ollama": {"error": message},
            "cohere": {"message": message},
            "voyage": {"detail": message},
        }
        body = shapes.get(provider, {"error": {"message": message, "type": "error", "code": status}})
        return web.json_response(body, status=status, headers={"Retry-After": "0"} if status == 429 else {})

    async def _common(self, provider: str, request: web.Request, authorized: bool) -> tuple[dict | None, web.Response | None]:
        if not authorized:
            return None, self._error(provider, 401, "invalid api key")
        if self.down:
            return None, self._error(provider, 503, "service unavailable")
        body = await request.json()
        self.requests[provider].append(body)
        if self.script[provider]:
            return None, self._error(provider, self.script[provider].pop(0), "slow down")
        if body.get("model") == "nope" or request.match_info.get("deployment") == "nope":
            return None, self._error(provider, 404, 'model "nope" not found, try pulling it first')
        return body, None

    @staticmethod
    def _openai_answer(texts: list[str], kind: str = "document") -> web.Response:
        data = [{"object": "embedding", "index": i, "embedding": fake_vector(t, kind)} for i, t in enumerate(texts)]
        data.reverse()  # the protocol orders by "index"
        return web.json_response({"object": "list", "data": data, "model": "x", "usage": {"prompt_tokens": 1, "total_tokens": 1}})

    async def openai(self, request: web.Request) -> web.Response:
        body, error = await self._common("openai", request, request.headers.get("Authorization") == f"Bearer {KEY}")
        return error or self._openai_answer(body["input"])  # type: ignore[index]

    async def azure(self, request: web.Request) -> web.Response:
        ok = request.headers.get("api-key") == KEY and request.query.get("api-version") == "2024-10-21"
        body, error = await self._common("azure", request, ok)
        return error or self._openai_answer(body["input"])  # type: ignore[index]

    async def ollama(self, request: web.Request) -> web.Response:
        body, error = await self._common("ollama", request, True)
        if error:
            return error
        assert body is not None
        return web.json_response({"model": body["model"], "embeddings": [fake_vector(t) for t in body["input"]]})

    async def cohere(self, request: web.Request) -> web.Response:
        body, error = await self._common("cohere", request, request.headers.get("Authorization") == f"Bearer {KEY}")
        if error:
            return error
        assert body is not None
        if body.get("input_type") not in ("search_document", "search_query") or body.get("embedding_types") != ["float"]:
            return self._error("cohere", 400, "input_type and embedding_types are required for v3+ models")
        kind = "query" if body["input_type"] == "search_query" else "document"
        return web.json_response(
            {"id": "x", "embeddings": {"float": [fake_vector(t, kind) for t in body["texts"]]}, "texts": body["texts"]}
        )

    async def voyage(self, request: web.Request) -> web.Response:
        body, error = await self._common("voyage", request, request.headers.get("Authorization") == f"Bearer {KEY}")
        if error:
            return error
        assert body is not None
        return self._openai_answer(body["input"], body.get("input_type") or "document")

    async def portkey(self, request: web.Request) -> web.Response:
        ok = request.headers.get("x-portkey-api-key") == KEY and request.headers.get("x-portkey-provider") == "openai"
        body, error = await self._common("portkey", request, ok)
        return error or self._openai_answer(body["input"])  # type: ignore[index]


@asynccontextmanager
async def serve_fake_providers() -> AsyncIterator[tuple[FakeProviders, dict[str, providers.Protocol]]]:
    """The server on a free port; yields it and a configured protocol per provider."""
    fake = FakeProviders()
    app = web.Application()
    app.router.add_post("/openai/v1/embeddings", fake.openai)
    app.router.add_post("/azure/openai/deployments/{deployment}/embeddings", fake.azure)
    app.router.add_post("/ollama/api/embed", fake.ollama)
    app.router.add_post("/cohere/v2/embed", fake.cohere)
    app.router.add_post("/voyage/v1/embeddings", fake.voyage)
    app.router.add_post("/portkey/v1/embeddings", fake.portkey)
    server = TestServer(app)
    await server.start_server()
    root = str(server.make_url("")).rstrip("/")
    protocols: dict[str, providers.Protocol] = {
        "openai": providers.OpenAI("openai", f"{root}/openai/v1", KEY),
        "azure": providers.Azure("azure", f"{root}/azure", KEY),
        "ollama": providers.Ollama("ollama", f"{root}/ollama"),
        "cohere": providers.Cohere("cohere", f"{root}/cohere", KEY),
        "voyage": providers.Voyage("voyage", f"{root}/voyage/v1", KEY),
        "portkey": providers.Portkey("portkey", f"{root}/portkey/v1", KEY, headers={"x-portkey-provider": "openai"}),
    }
    try:
        yield fake, protocols
    finally:
        await server.close()
