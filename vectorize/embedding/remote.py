"""Embeddings from a remote API (OpenAI, Azure OpenAI, Ollama, Cohere, Voyage, Portkey: see
providers.py): batching, retries with backoff, ``Retry-After``, and outages that make the job
wait rather than fail. Synchronous on purpose: the worker already calls encoders from a thread.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vectorize.embedding import providers
from vectorize.embedding.encoder import TokenCounter
from vectorize.embedding.errors import EmbedderUnavailable, EmbeddingAborted
from vectorize.embedding.providers import Kind

PREFIX = "openai/"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: Inputs per request; OpenAI accepts up to 2048, smaller keeps retries cheap.
REQUEST_BATCH = 256
#: Answers that say "try again later": retried here a few times, then the job waits.
RETRY_STATUSES = {408, 409, 429, 500, 502, 503, 504}
#: Answers that no text could change (wrong key, wrong URL or model name): the job waits.
CONFIGURATION_STATUSES = {401, 403, 404}
#: Chunk size for remote models, in the counter's tokens: well inside every common embedding
#: model's window (OpenAI's take 8191), and the counter (WordPiece) counts more tokens than
#: most servers' tokenizers do for the same text.
DEFAULT_MAX_TOKENS = 512
#: A Retry-After longer than this is not slept through here: the worker pauses the job
#: instead, so the call returns and the worker's other jobs keep their turn.
MAX_INLINE_WAIT = 5.0


class RemoteEmbeddingError(RuntimeError):
    """The server refused these texts for a reason a retry will not fix (e.g. 400). ``status``:
    its HTTP status (None: no answer)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RemoteUnavailable(RemoteEmbeddingError, EmbedderUnavailable):
    """The server is down, overloaded, unreachable or refuses our configuration."""

    def __init__(self, message: str, *, retry_after: float | None = None, status: int | None = None) -> None:
        EmbedderUnavailable.__init__(self, message, retry_after=retry_after)
        self.status = status


class RemoteEmbedder:
    """A model behind an embeddings API (``protocol`` says which). Exposes the ONNX encoder's
    ``embed(texts)``, so the worker does not care where vectors come from."""

    def __init__(
        self,
        model: str,
        protocol: providers.Protocol,
        *,
        max_retries: int = 3,
        backoff: float = 0.5,
        timeout: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = model
        self.model = model.split("/", 1)[1] if model.startswith(protocol.prefix + "/") else model
        self.protocol = protocol
        self.base_url = protocol.base_url.rstrip("/")
        self.max_retries = max_retries
        self.backoff = backoff
        self.timeout = timeout
        self._sleep = sleep
        self.dimension: int | None = None
        self.failure_hook = None
        #: Tokens per chunk of a long text, as ``counter`` counts them (the catalog sets both:
        #: the local default model's tokenizer; None counts words).
        self.max_tokens = DEFAULT_MAX_TOKENS
        self.counter: TokenCounter | None = None

    def embed(
        self, texts: Sequence[str], abort: threading.Event | None = None, priority: int = 0, kind: Kind = "document"
    ) -> np.ndarray:
        """``priority`` is accepted for the Embedder protocol; a remote server has no local CPU to
        share. ``kind``: rows ("document") or search queries ("query"), for APIs that tell them apart."""
        if not texts:
            return np.empty((0, self.dimension or 0), dtype=np.float32)
        parts = []
        for start in range(0, len(texts), self.protocol.batch):
            if abort is not None and abort.is_set():
                raise EmbeddingAborted("embedding aborted for shutdown")
            parts.append(self._request(list(texts[start : start + self.protocol.batch]), kind))
        return np.concatenate(parts)

    def _request(self, texts: list[str], kind: Kind) -> np.ndarray:
        spec = self.protocol.request(self.model, texts, kind)
        payload = json.dumps(spec.body).encode()
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(self.base_url + spec.path, data=payload, headers=spec.headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return self._parse(json.loads(response.read()), len(texts))
            except urllib.error.HTTPError as exc:
                message = f"{self.base_url} answered {exc.code}: {_error_message(exc)}"
                if exc.code in CONFIGURATION_STATUSES:
                    raise RemoteUnavailable(message, status=exc.code) from None
                if exc.code not in RETRY_STATUSES:
                    raise RemoteEmbeddingError(message, status=exc.code) from None
                delay = _retry_after(exc)
                if attempt == self.max_retries or (delay is not None and delay > MAX_INLINE_WAIT):
                    raise RemoteUnavailable(message, retry_after=delay, status=exc.code) from None
                self._sleep(delay if delay is not None else self.backoff * 2**attempt)
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                if attempt == self.max_retries:
                    raise RemoteUnavailable(f"{self.base_url} is unreachable: {exc}") from None
                self._sleep(self.backoff * 2**attempt)
        raise AssertionError("unreachable")

    def _parse(self, body: dict, expected: int) -> np.ndarray:
        vectors = self.protocol.vectors(body)
        if len(vectors) != expected:
            raise RemoteEmbeddingError(f"{self.base_url} returned {len(vectors)} embeddings for {expected} inputs")
        matrix = np.array(vectors, dtype=np.float32)
        if self.dimension is None:
            self.dimension = matrix.shape[1]  # learned from the first response
        elif matrix.shape[1] != self.dimension:
            raise RemoteEmbeddingError(f"{self.base_url} changed dimension from {self.dimension} to {matrix.shape[1]}")
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        return matrix / np.maximum(norms, 1e-12)


class OpenAIEmbedder(RemoteEmbedder):
    """``openai/<model>`` on OpenAI's API or a server speaking it."""

    def __init__(self, model: str, *, api_key: str | None, base_url: str = DEFAULT_BASE_URL, **kwargs: Any) -> None:
        super().__init__(model, providers.OpenAI("openai", base_url.rstrip("/"), api_key), **kwargs)


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        message = providers.error_message(json.loads(exc.read()))
    except Exception:
        message = None
    return message or exc.reason or "no message"


def _retry_after(exc: urllib.error.HTTPError) -> float | None:
    value = exc.headers.get("Retry-After") if exc.headers else None
    try:
        return min(float(value), 3600.0) if value else None
    except ValueError:
        return None
