"""The daemon: wait for work, take turns between jobs in two lanes, keep the side tasks alive.

The story of a batch is batch.py's: claim a job's oldest items of one lane, read the rows'
current text, embed what changed, COPY the vectors back, delete the items, commit -- one
transaction, so a crash at any instant commits all of it or none of it. This module decides
whose turn it is (scheduler.py's round-robin, in a live and a backfill lane), keeps batches in
flight, pages a backfill scan, and runs housekeeping; every statement is the store's (store.py).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection
from functools import partial

import psycopg
import psycopg_pool

from vectorize import metrics
from vectorize.config import Settings
from vectorize.core.scheduler import Lane, Rotation
from vectorize.core.store import SCAN_BUSY, SCAN_NONE, JobWork, WorkerStore
from vectorize.db.database import Pool, make_pool
from vectorize.db.worker_store import PostgresWorkerStore
from vectorize.embedding.encoder import BATCHES_IN_FLIGHT
from vectorize.embedding.errors import EmbeddingAborted
from vectorize.worker.batch import BatchRunner, CatalogLike, first_line
from vectorize.worker.retry import SOURCE_BROKEN

#: The logger keeps the name it has had since the first release (operators filter on it).
log = logging.getLogger("vectorize.worker")

#: How a pause for an unreadable source starts its reason (vectorize._sync_state reads it).
SOURCE_WAIT_PREFIX = "the job's source cannot be read now"

#: Batches in flight per lane. Each batch ends with database work (COPY, index
#: maintenance, commit) and starts with more (claim, read); with two, one batch's
#: database work overlaps the other's inference and the encoder never idles between
#: batches. Claims use SKIP LOCKED and writes are newest-wins, so two batches never
#: take the same items or overwrite a newer embedding with an older one.
PIPELINE_DEPTH = BATCHES_IN_FLIGHT


class Worker:
    def __init__(
        self, settings: Settings, catalog: CatalogLike, pool: Pool | None = None, store: WorkerStore | None = None
    ) -> None:
        """``store``: where the work is (default: the database at ``settings.database_url``, over
        ``pool`` or a pool of the worker's own)."""
        self.settings = settings
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
        self.batches = BatchRunner(settings, catalog, store, self.abort)

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
                log.warning("event=database_unavailable task=%s error=%r retry_in=1", name, first_line(exc))
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
                return await self.batches.process_batch(job, lane, self.settings.batch_size)
            handled = await self.batches.process_batch(job, lane, self.settings.backfill_batch_size)
            if job.building:
                await self._complete_builds()
            if handled or not job.scan_active or job.paused_for:
                return handled
            # A page fills the batches in flight exactly: a remainder would make a small batch.
            seen = await self.store.scan_step(
                job.id, self.batches.claim_limit(job, self.settings.backfill_batch_size) * PIPELINE_DEPTH
            )
            if seen == SCAN_NONE:
                job.scan_active = False
            return max(seen, 0) if seen != SCAN_BUSY else 0
        except SOURCE_BROKEN as exc:
            if isinstance(exc, psycopg.errors.UndefinedColumn):
                # A column the job embeds is gone (the capture trigger fails the job on the next write, too).
                message = f"the job's source is no longer usable: {first_line(exc)}"
                await self.store.fail_job(job.id, message)
                log.error("event=job_failed job=%s reason=%r", job.job_name, message)
                return 0
            # A permission revoked, or the table out of reach for a moment (a swap, a restore): the
            # job waits with backoff, its queue kept; housekeeping fails it if the table was dropped.
            await self.batches.pause(job, exc, reason=f"{SOURCE_WAIT_PREFIX}: {first_line(exc)}")
            return 0

    @property
    def inferences(self) -> int:
        """Texts embedded so far."""
        return self.batches.inferences

    async def process_batch(self, job: JobWork, lane: Lane, limit: int = 0) -> int:
        """One batch of ``job`` in ``lane`` (batch.py): the rows handled."""
        return await self.batches.process_batch(job, lane, limit)


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
