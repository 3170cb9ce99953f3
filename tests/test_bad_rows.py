"""A row's failure is that row's: a huge row or a row the database rejects at write time is
parked with its error, and the rows around it are embedded as if it were not there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from vectorize.worker.batch import content_hash

from .helpers import MODEL, create_job, embedding_count, queue_depth, wait_until

#: The promise of docs/operations.md: a worker's resident memory, whatever one row holds.
RSS_BOUND_MB = 600


def stored_hash(conn: psycopg.Connection, job: str, key: str, pk: int) -> bytes | None:
    row = conn.execute(
        f'select content_hash from vectorize."_embeddings_{job}" where "{key}" = %s and chunk = 0', (pk,)
    ).fetchone()
    return None if row is None else bytes(row["content_hash"])


def peak_rss_mb(pid: int) -> float:
    """The process's resident-set high-water mark (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


def failure_of(conn: psycopg.Connection, pk: int) -> str | None:
    row = conn.execute("select last_error as error from vectorize.failure where pk = %s", (str(pk),)).fetchone()
    return None if row is None else row["error"]


async def insert_and_time(conn: psycopg.Connection, pk: int, text: str) -> float:
    """Seconds from committing a normal product to its embedding being committed."""
    started = time.monotonic()
    conn.execute(
        "insert into my_products (product_id, product_name, description, product_category, price)"
        " values (%s, 'Notebook', %s, 'stationery', 3)",
        (pk, text),
    )
    want = content_hash(f"product_name: Notebook description: {text}")
    await wait_until(lambda: stored_hash(conn, "my_job", "product_id", pk) == want, timeout=30, interval=0.01)
    return time.monotonic() - started


async def test_a_2_mb_row_is_parked_before_inference_and_the_next_rows_go_on(conn, products, db_url, tmp_path) -> None:
    create_job(conn)
    env = {**os.environ, "DATABASE_URL": db_url}
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen([sys.executable, "-m", "vectorize", "worker"], env=env, stdout=log, stderr=log)
    try:
        await wait_until(lambda: embedding_count(conn) == 40 and queue_depth(conn) == 0, timeout=120)
        huge = " ".join(f"entry{i:06d} of a pasted log dump" for i in range(64_000))
        assert len(huge) > 2_000_000
        conn.execute(
            "insert into my_products (product_id, product_name, description, product_category, price)"
            " values (1000, 'Huge', %s, 'logs', 1)",
            (huge,),
        )
        latencies = [await insert_and_time(conn, 1001 + k, f"A plain notebook, number {k}") for k in range(3)]
        await wait_until(lambda: failure_of(conn, 1000), timeout=30)
        error = failure_of(conn, 1000)
        status = conn.execute("select status, sync_state, failed_rows from vectorize.job_status").fetchone()
        rss = peak_rss_mb(worker.pid)
        print(f"\n2 MB row: next rows embedded in {max(latencies):.2f} s at most; worker peak RSS {rss:.0f} MB; parked: {error}")
        assert max(latencies) <= 2.0
        assert (
            error is not None
            and "VECTORIZE_MAX_ROW_CHARS" in error
            and f"{len(f'product_name: Huge description: {huge}'):,} characters" in error
        )
        assert status["status"] == "active" and status["sync_state"] == "live" and status["failed_rows"] == 1
        assert stored_hash(conn, "my_job", "product_id", 1000) is None
        assert rss <= RSS_BOUND_MB
        # Once shortened, the row is embedded and leaves the failures table.
        conn.execute("update my_products set description = left(description, 2000) where product_id = 1000")
        await wait_until(lambda: stored_hash(conn, "my_job", "product_id", 1000) is not None, timeout=30)
        await wait_until(lambda: failure_of(conn, 1000) is None, timeout=10)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(20)
        log.close()


async def test_a_row_rejected_at_write_time_is_found_and_parked_alone(conn, start_worker) -> None:
    """A text whose full-text vector exceeds PostgreSQL's 1 MB tsvector limit fails only when the
    batch is written; the batch is split until that row is found, the others commit."""
    conn.execute("create table notes (id int primary key, body text, updated_at timestamptz default now())")
    conn.execute("insert into notes select g, 'note number ' || g, now() from generate_series(1, 30) g")
    # Without chunking the model reads the first 256 tokens: inference is cheap, the write is not.
    conn.execute(
        "insert into vectorize.job (job_name, src_schema, src_table, src_columns, primary_key, update_time_col, model, chunking)"
        " values ('notes', 'public', 'notes', '{body}', 'id', 'updated_at', %s, false)",
        (MODEL,),
    )
    start_worker(max_row_chars=4_000_000, max_attempts=2, retry_backoff=0.2)
    await wait_until(lambda: embedding_count(conn, "notes") == 30 and queue_depth(conn) == 0, timeout=60)

    # ~1.3 MB of distinct words: its tsvector is about 2 MB.
    rejected = " ".join(f"q{i:07d}z" for i in range(130_000))
    with conn.transaction():  # one statement's rows are one batch: the bad row among good ones
        conn.execute(
            "insert into notes (id, body) select g, case when g = 105 then %s else 'fresh note ' || g end"
            " from generate_series(101, 110) g",
            (rejected,),
        )
    started = time.monotonic()
    good = [101, 102, 103, 104, 106, 107, 108, 109, 110]
    # Each split re-reads the 1.3 MB row but embeds nothing again (the vectors are kept), and only
    # the head of the row is tokenised: the others commit within 2 s, the bad row parks within 30 s.
    await wait_until(
        lambda: all(stored_hash(conn, "notes", "id", pk) == content_hash(f"body: fresh note {pk}") for pk in good), timeout=60
    )
    embedded_in = time.monotonic() - started
    await wait_until(lambda: failure_of(conn, 105), timeout=60)
    parked_in = time.monotonic() - started
    error = failure_of(conn, 105)
    print(f"\nrow rejected at write: 9 others embedded in {embedded_in:.2f} s, parked in {parked_in:.1f} s: {error[:120]}")
    assert error is not None and "tsvector" in error
    assert embedded_in < 2.0 and parked_in < 30.0
    assert stored_hash(conn, "notes", "id", 105) is None
    assert conn.execute("select status from vectorize.job where job_name = 'notes'").fetchone()["status"] == "active"
    await wait_until(lambda: queue_depth(conn) == 0, timeout=10)
