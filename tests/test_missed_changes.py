"""Every way a row can change is caught or reconciled: writes aimed at a partition, partitions
attached and detached, writers that skip triggers (session_replication_role = replica, as a
logical-replication subscriber or pg_restore --disable-triggers do), deletes included."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.rows import dict_row

from vectorize.db.database import migrate, publish_models
from vectorize.worker.batch import content_hash

from .helpers import MODEL, create_job, queue_depth, scratch_database, wait_until


def hashes(conn: psycopg.Connection, job: str, key: str = "product_id") -> dict[int, bytes]:
    rows = conn.execute(f'select {key} as k, content_hash from vectorize."_embeddings_{job}" where chunk = 0').fetchall()
    return {row["k"]: bytes(row["content_hash"]) for row in rows}


def all_current(conn: psycopg.Connection, table: str, job: str) -> bool:
    """Every source row embedded with its current text, and no embedding without a source row."""
    source = {row["id"]: content_hash(f"body: {row['body']}") for row in conn.execute(f"select id, body from {table}").fetchall()}
    return hashes(conn, job, "id") == source


def docs(conn: psycopg.Connection, table: str = "docs") -> None:
    conn.execute(f"create table {table} (id int primary key, body text, updated_at timestamptz not null default now())")
    conn.execute(f"insert into {table} select g, 'document ' || g, now() from generate_series(1, 30) g")


async def test_writes_that_skip_triggers_are_reconciled_deletes_included(conn, db_url, start_worker) -> None:
    docs(conn)
    create_job(conn, job_name="docs", src_table="docs", src_columns=["body"], primary_key="id")
    start_worker(reconcile_interval=1.0, poll_interval=0.5)
    await wait_until(lambda: all_current(conn, "docs", "docs") and queue_depth(conn) == 0, timeout=60)
    with psycopg.connect(db_url, autocommit=True) as replica:
        replica.execute("set session_replication_role = replica")
        replica.execute("update docs set body = 'restored text', updated_at = now() where id = 1")
        replica.execute("insert into docs (id, body) values (100, 'restored row')")
        replica.execute("delete from docs where id in (2, 3)")
    assert queue_depth(conn) == 0, "a replica-role writer fires no ordinary trigger"
    await wait_until(lambda: all_current(conn, "docs", "docs"), timeout=30)
    assert 2 not in hashes(conn, "docs", "id") and hashes(conn, "docs", "id")[100] == content_hash("body: restored row")


async def test_a_subscriber_with_always_triggers_is_captured_at_once(conn, db_url, start_worker) -> None:
    """What the README tells logical-replication subscribers to run: ENABLE ALWAYS TRIGGER."""
    docs(conn)
    create_job(conn, job_name="docs", src_table="docs", src_columns=["body"], primary_key="id")
    start_worker(reconcile_interval=0.0)
    await wait_until(lambda: all_current(conn, "docs", "docs") and queue_depth(conn) == 0, timeout=60)
    for suffix in ("ins", "upd", "del", "trunc"):
        conn.execute(f"alter table docs enable always trigger vectorize_docs_{suffix}")
    with psycopg.connect(db_url, autocommit=True) as replica:
        replica.execute("set session_replication_role = replica")
        replica.execute("update docs set body = 'applied by the subscriber', updated_at = now() where id = 4")
        replica.execute("delete from docs where id = 5")
    await wait_until(lambda: all_current(conn, "docs", "docs"), timeout=10)


async def test_a_partitioned_source_writes_to_partitions_attach_and_detach(conn, start_worker) -> None:
    conn.execute(
        "create table parts (id int, body text, updated_at timestamptz not null default now(), primary key (id))"
        " partition by range (id)"
    )
    conn.execute("create table parts_low partition of parts for values from (0) to (100)")
    conn.execute("create table parts_high partition of parts for values from (100) to (200)")
    conn.execute("insert into parts select g, 'part row ' || g, now() from generate_series(1, 150) g")
    create_job(conn, job_name="parts", src_table="parts", src_columns=["body"], primary_key="id")
    start_worker(reconcile_interval=0.0, poll_interval=0.5)
    await wait_until(lambda: all_current(conn, "parts", "parts") and queue_depth(conn) == 0, timeout=60)

    # Writes aimed at a partition, not the parent: captured like any other.
    conn.execute("update parts_low set body = 'edited in its partition', updated_at = now() where id = 7")
    conn.execute("insert into parts_high (id, body) values (199, 'inserted into a partition')")
    conn.execute("delete from parts_high where id = 120")
    await wait_until(lambda: all_current(conn, "parts", "parts"), timeout=10)

    # A table with rows attached as a partition: its rows are embedded, its later writes captured.
    conn.execute("create table parts_more (like parts including defaults)")
    conn.execute("insert into parts_more select g, 'attached row ' || g, now() from generate_series(200, 219) g")
    conn.execute("alter table parts_more add primary key (id)")
    conn.execute("alter table parts attach partition parts_more for values from (200) to (300)")
    await wait_until(lambda: all_current(conn, "parts", "parts"), timeout=30)
    conn.execute("update parts_more set body = 'edited after attach', updated_at = now() where id = 205")
    await wait_until(lambda: all_current(conn, "parts", "parts"), timeout=10)

    # A detached partition's rows leave the job, and writes to it are no longer the job's.
    conn.execute("alter table parts detach partition parts_low")
    await wait_until(lambda: all_current(conn, "parts", "parts"), timeout=30)
    conn.execute("update parts_low set body = 'no longer part of the job' where id = 8")
    assert 8 not in hashes(conn, "parts", "id")
    assert conn.execute("select count(*) as n from vectorize.failure").fetchone()["n"] == 0


@pytest.fixture
def least_privilege_source(pg_admin_url: str, catalog):
    """A database where the daemon is ``vz_reader``, a plain role with SELECT and TRIGGER on
    ``docs``, and a job on it; yields (an owner's connection, the daemon's URL)."""
    with scratch_database(pg_admin_url, "grants_db", ("vz_reader",)) as owner_url:
        daemon_url = psycopg.conninfo.make_conninfo(owner_url, user="vz_reader")
        with psycopg.connect(owner_url, autocommit=True, row_factory=dict_row) as owner:
            owner.execute("create extension if not exists vector")
            owner.execute("create schema vectorize authorization vz_reader")
            docs(owner)
            owner.execute("grant select, trigger on docs to vz_reader")
            migrate(daemon_url)
            with psycopg.connect(daemon_url) as daemon:
                publish_models(daemon, catalog.local_models())
            with psycopg.connect(daemon_url, autocommit=True) as daemon:
                daemon.execute(
                    "select vectorize.create_job('docs', 'public', 'docs', '{body}', 'id', 'updated_at', %s)", (MODEL,)
                )
            yield owner, daemon_url


async def test_a_revoked_grant_pauses_the_job_and_a_restored_one_resumes_it(least_privilege_source, start_worker) -> None:
    """A transient permission error is not the end of a job: it waits, its queue kept, and
    catches up when the grant is back (it used to be failed for good, its queue deleted)."""
    owner, daemon_url = least_privilege_source
    start_worker(database_url=daemon_url, embedder_backoff=0.2, embedder_backoff_max=1.0)
    await wait_until(lambda: all_current(owner, "docs", "docs") and queue_depth(owner) == 0, timeout=60)
    owner.execute("revoke select on docs from vz_reader")
    owner.execute("update docs set body = 'edited while the grant was gone', updated_at = now() where id = 3")
    await wait_until(
        lambda: owner.execute("select sync_state from vectorize.job_status").fetchone()["sync_state"] == "waiting_for_source",
        timeout=20,
    )
    status = owner.execute("select status, waiting_reason, pending_live from vectorize.job_status").fetchone()
    assert status["status"] == "active" and "permission denied" in status["waiting_reason"] and status["pending_live"] == 1
    owner.execute("grant select on docs to vz_reader")
    await wait_until(lambda: all_current(owner, "docs", "docs") and queue_depth(owner) == 0, timeout=30)
    assert owner.execute("select sync_state from vectorize.job_status").fetchone()["sync_state"] == "live"
