"""Search options: which columns come back (per request and per job, enforced in SQL), ef_search,
skipping a half whose weight is 0, exact ranking under a selective filter, and query embeddings
shared by concurrent requests."""

from __future__ import annotations

import asyncio

import numpy as np
import psycopg
import pytest

from vectorize.core.job_definition import OPTIONAL, REQUIRED, SETTINGS
from vectorize.metrics import REGISTRY
from vectorize.service.query_embedding import QueryEmbedder

from .helpers import MODEL, backfilled_job, create_job, embedding_count, queue_depth, wait_until

QUERY = "camping gear"


async def search(api, **params) -> tuple[int, object]:
    response = await api.get("/api/v1/search", params={"job_name": "my_job", "query": QUERY, **params})
    return response.status, await response.json()


async def test_return_columns_per_request_and_per_job(conn, products, start_worker, api) -> None:
    await backfilled_job(conn, start_worker)
    status, rows = await search(api, return_columns="product_name,price")
    assert status == 200 and set(rows[0]) == {
        "product_name",
        "price",
        "similarity_score",
        "semantic_rank",
        "fts_rank",
        "rrf_score",
        "chunk",
    }
    response = await api.post("/api/v1/search", json={"job_name": "my_job", "query": QUERY, "return_columns": ["product_id"]})
    assert {
        k for k in (await response.json())[0] if k not in ("similarity_score", "semantic_rank", "fts_rank", "rrf_score", "chunk")
    } == {"product_id"}
    status, error = await search(api, return_columns="product_name,email")
    assert status == 400 and '"email"' in error["error"] and "columns are:" in error["error"]

    # The job's allowlist: nothing outside it, by default or on request, from HTTP or SQL.
    conn.execute("update vectorize.job set return_columns = '{product_id,product_name}' where job_name = 'my_job'")
    status, rows = await search(api)
    assert (
        status == 200
        and {"product_id", "product_name"} <= set(rows[0])
        and "description" not in rows[0]
        and "price" not in rows[0]
    )
    status, error = await search(api, return_columns="price")
    assert status == 400 and "not among the columns job" in error["error"]
    result = conn.execute(
        "select r from vectorize.search('my_job', (select embedding from vectorize._embeddings_my_job limit 1), 3) r"
    ).fetchone()["r"]
    assert "price" not in result and "description" not in result and "product_name" in result
    with pytest.raises(psycopg.DatabaseError, match="not among the columns"):
        with conn.transaction():
            conn.execute(
                "select vectorize.search('my_job', (select embedding from vectorize._embeddings_my_job limit 1), 3, '{}', null, 1, 1, 60, null, '{price}')"
            )
    with pytest.raises(psycopg.DatabaseError, match='"nope", which is not a column'):
        with conn.transaction():
            conn.execute("update vectorize.job set return_columns = '{nope}'")
    # Through the API's job definition as well.
    job = await (await api.get("/api/v1/table/my_job")).json()
    assert job["return_columns"] == ["product_id", "product_name"]


async def test_ef_search_and_weights_of_zero(conn, products, start_worker, api) -> None:
    await backfilled_job(conn, start_worker)
    status, rows = await search(api, ef_search="200")
    assert status == 200 and rows[0]["product_name"] == "Backpack"
    for bad in ("0", "1001", "x", "1.5"):
        status, error = await search(api, ef_search=bad)
        assert status == 400 and "ef_search" in error["error"]
    with pytest.raises(psycopg.DatabaseError, match="ef_search 0 is out of range"):
        with conn.transaction():
            conn.execute("update vectorize.job set ef_search = 0")
    conn.execute("update vectorize.job set ef_search = 100")

    # fts_wt = 0: the full-text half is not computed (no fts rank anywhere).
    status, rows = await search(api, fts_wt="0", query="backpack")
    assert status == 200 and len(rows) == 10 and all(r["fts_rank"] is None for r in rows)
    # semantic_wt = 0: no vector at all; only rows whose words match, no similarity.
    status, rows = await search(api, semantic_wt="0", query="backpack")
    assert status == 200 and [r["product_name"] for r in rows] == ["Backpack"]
    assert rows[0]["semantic_rank"] is None and rows[0]["similarity_score"] is None and rows[0]["fts_rank"] == 1
    # Neither half has anything to go on: an empty answer, not an error.
    status, rows = await search(api, semantic_wt="0", query="the of and")
    assert status == 200 and rows == []


def hnsw_options(conn) -> set[str]:
    row = conn.execute("select reloptions from pg_class where relname = '_embeddings_my_job_hnsw'").fetchone()
    return set(row["reloptions"] or ()) if row else set()


async def test_hnsw_build_parameters_per_job_rebuild_the_index_beside_the_old_one(conn, products, start_worker, api) -> None:
    await backfilled_job(conn, start_worker, poll_interval=0.2)
    assert hnsw_options(conn) == set()  # pgvector's defaults

    # From psql: the worker builds a new index concurrently and swaps it in; search answers throughout.
    conn.execute("update vectorize.job set hnsw_m = 8, hnsw_ef_construction = 40 where job_name = 'my_job'")
    answers = []

    async def rebuilt() -> bool:
        status, rows = await search(api)
        answers.append((status, rows[0]["product_name"] if status == 200 and rows else None))
        return hnsw_options(conn) == {"m=8", "ef_construction=40"}

    deadline = asyncio.get_running_loop().time() + 30
    while not await rebuilt():
        assert asyncio.get_running_loop().time() < deadline, hnsw_options(conn)
    assert answers and all(a == (200, "Backpack") for a in answers), answers
    indexes = conn.execute(
        "select count(*) as n from pg_indexes where schemaname = 'vectorize' and indexname like '_embeddings_my_job_hnsw%'"
    ).fetchone()["n"]
    assert indexes == 1  # the old one dropped, the new one under the usual name
    status, rows = await search(api)
    assert status == 200 and rows[0]["product_name"] == "Backpack"

    # From HTTP: PUT with the serving definition and new parameters rebuilds nothing but the index.
    status = await (await api.get("/api/v1/table/my_job")).json()
    assert (status["hnsw_m"], status["hnsw_ef_construction"]) == (8, 40)
    job = {k: status[k] for k in (*REQUIRED, *OPTIONAL, *SETTINGS)}
    response = await api.put("/api/v1/table/my_job", json={**job, "hnsw_m": 12, "hnsw_ef_construction": 48})
    assert response.status == 200, await response.text()
    await wait_until(lambda: hnsw_options(conn) == {"m=12", "ef_construction=48"}, timeout=30)
    assert conn.execute("select generation from vectorize.job").fetchone()["generation"] == 1  # nothing re-embedded

    # Out of pgvector's limits: a clear error from SQL and HTTP, and nothing changes.
    for assignment, message in (
        ("hnsw_m = 1", "hnsw_m 1 is out of range: use 2 to 100"),
        ("hnsw_ef_construction = 2000", "hnsw_ef_construction 2000 is out of range"),
        ("hnsw_m = 40, hnsw_ef_construction = 64", r"hnsw_ef_construction \(64\) must be at least twice hnsw_m \(40\)"),
    ):
        with pytest.raises(psycopg.DatabaseError, match=message):
            with conn.transaction():
                conn.execute(f"update vectorize.job set {assignment}")
    response = await api.put("/api/v1/table/my_job", json={**job, "hnsw_m": 101})
    assert response.status == 400 and "hnsw_m 101 is out of range" in (await response.json())["error"]
    assert hnsw_options(conn) == {"m=12", "ef_construction=48"}


async def test_a_selective_filter_ranks_its_rows_exactly(conn, products, start_worker, api, catalog) -> None:
    """Few matching rows: their ranking is the exact cosine order over every one of them."""
    from pgvector.psycopg import register_vector

    await backfilled_job(conn, start_worker)
    register_vector(conn)
    query = catalog.get(MODEL).embed([QUERY])[0]
    rows = conn.execute(
        "select p.product_id, e.embedding from my_products p join vectorize._embeddings_my_job e using (product_id) where p.price <= 20"
    ).fetchall()
    exact = sorted(((float(query @ r["embedding"].to_numpy()), r["product_id"]) for r in rows), reverse=True)
    status, found = await search(api, price="lte.20", fts_wt="0", limit="5")
    assert status == 200
    assert [r["product_id"] for r in found] == [pk for _, pk in exact[:5]]
    assert np.allclose([r["similarity_score"] for r in found], [s for s, _ in exact[:5]], atol=1e-4)
    plan = conn.execute(
        'select vectorize._estimated_matches(j, vectorize._filter_clause(j, \'{"price": "lte.20"}\')) as n from vectorize.job j'
    ).fetchone()["n"]
    assert plan <= 5000  # the planner's estimate chose the exact path


async def test_unfiltered_searches_are_planned_once_per_session_with_the_same_answers(
    conn, products, start_worker, catalog
) -> None:
    """Without filter values vectorize.search() prepares its statements once per session and runs
    them with generic plans; the answers are those of the same search planned for its values
    (a filter that every row passes takes that path), whatever the session does in between."""
    from pgvector.psycopg import register_vector

    await backfilled_job(conn, start_worker)
    register_vector(conn)
    vector = catalog.get(MODEL).embed([QUERY])[0]

    def answer(limit: int = 5, filters: str = "{}") -> list[tuple[int, float, object]]:
        rows = conn.execute(
            "select r from vectorize.search('my_job', %s, %s, %s::jsonb, %s) r", (vector, limit, filters, QUERY)
        ).fetchall()
        return [(r["r"]["product_id"], round(r["r"]["rrf_score"], 9), r["r"]["fts_rank"]) for r in rows]

    def prepared() -> int:
        return conn.execute("select count(*) as n from pg_prepared_statements where name like 'vectorize\\_%'").fetchone()["n"]

    first = answer()
    assert len(first) == 5 and prepared() == 3  # chunked or not, nearest rows, the fused answer
    assert answer() == first and prepared() == 3  # reused, not prepared again
    assert answer(filters='{"product_id": "gt.0"}') == first and prepared() == 3  # planned for its values
    conn.execute("deallocate all")
    assert answer() == first and prepared() == 3
    # The session's plan cache setting is its own again after the search, in a transaction too.
    with conn.transaction():
        answer()
        assert conn.execute("select current_setting('plan_cache_mode') as m").fetchone()["m"] == "auto"
    # One statement per limit: their number stays bounded.
    for limit in range(1, 80):
        assert len(answer(limit)) == min(limit, 40)
    assert prepared() <= 64 + 3
    # The job deleted and created again under its name (a new table of the same name): the
    # session's statements are planned again for it, and answer as before.
    conn.execute("delete from vectorize.job")
    create_job(conn)
    await wait_until(lambda: embedding_count(conn) == 40 and queue_depth(conn) == 0, 60)
    assert answer() == first


async def test_concurrent_queries_share_inference_and_repeats_come_from_the_cache(catalog) -> None:
    queries = QueryEmbedder(catalog, parallel=1)
    texts = [f"query number {i} about packages" for i in range(16)]
    calls = REGISTRY.get_sample_value("vectorize_query_batch_texts_count") or 0.0
    vectors = await asyncio.gather(*(queries.embed(MODEL, t) for t in texts))
    batches = (REGISTRY.get_sample_value("vectorize_query_batch_texts_count") or 0.0) - calls
    assert batches < len(texts) / 2  # the queries that arrived during the first call went in together
    alone = catalog.get(MODEL).embed(texts)
    assert float(np.min(np.sum(np.stack(vectors) * alone, axis=1))) > 0.9999
    hits = REGISTRY.get_sample_value("vectorize_query_cache_total", {"result": "hit"}) or 0.0
    again = await queries.embed(MODEL, texts[3])
    assert REGISTRY.get_sample_value("vectorize_query_cache_total", {"result": "hit"}) == hits + 1
    assert np.array_equal(again, vectors[3])


async def test_return_columns_bound_filters_and_passages_and_survive_redefinitions(conn, products, start_worker, api) -> None:
    """return_columns is a boundary: a filter on another column would be an oracle of its values,
    and the matched passage is made of the embedded columns; a re-POST or a PUT that leaves it out
    keeps it."""
    await backfilled_job(conn, start_worker)
    conn.execute("update vectorize.job set return_columns = '{product_id,product_name}' where job_name = 'my_job'")
    status, error = await search(api, price="gte.10")
    assert status == 400 and "may return" in error["error"] and "price" not in error["error"].split("columns are:")[1]
    status, rows = await search(api)
    assert status == 200 and all(r["chunk"]["text"] is None for r in rows)  # description is embedded, not returnable
    status, rows = await search(api, product_name="Pencil")
    assert status == 200 and [r["product_name"] for r in rows] == ["Pencil"]
    definition = {k: v for k, v in (await (await api.get("/api/v1/table/my_job")).json()).items() if k in REQUIRED}
    assert (await api.post("/api/v1/table", json=definition)).status == 200  # idempotent re-POST
    response = await api.put("/api/v1/table/my_job", json={**definition, "chunk_tokens": 64})
    assert response.status == 202
    job = await (await api.get("/api/v1/table/my_job")).json()
    assert job["return_columns"] == ["product_id", "product_name"]
    # Said explicitly, it changes; null clears it.
    await api.put("/api/v1/table/my_job", json={**definition, "chunk_tokens": 64, "return_columns": None})
    assert (await (await api.get("/api/v1/table/my_job")).json())["return_columns"] is None
    status, rows = await search(api)
    assert status == 200 and all(isinstance(r["chunk"]["text"], str) for r in rows)


async def test_window_size_is_each_halfs_candidates_before_fusion(conn, products, start_worker, api) -> None:
    """pg_vectorize's window_size, through GET and POST: one candidate per half fuses at most two rows."""
    await backfilled_job(conn, start_worker)
    status, rows = await search(api, limit="10", window_size="1")
    assert status == 200 and 1 <= len(rows) <= 2
    status, rows = await search(api, limit="10", window_size="50")
    assert status == 200 and len(rows) == 10
    response = await api.post("/api/v1/search", json={"job_name": "my_job", "query": QUERY, "limit": 10, "window_size": 1})
    assert response.status == 200 and 1 <= len(await response.json()) <= 2
    # The default is 5 x limit: the same ranking as asking for it.
    default = [r["product_name"] for r in (await search(api, limit="4"))[1]]
    explicit = [r["product_name"] for r in (await search(api, limit="4", window_size="20"))[1]]
    assert default == explicit
    for bad in ("0", "10001", "x", "2.5"):
        status, error = await search(api, window_size=bad)
        assert status == 400 and "window_size" in error["error"]
    status, error = await search(api, nope="1")  # not a parameter, not a column: still a 400
    assert status == 400 and "nope" in error["error"]
