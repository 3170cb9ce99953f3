"""Keys are session-independent: a change made under another TimeZone, DateStyle, bytea_output or
extra_float_digits than the worker's is embedded like any other.

The capture trigger queues a key as text; before it pinned those settings, a writer in
Asia/Kolkata with DateStyle 'SQL, DMY' queued keys the worker parsed as other values (or none),
so the change was dropped as if its row were gone: nothing embedded, nothing parked."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from vectorize.worker.batch import content_hash

from .helpers import create_job, queue_depth, wait_until

#: Key type -> keys whose text form depends on the session's settings.
KEYS: dict[str, list[str]] = {
    "timestamptz": ["2026-01-01 10:00:00.123456+00", "2026-07-04 23:59:59+02", "1999-12-31 18:30:00-05"],
    "date": ["2026-03-04", "2026-12-01", "2001-02-11"],
    "bytea": ["\\x00ff10", "\\x5c5c", "\\x41424300"],
    "numeric": ["1.50", "-0.000001", "123456789012345678.123456789"],
    "float8": ["0.30000000000000004", "0.1", "3.141592653589793"],
}

#: A key no row has yet, from an existing key ``k``.
NEXT_KEY = {
    "timestamptz": "k + interval '1 day'",
    "date": "k + 1",
    "bytea": "k || '\\x01'::bytea",
    "numeric": "k + 1",
    "float8": "k + 1",
}

#: What a JDBC client in India, or a session with old-fashioned defaults, might set.
WRITER_SETTINGS = {
    "TimeZone": "Asia/Kolkata",
    "DateStyle": "SQL, DMY",
    "IntervalStyle": "sql_standard",
    "bytea_output": "escape",
    "extra_float_digits": "0",
}


def stored_hashes(conn: psycopg.Connection, table: str) -> dict[str, bytes]:
    """Each source row's body, mapped to the content hash stored for its first chunk (the source's key order)."""
    rows = conn.execute(
        sql.SQL(
            "select s.body, e.content_hash from {src} s left join vectorize.{emb} e on e.k = s.k and e.chunk = 0 order by s.k"
        ).format(src=sql.Identifier(table), emb=sql.Identifier(f"_embeddings_{table}"))
    ).fetchall()
    return {row["body"]: (None if row["content_hash"] is None else bytes(row["content_hash"])) for row in rows}


def all_current(conn: psycopg.Connection, table: str) -> bool:
    return all(stored == content_hash(f"body: {body}") for body, stored in stored_hashes(conn, table).items())


@pytest.mark.parametrize("key_type", sorted(KEYS))
async def test_changes_written_under_other_session_settings_are_embedded(conn, db_url, start_worker, key_type) -> None:
    table = f"keys_{key_type}"
    conn.execute(
        sql.SQL("create table {} (k {} primary key, body text, updated_at timestamptz not null default now())").format(
            sql.Identifier(table), sql.SQL(key_type)
        )
    )
    for number, key in enumerate(KEYS[key_type]):
        conn.execute(
            sql.SQL("insert into {} (k, body) values (%s::{}, %s)").format(sql.Identifier(table), sql.SQL(key_type)),
            (key, f"row {number} as first written"),
        )
    create_job(conn, job_name=table, src_table=table, src_columns=["body"], primary_key="k")
    start_worker()
    await wait_until(lambda: all_current(conn, table) and queue_depth(conn) == 0, timeout=60)

    options = " ".join(f"-c {name}={value.replace(' ', '')}" for name, value in WRITER_SETTINGS.items())
    with psycopg.connect(db_url, autocommit=True, options=options) as writer:
        assert writer.execute("show DateStyle").fetchone()[0] == "SQL, DMY"
        writer.execute(
            sql.SQL("update {} set body = body || ' then edited far away', updated_at = now()").format(sql.Identifier(table))
        )
        writer.execute(
            sql.SQL("insert into {} (k, body) select {}, 'added far away' from {} order by k limit 1").format(
                sql.Identifier(table), sql.SQL(NEXT_KEY[key_type]), sql.Identifier(table)
            )
        )

    await wait_until(lambda: all_current(conn, table) and queue_depth(conn) == 0, timeout=30)
    hashes = stored_hashes(conn, table)
    assert len(hashes) == len(KEYS[key_type]) + 1
    assert sum("edited far away" in body for body in hashes) == len(KEYS[key_type])
    assert conn.execute("select count(*) as n from vectorize.failure").fetchone()["n"] == 0
