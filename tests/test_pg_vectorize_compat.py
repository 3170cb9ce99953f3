"""pg_vectorize's own server tests, ported: what a client switching from it relies on."""

from __future__ import annotations

from vectorize.paths import SQL_DIR

from .helpers import MY_JOB, embedding_count, queue_depth, wait_until


async def test_pg_vectorize_server_flow(api, conn, products, start_worker) -> None:
    # Health endpoints answer JSON.
    for path in ("/health", "/health/live", "/health/ready"):
        response = await api.get(path)
        assert response.status == 200 and "status" in await response.json()

    # Create on my_products; the backfill runs in the worker.
    created = await api.post("/api/v1/table", json=MY_JOB)
    assert created.status == 200 and len((await created.json())["id"]) == 36
    start_worker()
    await wait_until(lambda: embedding_count(conn) == 40 and queue_depth(conn) == 0, timeout=60)

    # Filter counts: equality on a text column returns exactly the matching rows, best first.
    electronics = conn.execute("select count(*) as n from my_products where product_category = 'electronics'").fetchone()["n"]
    rows = await (
        await api.get(
            "/api/v1/search",
            params={"job_name": "my_job", "query": "charging cable", "limit": "40", "product_category": "electronics"},
        )
    ).json()
    assert len(rows) == electronics and all(r["product_category"] == "electronics" for r in rows)
    assert [r["similarity_score"] for r in rows] == sorted((r["similarity_score"] for r in rows), reverse=True)
    # Range filters compose and count right.
    cheap = conn.execute("select count(*) as n from my_products where price < 10").fetchone()["n"]
    rows = await (
        await api.get("/api/v1/search", params={"job_name": "my_job", "query": "gift", "limit": "40", "price": "lt.10"})
    ).json()
    assert len(rows) == cheap and all(r["price"] < 10 for r in rows)

    # POST search gives the GET results.
    posted = await api.post(
        "/api/v1/search", json={"job_name": "my_job", "query": "gift", "limit": 40, "filters": {"price": "lt.10"}}
    )
    assert [r["product_id"] for r in await posted.json()] == [r["product_id"] for r in rows]

    # Delete, then delete again: 404.
    assert (await api.delete("/api/v1/table/my_job")).status == 200
    again = await api.delete("/api/v1/table/my_job")
    assert again.status == 404 and "error" in await again.json()
    gone = await api.get("/api/v1/search", params={"job_name": "my_job", "query": "gift"})
    assert gone.status == 404


# pg_vectorize's server search tests (server/tests/tests.rs: test_search_server, test_search_filters,
# test_search_filter_operators), with their queries and assertions as they are. Where they sleep
# and retry a search until it returns the expected count, these wait for the queue to drain.
# Each search is asked twice: as written, and with window_size (pg_vectorize's candidate window of
# each half before fusion) at its default, 5 x limit, which must not change the answer.


async def _search(api, params: dict[str, str]) -> list[dict]:
    answers = []
    limit = int(params.get("limit", "10"))
    for extra in ({}, {"window_size": str(5 * limit)}):
        response = await api.get("/api/v1/search", params={**params, **extra})
        assert response.status == 200, await response.text()
        answers.append(await response.json())
    assert answers[0] == answers[1]
    return answers[0]


async def test_search_server(api, conn, start_worker) -> None:
    conn.execute("create schema if not exists vectorize_test")
    table = "test_table_1"
    conn.execute(f"create table vectorize_test.{table} (id serial primary key, content text, updated_at timestamptz)")
    for record in ("pizza", "pencil", "airplane"):
        conn.execute(f"insert into vectorize_test.{table} (content, updated_at) values (%s, now())", (record,))
    job_name = f"test_job_{table}"
    payload = {
        "job_name": job_name,
        "src_table": table,
        "src_schema": "vectorize_test",
        "src_columns": ["content"],
        "primary_key": "id",
        "update_time_col": "updated_at",
        "model": "sentence-transformers/all-MiniLM-L6-v2",
    }
    resp = await api.post("/api/v1/table", json=payload)
    assert resp.status == 200
    assert len((await resp.json())["id"]) == 36
    start_worker()
    await wait_until(lambda: embedding_count(conn, job_name) == 3 and queue_depth(conn) == 0, timeout=60)

    search_results = await _search(api, {"job_name": job_name, "query": "food"})
    assert len(search_results) == 3
    assert search_results[0]["content"] == "pizza"
    assert search_results[0]["similarity_score"] > 0.5

    search_results = await _search(api, {"job_name": job_name, "query": "writing utensil", "limit": "1"})
    assert len(search_results) == 1
    assert search_results[0]["content"] == "pencil"

    conn.execute(f"insert into vectorize_test.{table} (content, updated_at) values (%s, now())", ("apples and apple trees",))
    await wait_until(lambda: embedding_count(conn, job_name) == 4 and queue_depth(conn) == 0, timeout=30)
    search_results = await _search(api, {"job_name": job_name, "query": "apples", "limit": "1"})
    assert len(search_results) == 1
    assert search_results[0]["content"] == "apples and apple trees"

    shuttle = "a space shuttle is a device for storing and transporting astronauts"
    conn.execute(f"update vectorize_test.{table} set content = %s, updated_at = now() where id = 1", (shuttle,))
    await wait_until(lambda: queue_depth(conn) == 0, timeout=30)
    search_results = await _search(api, {"job_name": job_name, "query": "astronauts", "limit": "1"})
    assert len(search_results) == 1
    assert search_results[0]["content"] == shuttle


#: pg_vectorize's example catalogue (server/sql/example.sql, PostgreSQL License, (c) 2023 Tembo) has
#: our demo's names and descriptions with these categories and prices, on which its tests count.
PG_VECTORIZE_CATEGORY_AND_PRICE = {
    1: ("stationery", 1.50), 2: ("electronics", 35.99), 3: ("furniture", 22.50), 4: ("electronics", 99.99),
    5: ("kitchenware", 15.00), 6: ("accessories", 45.00), 7: ("electronics", 25.00), 8: ("garden", 12.00),
    9: ("accessories", 50.00), 10: ("stationery", 3.99), 11: ("electronics", 18.50), 12: ("kitchenware", 10.99),
    13: ("electronics", 20.00), 14: ("sports", 30.00), 15: ("furniture", 15.50), 16: ("accessories", 5.00),
    17: ("furniture", 12.50), 18: ("electronics", 49.99), 19: ("stationery", 10.00), 20: ("accessories", 8.99),
    21: ("personal care", 2.50), 22: ("stationery", 6.99), 23: ("electronics", 12.00), 24: ("electronics", 22.99),
    25: ("personal care", 7.50), 26: ("accessories", 120.00), 27: ("sports", 20.00), 28: ("music", 5.00),
    29: ("kitchenware", 18.99), 30: ("footwear", 10.00), 31: ("art supplies", 45.00), 32: ("sports", 35.00),
    33: ("home decor", 15.00), 34: ("kitchenware", 10.50), 35: ("garden", 8.00), 36: ("electronics", 25.00),
    37: ("kitchenware", 3.99), 38: ("toys", 12.99), 39: ("outdoor", 40.00), 40: ("travel", 7.50),
}  # fmt: skip


async def _product_copy(api, conn, start_worker, table: str) -> str:
    """test_search_filters' setup: a copy of pg_vectorize's example table, its description embedded."""
    conn.execute((SQL_DIR / "demo" / "my_products.sql").read_text().encode())
    for product_id, (category, price) in PG_VECTORIZE_CATEGORY_AND_PRICE.items():
        conn.execute(
            "update public.my_products set product_category = %s, price = %s where product_id = %s", (category, price, product_id)
        )
    conn.execute(f"create table public.{table} (like public.my_products including all)")
    conn.execute(f"insert into public.{table} select * from public.my_products")
    payload = {
        "job_name": table,
        "src_table": table,
        "src_schema": "public",
        "src_columns": ["description"],
        "primary_key": "product_id",
        "update_time_col": "updated_at",
        "model": "sentence-transformers/all-MiniLM-L6-v2",
    }
    resp = await api.post("/api/v1/table", json=payload)
    assert resp.status == 200
    start_worker()
    await wait_until(lambda: embedding_count(conn, table) == 40 and queue_depth(conn) == 0, timeout=60)
    return table


async def test_search_filters(api, conn, start_worker) -> None:
    job_name = await _product_copy(api, conn, start_worker, "test_filter_1")

    search_results = await _search(api, {"job_name": job_name, "query": "pen", "product_category": "eq.electronics"})
    assert len(search_results) == 9
    assert search_results[0]["fts_rank"] is None
    for result in search_results:
        assert result["product_category"] == "electronics"

    search_results = await _search(api, {"job_name": job_name, "query": "electronics", "price": "eq.25"})
    assert len(search_results) == 2
    assert search_results[0]["product_name"] == "Wireless Mouse"
    assert search_results[1]["product_name"] == "Alarm Clock"

    search_results = await _search(api, {"job_name": job_name, "query": "electronics", "price": "gte.25", "limit": "5"})
    assert len(search_results) == 5

    # backward compatibility: no operator means equality
    search_results = await _search(api, {"job_name": job_name, "query": "pen", "product_category": "electronics"})
    assert len(search_results) == 9
    for result in search_results:
        assert result["product_category"] == "electronics"

    category_first = await _search(
        api, {"job_name": job_name, "query": "electronics", "product_category": "eq.electronics", "price": "gte.25"}
    )
    assert len(category_first) == 5
    for result in category_first:
        assert result["product_category"] == "electronics"
        assert result["price"] >= 25.0
    price_first = await _search(
        api, {"job_name": job_name, "query": "electronics", "price": "gte.25", "product_category": "eq.electronics"}
    )
    assert len(price_first) == 5
    for result in price_first:
        assert result["product_category"] == "electronics"
        assert result["price"] >= 25.0
    assert len(category_first) == len(price_first)
    by_id = sorted(category_first, key=lambda r: r["product_id"]), sorted(price_first, key=lambda r: r["product_id"])
    for result1, result2 in zip(*by_id, strict=True):
        assert result1["product_id"] == result2["product_id"]
        assert result1["product_name"] == result2["product_name"]

    # equivalent, using POST (and with window_size, which POST takes too)
    filters = {"price": "gte.25", "product_category": "eq.electronics"}
    for extra in ({}, {"window_size": 25}):
        resp = await api.post(
            "/api/v1/search", json={"job_name": job_name, "query": "electronics", "filters": filters, "limit": 5, **extra}
        )
        assert resp.status == 200
        post_search_results = await resp.json()
        assert len(post_search_results) == 5
        for result in post_search_results:
            assert result["product_category"] == "electronics"
            assert result["price"] >= 25.0


async def test_search_filter_operators(api, conn, start_worker) -> None:
    job_name = await _product_copy(api, conn, start_worker, "test_filter_ops_1")

    search_results = await _search(api, {"job_name": job_name, "query": "electronics", "price": "gt.20", "limit": "100"})
    assert len(search_results) == 14
    search_results = await _search(api, {"job_name": job_name, "query": "electronics", "price": "lte.25", "limit": "100"})
    assert len(search_results) == 30
    search_results = await _search(api, {"job_name": job_name, "query": "electronics", "price": "gte.24.5", "limit": "1000"})
    assert len(search_results) == 12

    response = await api.get("/api/v1/search", params={"job_name": job_name, "query": "electronics", "price": "invalid.25"})
    assert 400 <= response.status < 600
    response = await api.get("/api/v1/search", params={"job_name": job_name, "query": "electronics", "price": "gt.abc"})
    assert 400 <= response.status < 600
