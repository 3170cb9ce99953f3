"""The API cannot be starved: searches waiting for sync hold no pooled connection while they wait,
so health checks and other searches answer at once."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from vectorize.db.database import make_pool

from .helpers import create_job, embedding_count, queue_depth, wait_until

WAITERS = 20


@pytest.mark.slow
async def test_twenty_searches_waiting_for_sync_leave_the_api_answering(conn, products, api, start_worker) -> None:
    create_job(conn)
    conn.execute("create table backlog (id int primary key, body text, updated_at timestamptz not null default now())")
    create_job(conn, job_name="backlog", src_table="backlog", src_columns=["body"], primary_key="id")
    start_worker()
    await wait_until(lambda: embedding_count(conn) == 40 and queue_depth(conn) == 0, timeout=60)
    # 3,000 live changes in one statement: a backlog that takes a while to drain.
    conn.execute(
        "insert into backlog select g, 'backlog row ' || g || ': ' || repeat('several filler words ', 60), now()"
        " from generate_series(1, 3000) g"
    )
    params = {"job_name": "backlog", "query": "filler", "wait_for_sync": "30"}
    waiting = [asyncio.create_task(api.get("/api/v1/search", params=params)) for _ in range(WAITERS)]
    await wait_until(
        lambda: (
            any(t.done() for t in waiting)
            or conn.execute(
                "select count(*) as n from pg_stat_activity where query like '%%synced%%' and datname = current_database()"
            ).fetchone()["n"]
            > 0
        ),
        timeout=10,
    )

    health, latencies = [], []
    for _ in range(10):
        response = await api.get("/health/ready")
        health.append(response.status)
        started = time.monotonic()
        response = await api.get("/api/v1/search", params={"job_name": "my_job", "query": "writing utensil"})
        latencies.append(time.monotonic() - started)
        assert response.status == 200 and (await response.json())[0]["product_name"] == "Pencil"
    still_waiting = sum(not t.done() for t in waiting)
    print(
        f"\n{WAITERS} searches waiting for sync ({still_waiting} still waiting after the probes): health {set(health)},"
        f" plain search max {max(latencies):.3f} s"
    )
    assert still_waiting > 0, "the backlog drained before the probes ended: nothing was measured"
    assert health == [200] * 10
    assert max(latencies) < 1.0
    answers = await asyncio.gather(*waiting)
    assert all(a.status == 200 for a in answers)
    assert {a.headers["X-Vectorize-Fresh"] for a in answers} <= {"true", "false"}


async def test_every_api_statement_has_a_timeout(settings) -> None:
    """The API's pool bounds every statement (VECTORIZE_STATEMENT_TIMEOUT): a runaway query is
    cancelled by PostgreSQL instead of holding a connection."""
    pool = make_pool(settings.database_url or "", max_size=1, statement_timeout=0.3)
    await pool.open()
    try:
        async with pool.connection() as conn:
            started = time.monotonic()
            with pytest.raises(psycopg.errors.QueryCanceled):
                await conn.execute("select pg_sleep(5)")
            assert time.monotonic() - started < 2.0
            assert (await (await conn.execute("show statement_timeout")).fetchone())["statement_timeout"] == "300ms"
    finally:
        await pool.close()


async def test_deleting_a_job_never_queues_readers_behind_a_long_select(conn, products, api, db_url) -> None:
    """Deleting a job drops its triggers (ACCESS EXCLUSIVE on the source). Behind a long SELECT it
    waits at most a lock_timeout per try, so the table's other readers never queue for long behind
    it; after its tries it answers 409 and changes nothing."""
    create_job(conn)
    async with await psycopg.AsyncConnection.connect(db_url) as holder:
        await holder.execute("select count(*) from my_products")  # its transaction stays open
        deleting = asyncio.create_task(api.delete("/api/v1/table/my_job"))
        waits = []
        while not deleting.done():
            started = time.monotonic()
            async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as reader:
                await reader.execute("select count(*) from my_products")
            waits.append(time.monotonic() - started)
            await asyncio.sleep(0.2)
        response = await deleting
        await holder.rollback()
    body = await response.json()
    print(f"\ndelete behind a long SELECT: {response.status} after {len(waits)} reads, longest read {max(waits):.2f} s")
    assert response.status == 409 and "stayed locked" in body["error"]
    assert max(waits) < 1.5
    assert conn.execute("select count(*) as n from vectorize.job").fetchone()["n"] == 1
    response = await api.delete("/api/v1/table/my_job")
    assert response.status < 300
    assert conn.execute("select count(*) as n from vectorize.job").fetchone()["n"] == 0
