"""One batch of a job: claim its items, read the rows' text, embed what changed, write it back,
finish -- one transaction -- and when it fails, decide whose fault it is (retry.py) and act.

The loop (loop.py) decides whose turn it is; this module decides what a turn does with the rows
it claims: how many fit the batch's chunk budget, which chunks changed since they were stored,
which texts need inference (each distinct one once per model), and, on a failure, whether the job
pauses for its embedder, or the batch is halved until the row at fault is found and charged.
Every statement is the store's (core/store.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg

from vectorize import metrics
from vectorize.config import Settings
from vectorize.core.chunking import split_texts
from vectorize.core.scheduler import Lane
from vectorize.core.store import BatchStore, ChunkLine, Claimed, Generation, JobWork, SourceRow, WorkerStore
from vectorize.embedding.catalog import Embedder
from vectorize.embedding.errors import EmbedderUnavailable
from vectorize.worker.retry import Blame, RetryPolicy

#: The logger keeps the name it has had since the first release (operators filter on it).
log = logging.getLogger("vectorize.worker")

#: [CLS] and [SEP]: the tokens a BERT-family model adds to every text, inside its window.
SPECIAL_TOKENS = 2
#: How far a batch may go past its chunk budget to take every row it claimed.
BUDGET_SLACK = 1.25
#: Characters of row text read into one batch per chunk of its budget: a full 256-token chunk
#: of English is about 1,000 characters, so long documents are cut to a batch's worth.
CHARS_PER_CHUNK = 1024


class CatalogLike(Protocol):
    """Where the worker finds each model's embedder (embedding.catalog.ModelCatalog)."""

    def get(self, model: str) -> Embedder: ...


@dataclass
class Prepared:
    """A batch ready to write: for each generation of the job, a line per chunk; the keys whose
    row is gone, the keys done (written to every generation)."""

    generations: list[int] = field(default_factory=list)
    lines: dict[int, list[ChunkLine]] = field(default_factory=dict)
    gone: list[str] = field(default_factory=list)
    done: set[str] = field(default_factory=set)
    #: The distinct chunk texts embedded, per model.
    texts: dict[str, set[str]] = field(default_factory=dict)
    embedded_rows: int = 0
    #: Rows longer than the text budget (key -> characters): parked once the batch commits.
    oversized: dict[str, int] = field(default_factory=dict)
    #: Every vector of the batch, by (model, chunk text): reused when a write-time failure splits it.
    vectors: dict[tuple[str, str], Any] = field(default_factory=dict)

    @property
    def text_count(self) -> int:
        return sum(len(t) for t in self.texts.values())


@dataclass
class _RowPlan:
    """One source row as one generation chunks it."""

    row: SourceRow
    spans: list[tuple[int, int]]


@dataclass
class BatchResult:
    """What a batch transaction did: the rows it claimed, and the failure that rolled it back."""

    claimed: list[Claimed] = field(default_factory=list)
    failure: Exception | None = None
    #: Claimed rows over the text budget, to park once the transaction has committed.
    oversized: list[Claimed] = field(default_factory=list)
    #: The vectors of a batch whose write was rejected: its halves need no inference again.
    vectors: dict[tuple[str, str], Any] = field(default_factory=dict)


def content_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class BatchRunner:
    """Runs one job's batches; shared by the loop's lanes (its counters are the worker's)."""

    def __init__(self, settings: Settings, catalog: CatalogLike, store: WorkerStore, abort: threading.Event) -> None:
        self.settings = settings
        self.catalog = catalog
        self.store = store
        self.policy = RetryPolicy.from_settings(settings)
        #: Set when a graceful shutdown runs out of time: inference stops between calls.
        self.abort = abort
        #: Texts embedded so far (tests read it to prove that nothing was embedded again).
        self.inferences = 0
        #: Recent chunks per row of each job, to claim about a batch's worth of chunks.
        self._chunks_per_row: dict[object, float] = {}

    async def process_batch(
        self,
        job: JobWork,
        lane: Lane,
        limit: int = 0,
        only_ids: list[int] | None = None,
        known: dict[tuple[str, str], Any] | None = None,
    ) -> int:
        """Claim, embed and write one batch; returns the rows handled. A failure is dealt with by
        whose it is: the embedder's pauses the job, a row's is found and charged to that row.
        ``known``: vectors already computed for some chunk texts (by a batch this one is half of)."""
        result = await self._run_batch(job, lane, limit, only_ids, known or {})
        if result.failure is None:
            if job.pause_count and result.claimed:  # the probe went through: the embedder is back
                await self.store.resume_job(job.id)
                log.info("event=embedder_recovered job=%s model=%s", job.job_name, job.model)
                job.pause_count = 0
            return len(result.claimed)
        if self.policy.blame(result.failure) is Blame.EMBEDDER:
            await self.pause(job, result.failure)
            return 0
        if len(result.claimed) > 1:
            # Bisect: each half is a batch of its own; the healthy half commits, a failing half is
            # split again, so k bad rows among n cost about k log2(n) retried batches, not n.
            log.warning(
                "event=batch_failed job=%s rows=%d error=%r retrying=in_halves",
                job.job_name,
                len(result.claimed),
                first_line(result.failure),
            )
            # A row rejected at write time was embedded fine: its halves reuse the vectors.
            known = {**(known or {}), **result.vectors}
            half = len(result.claimed) // 2
            for part in (result.claimed[:half], result.claimed[half:]):
                ids = [i for c in part for i in c.ids]
                await self.process_batch(job, lane, limit or self.settings.batch_size, ids, known)
                if job.paused_for:
                    break  # the embedder went down meanwhile: the rest wait for it, uncharged
            return len(result.claimed)
        await self._charge(job, result.claimed[0], result.failure)
        return 1

    async def _run_batch(
        self, job: JobWork, lane: Lane, limit: int, only_ids: list[int] | None, known: dict[tuple[str, str], Any]
    ) -> BatchResult:
        """One transaction: claim, read, chunk, embed, write, finish. ``limit`` counts chunks to embed:
        rows past it stay queued for the next batch, so long documents make batches of the same work."""
        result = BatchResult()
        async with self.store.batch() as tx:
            if only_ids is not None:
                result.claimed = await tx.claim_ids(only_ids)
            else:
                result.claimed = await tx.claim(job.id, lane, self.claim_limit(job, limit))
            if not result.claimed:
                return result
            started = time.perf_counter()
            try:
                batch = await self._embed(tx, job, lane, result.claimed, limit, known)
            except Exception as exc:
                if self.policy.blame(exc) not in (Blame.ROW, Blame.EMBEDDER):
                    raise
                result.failure = exc
                raise psycopg.Rollback() from None  # the claims go back to the queue, uncharged
            inferred = time.perf_counter()
            try:
                for number in batch.generations:
                    await tx.write(job.id, number, batch.lines[number], batch.gone)
            except psycopg.Error as exc:
                if self.policy.blame(exc) is not Blame.ROW:
                    raise
                # A row's value rejected at write time: found by splitting the rows written (the
                # others the budget left out go back to the queue with the rollback, uncharged).
                result.failure = exc
                result.claimed = [c for c in result.claimed if c.pk in batch.done] or result.claimed
                result.vectors = batch.vectors
                raise psycopg.Rollback() from None
            result.oversized = [c for c in result.claimed if c.pk in batch.oversized]
            result.claimed = [c for c in result.claimed if c.pk in batch.done]
            lags = await tx.finish([i for c in result.claimed for i in c.ids])
        if result.failure is not None:
            return result
        for item in result.oversized:
            await self._park_oversized(job, item, batch.oversized[item.pk])
        for item_lane, lag in lags:
            if item_lane == Lane.LIVE.value:
                metrics.SYNC_LAG.labels(job.job_name).observe(lag)
        rows = len(batch.done) - len(batch.gone)
        if rows:
            seen = self._chunks_per_row.get(job.id, 1.0)
            self._chunks_per_row[job.id] = 0.5 * seen + 0.5 * len(batch.lines[batch.generations[0]]) / rows
        self._record(job, lane, len(result.claimed), batch, inferred - started, time.perf_counter() - started)
        return result

    def claim_limit(self, job: JobWork, chunks: int) -> int:
        """Rows to claim for about ``chunks`` chunks, from the job's recent chunks per row (a little
        generous: the budget has slack, and rows left over would make a small batch of their own)."""
        return max(1, min(chunks, math.ceil(1.1 * chunks / max(self._chunks_per_row.get(job.id, 1.0), 1.0))))

    async def _embed(
        self,
        tx: BatchStore,
        job: JobWork,
        lane: Lane,
        claimed: list[Claimed],
        budget: int,
        known: dict[tuple[str, str], Any],
    ) -> Prepared:
        """Read the claimed rows' current text as each generation of the job sees it (the serving
        one, and the one a redefinition builds or keeps), cut each into chunks, and embed the
        chunks whose text changed, each distinct text once per model, up to ``budget`` of them
        (at least one row's). A row is done only when every generation of it is."""
        versions = {c.pk: c.version for c in claimed}
        generations = await tx.generations(job.id)
        reads = [{r.pk: r for r in await tx.read_rows(job.id, g.generation, list(versions))} for g in generations]
        batch = Prepared(generations=[g.generation for g in generations], gone=[pk for pk in versions if pk not in reads[0]])
        batch.lines = {g.generation: [] for g in generations}
        batch.done.update(batch.gone)
        if not reads[0]:
            return batch
        # Only as much text as ``budget`` chunks can hold is tokenised and planned (a claim of
        # long documents would otherwise hold all of their tokens in memory at once); the rest
        # stays queued for the next batch.
        kept: list[str] = []
        size = 0
        for pk in reads[0]:
            length = max(len(read[pk].content) for read in reads if pk in read)
            if length > self.settings.max_row_chars:
                batch.oversized[pk] = length  # parked before any tokenising or inference
                continue
            if kept and size + length > budget * BUDGET_SLACK * CHARS_PER_CHUNK:
                break
            kept.append(pk)
            size += length
        plans: list[tuple[Generation, Embedder, dict[str, _RowPlan]]] = []
        for generation, read in zip(generations, reads, strict=True):
            embedder = await asyncio.to_thread(self.catalog.get, generation.model)
            rows = [read[pk] for pk in kept if pk in read]
            spans = await asyncio.to_thread(self._chunk_spans, embedder, generation, [r.content for r in rows])
            plans.append((generation, embedder, {r.pk: _RowPlan(r, s) for r, s in zip(rows, spans, strict=True)}))
        wanted: list[tuple[ChunkLine, str, str]] = []  # lines to fill: (line, model, text)
        for pk in kept:
            row_lines: list[tuple[int, ChunkLine]] = []
            row_wanted: list[tuple[ChunkLine, str, str]] = []
            row_new: dict[str, set[str]] = {}
            for generation, _, by_pk in plans:
                plan = by_pk.get(pk)
                if plan is None:
                    continue  # deleted between two reads: the delete's own queue item follows
                model = generation.model
                texts = [plan.row.content[a:b] for a, b in plan.spans]
                hashes = [content_hash(t) for t in texts]
                stored = plan.row.stored_hashes or []
                changed = hashes != stored
                for k, ((start, end), text, digest) in enumerate(zip(plan.spans, texts, hashes, strict=True)):
                    line = ChunkLine(
                        pk,
                        k,
                        None,
                        plan.row.content if k == 0 and (changed or plan.row.fts_stale) else None,
                        digest,
                        start,
                        end,
                        len(texts),
                        plan.row.source_updated_at,
                        versions[pk],
                    )
                    row_lines.append((generation.generation, line))
                    if k >= len(stored) or stored[k] != digest:
                        row_wanted.append((line, model, text))
                        if text not in batch.texts.get(model, ()):
                            row_new.setdefault(model, set()).add(text)
            new = sum(len(t) for t in row_new.values())
            if new and batch.text_count and batch.text_count + new > budget * BUDGET_SLACK:
                continue  # left for the next batch: its queue items stay
            batch.done.add(pk)
            batch.embedded_rows += bool(row_wanted)
            for model, new_texts in row_new.items():
                batch.texts.setdefault(model, set()).update(new_texts)
            for number, line in row_lines:
                batch.lines[number].append(line)
            wanted.extend(row_wanted)
        vectors = batch.vectors
        for model, model_texts in batch.texts.items():
            vectors.update(((model, t), known[(model, t)]) for t in model_texts if (model, t) in known)
            ordered = sorted(t for t in model_texts if (model, t) not in known)
            if not ordered:
                continue
            embedder = next(e for g, e, _ in plans if g.model == model)
            matrix = await asyncio.to_thread(embedder.embed, ordered, self.abort, lane.priority)
            self.inferences += len(ordered)
            vectors.update(((model, t), v) for t, v in zip(ordered, matrix, strict=True))
        for line, model, text in wanted:
            line.vector = vectors[(model, text)]
        return batch

    @staticmethod
    def _chunk_spans(embedder: Embedder, generation: Generation, texts: list[str]) -> list[list[tuple[int, int]]]:
        """Each text's chunks: the whole text when chunking is off (the model truncates it), else
        pieces of at most chunk_tokens (default: the model's window) less its two special tokens."""
        if not generation.chunking:
            return [[(0, len(text))] for text in texts]
        window = generation.chunk_tokens or embedder.max_tokens
        return split_texts(texts, embedder.counter, window - SPECIAL_TOKENS, generation.chunk_overlap)

    def _record(self, job: JobWork, lane: Lane, rows: int, batch: Prepared, infer_s: float, total_s: float) -> None:
        embedded, gone = batch.embedded_rows, len(batch.gone)
        metrics.ROWS_EMBEDDED.labels(job.job_name).inc(embedded)
        metrics.LANE_ROWS.labels(job.job_name, lane.value).inc(rows)
        metrics.BATCHES.labels(job.job_name).inc()
        metrics.INFERENCE_SECONDS.labels(job.job_name).observe(infer_s)
        log.info(
            "event=batch job=%s lane=%s rows=%d embedded=%d chunks_embedded=%d unchanged=%d gone=%d infer_s=%.3f total_s=%.3f",
            job.job_name,
            lane.value,
            rows,
            embedded,
            batch.text_count,
            rows - embedded - gone,
            gone,
            infer_s,
            total_s,
        )

    async def pause(self, job: JobWork, exc: Exception, reason: str | None = None) -> None:
        """The job's embedder is down (or, with ``reason``, its source out of reach): the whole job
        waits, with exponential backoff; no row pays, nothing is dropped."""
        retry_after = exc.retry_after if isinstance(exc, EmbedderUnavailable) else None
        seconds = self.policy.embedder_pause(job.pause_count, retry_after)
        await self.store.pause_job(job.id, seconds, reason or f"embedder for model {job.model} unavailable: {first_line(exc)}")
        job.pause_count += 1
        job.paused_for = seconds
        if reason is None:
            metrics.EMBEDDER_PAUSES.labels(job.job_name).inc()
            log.warning(
                "event=embedder_unavailable job=%s model=%s wait_s=%.1f error=%r", job.job_name, job.model, seconds, str(exc)
            )
        else:
            log.warning("event=source_unavailable job=%s wait_s=%.1f error=%r", job.job_name, seconds, first_line(exc))

    async def _park_oversized(self, job: JobWork, item: Claimed, length: int) -> None:
        """Park a row over the text budget at once: every retry would be refused the same way."""
        error = (
            f"row text is {length:,} characters, over the limit of {self.settings.max_row_chars:,}"
            " (VECTORIZE_MAX_ROW_CHARS): raise it, or embed fewer or shorter columns; the row is retried"
            " when it changes"
        )
        metrics.ROW_FAILURES.labels(job.job_name).inc()
        await self.store.charge_failed_try(job.id, item, error, lambda _attempts: None)
        log.warning("event=row_parked job=%s reason=too_large characters=%d", job.job_name, length)

    async def _charge(self, job: JobWork, item: Claimed, exc: Exception) -> None:
        """Count a failed try of one row; park it in vectorize.failure once it has used them all."""
        error = f"{type(exc).__name__}: {exc}"[:1000]
        metrics.ROW_FAILURES.labels(job.job_name).inc()
        attempts, parked = await self.store.charge_failed_try(job.id, item, error, self.policy.row_retry_delay)
        log.warning(
            "event=row_failed job=%s attempts=%d parked=%s error_type=%s", job.job_name, attempts, parked, type(exc).__name__
        )


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
