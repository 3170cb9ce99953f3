"""The daemon: wait for work, take turns between jobs in two lanes, embed, write back.

The story of a batch: claim a job's oldest items of one lane (row locks taken with
SKIP LOCKED), read the rows' current text, embed what changed, COPY the vectors
back, delete the items, commit -- all in one transaction, so a crash at any instant
commits all of it or none of it. Who goes next is scheduler.py's; whose fault a
failure is, retry.py's; every statement, the store's (store.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import psycopg
import psycopg_pool

from vectorize import metrics
from vectorize.config import Settings
from vectorize.core.chunking import split_texts
from vectorize.core.scheduler import Lane, Rotation
from vectorize.core.store import SCAN_BUSY, SCAN_NONE, BatchStore, ChunkLine, Claimed, Generation, JobWork, SourceRow, WorkerStore
from vectorize.db.database import Pool, make_pool
from vectorize.db.worker_store import PostgresWorkerStore
from vectorize.embedding.catalog import Embedder
from vectorize.embedding.encoder import BATCHES_IN_FLIGHT
from vectorize.embedding.errors import EmbedderUnavailable, EmbeddingAborted
from vectorize.worker.retry import SOURCE_BROKEN, Blame, RetryPolicy

log = logging.getLogger(__name__)

#: How a pause for an unreadable source starts its reason (vectorize._sync_state reads it).
SOURCE_WAIT_PREFIX = "the job's source cannot be read now"

#: Batches in flight per lane. Each batch ends with database work (COPY, index
#: maintenance, commit) and starts with more (claim, read); with two, one batch's
#: database work overlaps the other's inference and the encoder never idles between
#: batches. Claims use SKIP LOCKED and writes are newest-wins, so two batches never
#: take the same items or overwrite a newer embedding with an older one.
PIPELINE_DEPTH = BATCHES_IN_FLIGHT


#: [CLS] and [SEP]: the tokens a BERT-family model adds to every text, inside its window.
SPECIAL_TOKENS = 2
#: How far a batch may go past its chunk budget to take every row it claimed.
BUDGET_SLACK = 1.25
#: Characters of row text read into one batch per chunk of its budget: a full 256-token chunk
#: of English is about 1,000 characters, so long documents are cut to a batch's worth.
CHARS_PER_CHUNK = 1024


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


class CatalogLike(Protocol):
    """Where the worker finds each model's embedder (embedding.catalog.ModelCatalog)."""

    def get(self, model: str) -> Embedder: ...


def content_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class Worker:
    def __init__(
        self, settings: Settings, catalog: CatalogLike, pool: Pool | None = None, store: WorkerStore | None = None
    ) -> None:
        """``store``: where the work is (default: the database at ``settings.database_url``, over
        ``pool`` or a pool of the worker's own)."""
        self.settings = settings
        self.catalog = catalog
        self.policy = RetryPolicy.from_settings(settings)
        self._own_pool = pool is None and store is None
        self.pool: Pool | None = pool
        if store is None:
            if pool is None:
                # Two lanes with PIPELINE_DEPTH batches each, a scan step, housekeeping.
                pool = self.pool = make_pool(
                    settings.database_url or "", min_size=1, max_size=2 * PIPELINE_DEPTH + 2, name="worker"
                )
            store = PostgresWorkerStore(pool, settings.database_url or "")
        self.store: WorkerStore = store
        self._wakes = {lane: asyncio.Event() for lane in Lane}
        #: Jobs whose embedder was down: after a pause, one batch (in either lane) probes it
        #: before others follow, so a dead server sees one request per pause, not one per slot.
        self._probing: set[object] = set()
        #: Set by the service when a graceful shutdown runs out of time: the batch in
        #: flight stops between inference calls and its transaction rolls back.
        self.abort = threading.Event()
        self.inferences = 0
        #: Recent chunks per row of each job, to claim about a batch's worth of chunks.
        self._chunks_per_row: dict[object, float] = {}

    # ---- lifecycle -------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set; the batches in flight are finished first."""
        if self._own_pool and self.pool is not None:
            await self.pool.open()
        side_tasks = [
            asyncio.create_task(self._supervise("listener", partial(self._listen, stop), stop)),
            asyncio.create_task(self._supervise("housekeeping", partial(self._housekeeping, stop), stop)),
            asyncio.create_task(self._supervise("indexes", partial(self._indexes, stop), stop)),
        ]
        lanes = [
            asyncio.create_task(self._supervise(f"{lane.value}_lane", partial(self._lane, lane, stop), stop)) for lane in Lane
        ]
        try:
            await asyncio.gather(*lanes)
        finally:
            for task in side_tasks:
                task.cancel()
            await asyncio.gather(*side_tasks, *lanes, return_exceptions=True)
            await self.store.close()
            if self._own_pool and self.pool is not None:
                await self.pool.close()

    async def _supervise(self, name: str, run: Callable[[], Awaitable[object]], stop: asyncio.Event) -> None:
        """Keep a side task alive (procrastinate's _monitor_side_tasks): whatever it dies of is
        logged and it is started again, so no failure silently degrades the worker."""
        while not stop.is_set():
            try:
                await run()
            except EmbeddingAborted:
                log.info("event=batch_rolled_back reason=shutdown task=%s", name)
                return
            except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
                log.warning("event=database_unavailable task=%s error=%r retry_in=1", name, _first_line(exc))
                await _wait_any(stop, None, 1.0)
            except Exception:  # never die silently: log, back off, start again
                log.exception("event=task_failed task=%s retry_in=1", name)
                await _wait_any(stop, None, 1.0)

    def _wake_all(self) -> None:
        for wake in self._wakes.values():
            wake.set()

    async def _listen(self, stop: asyncio.Event) -> None:
        """Turn NOTIFYs into wake-ups; after every (re)connect, wake once to catch up on lost ones."""
        async for _ in self.store.notifications():
            self._wake_all()
            if stop.is_set():
                return

    async def _housekeeping(self, stop: asyncio.Event) -> None:
        """A reconciliation pass for every job at start-up and every ``reconcile_interval``; every
        poll interval, fail the jobs whose source table was dropped (that takes their triggers, so
        nothing would say), switch finished builds, fold row counts and drop expired generations."""
        await self.store.restart_scans()
        self._wake_all()
        reconciled = time.monotonic()
        while not stop.is_set():
            if self.settings.reconcile_interval and time.monotonic() - reconciled >= self.settings.reconcile_interval:
                await self.store.restart_scans()
                reconciled = time.monotonic()
                self._wake_all()
            for name in await self.store.fail_orphaned_jobs():
                log.error("event=job_failed job=%s reason=source_table_dropped", name)
            for name in await self.store.sync_partitions():
                log.info("event=partitions_changed job=%s action=capture_updated_and_reconciling", name)
                self._wake_all()
            await self._complete_builds()
            await self.store.compact_tallies()
            for name, generation in await self.store.drop_expired_generations():
                log.info("event=generation_dropped job=%s generation=%d reason=grace_period_over", name, generation)
            await _wait_any(stop, None, self.settings.poll_interval)

    async def _indexes(self, stop: asyncio.Event) -> None:
        """Every poll interval, rebuild the HNSW indexes whose job asks for other build parameters.
        A task of its own: a rebuild of a large index takes minutes and must not hold up the switch
        of a finished generation or the failing of an orphaned job."""
        while not stop.is_set():
            await self.rebuild_indexes()
            await _wait_any(stop, None, self.settings.poll_interval)

    async def rebuild_indexes(self) -> int:
        started = time.perf_counter()
        rebuilt = await self.store.rebuild_hnsw_indexes()
        for name, generation, m, ef_construction in rebuilt:
            log.info(
                "event=hnsw_index_rebuilt job=%s generation=%d m=%d ef_construction=%d seconds=%.1f",
                name,
                generation,
                m,
                ef_construction,
                time.perf_counter() - started,
            )
        return len(rebuilt)

    async def _complete_builds(self) -> None:
        """Switch the jobs whose redefinition has built its whole generation."""
        for name, generation in await self.store.complete_builds(self.settings.generation_keep_seconds):
            metrics.GENERATION_SWITCHES.labels(name).inc()
            log.info("event=generation_switched job=%s serving=%d", name, generation)

    # ---- scheduling ------------------------------------------------------------
    async def drain(self, stop: asyncio.Event | None = None) -> int:
        """Process every job until no job has work left in either lane (a redefinition whose
        generation is then complete switches); returns the rows handled."""
        await self.store.fail_orphaned_jobs()
        total = 0
        while True:
            handled = sum(await asyncio.gather(*(self._lane(lane, stop, until_idle=True) for lane in Lane)))
            total += handled
            if handled == 0 or (stop is not None and stop.is_set()):
                await self._complete_builds()
                return total

    async def _lane(self, lane: Lane, stop: asyncio.Event | None, *, until_idle: bool = False) -> int:
        """Serve one lane: keep PIPELINE_DEPTH batches in flight, jobs taking turns.

        A job whose turn found nothing to claim (its items are held by another batch or
        worker) sits out until the next notification; a paused job until its pause ends."""
        rotation = Rotation()
        wake = self._wakes[lane]
        in_flight: dict[asyncio.Task[int], tuple[object, int]] = {}  # batch -> (job, the job's epoch at launch)
        sitting_out: set[object] = set()
        #: Counts each job's turns that made progress: a turn that found nothing while another
        #: turn of its job made progress (e.g. queued a scan page) does not bench the job.
        epochs: Counter[object] = Counter()
        handled = 0
        try:
            while stop is None or not stop.is_set():
                if wake.is_set():
                    wake.clear()
                    sitting_out.clear()
                jobs = await self.store.jobs_with_work()
                ready = [
                    j
                    for j in jobs
                    if j.has_work(lane) and not j.paused_for and j.id not in sitting_out and j.id not in self._probing
                ]
                busy = Counter(job_id for job_id, _ in in_flight.values())
                while len(in_flight) < PIPELINE_DEPTH and (job := rotation.pick(ready, busy)) is not None:
                    busy[job.id] += 1
                    in_flight[asyncio.create_task(self._turn(job, lane))] = (job.id, epochs[job.id])
                    if job.pause_count:
                        self._probing.add(job.id)
                        ready = [j for j in ready if j.id != job.id]
                if not in_flight:
                    if until_idle:
                        return handled
                    sitting_out.clear()
                    await _wait_any(stop, wake, self._idle_wait(jobs, lane))
                    continue
                done = await _wait_any(stop, wake, None, in_flight)
                for task in done:
                    job_id, epoch = in_flight.pop(task)
                    progress = task.result()
                    handled += progress
                    if progress:
                        epochs[job_id] += 1
                        sitting_out.discard(job_id)
                    elif epochs[job_id] == epoch:
                        sitting_out.add(job_id)
            return handled
        finally:
            await _settle(set(in_flight))

    def _idle_wait(self, jobs: list[JobWork], lane: Lane) -> float:
        """Sleep until a notification, the end of the first pause of a job with work, or the poll."""
        pauses = [j.paused_for for j in jobs if j.paused_for and j.has_work(lane)]
        return min([self.settings.poll_interval, *pauses])

    async def _turn(self, job: JobWork, lane: Lane) -> int:
        """One turn of a job in a lane: a batch, or, when a backfill has nothing queued, the next
        page of its scan. Returns the progress made (0: nothing to do for now)."""
        try:
            return await self._take_turn(job, lane)
        finally:
            self._probing.discard(job.id)

    async def _take_turn(self, job: JobWork, lane: Lane) -> int:
        try:
            if lane is Lane.LIVE:
                return await self.process_batch(job, lane, self.settings.batch_size)
            handled = await self.process_batch(job, lane, self.settings.backfill_batch_size)
            if job.building:
                await self._complete_builds()
            if handled or not job.scan_active or job.paused_for:
                return handled
            # A page fills the batches in flight exactly: a remainder would make a small batch.
            seen = await self.store.scan_step(job.id, self._claim_limit(job, self.settings.backfill_batch_size) * PIPELINE_DEPTH)
            if seen == SCAN_NONE:
                job.scan_active = False
            return max(seen, 0) if seen != SCAN_BUSY else 0
        except SOURCE_BROKEN as exc:
            if isinstance(exc, psycopg.errors.UndefinedColumn):
                # A column the job embeds is gone (the capture trigger fails the job on the next write, too).
                message = f"the job's source is no longer usable: {_first_line(exc)}"
                await self.store.fail_job(job.id, message)
                log.error("event=job_failed job=%s reason=%r", job.job_name, message)
                return 0
            # A permission revoked, or the table out of reach for a moment (a swap, a restore): the
            # job waits with backoff, its queue kept; housekeeping fails it if the table was dropped.
            await self._pause(job, exc, reason=f"{SOURCE_WAIT_PREFIX}: {_first_line(exc)}")
            return 0

    # ---- one batch -------------------------------------------------------------
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
            await self._pause(job, result.failure)
            return 0
        if len(result.claimed) > 1:
            # Bisect: each half is a batch of its own; the healthy half commits, a failing half is
            # split again, so k bad rows among n cost about k log2(n) retried batches, not n.
            log.warning(
                "event=batch_failed job=%s rows=%d error=%r retrying=in_halves",
                job.job_name,
                len(result.claimed),
                _first_line(result.failure),
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
                result.claimed = await tx.claim(job.id, lane, self._claim_limit(job, limit))
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

    def _claim_limit(self, job: JobWork, chunks: int) -> int:
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

    # ---- failures --------------------------------------------------------------
    async def _pause(self, job: JobWork, exc: Exception, reason: str | None = None) -> None:
        """The job's embedder is down (or, with ``reason``, its source out of reach): the whole job
        waits, with exponential backoff; no row pays, nothing is dropped."""
        retry_after = exc.retry_after if isinstance(exc, EmbedderUnavailable) else None
        seconds = self.policy.embedder_pause(job.pause_count, retry_after)
        await self.store.pause_job(job.id, seconds, reason or f"embedder for model {job.model} unavailable: {_first_line(exc)}")
        job.pause_count += 1
        job.paused_for = seconds
        if reason is None:
            metrics.EMBEDDER_PAUSES.labels(job.job_name).inc()
            log.warning(
                "event=embedder_unavailable job=%s model=%s wait_s=%.1f error=%r", job.job_name, job.model, seconds, str(exc)
            )
        else:
            log.warning("event=source_unavailable job=%s wait_s=%.1f error=%r", job.job_name, seconds, _first_line(exc))

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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


async def _settle(tasks: set[asyncio.Task[int]]) -> None:
    """Let batches still in flight finish (or fail) before a lane exits: their transactions
    must end, and their exceptions must not go unretrieved."""
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


async def _wait_any(
    stop: asyncio.Event | None, wake: asyncio.Event | None, timeout: float | None, tasks: Collection[asyncio.Task[int]] = ()
) -> set[asyncio.Task[int]]:
    """Sleep until ``stop`` or ``wake`` is set, one of ``tasks`` finishes, or ``timeout`` seconds
    pass (None: no limit); returns the tasks that have finished."""
    signals = [asyncio.ensure_future(e.wait()) for e in (stop, wake) if e is not None]
    if not signals and not tasks:
        await asyncio.sleep(timeout or 0)
        return set()
    try:
        await asyncio.wait([*tasks, *signals], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for signal in signals:
            signal.cancel()
    return {t for t in tasks if t.done()}
