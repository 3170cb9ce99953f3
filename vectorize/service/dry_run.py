"""Dry runs: what creating or redefining a job would do, and how much embedding work it would be,
without building anything. The database checks the definition exactly as it would for real (the
job triggers run inside a transaction that is rolled back, told to build nothing); the work is
measured on the source's rows with the model's own tokenizer: every row of a small table, a random
sample of a large one (the answer says which)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Protocol

from vectorize.core.chunking import split_texts
from vectorize.core.errors import NotFound, Unavailable
from vectorize.core.job_definition import TEXT_FIELDS, same_definition, with_defaults
from vectorize.db.database import Pool
from vectorize.db.errors import database_errors
from vectorize.db.queries import query
from vectorize.embedding.catalog import Embedder, ModelCatalog, PendingDownload
from vectorize.embedding.encoder import TokenCounter
from vectorize.embedding.errors import EmbedderUnavailable
from vectorize.embedding.hub import human_size
from vectorize.embedding.remote import RemoteEmbedder

#: Tables up to this many rows are counted row by row; larger ones are sampled.
EXACT_ROWS = 5000
#: About how many rows a sample takes.
SAMPLE_ROWS = 2000
#: Chunks embedded to measure this installation's rate for the time estimate.
RATE_CHUNKS = 64
#: [CLS] and [SEP], counted in every chunk the model sees.
SPECIAL_TOKENS = 2


@dataclass
class Work:
    """Chunks and tokens of a set of texts under a definition."""

    rows: int
    chunks: int
    tokens: int
    chunk_texts: list[str]


class Sizing(Protocol):
    """What counting a definition's work needs of a model: its window and its tokenizer."""

    @property
    def max_tokens(self) -> int: ...

    @property
    def counter(self) -> TokenCounter | None: ...


def measure(embedder: Sizing, definition: dict[str, Any], texts: list[str]) -> Work:
    """Cut ``texts`` the way the worker would and count their chunks and tokens."""
    if definition["chunking"]:
        window = definition["chunk_tokens"] or embedder.max_tokens
        spans = split_texts(texts, embedder.counter, window - SPECIAL_TOKENS, definition["chunk_overlap"])
    else:
        spans = [[(0, len(t))] for t in texts]
    chunk_texts = [text[a:b] for text, row in zip(texts, spans, strict=True) for a, b in row]
    if embedder.counter is not None:
        lengths = [len(o) for o in embedder.counter.offsets(chunk_texts)]
    else:
        lengths = [len(t.split()) for t in chunk_texts]
    tokens = sum(min(n + SPECIAL_TOKENS, embedder.max_tokens) for n in lengths)
    return Work(len(texts), len(chunk_texts), tokens, chunk_texts)


def _rate(embedder: Embedder, work: Work) -> float | None:
    """Tokens per second of the engine, timed on a few of the sampled chunks (local models only:
    a remote model's time depends on its server, and its price on the tokens)."""
    if embedder.counter is None or not work.chunk_texts or isinstance(embedder, RemoteEmbedder):
        return None
    sample = work.chunk_texts[:: max(1, len(work.chunk_texts) // RATE_CHUNKS)][:RATE_CHUNKS]
    tokens = measure(embedder, {"chunking": False}, sample).tokens
    embedder.embed(sample[:4])  # warm: the first call of a session allocates its buffers
    started = time.perf_counter()
    embedder.embed(sample)
    return tokens / (time.perf_counter() - started)


async def plan(pool: Pool, catalog: ModelCatalog, definition: dict[str, Any], *, redefine: bool) -> dict[str, Any]:
    """The answer to ``?dry_run=true`` on create (``redefine=False``) or PUT."""
    params = with_defaults(definition)
    job_name = params["job_name"]
    with database_errors():
        async with pool.connection() as conn:
            current = await (await conn.execute(query("job_definition"), {"job_name": job_name})).fetchone()
            async with conn.transaction(force_rollback=True):
                await conn.execute(query("dry_run_on"))
                if redefine:
                    if current is None:
                        raise NotFound(f"job {job_name!r} does not exist; create it with POST /api/v1/table")
                    await conn.execute(query("redefine_job"), params)
                else:
                    await conn.execute(query("create_job"), params)
                await conn.execute(query("set_search_settings"), params)
            sample = await (
                await conn.execute(
                    query("definition_sample"),
                    {**params, "exact_rows": EXACT_ROWS, "sample_rows": SAMPLE_ROWS},
                )
            ).fetchall()
    if current is not None and same_definition(current, params):
        action = "unchanged"
    else:
        action = "redefine" if redefine else "create"
    embeds = "all"
    if action == "unchanged":
        embeds = "nothing"
    elif current is not None and redefine and current["model"] == params["model"]:
        same_text = all(current[f] == params[f] for f in TEXT_FIELDS)
        # The serving embeddings are copied: only chunks whose text changed are embedded again.
        embeds = "nothing" if same_text else "changed chunks (at most the figures below)"
    texts = [row["content"] for row in sample]
    download = await asyncio.to_thread(_pending_download, catalog, params["model"])
    if download is None:
        embedder = await asyncio.to_thread(catalog.get, params["model"])
        work = await asyncio.to_thread(measure, embedder, params, texts)
        rate = await asyncio.to_thread(_rate, embedder, work)
    else:  # counted with the model's own tokenizer; not timed, its weights are not here yet
        work, rate = await asyncio.to_thread(measure, download, params, texts), None
    first = sample[0] if sample else None
    total = first["total_rows"] if first else 0
    exact = first["exact"] if first else True
    scale = total / work.rows if work.rows else 0.0
    chunks, tokens = round(work.chunks * scale), round(work.tokens * scale)
    to_embed = 0 if embeds == "nothing" else tokens
    answer = {
        "dry_run": True,
        "job_name": job_name,
        "action": action,
        "model": params["model"],
        "source_rows": total,
        "source_rows_estimated": first["total_estimated"] if first else False,
        "method": "exact: every row counted" if exact else f"sampled: {work.rows} random rows, scaled to {total}",
        "chunks": chunks,
        "tokens": tokens,
        "embeds": embeds,
        "estimated_seconds": round(to_embed / rate, 1) if rate else None,
        "rate_tokens_per_second": round(rate) if rate else None,
        "rate_source": (
            f"this installation's engine, timed just now on {min(RATE_CHUNKS, work.chunks)} of the chunks"
            if rate
            else "none: the model's weights are not here yet"
            if download
            else "none: a remote model's time depends on its server; price it by its tokens"
        ),
    }
    if download is not None:
        answer["download_bytes"] = download.size
        answer["download"] = (
            f"{human_size(download.size)} from the Hugging Face hub ({download.repo}), fetched when the job is created"
            if download.size is not None
            else f"{download.repo} from the Hugging Face hub, fetched when the job is created (its size is unknown now)"
        )
    return answer


def _pending_download(catalog: ModelCatalog, model: str) -> PendingDownload | None:
    """The hub model's download, if the job would wait for one; the hub unreachable is a 503."""
    try:
        return catalog.pending_download(model)
    except EmbedderUnavailable as exc:
        raise Unavailable(f"{exc}; retry shortly") from None
