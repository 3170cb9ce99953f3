"""The worker's store on PostgreSQL (store.py says what a store is): one method per intention,
each a named query of sql/queries.sql. The worker's loop reads as the story of a batch; the SQL
lives behind these names (procrastinate's JobManager shape)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg import sql

from vectorize.core.scheduler import Lane
from vectorize.core.store import SCAN_NONE, ChunkLine, Claimed, Generation, JobWork, SourceRow
from vectorize.db.database import Connection, Pool, connect_async
from vectorize.db.queries import query


class PostgresBatch:
    """One batch's transaction: claim, read, write, finish; committed together or not at all."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def claim(self, job_id: Any, lane: Lane, limit: int) -> list[Claimed]:
        cur = await self.conn.execute(query("claim_batch"), {"job_id": job_id, "lane": lane.value, "limit": limit})
        return [Claimed(**row) for row in await cur.fetchall()]

    async def claim_ids(self, ids: list[int]) -> list[Claimed]:
        cur = await self.conn.execute(query("claim_ids"), {"ids": ids})
        return [Claimed(**row) for row in await cur.fetchall()]

    async def generations(self, job_id: Any) -> list[Generation]:
        """The generations this batch writes, read after the claim (so a change captured after a
        redefinition began always reaches the new generation); the other one stays locked."""
        cur = await self.conn.execute(query("job_generations"), {"job_id": job_id})
        return sorted((Generation(**row) for row in await cur.fetchall()), key=lambda g: not g.serving)

    async def read_rows(self, job_id: Any, generation: int, pks: list[str]) -> list[SourceRow]:
        cur = await self.conn.execute(query("read_rows"), {"job_id": job_id, "generation": generation, "pks": pks})
        return [SourceRow(**row) for row in await cur.fetchall()]

    async def write(self, job_id: Any, generation: int, lines: Sequence[ChunkLine], gone: list[str]) -> None:
        """Binary COPY into a staging table, then one set-based, newest-wins upsert."""
        await self.conn.execute(query("create_staging"))
        await self.conn.execute(query("clear_staging"))
        async with self.conn.cursor().copy(query("copy_staging")) as copy:
            copy.set_types(["text", "int4", "vector", "text", "bytea", "int4", "int4", "int4", "timestamptz", "int8"])
            for c in lines:
                await copy.write_row(
                    (
                        c.pk,
                        c.chunk,
                        c.vector,
                        c.row_text,
                        c.content_hash,
                        c.start,
                        c.end,
                        c.chunks,
                        c.source_updated_at,
                        c.version,
                    )
                )
        await self.conn.execute(query("apply_batch"), {"job_id": job_id, "generation": generation, "gone": gone})

    async def finish(self, ids: list[int]) -> list[tuple[str, float]]:
        """Remove the done items; returns (lane, seconds since queued) for each."""
        cur = await self.conn.execute(query("finish_items"), {"ids": ids})
        return [(row["lane"], row["lag_seconds"]) for row in await cur.fetchall()]


class PostgresWorkerStore:
    def __init__(self, pool: Pool, database_url: str) -> None:
        self.pool = pool
        self.database_url = database_url
        self._index_conn: psycopg.AsyncConnection | None = None

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[PostgresBatch]:
        """A transaction for one batch; ``raise psycopg.Rollback`` inside rolls it back quietly."""
        async with self.pool.connection() as conn, conn.transaction():
            yield PostgresBatch(conn)

    async def _execute(self, name: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(query(name), params)
            return await cur.fetchall() if cur.description else []

    async def restart_scans(self) -> None:
        await self._execute("restart_scans")

    async def sync_partitions(self) -> list[str]:
        """Capture partitions attached or detached since the triggers were installed; returns the jobs touched."""
        return [row["job_name"] for row in await self._execute("sync_partitions")]

    async def compact_tallies(self) -> None:
        """Fold old row-count deltas (vectorize.row_tally) so status reads stay a few rows per table."""
        await self._execute("compact_tallies")

    async def fail_orphaned_jobs(self) -> list[str]:
        """Fail the jobs whose source table was dropped; returns their names."""
        return [row["job_name"] for row in await self._execute("fail_orphaned_jobs")]

    async def jobs_with_work(self) -> list[JobWork]:
        return [JobWork(**row) for row in await self._execute("jobs_with_work")]

    async def scan_step(self, job_id: Any, page: int) -> int:
        """Queue the next page of the job's backfill scan; rows looked at, SCAN_NONE or SCAN_BUSY."""
        rows = await self._execute("scan_step", {"job_id": job_id, "page": page})
        return rows[0]["seen"] if rows else SCAN_NONE

    async def complete_builds(self, keep_seconds: float) -> list[tuple[str, int]]:
        """Switch every job whose new generation is complete; returns (job, generation now serving)."""
        rows = await self._execute("complete_builds", {"keep_seconds": keep_seconds})
        return [(row["job_name"], row["generation"]) for row in rows]

    async def drop_expired_generations(self) -> list[tuple[str, int]]:
        """Drop the previous generations whose grace period is over; returns (job, generation)."""
        return [(row["job_name"], row["generation"]) for row in await self._execute("drop_expired_generations")]

    async def fail_job(self, job_id: Any, message: str) -> None:
        await self._execute("fail_job", {"job_id": job_id, "message": message})

    async def pause_job(self, job_id: Any, seconds: float, reason: str) -> None:
        await self._execute("pause_job", {"job_id": job_id, "seconds": seconds, "reason": reason[:1000]})

    async def resume_job(self, job_id: Any) -> None:
        await self._execute("resume_job", {"job_id": job_id})

    async def charge_failed_try(
        self, job_id: Any, item: Claimed, error: str, retry_delay: Callable[[int], float | None]
    ) -> tuple[int, bool]:
        """Count one failed try of a row, in one transaction: ``retry_delay(attempts)`` says when
        to try again, or None to park the row in vectorize.failure with its error (its items
        leave the queue). Returns (attempts, parked)."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(query("count_attempt"), {"ids": item.ids})
            attempts = max((row["attempts"] for row in await cur.fetchall()), default=0)
            delay = retry_delay(attempts)
            if delay is not None:
                await conn.execute(query("schedule_retry"), {"ids": item.ids, "delay": delay})
                return attempts, False
            await conn.execute(query("park_failure"), {"job_id": job_id, "pk": item.pk, "attempts": attempts, "error": error})
            await conn.execute(query("finish_items"), {"ids": item.ids})
            return attempts, True

    async def rebuild_hnsw_indexes(self) -> list[tuple[str, int, int, int]]:
        """Rebuild every HNSW index whose job asks for other build parameters, one at a time, on a
        connection of its own (CREATE INDEX CONCURRENTLY cannot run in a transaction; and a
        build of minutes must not hold one of the lanes' pooled connections). The connection is
        kept between the checks, which run every poll interval. A session advisory lock per index
        keeps two workers from building the same one. Returns (job, generation, m,
        ef_construction) of each index rebuilt."""
        if self._index_conn is None or self._index_conn.closed or self._index_conn.broken:
            self._index_conn = await connect_async(self.database_url, autocommit=True)
        conn = self._index_conn
        rebuilt = []
        for row in await (await conn.execute(query("hnsw_rebuilds"))).fetchall():
            job, generation = row[0], row[1]
            key = {"key": f"vectorize.hnsw:{job}${generation}"}
            locked = await (await conn.execute(query("try_index_lock"), key)).fetchone()
            if locked is None or not locked[0]:
                continue  # another worker is building it
            try:
                for statement in row[4]:
                    await conn.execute(sql.SQL(statement))  # names quoted by format('%I') in SQL
            finally:
                await conn.execute(query("release_index_lock"), key)
            rebuilt.append((job, generation, row[2], row[3]))
        return rebuilt

    async def close(self) -> None:
        """Close the connection kept for index checks."""
        if self._index_conn is not None:
            await self._index_conn.close()
            self._index_conn = None

    async def notifications(self) -> AsyncIterator[None]:
        """Yield once after (re)connecting, then once per NOTIFY on the vectorize channel."""
        conn = await connect_async(self.database_url, autocommit=True)
        async with conn:
            await conn.execute(query("listen"))
            yield None
            async for _ in conn.notifies():
                yield None
