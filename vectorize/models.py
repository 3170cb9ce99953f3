"""The daemon's view of models: local ONNX manifests plus configured remote ones,
published to ``vectorize.model`` and loaded once per process."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import psycopg

from .config import Settings
from .embedding.registry import load_encoder, load_manifests
from .embedding.remote import PREFIX, OpenAIEmbedder, RemoteEmbeddingError
from .queries import query

log = logging.getLogger(__name__)


class Embedder(Protocol):
    def embed(self, texts: list[str], abort: threading.Event | None = None) -> np.ndarray: ...


@dataclass(frozen=True)
class ModelInfo:
    name: str
    dimension: int
    max_tokens: int | None
    provider: str
    precision: str


class EncoderCache:
    """One embedder per model per process: ONNX sessions are large and slow to create."""

    def __init__(
        self,
        models_dir: Path,
        threads: int | None = None,
        *,
        openai_models: tuple[str, ...] = (),
        openai_base_url: str | None = None,
        openai_api_key: str | None = None,
    ) -> None:
        self.models_dir = models_dir
        self.threads = threads
        self._manifests = load_manifests(models_dir)
        self._embedders: dict[str, Embedder] = {}
        for model in openai_models:
            name = model if model.startswith(PREFIX) else PREFIX + model
            kwargs = {"base_url": openai_base_url} if openai_base_url else {}
            self._embedders[name] = OpenAIEmbedder(name, api_key=openai_api_key, **kwargs)
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> EncoderCache:
        return cls(
            settings.models_dir,
            settings.threads,
            openai_models=tuple(m.strip() for m in settings.openai_models.split(",") if m.strip()),
            openai_base_url=settings.openai_base_url,
            openai_api_key=settings.openai_api_key,
        )

    def catalog(self) -> list[ModelInfo]:
        """Every model this process can run. Remote ones are asked once for their dimension."""
        models = [ModelInfo(m.name, m.dimension, m.max_tokens, "onnx", m.precision) for m in self._manifests.values()]
        for name, embedder in self._embedders.items():
            if not isinstance(embedder, OpenAIEmbedder):
                continue
            try:
                dimension = embedder.dimension or embedder.embed(["dimension probe"]).shape[1]
            except RemoteEmbeddingError as exc:
                log.warning("event=remote_model_unavailable model=%s error=%r", name, str(exc))
                continue
            models.append(ModelInfo(name, dimension, None, "openai", "remote"))
        return models

    def get(self, model: str) -> Embedder:
        with self._lock:
            embedder = self._embedders.get(model)
            if embedder is None:
                manifest = self._manifests.get(model)
                if manifest is None:
                    raise KeyError(f"model {model!r} has no manifest in {self.models_dir} and is not a configured remote model")
                log.info("event=model_loading model=%s", model)
                embedder = load_encoder(manifest, self.models_dir, self.threads)
                self._embedders[model] = embedder
            return embedder


def register_models(conn: psycopg.Connection, encoders: EncoderCache) -> list[ModelInfo]:
    """Tell the database which models this installation can run (job validation reads it)."""
    models = encoders.catalog()
    with conn.transaction():
        for m in models:
            conn.execute(
                query("upsert_model"),
                {
                    "name": m.name,
                    "dimension": m.dimension,
                    "max_tokens": m.max_tokens,
                    "provider": m.provider,
                    "precision": m.precision,
                },
            )
    return models
