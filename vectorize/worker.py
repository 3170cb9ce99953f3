"""The daemon: wait for work, claim a batch, embed it, write it back, commit.

One transaction per batch carries the claim (row locks on queue items taken
with SKIP LOCKED), the write of the embeddings and the deletion of the claimed
items, so a crash at any instant either commits all of it or none of it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
import psycopg_pool
from psycopg_pool import AsyncConnectionPool

from . import metrics
from .config import Settings
from .db import make_pool
from .embedding.encoder import EmbeddingAborted
from .models import EncoderCache
from .queries import query

log = logging.getLogger(__name__)

#: Batches of one job in flight at once (see Worker._pump).
PIPELINE_DEPTH = 2

#: Errors that mean the job's source itself is broken, not one row.
SOURCE_BROKEN = (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn, psycopg.errors.InsufficientPrivilege)
#: Errors a batch passes up as they are: retrying its rows one by one would not help.
NOT_A_ROW_FAILURE = (psycopg.OperationalError, EmbeddingAborted, *SOURCE_BROKEN)


@dataclass
class Job:
    id: Any
    job_name: str
    model: str
    dimension: int
    scan_active: bool


@dataclass
class Claimed:
    pk: str
    version: int
    ids: list[int]


def content_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class Worker:
    def __init__(self, settings: Settings, encoders: EncoderCache, pool: AsyncConnectionPool | None = None) -> None:
        self.settings = settings
        self.encoders = encoders
        self._own_pool = pool is None
        self.pool = pool or make_pool(settings.database_url or "", min_size=1, max_size=PIPELINE_DEPTH + 1, name="worker")
        self._wake = asyncio.Event()
        #: Set by the service when a graceful shutdown runs out of time: the batch in
        #: flight stops between inference calls and its transaction rolls back.
        self.abort = threading.Event()
        self.rows_embedded = 0
        self.inferences = 0

    # ---- lifecycle -------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set; the batch in flight is finished first."""
        if self._own_pool:
            await self.pool.open()
        listener = asyncio.create_task(self._listen(stop), name="vectorize-listener")
        try:
            await self._restart_scans()
            while not stop.is_set():
                self._wake.clear()
                try:
                    await self.drain(stop)
                except EmbeddingAborted:
                    log.info("event=batch_rolled_back reason=shutdown")
                    break
                except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
                    log.warning("event=database_unavailable error=%r", _first_line(exc))
                    await _wait_any(stop, None, 1.0)
                    continue
                except Exception:  # never die silently: log, back off, try again
                    log.exception("event=worker_error retry_in=5")
                    await _wait_any(stop, None, 5.0)
                    continue
                await _wait_any(stop, self._wake, self.settings.poll_interval)
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
            if self._own_pool:
                await self.pool.close()

    async def _listen(self, stop: asyncio.Event) -> None:
        """Turn NOTIFYs into wake-ups; after every (re)connect, wake once to catch up on lost ones."""
        delay = 0.2
        while not stop.is_set():
            try:
                conn = await psycopg.AsyncConnection.connect(self.settings.database_url or "", autocommit=True)
                async with conn:
                    await conn.execute(query("listen"))
                    delay = 0.2
                    self._wake.set()
                    async for _ in conn.notifies():
                        self._wake.set()
            except psycopg.OperationalError as exc:
                log.warning("event=listener_disconnected error=%r retry_in=%.1f", _first_line(exc), delay)
                await _wait_any(stop, None, delay)
                delay = min(delay * 2, 5.0)

    async def _restart_scans(self) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(query("restart_scans"))

    # ---- the work loop ---------------------------------------------------------
    async def drain(self, stop: asyncio.Event | None = None) -> int:
        """Process every job until no job has work left; returns the rows handled."""
        total = 0
        while stop is None or not stop.is_set():
            async with self.pool.connection() as conn:
                orphaned = await (await conn.execute(query("fail_orphaned_jobs"))).fetchall()
                for row in orphaned:
                    log.error("event=job_failed job=%s reason=source_table_dropped", row["job_name"])
                if orphaned:
                    await conn.execute(query("drop_failed_job_queue"), {"ids": [row["id"] for row in orphaned]})
                jobs = [Job(**row) for row in await (await conn.execute(query("active_jobs"))).fetchall()]
            progressed = 0
            for job in jobs:
                if stop is not None and stop.is_set():
                    break
                progressed += await self._pump(job, stop)
            total += progressed
            if progressed == 0:
                break
        return total

    async def _pump(self, job: Job, stop: asyncio.Event | None) -> int:
        """Run this job's batches until its queue and backfill scan are empty; returns rows handled.

        Why two batches are kept in flight: each batch ends with database work
        (COPY, index maintenance, commit) and starts with more (claim, read). With one
        batch at a time the encoder sits idle through both; with two, one batch's
        writes and the next one's reads overlap the other's inference, and the
        encoder's queue of sub-batches never runs dry between batches. Claims use
        SKIP LOCKED and writes are newest-wins, so the two never take the same items
        or overwrite a newer embedding with an older one."""
        handled = 0
        in_flight: set[asyncio.Task[int]] = set()
        queue_empty = False
        scanning = job.scan_active
        try:
            while True:
                while len(in_flight) < PIPELINE_DEPTH and not (stop is not None and stop.is_set()):
                    if queue_empty:
                        if not scanning:
                            break
                        seen = await self._scan_step(job)
                        handled += max(seen, 0)
                        scanning = 0 < seen
                        queue_empty = False
                    limit = self.settings.backfill_batch_size if scanning else self.settings.batch_size
                    in_flight.add(asyncio.create_task(self.process_batch(job, limit=limit)))
                if not in_flight:
                    return handled
                done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    in_flight.discard(task)  # what is still in the set is settled if this one raises
                    claimed = task.result()
                    handled += claimed
                    queue_empty = queue_empty or claimed == 0
        except SOURCE_BROKEN as exc:
            await _settle(in_flight)
            await self._fail_job(job, exc)
            return 0
        except BaseException:
            await _settle(in_flight)
            raise

    async def _scan_step(self, job: Job) -> int:
        """Queue the next page of the backfill scan; -1 once the scan is over."""
        async with self.pool.connection() as conn:
            page = self.settings.backfill_batch_size * PIPELINE_DEPTH
            cur = await conn.execute(query("scan_step"), {"job_id": job.id, "page": page})
            row = await cur.fetchone()
        return row["seen"] if row else -1

    async def process_batch(self, job: Job, only_ids: list[int] | None = None, limit: int | None = None) -> int:
        """Claim (up to ``limit`` rows, or just ``only_ids``), embed and write one batch in one
        transaction; isolate a failing row if the batch fails."""
        try:
            return await self._run_batch(job, only_ids, limit or self.settings.batch_size)
        except NOT_A_ROW_FAILURE:
            raise
        except Exception as exc:  # an embedding failure: find the row that caused it
            claimed: list[Claimed] = getattr(exc, "claimed", [])
            if len(claimed) > 1:
                log.warning(
                    "event=batch_failed job=%s rows=%d error=%r retrying=one_by_one",
                    job.job_name,
                    len(claimed),
                    type(exc).__name__,
                )
                for item in claimed:
                    await self.process_batch(job, item.ids)
                return len(claimed)
            if claimed:
                await self._defer(job, claimed[0], exc)
                return 1
            raise

    async def _run_batch(self, job: Job, only_ids: list[int] | None, limit: int) -> int:
        async with self.pool.connection() as conn:
            async with conn.transaction():
                if only_ids is None:
                    cur = await conn.execute(query("claim_batch"), {"job_id": job.id, "limit": limit})
                else:
                    cur = await conn.execute(query("claim_ids"), {"ids": only_ids})
                claimed = [Claimed(**row) for row in await cur.fetchall()]
                if not claimed:
                    return 0
                try:
                    await self._embed_and_write(conn, job, claimed)
                except NOT_A_ROW_FAILURE:
                    raise
                except Exception as exc:
                    exc.claimed = claimed  # type: ignore[attr-defined]
                    raise
                await conn.execute(query("delete_claimed"), {"ids": [i for c in claimed for i in c.ids]})
        return len(claimed)

    async def _embed_and_write(self, conn: psycopg.AsyncConnection, job: Job, claimed: list[Claimed]) -> None:
        started = time.perf_counter()
        versions = {c.pk: c.version for c in claimed}
        cur = await conn.execute(query("read_rows"), {"job_id": job.id, "pks": list(versions)})
        rows = await cur.fetchall()
        present = {r["pk"] for r in rows}
        gone = [pk for pk in versions if pk not in present]

        # Only rows whose text changed are embedded, and each distinct text once.
        changed = []
        for r in rows:
            r["hash"] = content_hash(r["content"])
            if r["hash"] != r["stored_hash"]:
                changed.append(r)
        texts = sorted({r["content"] for r in changed})
        vectors: dict[str, np.ndarray] = {}
        if texts:
            encoder = await asyncio.to_thread(self.encoders.get, job.model)
            matrix = await asyncio.to_thread(encoder.embed, texts, self.abort)
            vectors = dict(zip(texts, matrix, strict=True))
            self.inferences += len(texts)
        infer_done = time.perf_counter()

        await conn.execute(query("create_staging"))
        async with conn.cursor().copy(query("copy_staging")) as copy:
            copy.set_types(["text", "vector", "text", "bytea", "timestamptz", "int8"])
            for r in rows:
                embedded = r["hash"] != r["stored_hash"]
                await copy.write_row(
                    (
                        r["pk"],
                        vectors[r["content"]] if embedded else None,
                        r["content"] if embedded else None,
                        r["hash"],
                        r["source_updated_at"],
                        versions[r["pk"]],
                    )
                )
        await conn.execute(query("apply_batch"), {"job_id": job.id, "gone": gone})
        self.rows_embedded += len(changed)
        metrics.ROWS_EMBEDDED.labels(job.job_name).inc(len(changed))
        metrics.BATCHES.labels(job.job_name).inc()
        metrics.INFERENCE_SECONDS.labels(job.job_name).observe(infer_done - started)
        log.info(
            "event=batch job=%s rows=%d embedded=%d unchanged=%d gone=%d infer_s=%.3f total_s=%.3f",
            job.job_name,
            len(claimed),
            len(changed),
            len(rows) - len(changed),
            len(gone),
            infer_done - started,
            time.perf_counter() - started,
        )

    async def _defer(self, job: Job, item: Claimed, exc: BaseException) -> None:
        """Count a failed try; park the row in vectorize.failure once it has used them all."""
        error = f"{type(exc).__name__}: {exc}"[:1000]
        metrics.ROW_FAILURES.labels(job.job_name).inc()
        async with self.pool.connection() as conn:
            async with conn.transaction():
                cur = await conn.execute(query("defer_items"), {"ids": item.ids, "backoff": self.settings.retry_backoff})
                attempts = max((row["attempts"] for row in await cur.fetchall()), default=0)
                parked = attempts >= self.settings.max_attempts
                if parked:
                    await conn.execute(
                        query("park_failure"), {"job_id": job.id, "pk": item.pk, "attempts": attempts, "error": error}
                    )
                    await conn.execute(query("delete_claimed"), {"ids": item.ids})
        log.warning(
            "event=row_failed job=%s attempts=%d parked=%s error_type=%s",
            job.job_name,
            attempts,
            parked,
            type(exc).__name__,
        )

    async def _fail_job(self, job: Job, exc: BaseException) -> None:
        message = f"the job's source is no longer usable: {_first_line(exc)}"
        async with self.pool.connection() as conn:
            await conn.execute(query("fail_job"), {"job_id": job.id, "message": message})
        log.error("event=job_failed job=%s reason=%r", job.job_name, message)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


async def _settle(tasks: set[asyncio.Task[int]]) -> None:
    """Let batches still in flight finish (or fail) before an error leaves the pump: their
    transactions must end, and their exceptions must not go unretrieved."""
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


async def _wait_any(stop: asyncio.Event, wake: asyncio.Event | None, timeout: float) -> None:
    """Sleep until ``stop`` or ``wake`` is set, or ``timeout`` seconds pass."""
    waiters = [asyncio.ensure_future(stop.wait())]
    if wake is not None:
        waiters.append(asyncio.ensure_future(wake.wait()))
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
