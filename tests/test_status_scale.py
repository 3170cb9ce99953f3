"""Job status stays cheap at scale: counts come from maintained tallies and planner estimates,
never from reading the tables per request."""

from __future__ import annotations

import statistics
import time

import pytest

from .helpers import create_job, wait_for

ROWS = 1_000_000


def _fill_embeddings(conn, job: str, rows: int) -> None:
    """A job of ``rows`` embedded rows without embedding them: the rows are written straight into
    its table (through the counting triggers, as a worker's COPY would be). The search indexes are
    dropped first: building an HNSW graph of a million vectors is not what this test measures."""
    table = f'vectorize."_embeddings_{job}"'
    conn.execute(f'drop index vectorize."_embeddings_{job}_hnsw", vectorize."_embeddings_{job}_fts"')
    vector = "[" + ",".join(["0.05"] * 384) + "]"
    step = 250_000
    for start in range(1, rows + 1, step):
        conn.execute(
            f"insert into {table} (id, embedding, content_hash, source_updated_at, version)"
            " select i, %s::vector, '\\x00', now(), 1 from generate_series(%s::bigint, %s::bigint) i",
            (vector, start, min(start + step - 1, rows)),
        )


@pytest.mark.slow
async def test_status_of_a_million_row_job_answers_in_under_100_ms(api, conn) -> None:
    conn.execute("create table big (id bigint primary key, body text not null, updated_at timestamptz not null default now())")
    conn.execute("insert into big (id, body) select i, 'row ' || i from generate_series(1, %s) i", (ROWS,))
    create_job(conn, job_name="big", src_table="big", src_columns=["body"], primary_key="id")
    _fill_embeddings(conn, "big", ROWS)
    conn.execute("analyze big")  # what autovacuum does after a bulk load

    # The tally counts every row exactly; the source's size is the planner's estimate.
    job = await (await api.get("/api/v1/table/big")).json()
    assert job["embedded_rows"] == ROWS
    assert job["source_rows_estimated"] is True and abs(job["source_rows"] - ROWS) < ROWS * 0.05
    assert job["generations"][0]["embedded_rows"] == ROWS

    timings = {}
    for path in ("/api/v1/table", "/api/v1/table/big"):
        seconds = []
        for _ in range(5):
            started = time.perf_counter()
            response = await api.get(path)
            assert response.status == 200
            await response.read()
            seconds.append(time.perf_counter() - started)
        timings[path] = statistics.median(seconds)
    print(f"status of a {ROWS}-row job, median of 5: " + ", ".join(f"{p} {s * 1000:.1f} ms" for p, s in timings.items()))
    assert all(s < 0.1 for s in timings.values()), timings


def test_counts_follow_inserts_updates_deletes_and_compaction(conn) -> None:
    """The tally agrees with a real count through every kind of write, and after it is folded."""
    conn.execute("create table t (id int primary key, body text, updated_at timestamptz not null default now())")
    create_job(conn, job_name="t", src_table="t", src_columns=["body"], primary_key="id")
    table = 'vectorize."_embeddings_t"'
    vector = "[" + ",".join(["0.05"] * 384) + "]"
    conn.execute(
        f"insert into {table} (id, chunk, embedding, content_hash, source_updated_at, version)"
        " select i, c, %s::vector, '\\x00', now(), 1 from generate_series(1, 50) i, generate_series(0, 2) c",
        (vector,),
    )
    conn.execute(f"update {table} set source_updated_at = '-infinity' where id <= 10 and chunk = 0")
    conn.execute(f"delete from {table} where id > 45")
    conn.execute(f"delete from {table} where id = 44 and chunk = 2")  # a chunk, not a row

    def tally() -> dict:
        return conn.execute(f"select row_count, checked_rows from vectorize._tally('{table}'::regclass)").fetchone()

    assert tally() == {"row_count": 45, "checked_rows": 35}
    conn.execute("update vectorize.row_tally set at = at - interval '5 minutes'")
    before = conn.execute("select count(*) as n from vectorize.row_tally").fetchone()["n"]
    conn.execute("select vectorize.compact_tallies()")
    after = conn.execute("select count(*) as n from vectorize.row_tally").fetchone()["n"]
    assert before > 1 and after == 1 and tally() == {"row_count": 45, "checked_rows": 35}
    status = wait_for(lambda: conn.execute("select embedded_rows from vectorize.job_status where job_name = 't'").fetchone())
    assert status["embedded_rows"] == 45
