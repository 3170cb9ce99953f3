"""Polite with users' tables: vectorize's DDL on a source never makes its readers and writers queue
for long, its objects never block DDL on columns it does not use, and a generation dropped while a
user's statement waited for it does not fail the job."""

from __future__ import annotations

import asyncio
import threading
import time

import psycopg

from .helpers import MY_JOB, create_job, wait_for


def _waiting_pids(conn: psycopg.Connection) -> set[int]:
    return {r["pid"] for r in conn.execute("select pid from pg_locks where not granted").fetchall()}


async def test_creating_a_job_behind_an_open_write_retries_without_queueing_writers(conn, products, api, db_url) -> None:
    """Installing the capture triggers needs a lock that conflicts with the source's writers. Behind
    an open write transaction each try waits at most a lock_timeout, so other writers never queue
    for long behind it; when the transaction ends, a later try succeeds."""
    async with await psycopg.AsyncConnection.connect(db_url) as holder:
        await holder.execute("update my_products set price = price where product_id = 1")  # stays open
        creating = asyncio.create_task(api.post("/api/v1/table", json=MY_JOB))
        waits = []
        started_all = time.monotonic()
        while not creating.done():
            started = time.monotonic()
            async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as writer:
                await writer.execute("update my_products set price = price where product_id = 2")
            waits.append(time.monotonic() - started)
            if time.monotonic() - started_all > 2.0 and not holder.closed:
                await holder.rollback()  # the long transaction ends; the next try gets the lock
            await asyncio.sleep(0.1)
        response = await creating
    print(f"\ncreate behind an open write: {response.status} after {len(waits)} writes, longest {max(waits):.2f} s")
    assert response.status == 200, await response.text()
    assert max(waits) < 1.5
    triggers = conn.execute(
        "select count(*) as n from pg_trigger where tgrelid = 'my_products'::regclass and tgname like 'vectorize\\_%'"
    ).fetchone()["n"]
    assert triggers == 4


def test_a_generation_dropped_while_a_delete_waits_for_it_does_not_fail_the_job(conn, products, db_url) -> None:
    """A source DELETE removes the row's embeddings from every generation. When the build it was
    about to write is cancelled (its table dropped) while the DELETE waits for that table's lock,
    the DELETE succeeds and the job stays active."""
    create_job(conn)
    conn.execute("update vectorize.job set chunk_tokens = 64 where job_name = 'my_job'")  # generation 2 builds
    spare = 'vectorize."_embeddings_my_job$2"'
    assert conn.execute(f"select to_regclass('{spare}') as t").fetchone()["t"] is not None
    errors: list[BaseException] = []

    def run(statement: str) -> None:
        try:
            with psycopg.connect(db_url, autocommit=True) as c:
                c.execute(statement)
        except BaseException as exc:
            errors.append(exc)

    with psycopg.connect(db_url) as holder:
        holder.execute(f"lock table {spare} in access share mode")
        dropper = threading.Thread(target=run, args=("select * from vectorize.rollback_job('my_job', 0)",))
        dropper.start()
        wait_for(lambda: len(_waiting_pids(conn)) == 1 or None, timeout=10)
        deleter = threading.Thread(target=run, args=("delete from my_products where product_id = 1",))
        deleter.start()
        wait_for(lambda: len(_waiting_pids(conn)) == 2 or None, timeout=10)
        holder.rollback()
    dropper.join(10)
    deleter.join(10)
    assert not errors, errors
    job = conn.execute("select status, status_message from vectorize.job where job_name = 'my_job'").fetchone()
    assert job == {"status": "active", "status_message": None}
    assert conn.execute(f"select to_regclass('{spare}') as t").fetchone()["t"] is None
    assert conn.execute("select count(*) as n from my_products where product_id = 1").fetchone()["n"] == 0


def test_the_job_view_does_not_block_ddl_on_columns_the_job_does_not_use(conn, products) -> None:
    create_job(conn)
    conn.execute("alter table my_products alter column price type numeric(12, 4)")
    conn.execute("alter table my_products add column note text")
    conn.execute("alter table my_products drop column note")
    view = conn.execute("select count(*) as n from vectorize.my_job_view").fetchone()
    assert view["n"] == 0  # nothing embedded yet; the view still reads
    assert conn.execute("select status from vectorize.job").fetchone()["status"] == "active"
