"""Long documents: every word of a row is searchable. Real manual pages, the real model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psycopg
import pytest
from tokenizers import Tokenizer

from vectorize.core.chunking import split_texts
from vectorize.embedding.catalog import DEFAULT_MODEL
from vectorize.embedding.encoder import TokenCounter
from vectorize.paths import MODELS_DIR
from vectorize.worker.batch import content_hash

from .helpers import create_job, deep_sentence, embedding_count, load_manpages, manpages, queue_depth, wait_for, wait_until

pytestmark = pytest.mark.slow

WINDOW = 256


def chunks_of(conn: psycopg.Connection, job: str, pk: int) -> list[dict]:
    return conn.execute(
        f'select chunk, chunk_start, chunk_end, content_hash from vectorize."_embeddings_{job}" where id = %s order by chunk',
        (pk,),
    ).fetchall()


async def test_deep_sentences_of_long_documents_are_found(conn, start_worker, api) -> None:
    pages = manpages()
    load_manpages(conn, pages)
    create_job(conn, job_name="pages", src_table="pages", src_columns=["name", "body"], primary_key="id")
    start_worker()
    await wait_until(
        lambda: (
            queue_depth(conn) == 0
            and conn.execute("select backfilled_at is not null as done from vectorize.job").fetchone()["done"]
        ),
        timeout=600,
        interval=0.5,
    )
    assert conn.execute("select count(distinct id) as n from vectorize._embeddings_pages").fetchone()["n"] == len(pages)

    # Every chunk fits the model's window as its own tokenizer counts (specials included).
    tokenizer = Tokenizer.from_file(str(MODELS_DIR / "all-MiniLM-L6-v2" / "tokenizer.json"))
    tokenizer.no_truncation()
    rows = conn.execute(
        "select e.chunk_start, e.chunk_end, concat_ws(' ', 'name: ' || p.name, 'body: ' || p.body) as text"
        " from vectorize._embeddings_pages e join pages p using (id) where p.id <= 10"
    ).fetchall()
    assert max(len(tokenizer.encode(r["text"][r["chunk_start"] : r["chunk_end"]]).ids) for r in rows) <= WINDOW

    first = top10 = 0
    for number, page in enumerate(pages, start=1):
        query = deep_sentence(page["text"], tokenizer.encode(page["text"], add_special_tokens=False).offsets)
        response = await api.get("/api/v1/search", params={"job_name": "pages", "query": query, "fts_wt": "0", "limit": "10"})
        results = await response.json()
        ids = [r["id"] for r in results]
        first += ids[:1] == [number]
        top10 += number in ids
        if ids[:1] == [number]:
            # The answer carries the passage that matched, cut from the row's text.
            chunk = results[0]["chunk"]
            text = f"name: {page['name']} body: {page['text']}"
            assert chunk["text"] == text[chunk["start"] : chunk["end"]]
    print(f"\ndeep-sentence retrieval over {len(pages)} manual pages: first {first}/{len(pages)}, top 10 {top10}/{len(pages)}")
    assert first / len(pages) >= 0.80 and top10 / len(pages) >= 0.90


async def test_short_rows_are_one_chunk_with_the_unchunked_embedding(conn, products, start_worker, catalog) -> None:
    create_job(conn)
    start_worker()
    await wait_until(lambda: embedding_count(conn) == 40 and queue_depth(conn) == 0)
    assert conn.execute("select max(chunk) as n from vectorize._embeddings_my_job").fetchone()["n"] == 0
    row = conn.execute(
        "select e.embedding, e.chunk_start, e.chunk_end from vectorize._embeddings_my_job e where product_id = 1"
    ).fetchone()
    text = "product_name: Pencil description: Utensil used for writing and often works best on paper"
    assert (row["chunk_start"], row["chunk_end"]) == (0, len(text))
    want = catalog.get(DEFAULT_MODEL).embed([text])[0]
    assert float(row["embedding"].to_numpy() @ want) > 0.999999


async def test_appending_a_paragraph_re_embeds_at_most_two_chunks(conn, start_worker) -> None:
    page = manpages(1)[0]
    load_manpages(conn, [page])
    create_job(conn, job_name="pages", src_table="pages", src_columns=["body"], primary_key="id")
    handle = start_worker()
    await wait_until(lambda: queue_depth(conn) == 0 and embedding_count(conn, "pages") > 1, timeout=60)
    before = chunks_of(conn, "pages", 1)
    inferences = handle.worker.inferences
    conn.execute("update pages set body = body || E'\\n\\nA paragraph added at the end, about nothing in particular.'")
    await wait_until(lambda: queue_depth(conn) == 0 and chunks_of(conn, "pages", 1) != before, timeout=30)
    after = chunks_of(conn, "pages", 1)
    print(f"\nappending a paragraph to a {len(before)}-chunk page re-embedded {handle.worker.inferences - inferences} chunks")
    assert handle.worker.inferences - inferences <= 2
    assert [c["content_hash"] for c in after[:-2]] == [c["content_hash"] for c in before[: len(after) - 2]]
    text = conn.execute("select body from pages").fetchone()["body"]
    assert [c["chunk"] for c in after] == list(range(len(after))) and after[-1]["chunk_end"] == len("body: " + text)


async def test_deletes_and_truncates_remove_every_chunk(conn, start_worker) -> None:
    load_manpages(conn, manpages(3))
    create_job(conn, job_name="pages", src_table="pages", src_columns=["body"], primary_key="id")
    start_worker()
    await wait_until(lambda: queue_depth(conn) == 0 and embedding_count(conn, "pages") > 30, timeout=60)
    conn.execute("delete from pages where id = 1")
    assert chunks_of(conn, "pages", 1) == []  # in the user's own transaction
    assert chunks_of(conn, "pages", 2)
    conn.execute("truncate pages")
    assert embedding_count(conn, "pages") == 0


async def test_chunking_options_are_validated_and_can_be_turned_off(conn, api, start_worker) -> None:
    load_manpages(conn, manpages(2))
    body = {
        "job_name": "pages",
        "src_schema": "public",
        "src_table": "pages",
        "src_columns": ["body"],
        "primary_key": "id",
        "update_time_col": "updated_at",
        "model": DEFAULT_MODEL,
    }
    for extra, fragment in (
        ({"chunk_tokens": 1000}, "chunk_tokens 1000 is out of range: use 16 to 256"),
        ({"chunk_tokens": 8}, "chunk_tokens 8 is out of range"),
        ({"chunk_overlap": 200}, "chunk_overlap 200 is out of range: use 0 to 128"),
        ({"chunk_tokens": 64, "chunk_overlap": 40}, "use 0 to 32"),
        ({"chunking": "yes"}, "chunking must be true or false"),
        ({"chunk_tokens": 1.5}, "chunk_tokens must be an integer or null"),
    ):
        response = await api.post("/api/v1/table", json={**body, **extra})
        assert response.status == 400 and fragment in (await response.json())["error"], extra
    with pytest.raises(psycopg.Error, match="chunk_overlap -1 is out of range"):
        conn.execute(
            "insert into vectorize.job (job_name, src_table, src_schema, src_columns, primary_key, update_time_col, model,"
            " chunk_overlap) values ('pages', 'pages', 'public', '{body}', 'id', 'updated_at', %s, -1)",
            (DEFAULT_MODEL,),
        )
    assert conn.execute("select count(*) as n from vectorize.job").fetchone()["n"] == 0
    truncating = await api.post("/api/v1/table", json={**body, "chunking": False})
    assert truncating.status == 200
    small = await api.post("/api/v1/table", json={**body, "job_name": "small_chunks", "chunk_tokens": 64, "chunk_overlap": 8})
    assert small.status == 200
    start_worker()
    await wait_until(lambda: queue_depth(conn) == 0 and embedding_count(conn, "small_chunks") > 0, timeout=60)
    await wait_until(lambda: embedding_count(conn, "pages") == 2 and queue_depth(conn) == 0, timeout=60)
    assert conn.execute("select max(chunk) as n from vectorize._embeddings_pages").fetchone()["n"] == 0
    # 64-token chunks: about four times as many as 256-token ones would be.
    assert embedding_count(conn, "small_chunks") > 3 * (len(manpages(1)[0]["text"]) // 1000)


def test_kill_9_during_a_chunked_backfill_leaves_no_duplicate_or_orphan_chunk(db_url: str) -> None:
    pages = manpages(24)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.row_factory = psycopg.rows.dict_row
        load_manpages(conn, pages)
        create_job(conn, job_name="pages", src_table="pages", src_columns=["body"], primary_key="id")
    env = {**os.environ, "DATABASE_URL": db_url, "VECTORIZE_BACKFILL_BATCH_SIZE": "64"}
    for _ in range(2):
        worker = subprocess.Popen([sys.executable, "-m", "vectorize", "worker"], env=env, stdout=subprocess.DEVNULL)
        with psycopg.connect(db_url, autocommit=True) as conn:
            start = conn.execute("select count(*) from vectorize._embeddings_pages").fetchone()[0]
            wait_for(
                lambda conn=conn, start=start: (
                    conn.execute("select count(*) from vectorize._embeddings_pages").fetchone()[0] > start
                ),
                120,
            )
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        # An edit while no worker runs: its chunks must end up replacing the old ones.
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("update pages set body = left(body, length(body) / 2), updated_at = now() where id = 1")
    worker = subprocess.Popen([sys.executable, "-m", "vectorize", "worker"], env=env, stdout=subprocess.DEVNULL)
    try:
        with psycopg.connect(db_url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
            wait_for(
                lambda: (
                    conn.execute("select count(*) as n from vectorize.queue").fetchone()["n"] == 0
                    and conn.execute("select backfilled_at is not null as done from vectorize.job").fetchone()["done"]
                ),
                300,
            )
            counter = TokenCounter(MODELS_DIR / "all-MiniLM-L6-v2" / "tokenizer.json")
            for row in conn.execute("select id, body from pages order by id").fetchall():
                text = "body: " + row["body"]
                want = [content_hash(text[a:b]) for a, b in split_texts([text], counter, WINDOW - 2, 32)[0]]
                stored = chunks_of(conn, "pages", row["id"])
                assert [c["chunk"] for c in stored] == list(range(len(want))), row["id"]
                assert [bytes(c["content_hash"]) for c in stored] == want, row["id"]
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(20)
