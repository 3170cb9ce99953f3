"""The model catalogue: every model this process can run, by name, and one loaded
embedder per model (ONNX sessions are large and slow to create).

Local models come from the manifests in ``models/``; remote ones are ``<provider>/<model>`` for each
provider configured (providers.py), whose dimension is learned by asking their server once."""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from vectorize.embedding import providers
from vectorize.embedding.build.checkpoint import CheckpointInfo
from vectorize.embedding.build.tuning import Tuner
from vectorize.embedding.build.tuning_records import TuningStore
from vectorize.embedding.encoder import TokenCounter
from vectorize.embedding.errors import EmbedderUnavailable
from vectorize.embedding.hub import REPO_NAME, Hub, HubModelRefused
from vectorize.embedding.manifests import (
    INT8_SUFFIX,
    ModelManifest,
    ModelUnavailable,
    ensure_exported,
    load_encoder,
    load_manifests,
    source_dir,
    write_manifest,
)
from vectorize.embedding.providers import Kind
from vectorize.embedding.remote import DEFAULT_BASE_URL, DEFAULT_MAX_TOKENS, PREFIX, RemoteEmbedder, RemoteEmbeddingError

log = logging.getLogger(__name__)

#: Model-string prefixes that name a provider (providers.py), never a hub organisation.
REMOTE_PREFIXES = ("openai", "azure", "ollama", "cohere", "voyage", "portkey")

#: The model a new job gets when it names none, and the one loaded before serving.
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


class Embedder(Protocol):
    @property
    def max_tokens(self) -> int:
        """The most tokens one text may have (the model's window), as ``counter`` counts them."""

    @property
    def counter(self) -> TokenCounter | None:
        """Where the tokens of a text are, to plan chunks (None: count words)."""

    def embed(
        self, texts: list[str], abort: threading.Event | None = None, priority: int = 0, kind: Kind = "document"
    ) -> np.ndarray: ...


@dataclass(frozen=True)
class ModelInfo:
    """What the database's ``vectorize.model`` table records about a model."""

    name: str
    dimension: int
    max_tokens: int | None
    provider: str
    precision: str


@dataclass(frozen=True)
class PendingDownload:
    """A hub model a job would fetch first: from which repository, how many bytes (None: the hub
    could not say), and enough of the model to count tokens (dry_run.measure)."""

    repo: str
    size: int | None
    max_tokens: int
    counter: TokenCounter | None


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
        protocols: tuple[providers.Protocol, ...] = (),
        remote_retries: int = 3,
        remote_backoff: float = 0.5,
        remote_max_tokens: int = DEFAULT_MAX_TOKENS,
        hub: Hub | None = None,
    ) -> None:
        """``openai_models``: the ``openai/<model>`` names allowed (any, when empty and a key or a
        list is configured); ``protocols``: the other providers configured, one per prefix."""
        self.models_dir = models_dir
        self.threads = threads
        #: Default: measure on first use, store beside the manifests (a service passes its state dir).
        self.tuner = tuner or Tuner(TuningStore([models_dir]), models_dir, threads or os.cpu_count() or 1)
        self.manifests: dict[str, ModelManifest] = load_manifests(models_dir)
        self._embedders: dict[str, Embedder] = {}
        self.remote: dict[str, RemoteEmbedder] = {}
        self._remote_retries, self._remote_backoff, self._remote_max_tokens = remote_retries, remote_backoff, remote_max_tokens
        self.protocols: dict[str, providers.Protocol] = {p.prefix: p for p in protocols}
        #: openai/<model> names allowed; None: any (a key is configured and no list).
        self.openai_allowed: set[str] | None = {m if m.startswith(PREFIX) else PREFIX + m for m in openai_models} or None
        if openai_models or openai_api_key:
            self.protocols["openai"] = providers.OpenAI("openai", openai_base_url.rstrip("/"), openai_api_key)
        for name in self.openai_allowed or ():
            self._remote(name)
        self.hub = hub or Hub()
        #: Hub models being fetched (or whose fetch failed): one download per model at a time.
        self._fetches: dict[str, Future[ModelManifest]] = {}
        self._fetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-fetch")
        #: Hub models whose files are here and whose graph is being written.
        self._exporting: set[str] = set()
        self._lock = threading.Lock()

    def hub_model(self, name: str) -> bool:
        """Whether ``name`` would be fetched from the Hugging Face hub: ``<org>/<name>`` (or its int8
        variant, ``<org>/<name>-int8``), neither a model of ours nor a provider's (``ollama/…``)."""
        prefix = name.split("/", 1)[0]
        return name not in self.manifests and prefix not in REMOTE_PREFIXES and prefix != "local" and bool(REPO_NAME.match(name))

    def _hub_repo(self, name: str) -> tuple[str, CheckpointInfo]:
        """The hub repository a model name comes from and what it declares: the repository of that
        exact name, else, for ``<org>/<name>-int8``, ``<org>/<name>`` (whose int8 variant it is).
        HubModelRefused if it cannot run here, EmbedderUnavailable while the hub cannot be reached."""
        try:
            return name, self.hub.describe(name)
        except HubModelRefused:
            if not name.endswith(INT8_SUFFIX):
                raise
            repo = name.removesuffix(INT8_SUFFIX)
            return repo, self.hub.describe(repo)

    def probe_hub(self, name: str) -> ModelInfo:
        """A hub model's dimension and window, from its configuration files alone (no weights yet)."""
        repo, info = self._hub_repo(name)
        return ModelInfo(name, info.dimension, info.max_tokens, "onnx", "fp32" if repo == name else "int8")

    def _hub_manifest(self, name: str) -> ModelManifest:
        """The hub model's manifest once its files are here; until then EmbedderUnavailable, which
        makes its jobs wait with backoff like any embedder outage (a failed fetch is tried again)."""
        fetch = self._fetches.get(name)
        if fetch is None:
            fetch = self._fetches[name] = self._fetcher.submit(self.pull, name)
        if not fetch.done():
            if name in self._exporting:
                raise EmbedderUnavailable(f"model {name} is being exported to ONNX")
            progress = self.hub.progress(name) or self.hub.progress(name.removesuffix(INT8_SUFFIX))
            raise EmbedderUnavailable(f"model {name} is being fetched from the Hugging Face hub{progress}")
        error = fetch.exception()
        if error is not None:  # said once; the worker's next try (after its backoff) fetches again
            del self._fetches[name]
            raise EmbedderUnavailable(f"model {name} could not be fetched (tried again after a pause): {error}")
        return fetch.result()

    def pending_download(self, name: str) -> PendingDownload | None:
        """What a hub model not yet here would fetch, and its tokenizer to count a dry run's tokens;
        None for a model that is here (or not a hub model)."""
        if name in self.manifests or name in self._embedders or not self.hub_model(name):
            return None
        repo, info = self._hub_repo(name)
        size = self.hub.download_size(repo, info)  # before the tokenizer is fetched, which it counts
        tokenizer = self.hub.tokenizer(repo)
        return PendingDownload(repo, size, info.max_tokens, TokenCounter(tokenizer) if tokenizer is not None else None)

    def pull(self, name: str) -> ModelManifest:
        """Fetch a hub model's files and describe them in manifests in the models dir (where the
        next start finds them): the model and its int8 variant. Its architecture is checked from
        the configuration files before any weights are fetched."""
        repo, info = self._hub_repo(name)
        log.info("event=hub_model_fetching model=%s", repo)
        folder = self.hub.fetch(repo, info)
        fp32 = write_manifest(folder, repo, self.models_dir, slug=repo.replace("/", "--"))
        log.info("event=hub_model_fetched model=%s path=%s", repo, folder)
        self._exporting.add(name)  # the fp32 graph now, in this background fetch, not in the job's first batch
        try:
            ensure_exported(fp32, self.models_dir)
        finally:
            self._exporting.discard(name)
        return fp32 if name == repo else load_manifests(self.models_dir)[name]

    def remote_protocol(self, name: str) -> providers.Protocol | None:
        """The provider that runs ``name`` (``<prefix>/<model>``), or None when none is configured."""
        prefix, _, model = name.partition("/")
        protocol = self.protocols.get(prefix)
        if protocol is None or not model or name in self.manifests:
            return None
        if prefix == "openai" and self.openai_allowed is not None and name not in self.openai_allowed:
            return None
        return protocol

    def _remote(self, name: str) -> RemoteEmbedder:
        embedder = self.remote.get(name)
        if embedder is None:
            protocol = self.remote_protocol(name)
            if protocol is None:
                raise EmbedderUnavailable(f"model {name!r} names no provider configured here")
            embedder = RemoteEmbedder(name, protocol, max_retries=self._remote_retries, backoff=self._remote_backoff)
            embedder.counter = self._default_counter()
            embedder.max_tokens = self._remote_max_tokens
            self.remote[name] = embedder
            self._embedders[name] = embedder
        return embedder

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
        """Ask a remote model's server for its dimension; raises EmbedderUnavailable while it is down,
        RemoteEmbeddingError when it refuses the model."""
        embedder = self._remote(name)
        dimension = embedder.dimension or embedder.embed(["dimension probe"]).shape[1]
        return ModelInfo(name, dimension, None, embedder.protocol.prefix, "remote")

    def available(self) -> tuple[list[ModelInfo], dict[str, str]]:
        """Every model this process can run now, and the remote ones whose server did not
        answer (name -> why), which the service keeps asking for in the background."""
        models = self.local_models()
        unavailable: dict[str, str] = {}
        for name in list(self.remote):
            try:
                models.append(self.probe_remote(name))
            except (EmbedderUnavailable, RemoteEmbeddingError) as exc:
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
            if embedder is None and self.remote_protocol(model) is not None:
                embedder = self._remote(model)
            if embedder is None and model not in self.manifests and self.hub_model(model):
                self.manifests[model] = self._hub_manifest(model)
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
