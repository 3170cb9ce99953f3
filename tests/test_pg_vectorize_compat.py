"""pg_vectorize's own server tests, ported: what a client switching from it relies on."""

from __future__ import annotations

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
