"""DESIGN.md's guarantees that the sync tests do not already pin down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import psycopg
import pytest
from psycopg import sql

from vectorize.db.database import PgvectorMissing, migrate

from .helpers import MY_JOB, create_job, embedding_count, queue_depth, stored_vector, vector_of, wait_until

MODEL = MY_JOB["model"]


async def test_writers_never_wait_for_a_batch_in_flight(conn, products, start_worker, catalog) -> None:
    create_job(conn)
    start_worker()
    await wait_until(lambda: embedding_count(conn) == 40 and queue_depth(conn) == 0)
    encoder = catalog.get(MODEL)
    in_batch, release = threading.Event(), threading.Event()

    def hold(text: str) -> None:  # runs in the inference thread, inside the worker's transaction
        in_batch.set()
        release.wait(20)

    encoder.failure_hook = hold
    try:
        conn.execute("update my_products set description = description || ' (v2)'")
        await wait_until(in_batch.is_set)
        # The worker now holds its claimed queue items and an open transaction.
        # The same rows can be updated, again and again, without waiting.
        with conn.transaction():
            conn.execute("set local lock_timeout = '200ms'")
            conn.execute("update my_products set description = description || ' (v3)'")
            conn.execute("insert into my_products (product_name, product_category, price) values ('Kite', 'toys', 9)")
        assert queue_depth(conn) >= 81
    finally:
        release.set()
        encoder.failure_hook = None
    want = vector_of(
        catalog, "product_name: Pencil description: Utensil used for writing and often works best on paper (v2) (v3)"
    )
    await wait_until(lambda: queue_depth(conn) == 0 and float(stored_vector(conn, 1) @ want) > 0.9999, timeout=60)


async def test_reconciliation_repairs_changes_made_without_triggers(conn, products, start_worker, catalog) -> None:
    create_job(conn)
    first = start_worker()
    await wait_until(lambda: embedding_count(conn) == 40 and queue_depth(conn) == 0)
    await first.shutdown()
    # Changes the capture triggers never saw (as if made while they were absent).
    conn.execute("alter table my_products disable trigger user")
    conn.execute("update my_products set description = 'Gear for camping trips', updated_at = now() where product_id = 4")
    conn.execute("alter table my_products enable trigger user")
    assert queue_depth(conn) == 0
    handle = start_worker()
    want = vector_of(catalog, "product_name: Bluetooth Speaker description: Gear for camping trips")
    await wait_until(lambda: float(stored_vector(conn, 4) @ want) > 0.9999, timeout=30)
    await wait_until(lambda: not conn.execute("select scan_active from vectorize.job").fetchone()["scan_active"])
    # Only the changed row was embedded again.
    assert handle.worker.inferences == 1


async def test_notifications_alone_wake_the_worker(conn, products, start_worker) -> None:
    create_job(conn)
    start_worker(poll_interval=3600.0)
    await wait_until(lambda: embedding_count(conn) == 40 and queue_depth(conn) == 0, timeout=30)
    for i in range(5):
        conn.execute("update my_products set description = %s where product_id = 9", (f"edition {i}",))
        await wait_until(lambda: queue_depth(conn) == 0, timeout=1.0)


def test_missing_pgvector_privilege_is_explained(pg_admin_url: str) -> None:
    """A role that may not enable pgvector is told what to run, and nothing is created."""
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute("drop database if exists no_vector")
        admin.execute("drop role if exists plain_user")
        admin.execute("create role plain_user login")
        admin.execute("create database no_vector owner plain_user")
    url = psycopg.conninfo.make_conninfo(pg_admin_url, dbname="no_vector", user="plain_user")
    with pytest.raises(PgvectorMissing, match="CREATE EXTENSION vector"):
        migrate(url)
    with psycopg.connect(url) as conn:
        assert conn.execute("select to_regnamespace('vectorize')").fetchone()[0] is None
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("drop database no_vector"))


async def test_many_jobs_do_not_starve_each_other(conn, start_worker) -> None:
    for i in range(3):
        conn.execute(
            sql.SQL("create table {} (id int primary key, body text, updated_at timestamptz default now())").format(
                sql.Identifier(f"t{i}")
            )
        )
        conn.execute(
            sql.SQL("insert into {} select g, 'row ' || g || ' of table {}', now() from generate_series(1, 200) g").format(
                sql.Identifier(f"t{i}"), sql.SQL(str(i))
            )
        )
        create_job(conn, job_name=f"j{i}", src_table=f"t{i}", src_columns=["body"], primary_key="id")
    start_worker()
    await wait_until(lambda: all(embedding_count(conn, f"j{i}") == 200 for i in range(3)), timeout=120)


@pytest.mark.slow
def test_kill_9_mid_backfill_loses_nothing(db_url: str, catalog) -> None:
    """SIGKILL a worker process during the backfill and during updates; after a restart every
    row has exactly one embedding, equal to the model's embedding of its current text."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("create table docs (id int primary key, body text, updated_at timestamptz default now())")
        conn.execute(
            "insert into docs select g, 'document ' || g || ' about topic ' || (g % 17), now() from generate_series(1, 1500) g"
        )
        create_job(conn, job_name="docs", src_table="docs", src_columns=["body"], primary_key="id")
        env = {**os.environ, "DATABASE_URL": db_url, "VECTORIZE_BATCH_SIZE": "32"}
        count = "select count(*) from vectorize._embeddings_docs"
        for round_ in range(3):
            proc = subprocess.Popen(
                [sys.executable, "-m", "vectorize", "worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            start = conn.execute(count).fetchone()[0]
            deadline = time.monotonic() + 120
            while conn.execute(count).fetchone()[0] < start + 100 + round_ * 50 and time.monotonic() < deadline:
                time.sleep(0.05)
            conn.execute("update docs set body = body || ' r' || %s where id %% 7 = %s", (round_, round_))
            time.sleep(0.01 * round_)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        proc = subprocess.Popen(
            [sys.executable, "-m", "vectorize", "worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                done = (
                    conn.execute(count).fetchone()[0] == 1500
                    and conn.execute("select count(*) from vectorize.queue").fetchone()[0] == 0
                )
                if done:
                    break
                time.sleep(0.1)
            assert done, "worker did not settle"
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
        from pgvector.psycopg import register_vector

        register_vector(conn)
        rows = conn.execute(
            "select d.body, e.embedding from docs d join vectorize._embeddings_docs e using (id) order by id"
        ).fetchall()
    assert len(rows) == 1500
    want = catalog.get(MODEL).embed(["body: " + body for body, _ in rows])
    got = np.stack([e.to_numpy() for _, e in rows])
    cosine = (want * got).sum(axis=1)
    assert cosine.min() > 0.9999
