"""A model that is not one of ours is registered the first time a job names it: a provider's
(``ollama/…``, ``cohere/…``, ``openai/…`` with a key), whose server is asked once for the dimension,
or a sentence-transformers model on the Hugging Face hub (``BAAI/bge-small-en-v1.5``), whose
configuration files say it (its weights follow in the worker, which waits for them). The answer goes
into ``vectorize.model``, where the job trigger finds it. ``vectorize models register`` does the
same ahead of time, for jobs created by ``INSERT`` in psql."""

from __future__ import annotations

import asyncio
from dataclasses import asdict

from vectorize.core.errors import Invalid, Unavailable
from vectorize.db.database import Pool
from vectorize.db.queries import query
from vectorize.embedding.catalog import ModelCatalog, ModelInfo
from vectorize.embedding.errors import EmbedderUnavailable
from vectorize.embedding.hub import HubModelRefused
from vectorize.embedding.remote import RemoteEmbeddingError, RemoteUnavailable


async def ensure_registered(pool: Pool, catalog: ModelCatalog, model: object) -> None:
    """Register ``model`` if a configured provider runs it and the database does not list it yet.
    Its server down: 503; the server refusing the model (a wrong name, 404): 400 with its message."""
    if not isinstance(model, str) or (catalog.remote_protocol(model) is None and not catalog.hub_model(model)):
        return
    async with pool.connection() as conn:
        row = await (await conn.execute(query("model_known"), {"name": model})).fetchone()
    if row is not None and row["known"]:
        return
    if catalog.hub_model(model):
        try:
            hub_info = await asyncio.to_thread(catalog.probe_hub, model)
        except HubModelRefused as exc:
            ours = ", ".join(sorted(catalog.manifests))
            raise Invalid(f"{exc}; this installation can run: {ours}") from None
        except EmbedderUnavailable as exc:
            raise Unavailable(f"{exc}; retry shortly") from None
        await register(pool, hub_info)
        return
    try:
        info = await asyncio.to_thread(catalog.probe_remote, model)
    except RemoteEmbeddingError as exc:
        # The server's own words, without its address (error bodies name no internal service).
        detail = str(exc).replace(catalog.remote[model].base_url, model.split("/", 1)[0])
        if isinstance(exc, RemoteUnavailable) and exc.status != 404:
            raise Unavailable(f"model {model!r} cannot be reached now ({detail}); retry shortly") from None
        raise Invalid(f"model {model!r} was refused by its provider: {detail}") from None
    await register(pool, info)


async def register(pool: Pool, info: ModelInfo) -> None:
    """The model in vectorize.model, as publish_models writes it at start-up (its fields are the columns)."""
    async with pool.connection() as conn:
        await conn.execute(query("upsert_model"), asdict(info))
