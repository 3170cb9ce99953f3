"""Create and delete jobs. The shape of the request is checked here; every rule
about the table, columns and model is checked by the database trigger, so SQL
users get exactly the same answers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection

from vectorize.core.errors import Conflict, Forbidden, NotFound
from vectorize.core.job_definition import DEFINITION, SETTINGS, same_definition, with_defaults
from vectorize.db.database import Pool
from vectorize.db.errors import database_errors
from vectorize.db.queries import query

T = TypeVar("T")


async def create_job(pool: Pool, definition: dict[str, Any], role: str | None = None) -> str:
    """Insert the job (the trigger validates and builds its objects); returns its id. For a
    ``role`` (an API token's), only over columns that role may read."""
    params = with_defaults(definition)

    async def create(conn: AsyncConnection[Any]) -> dict[str, Any] | None:
        await _require_reads(conn, role, params)
        row = await (await conn.execute(query("create_job"), params)).fetchone()
        await conn.execute(query("set_search_settings"), params)
        return row

    row = await _politely(pool, params["job_name"], "created", create, role)
    assert row is not None
    return str(row["id"])


async def job_definition(pool: Pool, job_name: str) -> dict[str, Any]:
    """The job's serving definition, as a create request would give it; 404 if there is no such job."""
    async with pool.connection() as conn:
        row = await (await conn.execute(query("job_definition"), {"job_name": job_name})).fetchone()
    if row is None:
        raise NotFound(f"job {job_name!r} does not exist")
    return {"job_name": job_name, **{f: row[f] for f in (*DEFINITION, *SETTINGS) if f != "job_name"}}


async def redefine_job(pool: Pool, definition: dict[str, Any], keep_seconds: float, role: str | None = None) -> dict[str, Any]:
    """Change a job's definition online (the UPDATE a psql user would write): a new generation is
    built beside the serving one and switched to when complete. The serving definition again
    cancels a build in progress. ``action`` in the answer: building, unchanged or cancelled."""
    params = with_defaults(definition)
    job_name = params["job_name"]

    async def redefine(conn: AsyncConnection[Any]) -> dict[str, Any]:
        await _require_reads(conn, role, params)
        current = await (await conn.execute(query("job_definition"), {"job_name": job_name})).fetchone()
        if current is None:
            raise NotFound(f"job {job_name!r} does not exist; create it with POST /api/v1/table")
        spare = await (await conn.execute(query("building_generation"), {"job_name": job_name})).fetchone()
        answer = {"id": str(current["id"]), "job_name": job_name, "serving_generation": current["generation"]}
        await conn.execute(query("set_search_settings"), params)
        if same_definition(current, params):
            if spare is not None and spare["state"] == "building":
                await conn.execute(query("rollback_job"), {"job_name": job_name, "keep_seconds": keep_seconds})
                return {
                    **answer,
                    "action": "cancelled",
                    "message": f"the build of generation {spare['generation']} was cancelled",
                }
            return {**answer, "action": "unchanged", "message": "the job already has this definition"}
        await conn.execute(query("redefine_job"), params)
        spare = await (await conn.execute(query("building_generation"), {"job_name": job_name})).fetchone()
        assert spare is not None
        return {
            **answer,
            "action": "building",
            "generation": spare["generation"],
            "message": f"generation {spare['generation']} is being built; "
            f"generation {current['generation']} serves until it is complete",
        }

    return await _politely(pool, job_name, "redefined", redefine, role)


async def rollback_job(pool: Pool, job_name: str, keep_seconds: float, role: str | None = None) -> dict[str, Any]:
    """Cancel a build in progress, or switch back to the previous generation (instantly)."""

    async def rollback(conn: AsyncConnection[Any]) -> dict[str, Any] | None:
        return await (await conn.execute(query("rollback_job"), {"job_name": job_name, "keep_seconds": keep_seconds})).fetchone()

    row = await _politely(pool, job_name, "switched", rollback, role)
    assert row is not None
    messages = {
        "cancelled": f"the build in progress was cancelled; generation {row['generation']} keeps serving",
        "rolled_back": f"generation {row['generation']} serves again",
    }
    return {
        "job_name": job_name,
        "action": row["action"],
        "serving_generation": row["generation"],
        "message": messages[row["action"]],
    }


#: Creating, redefining, switching or deleting a job installs or drops triggers on its source
#: table, which needs a lock that conflicts with the source's writers (and, to drop, with its
#: readers): waited for behind a long transaction, every later query on the table would queue
#: behind the wait. So each try waits at most SOURCE_LOCK_TIMEOUT, and SOURCE_LOCK_TRIES are made.
SOURCE_LOCK_TIMEOUT, SOURCE_LOCK_TRIES, SOURCE_LOCK_RETRY_PAUSE = "500ms", 8, 0.5


async def _politely(
    pool: Pool,
    job_name: str,
    action: str,
    work: Callable[[AsyncConnection[Any]], Awaitable[T]],
    role: str | None = None,
) -> T:
    """Run ``work`` in a transaction that waits for locks at most SOURCE_LOCK_TIMEOUT, retrying
    SOURCE_LOCK_TRIES times; then a 409 that says why, with nothing changed. For a ``role`` (an API
    token's), the job must be one whose source that role may read, else 404 as if it did not exist."""
    for attempt in range(1, SOURCE_LOCK_TRIES + 1):
        try:
            with database_errors():
                async with pool.connection() as conn, conn.transaction():
                    await conn.execute(query("set_lock_timeout"), {"timeout": SOURCE_LOCK_TIMEOUT})
                    if action != "created":
                        await _require_readable(conn, role, job_name)
                    return await work(conn)
        except psycopg.errors.LockNotAvailable:
            if attempt == SOURCE_LOCK_TRIES:
                raise Conflict(
                    f"job {job_name!r} was not {action}: its source table stayed locked by another transaction"
                    f" (a long query or an open transaction) through {SOURCE_LOCK_TRIES} tries; retry when it has ended",
                ) from None
            await asyncio.sleep(SOURCE_LOCK_RETRY_PAUSE)
    raise AssertionError("unreachable")


async def delete_job(pool: Pool, job_name: str, role: str | None = None) -> None:
    """Delete the job and everything it built; 404 if there is no such job, 409 if its source table
    stayed busy (a long transaction holds it) through every try."""

    async def delete(conn: AsyncConnection[Any]) -> dict[str, Any] | None:
        return await (await conn.execute(query("delete_job"), {"job_name": job_name})).fetchone()

    if await _politely(pool, job_name, "deleted", delete, role) is None:
        raise NotFound(f"job {job_name!r} does not exist")


def _status_row(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out["id"] = str(out["id"])
    for key in ("backfilled_at", "last_activity", "created_at", "waiting_until"):
        if out.get(key) is not None:
            out[key] = out[key].isoformat()
    # Rows per second over the last minute.
    out["rate_per_second"] = round((out.pop("embedded_last_minute") or 0) / 60.0, 2)
    return out


async def list_jobs(pool: Pool, role: str | None = None) -> list[dict[str, Any]]:
    """Every job's status; for a ``role``, only the jobs whose source it may read."""
    async with pool.connection() as conn:
        rows = await (await conn.execute(query("job_status_all"))).fetchall()
        readable = None if role is None else await _readable(conn, role)
    return [_status_row(r) for r in rows if readable is None or r["job_name"] in readable]


async def _require_reads(conn: AsyncConnection[Any], role: str | None, definition: dict[str, Any]) -> None:
    """A token's role may define a job only over columns it may read itself: the job is built
    and run with the daemon's rights, and would otherwise show that role what it may not read."""
    if role is None:
        return
    columns = [*definition["src_columns"], definition["primary_key"], definition["update_time_col"]]
    params = {"role": role, "schema": definition["src_schema"], "table": definition["src_table"], "columns": columns}
    try:
        row = await (await conn.execute(query("role_may_read"), params)).fetchone()
    except psycopg.errors.UndefinedObject as exc:
        raise Forbidden(f"this token's role {role!r} does not exist") from exc
    if row is not None and row["ok"] is False:
        raise Forbidden(
            f"role {role!r} may not read every column the job names in {definition['src_schema']}.{definition['src_table']}"
        )


async def _require_readable(conn: AsyncConnection[Any], role: str | None, job_name: str) -> None:
    """For a ``role`` (an API token's), a job whose source it may not read is answered like one
    that does not exist."""
    if role is not None and job_name not in await _readable(conn, role):
        raise NotFound(f"job {job_name!r} does not exist")


async def _readable(conn: AsyncConnection[Any], role: str) -> set[str]:
    try:
        return {r["job_name"] for r in await (await conn.execute(query("readable_jobs"), {"role": role})).fetchall()}
    except psycopg.errors.UndefinedObject as exc:
        raise Forbidden(f"this token's role {role!r} does not exist") from exc


async def job_gauges(pool: Pool) -> list[dict[str, Any]]:
    """Queue, failure and embedding counts per job, without counting source tables (for /metrics)."""
    async with pool.connection() as conn:
        return await (await conn.execute(query("job_gauges"))).fetchall()


async def job_status(pool: Pool, job_name: str) -> dict[str, Any]:
    """One job's definition and progress; 404 if there is no such job."""
    async with pool.connection() as conn:
        row = await (await conn.execute(query("job_status_one"), {"job_name": job_name})).fetchone()
    if row is None:
        raise NotFound(f"job {job_name!r} does not exist")
    return _status_row(row)


async def show_job(pool: Pool, job_name: str, errors: int = 10, role: str | None = None) -> dict[str, Any]:
    """``job_status`` plus the job's most recent failures; for a ``role`` that may not read the
    job's source, 404 as if there were no such job."""
    if role is not None:
        async with pool.connection() as conn:
            await _require_readable(conn, role, job_name)
    status = await job_status(pool, job_name)
    async with pool.connection() as conn:
        failures = await (await conn.execute(query("job_failures"), {"job_id": status["id"], "limit": errors})).fetchall()
    status["last_errors"] = [
        {"pk": f["pk"], "attempts": f["attempts"], "error": f["last_error"], "failed_at": f["failed_at"].isoformat()}
        for f in failures
    ]
    return status
