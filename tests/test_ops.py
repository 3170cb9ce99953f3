"""Search and operations: hybrid ranking, selective filters, job status, metrics, poison rows."""

from __future__ import annotations

import pytest

from .helpers import MY_JOB, create_job, embedding_count, queue_depth, wait_until

MODEL = MY_JOB["model"]


async def backfilled(api, conn) -> None:
    assert (await api.post("/api/v1/table", json=MY_JOB)).status == 200
    await wait_until(lambda: embedding_count(conn) == 40 and queue_depth(conn) == 0, timeout=60)


async def test_hybrid_ranking_fields_and_weights(api, conn, products, start_worker) -> None:
    start_worker()
    await backfilled(api, conn)
    rows = await (await api.get("/api/v1/search", params={"job_name": "my_job", "query": "pencil paper"})).json()
    assert all({"semantic_rank", "fts_rank", "rrf_score", "similarity_score"} <= set(r) for r in rows)
    assert [r["rrf_score"] for r in rows] == sorted((r["rrf_score"] for r in rows), reverse=True)
    pencil = next(r for r in rows if r["product_name"] == "Pencil")
    assert pencil["fts_rank"] == 1 and rows[0]["product_name"] == "Pencil"
    # A text with no full-text match: fts_rank is null and rrf follows the semantic rank exactly.
    for r in rows:
        if r["fts_rank"] is None:
            assert r["rrf_score"] == pytest.approx(1.0 / (60 + r["semantic_rank"]))
    # Weights: with fts_wt=0 the order is the pure vector order.
    semantic = await (
        await api.get("/api/v1/search", params={"job_name": "my_job", "query": "pencil paper", "fts_wt": "0"})
    ).json()
    assert [r["similarity_score"] for r in semantic] == sorted((r["similarity_score"] for r in semantic), reverse=True)
    k10 = await (await api.get("/api/v1/search", params={"job_name": "my_job", "query": "pencil paper", "rrf_k": "10"})).json()
    assert k10[0]["rrf_score"] > rows[0]["rrf_score"]
    bad = await api.get("/api/v1/search", params={"job_name": "my_job", "query": "x", "rrf_k": "-1"})
    assert bad.status == 400 and "rrf_k" in (await bad.json())["error"]


async def test_sql_search_gives_the_api_results(api, conn, products, start_worker, catalog) -> None:
    start_worker()
    await backfilled(api, conn)
    vector = catalog.get(MODEL).embed(["camping gear"])[0]
    sql_rows = conn.execute("select r from vectorize.search('my_job', %s, 5, '{\"price\": \"lt.50\"}') r", (vector,)).fetchall()
    api_rows = await (
        await api.post(
            "/api/v1/search",
            json={"job_name": "my_job", "query": "camping gear", "limit": 5, "filters": {"price": "lt.50"}, "fts_wt": 0},
        )
    ).json()
    assert isinstance(api_rows, list), api_rows
    assert [r["r"]["product_id"] for r in sql_rows] == [r["product_id"] for r in api_rows]
    assert all(r["price"] < 50 for r in api_rows) and len(api_rows) == 5


async def test_filter_order_does_not_matter(api, conn, products, start_worker) -> None:
    start_worker()
    await backfilled(api, conn)
    a = await (await api.get("/api/v1/search?job_name=my_job&query=desk&price=lte.30&product_category=eq.furniture")).json()
    b = await (await api.get("/api/v1/search?product_category=eq.furniture&query=desk&price=lte.30&job_name=my_job")).json()
    assert a == b and a and all(r["product_category"] == "furniture" and r["price"] <= 30 for r in a)


async def test_selective_filter_still_returns_limit_rows(api, conn, start_worker) -> None:
    """1% of rows match the filter; HNSW alone would return ~0.4 of them from its 40 candidates."""
    conn.execute("create table docs (id int primary key, body text, kind text, updated_at timestamptz default now())")
    conn.execute(
        "insert into docs select g, 'document ' || g || ' about ' || (array['cats','dogs','cars','boats'])[1 + g % 4],"
        " case when g % 100 = 0 then 'rare' else 'common' end, now() from generate_series(1, 3000) g"
    )
    create_job(conn, job_name="docs", src_table="docs", src_columns=["body"], primary_key="id")
    start_worker()
    await wait_until(lambda: embedding_count(conn, "docs") == 3000 and queue_depth(conn) == 0, timeout=240)
    conn.execute("analyze vectorize._embeddings_docs")
    rows = await (
        await api.get("/api/v1/search", params={"job_name": "docs", "query": "boats", "limit": "25", "kind": "rare"})
    ).json()
    assert len(rows) == 25 and all(r["kind"] == "rare" for r in rows)
    # The plan really is an index scan (on a table this size the planner picks HNSW).
    plan = conn.execute(
        "explain select id from vectorize._embeddings_docs order by embedding <=> (select embedding from vectorize._embeddings_docs limit 1) limit 25"
    ).fetchall()
    assert any("hnsw" in str(p).lower() for p in plan)


async def test_job_list_show_and_status_view(api, conn, products, start_worker) -> None:
    start_worker()
    await backfilled(api, conn)
    listed = await (await api.get("/api/v1/table")).json()
    assert [j["job_name"] for j in listed] == ["my_job"]
    job = await (await api.get("/api/v1/table/my_job")).json()
    assert job["source_rows"] == 40 and job["embedded_rows"] == 40 and job["pending"] == 0
    assert job["backfill_done"] is True and job["failed_rows"] == 0 and job["last_errors"] == []
    assert job["src_columns"] == ["product_name", "description"] and job["rate_per_second"] > 0
    missing = await api.get("/api/v1/table/nope")
    assert missing.status == 404
    view = conn.execute("select embedded_rows, pending, backfill_done from vectorize.job_status").fetchone()
    assert view == {"embedded_rows": 40, "pending": 0, "backfill_done": True}


async def test_poison_row_is_retried_parked_and_cleared(api, conn, products, start_worker, catalog) -> None:
    encoder = catalog.get(MODEL)

    def poison(text: str) -> None:
        if "Hammock" in text:
            raise ValueError("simulated model failure")

    encoder.failure_hook = poison
    try:
        start_worker(max_attempts=3, retry_backoff=0.05, poll_interval=0.2)
        assert (await api.post("/api/v1/table", json=MY_JOB)).status == 200
        await wait_until(lambda: conn.execute("select count(*) as n from vectorize.failure").fetchone()["n"] == 1, timeout=60)
        # The row can be parked while the rest of its batch is still being retried one by one.
        await wait_until(lambda: embedding_count(conn) == 39 and queue_depth(conn) == 0, timeout=30)
        failure = conn.execute("select pk, attempts, last_error from vectorize.failure").fetchone()
        assert failure["attempts"] == 3 and "simulated model failure" in failure["last_error"]
        job = await (await api.get("/api/v1/table/my_job")).json()
        assert job["failed_rows"] == 1 and "simulated model failure" in job["last_errors"][0]["error"]
    finally:
        encoder.failure_hook = None
    # Fixing the row (any update of its text) clears the failure.
    conn.execute("update my_products set description = description || '!' where product_name = 'Hammock'")
    await wait_until(lambda: embedding_count(conn) == 40, timeout=10)
    assert conn.execute("select count(*) as n from vectorize.failure").fetchone()["n"] == 0


async def test_metrics_are_prometheus_text(api, conn, products, start_worker) -> None:
    start_worker()
    await backfilled(api, conn)
    await api.get("/api/v1/search", params={"job_name": "my_job", "query": "lamp"})
    response = await api.get("/metrics")
    text = await response.text()
    assert response.status == 200 and response.content_type == "text/plain"
    assert 'vectorize_queue_depth{job="my_job"} 0.0' in text
    assert 'vectorize_embedded_rows{job="my_job"} 40.0' in text
    assert 'vectorize_rows_embedded_total{job="my_job"}' in text
    assert "vectorize_search_seconds_count" in text
    assert 'vectorize_http_requests_total{method="GET",route="/api/v1/search",status="200"}' in text


async def test_bearer_token_guards_everything_but_liveness(settings, catalog, db_url) -> None:
    from dataclasses import replace

    from aiohttp.test_utils import TestClient, TestServer

    from vectorize.db.database import make_pool
    from vectorize.http.app import create_app

    pool = make_pool(db_url)
    await pool.open()
    client = TestClient(TestServer(create_app(replace(settings, api_token="s3cret"), pool, catalog)))
    await client.start_server()
    try:
        assert (await client.get("/health/live")).status == 200
        for path in ("/health", "/api/v1/table", "/metrics"):
            denied = await client.get(path)
            assert denied.status == 401 and "Bearer" in (await denied.json())["error"]
        assert (await client.get("/api/v1/table", headers={"Authorization": "Bearer wrong"})).status == 401
        assert (await client.get("/api/v1/table", headers={"Authorization": "Bearer s3cret"})).status == 200
    finally:
        await client.close()
        await pool.close()
