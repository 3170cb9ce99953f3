"""The model catalogue: every model this process can run, by name, and one loaded
embedder per model (ONNX sessions are large and slow to create).

Local models come from the manifests in ``models/``; remote ones are the configured
``openai/<model>`` names, whose dimension is learned by asking their server once."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .encoder import TokenCounter
from .errors import EmbedderUnavailable
from .registry import ModelManifest, ModelUnavailable, load_encoder, load_manifests, source_dir
from .remote import DEFAULT_BASE_URL, PREFIX, OpenAIEmbedder, RemoteEmbeddingError
from .tuning import Tuner, TuningStore

log = logging.getLogger(__name__)

#: The model a new job gets when it names none, and the one loaded before serving.
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


class Embedder(Protocol):
    @property
    def max_tokens(self) -> int:
        """The most tokens one text may have (the model's window), as ``counter`` counts them."""

    @property
    def counter(self) -> TokenCounter | None:
        """Where the tokens of a text are, to plan chunks (None: count words)."""

    def embed(self, texts: list[str], abort: threading.Event | None = None, priority: int = 0) -> np.ndarray: ...


@dataclass(frozen=True)
class ModelInfo:
    """What the database's ``vectorize.model`` table records about a model."""

    name: str
    dimension: int
    max_tokens: int | None
    provider: str
    precision: str


class ModelCatalog:
    def __init__(
        self,
        models_dir: Path,
        threads: int | None = None,
        *,
        openai_models: tuple[str, ...] = (),
        openai_base_url: str = DEFAULT_BASE_URL,
        openai_api_key: str | None = None,
        tuner: Tuner | None = None,
    ) -> None:
        self.models_dir = models_dir
        self.threads = threads
        #: Default: measure on first use, store beside the manifests (a service passes its state dir).
        self.tuner = tuner or Tuner(TuningStore([models_dir]), models_dir, threads or os.cpu_count() or 1)
        self.manifests: dict[str, ModelManifest] = load_manifests(models_dir)
        self._embedders: dict[str, Embedder] = {}
        self.remote: dict[str, OpenAIEmbedder] = {}
        for model in openai_models:
            name = model if model.startswith(PREFIX) else PREFIX + model
            self.remote[name] = OpenAIEmbedder(name, api_key=openai_api_key, base_url=openai_base_url)
            self.remote[name].counter = self._default_counter()
            self._embedders[name] = self.remote[name]
        self._lock = threading.Lock()

    def _default_counter(self) -> TokenCounter | None:
        """The default model's tokenizer, which counts tokens for remote models' chunks (their own
        tokenizers are not at hand); None, and words are counted, if its files are not installed."""
        manifest = self.manifests.get(DEFAULT_MODEL)
        try:
            path = source_dir(manifest) / "tokenizer.json" if manifest else None
        except ModelUnavailable:
            return None
        return TokenCounter(path) if path is not None and path.exists() else None

    def local_models(self) -> list[ModelInfo]:
        return [ModelInfo(m.name, m.dimension, m.max_tokens, "onnx", m.precision) for m in self.manifests.values()]

    def probe_remote(self, name: str) -> ModelInfo:
        """Ask a remote model's server for its dimension; raises EmbedderUnavailable while it is down."""
        embedder = self.remote[name]
        try:
            dimension = embedder.dimension or embedder.embed(["dimension probe"]).shape[1]
        except RemoteEmbeddingError as exc:
            raise EmbedderUnavailable(str(exc)) from None
        return ModelInfo(name, dimension, None, "openai", "remote")

    def available(self) -> tuple[list[ModelInfo], dict[str, str]]:
        """Every model this process can run now, and the remote ones whose server did not
        answer (name -> why), which the service keeps asking for in the background."""
        models = self.local_models()
        unavailable: dict[str, str] = {}
        for name in self.remote:
            try:
                models.append(self.probe_remote(name))
            except EmbedderUnavailable as exc:
                log.warning("event=remote_model_unavailable model=%s error=%r", name, str(exc))
                unavailable[name] = str(exc)
        return models, unavailable

    def _load_local(self, manifest: ModelManifest) -> Embedder:
        """Loaded with the settings measured for this machine (tuned on first use when none are stored)."""
        settings, graph = self.tuner.settings_for(manifest)
        log.info("event=model_settings model=%s settings=%r", manifest.name, settings.describe())
        return load_encoder(
            manifest,
            self.models_dir,
            settings.sessions * settings.threads_per_session,
            sessions=settings.sessions,
            token_budget=settings.token_budget,
            graph=graph,
        )

    def loaded(self, model: str) -> Embedder | None:
        """The model's embedder if it is already loaded (no lock, no I/O: for the hot path of
        query embedding, which would otherwise pay a thread hop per call to learn that)."""
        return self._embedders.get(model)

    def get(self, model: str) -> Embedder:
        """The model's embedder, loaded on first use; EmbedderUnavailable if it cannot be."""
        with self._lock:
            embedder = self._embedders.get(model)
            if embedder is None:
                manifest = self.manifests.get(model)
                if manifest is None:
                    raise EmbedderUnavailable(
                        f"model {model!r} has no manifest in {self.models_dir} and is not a configured remote model"
                    )
                log.info("event=model_loading model=%s", model)
                try:
                    embedder = self._load_local(manifest)
                except Exception as exc:  # missing weights, bad checksum, a graph onnxruntime rejects
                    raise EmbedderUnavailable(f"model {model!r} cannot be loaded: {exc}") from exc
                self._embedders[model] = embedder
            return embedder
