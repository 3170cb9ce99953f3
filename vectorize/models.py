"""The daemon's view of models: publish manifests to ``vectorize.model`` and load encoders once."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import psycopg

from .embedding.encoder import Encoder
from .embedding.registry import ModelManifest, load_encoder, load_manifests
from .queries import query

log = logging.getLogger(__name__)


def register_models(conn: psycopg.Connection, models_dir: Path) -> list[ModelManifest]:
    """Tell the database which models this installation can run (used by job validation)."""
    manifests = list(load_manifests(models_dir).values())
    with conn.transaction():
        for m in manifests:
            conn.execute(
                query("upsert_model"),
                {
                    "name": m.name,
                    "dimension": m.dimension,
                    "max_tokens": m.max_tokens,
                    "provider": "onnx",
                    "precision": m.precision,
                },
            )
    return manifests


class EncoderCache:
    """One encoder per model per process: ONNX sessions are large and slow to create."""

    def __init__(self, models_dir: Path, threads: int | None = None) -> None:
        self.models_dir = models_dir
        self.threads = threads
        self._manifests = load_manifests(models_dir)
        self._encoders: dict[str, Encoder] = {}
        self._lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        return sorted(self._manifests)

    def get(self, model: str) -> Encoder:
        with self._lock:
            encoder = self._encoders.get(model)
            if encoder is None:
                manifest = self._manifests.get(model)
                if manifest is None:
                    raise KeyError(f"model {model!r} has no manifest in {self.models_dir}")
                log.info("event=model_loading model=%s", model)
                encoder = load_encoder(manifest, self.models_dir, self.threads)
                self._encoders[model] = encoder
            return encoder
