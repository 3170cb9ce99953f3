"""No stale embedding after any interleaving: an UPDATE held open across a backfill pass, a
reconciliation pass or a redefinition build (and its switch), then committed, ends embedded.

Each pass queues the row again while the UPDATE's own queue item is still invisible (uncommitted,
with a lower id); the pass's batch reads the old text. When versions were queue ids, the UPDATE's
item was then skipped as older and its text never embedded, in any generation."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest

from vectorize.worker.batch import content_hash

from .helpers import create_job, queue_depth, wait_until

LATE_TEXT = "committed after the pass"


def hashes_of_row(conn: psycopg.Connection, pk: int) -> list[bytes | None]:
    """Row ``pk``'s first-chunk content hash in every generation the job has (serving and kept)."""
    tables = [
        row["name"]
        for row in conn.execute(
            "select vectorize._embeddings_table(job_name, generation) as name from vectorize.job where job_name = 'docs'"
            " union all select vectorize._embeddings_table('docs', generation) from vectorize.generation"
        ).fetchall()
    ]
    hashes = []
    for table in tables:
        row = conn.execute(f"select content_hash from {table} where id = %s and chunk = 0", (pk,)).fetchone()
        hashes.append(None if row is None else bytes(row["content_hash"]))
    return hashes


def docs_table(conn: psycopg.Connection) -> None:
    conn.execute("create table docs (id int primary key, body text, updated_at timestamptz not null default now())")
    conn.execute("insert into docs select g, 'document number ' || g, now() from generate_series(1, 400) g")


async def synced_job(conn: psycopg.Connection, start_worker: Callable[..., object]) -> None:
    create_job(conn, job_name="docs", src_table="docs", src_columns=["body"], primary_key="id")
    start_worker(poll_interval=0.5)
    await wait_until(lambda: all(hashes_of_row(conn, 400)) and queue_depth(conn) == 0, timeout=120)


def generation_of(conn: psycopg.Connection) -> int:
    return conn.execute("select generation from vectorize.job where job_name = 'docs'").fetchone()["generation"]


@pytest.mark.parametrize("pass_kind", ["backfill", "reconciliation", "redefinition"])
async def test_an_update_committed_after_a_pass_is_embedded_in_every_generation(conn, db_url, start_worker, pass_kind) -> None:
    docs_table(conn)
    if pass_kind == "backfill":
        create_job(conn, job_name="docs", src_table="docs", src_columns=["body"], primary_key="id")
    elif pass_kind == "reconciliation":
        await synced_job(conn, start_worker)
        # A change the triggers never saw (a restore or replication apply): only a pass finds it.
        with psycopg.connect(db_url, autocommit=True) as replica:
            replica.execute("set session_replication_role = replica")
            replica.execute("update docs set body = 'changed behind the triggers', updated_at = now() where id = 5")
    else:
        await synced_job(conn, start_worker)

    with psycopg.connect(db_url) as writer:  # a transaction, held open across the pass
        writer.execute("update docs set body = %s, updated_at = now() where id = 5", (LATE_TEXT,))
        if pass_kind == "backfill":
            start_worker(poll_interval=0.5)
            await wait_until(lambda: sum(h is not None for h in hashes_of_row(conn, 400)) == 1, timeout=120)
            await wait_until(lambda: hashes_of_row(conn, 5)[0] is not None, timeout=60)
        elif pass_kind == "reconciliation":
            start_worker(poll_interval=0.5)  # a worker's start-up pass: row 5 is stale, so it is queued
            stale = content_hash("body: changed behind the triggers")
            await wait_until(lambda: hashes_of_row(conn, 5) == [stale], timeout=60)
        else:
            conn.execute("update vectorize.job set chunk_tokens = 128 where job_name = 'docs'")
            await wait_until(lambda: generation_of(conn) == 2, timeout=120)
            assert len(hashes_of_row(conn, 5)) == 2
        assert content_hash(f"body: {LATE_TEXT}") not in hashes_of_row(conn, 5)
        writer.commit()

    want = content_hash(f"body: {LATE_TEXT}")
    await wait_until(lambda: queue_depth(conn) == 0 and all(h == want for h in hashes_of_row(conn, 5)), timeout=30)
    assert conn.execute("select count(*) as n from vectorize.failure").fetchone()["n"] == 0
