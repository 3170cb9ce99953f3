"""An in-memory worker store (vectorize/store.py's protocol) and a deterministic embedder: the
real Worker runs on them, so its decisions are tested without PostgreSQL or a model.

The store keeps what the database keeps for the worker -- jobs, their source rows, queue items
by lane, each generation's stored chunks, failures -- with the same transaction rule: a batch's
writes and finished items apply when it commits and vanish on ``psycopg.Rollback``. Time does not
pass by itself: a paused job or a row waiting for its retry becomes due when a test calls ``tick``.
It also records what the worker asked for (claims, scan pages, pauses), which the tests read."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg

from vectorize.core.scheduler import Lane
from vectorize.core.store import SCAN_NONE, ChunkLine, Claimed, Generation, JobWork, SourceRow
from vectorize.embedding.errors import EmbedderUnavailable


@dataclass
class Item:
    id: int
    job_id: int
    lane: str
    pk: str
    attempts: int = 0
    waiting: bool = False  # a failed try scheduled for later: due after tick()


@dataclass
class MemoryJob:
    id: int
    name: str
    model: str
    rows: dict[str, str]
    generation: Generation
    scan_active: bool = False
    scan_cursor: int = 0
    pause_count: int = 0
    paused_for: float = 0.0
    pause_reason: str = ""
    failed: str | None = None


@dataclass
class MemoryStore:
    jobs: dict[int, MemoryJob] = field(default_factory=dict)
    items: dict[int, Item] = field(default_factory=dict)
    #: (job, generation) -> pk -> its chunks in order.
    chunks: dict[tuple[int, int], dict[str, list[ChunkLine]]] = field(default_factory=dict)
    parked: list[tuple[str, str, int, str]] = field(default_factory=list)  # job, pk, attempts, error
    claims: list[tuple[str, str, list[str]]] = field(default_factory=list)  # job, lane, pks
    scan_pages: list[tuple[str, int, int]] = field(default_factory=list)  # job, page asked, rows seen
    pauses: list[tuple[str, float, str]] = field(default_factory=list)  # job, seconds, reason
    resumed: list[str] = field(default_factory=list)
    _locked: set[int] = field(default_factory=set)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # ---- what a test sets up ----------------------------------------------------
    def add_job(
        self, name: str, rows: dict[str, str], *, model: str = "fake", scan: bool = False, chunk_tokens: int | None = None
    ) -> MemoryJob:
        job_id = len(self.jobs) + 1
        generation = Generation(1, model, chunking=True, chunk_tokens=chunk_tokens, chunk_overlap=0, serving=True)
        job = self.jobs[job_id] = MemoryJob(job_id, name, model, dict(rows), generation, scan_active=scan)
        return job

    def queue(self, job: MemoryJob, pks: Sequence[str], lane: Lane = Lane.LIVE) -> None:
        for pk in pks:
            item_id = next(self._ids)
            self.items[item_id] = Item(item_id, job.id, lane.value, pk)

    def change(self, job: MemoryJob, pk: str, text: str) -> None:
        """An UPDATE the capture trigger saw: the new text and a live item."""
        job.rows[pk] = text
        self.queue(job, [pk])

    def tick(self) -> None:
        """Time passes: every pause ends and every row waiting for its retry is due."""
        for job in self.jobs.values():
            job.paused_for = 0.0
        for item in self.items.values():
            item.waiting = False

    def stored(self, job: MemoryJob) -> dict[str, list[ChunkLine]]:
        return self.chunks.get((job.id, job.generation.generation), {})

    # ---- the protocol ---------------------------------------------------------------
    @asynccontextmanager
    async def batch(self) -> AsyncIterator[MemoryBatch]:
        tx = MemoryBatch(self)
        try:
            yield tx
        except psycopg.Rollback:
            pass
        else:
            tx.commit()
        finally:
            self._locked -= tx.locked

    async def restart_scans(self) -> None:
        return None

    async def sync_partitions(self) -> list[str]:
        return []

    async def compact_tallies(self) -> None:
        return None

    async def fail_orphaned_jobs(self) -> list[str]:
        return []

    def _due(self, job: MemoryJob, lane: str) -> list[Item]:
        return [
            i for i in self.items.values() if i.job_id == job.id and i.lane == lane and not i.waiting and i.id not in self._locked
        ]

    async def jobs_with_work(self) -> list[JobWork]:
        return [
            JobWork(
                id=job.id,
                job_name=job.name,
                model=job.model,
                scan_active=job.scan_active,
                pause_count=job.pause_count,
                paused_for=job.paused_for,
                building=False,
                live_ready=bool(self._due(job, "live")),
                backfill_ready=bool(self._due(job, "backfill")),
            )
            for job in self.jobs.values()
            if job.failed is None
        ]

    async def scan_step(self, job_id: Any, page: int) -> int:
        job = self.jobs[job_id]
        if not job.scan_active:
            return SCAN_NONE
        keys = sorted(job.rows)[job.scan_cursor : job.scan_cursor + page]
        job.scan_cursor += len(keys)
        self.scan_pages.append((job.name, page, len(keys)))
        if not keys:
            job.scan_active = False
            return SCAN_NONE
        self.queue(job, keys, Lane.BACKFILL)
        return len(keys)

    async def complete_builds(self, keep_seconds: float) -> list[tuple[str, int]]:
        return []

    async def drop_expired_generations(self) -> list[tuple[str, int]]:
        return []

    async def fail_job(self, job_id: Any, message: str) -> None:
        self.jobs[job_id].failed = message

    async def pause_job(self, job_id: Any, seconds: float, reason: str) -> None:
        job = self.jobs[job_id]
        job.paused_for, job.pause_reason = seconds, reason
        job.pause_count += 1
        self.pauses.append((job.name, seconds, reason))

    async def resume_job(self, job_id: Any) -> None:
        job = self.jobs[job_id]
        job.pause_count, job.paused_for = 0, 0.0
        self.resumed.append(job.name)

    async def charge_failed_try(
        self, job_id: Any, item: Claimed, error: str, retry_delay: Callable[[int], float | None]
    ) -> tuple[int, bool]:
        items = [self.items[i] for i in item.ids if i in self.items]
        for it in items:
            it.attempts += 1
        attempts = max((it.attempts for it in items), default=0)
        if retry_delay(attempts) is not None:
            for it in items:
                it.waiting = True
            return attempts, False
        self.parked.append((self.jobs[job_id].name, item.pk, attempts, error))
        for it in items:
            del self.items[it.id]
        return attempts, True

    async def rebuild_hnsw_indexes(self) -> list[tuple[str, int, int, int]]:
        return []

    async def close(self) -> None:
        return None

    async def notifications(self) -> AsyncIterator[None]:
        yield None
        await asyncio.Event().wait()


class MemoryBatch:
    """One batch's transaction over the store: its changes apply on commit only."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.locked: set[int] = set()
        self._writes: list[tuple[int, int, list[ChunkLine], list[str]]] = []
        self._finished: list[int] = []

    def _claimed(self, items: list[Item]) -> list[Claimed]:
        by_pk: dict[str, list[int]] = {}
        for item in sorted(items, key=lambda i: i.id):
            by_pk.setdefault(item.pk, []).append(item.id)
        self.locked.update(i.id for i in items)
        self.store._locked.update(i.id for i in items)
        return [Claimed(pk, max(ids), ids) for pk, ids in by_pk.items()]

    async def claim(self, job_id: Any, lane: Lane, limit: int) -> list[Claimed]:
        job = self.store.jobs[job_id]
        due = sorted(self.store._due(job, lane.value), key=lambda i: i.id)
        pks: list[str] = []
        for item in due:
            if item.pk not in pks and len(pks) < limit:
                pks.append(item.pk)
        claimed = self._claimed([i for i in due if i.pk in pks])
        self.store.claims.append((job.name, lane.value, [c.pk for c in claimed]))
        return claimed

    async def claim_ids(self, ids: list[int]) -> list[Claimed]:
        return self._claimed([self.store.items[i] for i in ids if i in self.store.items])

    async def generations(self, job_id: Any) -> list[Generation]:
        return [self.store.jobs[job_id].generation]

    async def read_rows(self, job_id: Any, generation: int, pks: list[str]) -> list[SourceRow]:
        job = self.store.jobs[job_id]
        stored = self.store.chunks.get((job_id, generation), {})
        return [
            SourceRow(pk, job.rows[pk], None, [c.content_hash for c in stored[pk]] if pk in stored else None)
            for pk in pks
            if pk in job.rows
        ]

    async def write(self, job_id: Any, generation: int, lines: Sequence[ChunkLine], gone: list[str]) -> None:
        self._writes.append((job_id, generation, list(lines), list(gone)))

    async def finish(self, ids: list[int]) -> list[tuple[str, float]]:
        self._finished.extend(ids)
        return [(self.store.items[i].lane, 0.0) for i in ids if i in self.store.items]

    def commit(self) -> None:
        for job_id, generation, lines, gone in self._writes:
            table = self.store.chunks.setdefault((job_id, generation), {})
            for pk in gone:
                table.pop(pk, None)
            by_pk: dict[str, list[ChunkLine]] = {}
            for line in lines:
                by_pk.setdefault(line.pk, []).append(line)
            for pk, new in by_pk.items():
                old = table.get(pk, [])
                for line in new:  # a line without a vector keeps the one stored for that chunk
                    if line.vector is None:
                        line.vector = old[line.chunk].vector
                table[pk] = sorted(new, key=lambda c: c.chunk)
        for item_id in self._finished:
            self.store.items.pop(item_id, None)


class FakeEmbedder:
    """Words are tokens (no tokenizer), a window of ``max_tokens``; vectors from a hash of the text.
    ``down`` makes every call fail as an unreachable server; a text containing a ``poison`` word
    fails as a text the model rejects."""

    counter = None

    def __init__(self, max_tokens: int = 8) -> None:
        self.max_tokens = max_tokens
        self.calls: list[list[str]] = []
        self.down = False
        self.poison: set[str] = set()

    def embed(self, texts: list[str], abort: object = None, priority: int = 0, kind: str = "document") -> np.ndarray:
        if self.down:
            raise EmbedderUnavailable("the embedding server does not answer")
        for text in texts:
            if any(word in text.split() for word in self.poison):
                raise ValueError(f"the model rejects {text!r}")
        self.calls.append(list(texts))
        return np.array([vector(text) for text in texts], dtype=np.float32)

    @property
    def embedded(self) -> list[str]:
        return [text for call in self.calls for text in call]


def vector(text: str) -> np.ndarray:
    digest = hashlib.sha256(text.encode()).digest()
    return np.frombuffer(digest, dtype=np.uint8)[:8].astype(np.float32)


class FakeCatalog:
    def __init__(self, embedder: FakeEmbedder) -> None:
        self.embedder = embedder

    def get(self, model: str) -> FakeEmbedder:
        return self.embedder
