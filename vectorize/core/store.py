"""What the worker needs of a database, and nothing more: the worker's one seam.

The worker decides (which job's turn, how many rows fit a batch, which chunks changed, whose
fault a failure is); a store carries out each decision as one call. ``store_postgres`` is the
store that runs (every call a named query of sql/queries.sql); the unit tests run the same worker
on an in-memory store (tests/unit/memory_store.py), so its decisions are checked in milliseconds,
without PostgreSQL or a model. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import numpy as np

from vectorize.core.scheduler import Lane


@dataclass
class JobWork:
    """An active job and what its lanes could do at the time of asking."""

    id: Any
    job_name: str
    model: str
    scan_active: bool
    pause_count: int
    #: Seconds until the job's embedder pause ends; 0 when it is not paused.
    paused_for: float
    #: A redefinition is building a new generation (it switches when its backfill is done).
    building: bool
    live_ready: bool
    backfill_ready: bool

    def has_work(self, lane: Lane) -> bool:
        if lane is Lane.LIVE:
            return self.live_ready
        return self.backfill_ready or self.scan_active


@dataclass
class Generation:
    """One generation of a job that a batch writes: the serving one, or the one built beside it
    (a redefinition in progress) or kept for rollback. Each embeds the rows its own way."""

    generation: int
    model: str
    chunking: bool
    chunk_tokens: int | None
    chunk_overlap: int
    serving: bool


@dataclass
class Claimed:
    """The claimed queue items of one source row."""

    pk: str
    version: int
    ids: list[int]


@dataclass
class SourceRow:
    pk: str
    content: str
    source_updated_at: datetime | None
    #: Content hashes of the row's stored chunks, in chunk order (None: nothing stored).
    stored_hashes: list[bytes] | None
    #: Its stored full-text terms are of another language (a copy to check): write its text again.
    fts_stale: bool = False


@dataclass
class ChunkLine:
    """What a batch writes for one chunk of a source row. ``vector`` is None when the chunk's
    text is unchanged; ``row_text`` (chunk 0 only, when the row changed) renews its full-text vector."""

    pk: str
    chunk: int
    vector: np.ndarray | None
    row_text: str | None
    content_hash: bytes
    start: int
    end: int
    chunks: int
    source_updated_at: datetime | None
    version: int


#: Values of vectorize.scan_step besides the rows a page looked at.
SCAN_NONE = -1  # the job has no scan to run
SCAN_BUSY = -2  # another worker is advancing it right now


class BatchStore(Protocol):
    """One batch's transaction: claim, read, write, finish; committed together or not at all
    (``raise psycopg.Rollback`` inside ``WorkerStore.batch`` rolls it back quietly)."""

    async def claim(self, job_id: Any, lane: Lane, limit: int) -> list[Claimed]:
        """The job's oldest due items of ``lane`` for up to ``limit`` rows, locked (others skip them)."""
        ...

    async def claim_ids(self, ids: list[int]) -> list[Claimed]:
        """These items again (half of a batch that failed), locked."""
        ...

    async def generations(self, job_id: Any) -> list[Generation]:
        """The generations this batch writes, the serving one first."""
        ...

    async def read_rows(self, job_id: Any, generation: int, pks: list[str]) -> list[SourceRow]:
        """The rows' current text as ``generation`` embeds it, with their stored chunk hashes."""
        ...

    async def write(self, job_id: Any, generation: int, lines: Sequence[ChunkLine], gone: list[str]) -> None:
        """Upsert the chunks (newest wins; a line without a vector keeps the stored one) and remove ``gone``."""
        ...

    async def finish(self, ids: list[int]) -> list[tuple[str, float]]:
        """Remove the done items; (lane, seconds since queued) of each."""
        ...


class WorkerStore(Protocol):
    def batch(self) -> AbstractAsyncContextManager[BatchStore]: ...

    async def restart_scans(self) -> None: ...

    async def sync_partitions(self) -> list[str]: ...

    async def compact_tallies(self) -> None: ...

    async def fail_orphaned_jobs(self) -> list[str]: ...

    async def jobs_with_work(self) -> list[JobWork]: ...

    async def scan_step(self, job_id: Any, page: int) -> int:
        """Queue the next ``page`` rows of the job's backfill scan; rows looked at, SCAN_NONE or SCAN_BUSY."""
        ...

    async def complete_builds(self, keep_seconds: float) -> list[tuple[str, int]]: ...

    async def drop_expired_generations(self) -> list[tuple[str, int]]: ...

    async def fail_job(self, job_id: Any, message: str) -> None: ...

    async def pause_job(self, job_id: Any, seconds: float, reason: str) -> None: ...

    async def resume_job(self, job_id: Any) -> None: ...

    async def charge_failed_try(
        self, job_id: Any, item: Claimed, error: str, retry_delay: Callable[[int], float | None]
    ) -> tuple[int, bool]:
        """Count one failed try of a row; park it once ``retry_delay(attempts)`` says None. (attempts, parked)."""
        ...

    async def rebuild_hnsw_indexes(self) -> list[tuple[str, int, int, int]]: ...

    async def close(self) -> None: ...

    def notifications(self) -> AsyncIterator[None]:
        """Once after (re)connecting, then once per NOTIFY on the vectorize channel."""
        ...
