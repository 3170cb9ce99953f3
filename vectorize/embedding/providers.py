"""The remote embedding APIs a ``model`` string can name, as pg_vectorize spells them: each one's
request and answer, and nothing else (retries, outages and batching are ``remote.RemoteEmbedder``'s,
shared by all of them).

    openai/<model>     OpenAI's /v1/embeddings (and servers speaking it: vLLM, TEI, ...)
    azure/<deployment> Azure OpenAI: a deployment's /embeddings, ``api-version``, ``api-key`` header
    ollama/<model>     Ollama's own /api/embed
    cohere/<model>     Cohere's /v2/embed, documents and queries embedded as such (``input_type``)
    voyage/<model>     Voyage AI's /v1/embeddings, with ``input_type`` and ``output_dimension``
    portkey/<model>    Portkey's gateway: OpenAI's protocol plus its ``x-portkey-*`` headers
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

#: What a text is embedded as: a row of a table, or a search query (some APIs embed them differently).
Kind = Literal["document", "query"]


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass(frozen=True)
class Protocol:
    """One API's spelling of "embed these texts". ``base_url`` has no trailing slash."""

    prefix: str
    base_url: str
    api_key: str | None = None
    #: Inputs one request may carry (the API's own limit, or less to keep retries cheap).
    batch: int = 256
    #: Extra headers sent with every request (a gateway's routing, for example).
    headers: dict[str, str] = field(default_factory=dict)

    def request(self, model: str, texts: list[str], kind: Kind) -> Request:
        raise NotImplementedError

    def vectors(self, body: Any) -> list[list[float]]:
        raise NotImplementedError

    def _bearer(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", **self.headers}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers


def _nonempty(texts: list[str]) -> list[str]:
    """Most APIs refuse empty strings; a single space embeds as "nothing" there too."""
    return [t if t else " " for t in texts]


def _openai_vectors(body: Any) -> list[list[float]]:
    return [item["embedding"] for item in sorted(body.get("data", []), key=lambda item: item["index"])]


@dataclass(frozen=True)
class OpenAI(Protocol):
    def request(self, model: str, texts: list[str], kind: Kind) -> Request:
        return Request("/embeddings", self._bearer(), {"model": model, "input": _nonempty(texts), "encoding_format": "float"})

    def vectors(self, body: Any) -> list[list[float]]:
        return _openai_vectors(body)


@dataclass(frozen=True)
class Azure(Protocol):
    """``base_url`` is the resource's endpoint (https://<resource>.openai.azure.com); the model
    string names a deployment."""

    api_version: str = "2024-10-21"

    def request(self, model: str, texts: list[str], kind: Kind) -> Request:
        headers = {"Content-Type": "application/json", "api-key": self.api_key or "", **self.headers}
        path = f"/openai/deployments/{model}/embeddings?api-version={self.api_version}"
        return Request(path, headers, {"input": _nonempty(texts)})

    def vectors(self, body: Any) -> list[list[float]]:
        return _openai_vectors(body)


@dataclass(frozen=True)
class Ollama(Protocol):
    def request(self, model: str, texts: list[str], kind: Kind) -> Request:
        return Request("/api/embed", self._bearer(), {"model": model, "input": _nonempty(texts)})

    def vectors(self, body: Any) -> list[list[float]]:
        return list(body.get("embeddings", []))


@dataclass(frozen=True)
class Cohere(Protocol):
    batch: int = 96  # Cohere's limit per request

    def request(self, model: str, texts: list[str], kind: Kind) -> Request:
        input_type = "search_query" if kind == "query" else "search_document"
        body = {"model": model, "texts": _nonempty(texts), "input_type": input_type, "embedding_types": ["float"]}
        return Request("/v2/embed", self._bearer(), body)

    def vectors(self, body: Any) -> list[list[float]]:
        return list(body.get("embeddings", {}).get("float", []))


@dataclass(frozen=True)
class Voyage(Protocol):
    batch: int = 128
    #: Voyage's output_dimension (None: the model's default).
    dimension: int | None = None

    def request(self, model: str, texts: list[str], kind: Kind) -> Request:
        body: dict[str, Any] = {"model": model, "input": _nonempty(texts), "input_type": kind}
        if self.dimension:
            body["output_dimension"] = self.dimension
        return Request("/embeddings", self._bearer(), body)

    def vectors(self, body: Any) -> list[list[float]]:
        return _openai_vectors(body)


@dataclass(frozen=True)
class Portkey(Protocol):
    """OpenAI's protocol through Portkey's gateway: the key goes in ``x-portkey-api-key`` and the
    route in ``x-portkey-provider`` / ``x-portkey-virtual-key`` / ``x-portkey-config`` (``headers``)."""

    def request(self, model: str, texts: list[str], kind: Kind) -> Request:
        headers = {"Content-Type": "application/json", **self.headers}
        if self.api_key:
            headers["x-portkey-api-key"] = self.api_key
        return Request("/embeddings", headers, {"model": model, "input": _nonempty(texts), "encoding_format": "float"})

    def vectors(self, body: Any) -> list[list[float]]:
        return _openai_vectors(body)


def error_message(body: Any) -> str | None:
    """The message in an API's error answer, whichever of the usual shapes it has."""
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    for key in ("error", "message", "detail"):
        if isinstance(body.get(key), str):
            return str(body[key])
    return None
