"""Query texts to vectors for search, shared by every request of a process.

Two things make concurrent searches cheaper than one inference each (as text-embeddings-inference
and infinity do it): a small LRU cache answers a repeated query text without inference, and
queries that arrive while an inference is running wait for the next call and go in together,
one batch. A lone query never waits for a window: it is embedded at once."""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict

import numpy as np

from vectorize import metrics
from vectorize.embedding.catalog import ModelCatalog

#: Query vectors kept (384 floats each: 1.5 kB; 4096 of them are 6 MB).
CACHE_SIZE = 4096
#: Longest query text cached (a pasted document is unlikely to come again).
CACHE_MAX_CHARS = 2000


class QueryEmbedder:
    def __init__(self, catalog: ModelCatalog, cache_size: int = CACHE_SIZE, parallel: int | None = None) -> None:
        self.catalog = catalog
        self.cache_size = cache_size
        #: Inference calls in flight per model at most (one per core: each runs on its own session).
        self.parallel = parallel or os.cpu_count() or 1
        self._cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._waiting: dict[str, list[tuple[str, asyncio.Future[np.ndarray]]]] = {}
        self._running: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # held so that they are not collected mid-flight

    async def embed(self, model: str, text: str) -> np.ndarray:
        key = (model, text)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            metrics.QUERY_CACHE.labels("hit").inc()
            return cached
        metrics.QUERY_CACHE.labels("miss").inc()
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(model, []).append((text, future))
        if self._running.get(model, 0) < self.parallel:
            self._running[model] = self._running.get(model, 0) + 1
            task = asyncio.create_task(self._drain(model))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        vector = await future
        if len(text) <= CACHE_MAX_CHARS:
            self._cache[key] = vector
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return vector

    async def _drain(self, model: str) -> None:
        """Embed everything waiting for ``model`` in one call, and again while more arrives."""
        try:
            while batch := self._waiting.pop(model, []):
                texts = list(dict.fromkeys(text for text, _ in batch))
                metrics.QUERY_BATCH.observe(len(texts))
                try:
                    encoder = self.catalog.loaded(model)
                    if encoder is None:
                        encoder = await asyncio.to_thread(self.catalog.get, model)
                    matrix = await asyncio.to_thread(encoder.embed, texts, None, 0, "query")
                except Exception as exc:  # every waiting query gets the error (a 503 for the embedder)
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                vectors = dict(zip(texts, matrix, strict=True))
                for text, future in batch:
                    if not future.done():
                        future.set_result(vectors[text])
        finally:
            self._running[model] -= 1
