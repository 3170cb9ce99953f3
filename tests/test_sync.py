"""Backfill and change capture end to end: real PostgreSQL, real model, in-process worker."""

from __future__ import annotations

import asyncio
import threading
import time

import psycopg
import pytest

from vectorize.core.scheduler import Lane

from .helpers import MODEL, create_job, embedding_count, queue_depth, stored_vector, vector_of, wait_until


async def test_sql_insert_job_backfills_every_row(conn, products, start_worker, catalog) -> None:
    create_job(conn)
    start_worker()
    await wait_until(lambda: embedding_count(conn) == 40 and queue_depth(conn) == 0)
    # The stored vector is the model's embedding of the contract's text format.
    expected = vector_of(catalog, "product_name: Pencil description: Utensil used for writing and often works best on paper")
    got = stored_vector(conn, 1)
    assert got is not None and float(got @ expected) > 0.9999
    # The view joins source rows to their embeddings.
    assert conn.execute("select count(*) as n from vectorize.my_job_view").fetchone()["n"] == 40
    job = conn.execute("select scan_active, backfilled_at from vectorize.job").fetchone()
    await wait_until(lambda: conn.execute("select backfilled_at from vectorize.job").fetchone()["backfilled_at"])
    assert job is not None


async def test_insert_update_delete_are_followed_within_a_second(conn, products, start_worker, catalog) -> None:
    create_job(conn)
    start_worker(poll_interval=60.0)  # only NOTIFY can wake it in time
    await wait_until(lambda: embedding_count(conn) == 40 and queue_depth(conn) == 0)

    started = time.monotonic()
    conn.execute(
        "insert into my_products (product_name, description, product_category, price) values ('Tent', 'Shelter for camping', 'outdoor', 120)"
    )
    await wait_until(lambda: embedding_count(conn) == 41, timeout=1.0)
    inserted_ms = (time.monotonic() - started) * 1000

    started = time.monotonic()
    conn.execute("update my_products set description = 'A pointy writing stick' where product_id = 1")
    want = vector_of(catalog, "product_name: Pencil description: A pointy writing stick")
    await wait_until(lambda: float(stored_vector(conn, 1) @ want) > 0.9999, timeout=1.0)

    conn.execute("update my_products set description = null where product_id = 2")
    want_null = vector_of(catalog, "product_name: Laptop Stand description: ")
    await wait_until(lambda: float(stored_vector(conn, 2) @ want_null) > 0.9999, timeout=1.0)
    updated_ms = (time.monotonic() - started) * 1000

    # Deletes remove the embedding in the user's own transaction.
    conn.execute("delete from my_products where product_id = 3")
    assert stored_vector(conn, 3) is None
    assert inserted_ms < 1000 and updated_ms < 2000


async def test_update_of_non_source_column_queues_and_embeds_nothing(conn, products, start_worker) -> None:
    create_job(conn)
    handle = start_worker()
    await wait_until(lambda: embedding_count(conn) == 40 and queue_depth(conn) == 0)
    inferences = handle.worker.inferences
    conn.execute("update my_products set price = price + 1")
    assert queue_depth(conn) == 0
    # Same text written again (a no-op update of a source column) queues nothing either.
    conn.execute("update my_products set product_name = product_name where product_id = 5")
    assert queue_depth(conn) == 0
    assert handle.worker.inferences == inferences


async def test_unchanged_text_is_not_re_embedded(conn, products, start_worker) -> None:
    create_job(conn)
    handle = start_worker()
    await wait_until(lambda: embedding_count(conn) == 40 and queue_depth(conn) == 0)
    before = handle.worker.inferences
    # A change and its revert: two queued changes, but the row's text ends as stored.
    with conn.transaction():
        conn.execute("update my_products set description = 'temporary' where product_id = 7")
    with conn.transaction():
        conn.execute(
            "update my_products set description = 'Container for holding plants, often with drainage' where product_id = 8"
        )
    await wait_until(lambda: queue_depth(conn) == 0)
    # Row 8's text equals what was stored, so only row 7 was embedded.
    assert handle.worker.inferences - before == 1
    # A reconciliation pass over all rows re-embeds nothing either.
    conn.execute("update vectorize.job set scan_active = true, scan_cursor = null")
    conn.execute("update my_products set updated_at = now() + interval '1 hour'")
    conn.execute("select pg_notify('vectorize', 'rescan')")
    await wait_until(
        lambda: not conn.execute("select scan_active from vectorize.job").fetchone()["scan_active"] and queue_depth(conn) == 0
    )
    assert handle.worker.inferences - before == 1


async def test_identical_texts_in_a_batch_are_embedded_once(conn, start_worker) -> None:
    conn.execute("create table dup (id int primary key, body text, updated_at timestamptz default now())")
    conn.execute("insert into dup select g, 'same words', now() from generate_series(1, 50) g")
    create_job(conn, job_name="dup", src_table="dup", src_columns=["body"], primary_key="id")
    handle = start_worker()
    await wait_until(lambda: embedding_count(conn, "dup") == 50 and queue_depth(conn) == 0)
    assert handle.worker.inferences == 1


async def test_backfill_of_thousands_of_rows_in_pages(conn, start_worker) -> None:
    conn.execute("create table items (id bigint primary key, title text, updated_at timestamptz default now())")
    conn.execute("insert into items select g, 'item number ' || g, now() from generate_series(1, 3000) g")
    started = time.monotonic()
    create_job(conn, job_name="items", src_table="items", src_columns=["title"], primary_key="id")
    # Creating the job scanned nothing: the queue is empty until the worker pages through.
    assert queue_depth(conn) == 0
    assert time.monotonic() - started < 1.0
    start_worker(batch_size=64, backfill_batch_size=64)
    max_queue = 0

    def done() -> bool:
        nonlocal max_queue
        max_queue = max(max_queue, queue_depth(conn))
        return embedding_count(conn, "items") == 3000 and queue_depth(conn) == 0

    await wait_until(done, timeout=180)
    # The scan queues a page at a time, not the whole table.
    assert max_queue <= 256


async def test_two_jobs_on_one_table(conn, products, start_worker) -> None:
    create_job(conn)
    create_job(conn, job_name="names_only", src_columns=["product_name"])
    start_worker()
    await wait_until(lambda: embedding_count(conn) == 40 and embedding_count(conn, "names_only") == 40 and queue_depth(conn) == 0)
    a, b = stored_vector(conn, 1), stored_vector(conn, 1, "names_only")
    assert a is not None and b is not None and float(a @ b) < 0.99  # different texts, different vectors
    conn.execute("delete from vectorize.job where job_name = 'names_only'")
    conn.execute("update my_products set product_name = 'Crayon' where product_id = 1")
    await wait_until(lambda: queue_depth(conn) == 0)
    assert conn.execute("select to_regclass('vectorize._embeddings_names_only') as r").fetchone()["r"] is None


async def test_quoted_mixed_case_identifiers(conn, start_worker, catalog) -> None:
    conn.execute('create schema "Sales"')
    conn.execute(
        'create table "Sales"."Order Items" ("Item Id" text primary key, "Description" text, "select" text, "Updated" timestamptz default now())'
    )
    conn.execute(
        """insert into "Sales"."Order Items" values ('a-1', 'Red shoes', 'x', now()), ('b''2', 'Blue hat', null, now())"""
    )
    create_job(
        conn,
        job_name="Orders",
        src_schema="Sales",
        src_table="Order Items",
        src_columns=["Description", "select"],
        primary_key="Item Id",
        update_time_col="Updated",
    )
    create_job(
        conn,
        job_name="orders",
        src_schema="Sales",
        src_table="Order Items",
        src_columns=["Description"],
        primary_key="Item Id",
        update_time_col="Updated",
    )
    start_worker()
    await wait_until(
        lambda: embedding_count(conn, "Orders") == 2 and embedding_count(conn, "orders") == 2 and queue_depth(conn) == 0
    )
    want = vector_of(catalog, "Description: Blue hat select: ")
    assert float(stored_vector(conn, "b'2", "Orders", "Item Id") @ want) > 0.9999
    conn.execute("""update "Sales"."Order Items" set "Description" = 'Green hat' where "Item Id" = 'b''2'""")
    want = vector_of(catalog, "Description: Green hat")
    await wait_until(lambda: float(stored_vector(conn, "b'2", "orders", "Item Id") @ want) > 0.9999)


async def test_truncate_empties_the_embeddings(conn, products, start_worker) -> None:
    create_job(conn)
    start_worker()
    await wait_until(lambda: embedding_count(conn) == 40 and queue_depth(conn) == 0)
    conn.execute("truncate my_products")
    assert embedding_count(conn) == 0


async def test_newest_wins_when_an_older_version_arrives_late(conn, products, start_worker, catalog) -> None:
    """apply_batch refuses to overwrite a newer version with an older one."""
    create_job(conn)
    start_worker()
    await wait_until(lambda: embedding_count(conn) == 40 and queue_depth(conn) == 0)
    version = conn.execute("select version from vectorize._embeddings_my_job where product_id = 1").fetchone()["version"]
    stale = vector_of(catalog, "something else entirely")
    with conn.transaction():
        conn.execute(
            "create temp table if not exists vectorize_staging_chunks (pk text not null, chunk int not null,"
            " embedding vector, content text, content_hash bytea, chunk_start int, chunk_end int, chunks int not null,"
            " source_updated_at timestamptz, version bigint not null)"
        )
        conn.execute(
            "insert into vectorize_staging_chunks values ('1', 0, %s::vector, 'x', '\\x00', 0, 1, 1, now(), %s)",
            (str(stale.tolist()), version - 1),
        )
        conn.execute("select vectorize.apply_batch(id, generation, '{}') from vectorize.job")
    assert float(stored_vector(conn, 1) @ stale) < 0.9


async def test_claimed_items_survive_a_rolled_back_batch(conn, products, catalog, settings) -> None:
    """A batch that dies before commit leaves its queue items for the next worker."""
    from vectorize.worker.loop import Worker

    create_job(conn)
    conn.execute("update vectorize.job set scan_active = false")
    conn.execute("insert into vectorize.queue (job_id, pk) select id, '1' from vectorize.job")
    worker = Worker(settings, catalog)
    await worker.pool.open()
    try:
        encoder = catalog.get(MODEL)

        def boom(text: str) -> None:
            raise psycopg.OperationalError("simulated crash mid-batch")

        encoder.failure_hook = boom
        try:
            with pytest.raises(psycopg.OperationalError):
                await worker.process_batch(await _job(worker), Lane.LIVE, 64)
        finally:
            encoder.failure_hook = None
        assert queue_depth(conn) == 1 and embedding_count(conn) == 0
        await worker.drain()
        assert queue_depth(conn) == 0 and embedding_count(conn) == 1
    finally:
        await worker.pool.close()


async def _job(worker):
    (job,) = await worker.store.jobs_with_work()
    return job


async def test_worker_picks_up_a_job_created_while_running(conn, products, start_worker) -> None:
    start_worker(poll_interval=60.0)
    await asyncio.sleep(0)  # let it start listening
    await wait_until(
        lambda: conn.execute("select count(*) as n from pg_stat_activity where query ilike 'listen%%'").fetchone()["n"] > 0
    )
    create_job(conn)
    await wait_until(lambda: embedding_count(conn) == 40, timeout=15)


async def test_two_batches_are_in_flight_so_writes_overlap_inference(conn, products, start_worker, catalog) -> None:
    encoder = catalog.get(MODEL)
    release = threading.Event()
    holding = 0
    lock = threading.Lock()

    def hold(text: str) -> None:  # the first text of every embed call waits until released
        nonlocal holding
        if release.is_set():
            return
        with lock:
            holding += 1
        release.wait(20)

    encoder.failure_hook = hold
    try:
        create_job(conn)
        start_worker(batch_size=8, backfill_batch_size=8)
        # Two batches of the backfill are claimed and inside the encoder at the same time.
        await wait_until(lambda: holding >= 2)
        assert queue_depth(conn) >= 16
    finally:
        release.set()
        encoder.failure_hook = None
    await wait_until(lambda: embedding_count(conn) == 40 and queue_depth(conn) == 0)
