"""The HTTP contract of POST /api/v1/table (pg_vectorize's, see the README), against the real database and model."""

from __future__ import annotations

import pytest

from .helpers import MY_JOB, wait_until


def job_objects(conn) -> dict[str, int]:
    """Everything a job can leave behind; a rejected request must leave all at zero."""
    return conn.execute(
        """select (select count(*) from vectorize.job) as jobs,
                  (select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace
                    where n.nspname = 'vectorize' and (c.relname like '\\_embeddings\\_%' or c.relname like '%\\_view')) as relations,
                  (select count(*) from pg_trigger where tgname like 'vectorize\\_%') as triggers,
                  (select count(*) from pg_proc where proname like '\\_capture\\_%') as functions,
                  (select count(*) from vectorize.queue) as queued"""
    ).fetchone()


NOTHING = {"jobs": 0, "relations": 0, "triggers": 0, "functions": 0, "queued": 0}


async def test_curl_example_creates_job_and_backfills(api, conn, products, start_worker) -> None:
    # The contract's curl body, verbatim.
    body = """{
  "job_name": "my_job",
  "src_table": "my_products",
  "src_schema": "public",
  "src_columns": ["product_name", "description"],
  "primary_key": "product_id",
  "update_time_col": "updated_at",
  "model": "sentence-transformers/all-MiniLM-L6-v2"
}"""
    response = await api.post("/api/v1/table", data=body, headers={"Content-Type": "application/json"})
    assert response.status == 200, await response.text()
    job_id = (await response.json())["id"]
    assert conn.execute("select id::text from vectorize.job where job_name = 'my_job'").fetchone()["id"] == job_id
    start_worker()
    await wait_until(lambda: conn.execute("select count(*) as n from vectorize._embeddings_my_job").fetchone()["n"] == 40)
    # Same definition again: 200 with the same id.
    again = await api.post("/api/v1/table", data=body, headers={"Content-Type": "application/json"})
    assert again.status == 200 and (await again.json())["id"] == job_id


async def test_search_ranks_backpack_first_for_camping_gear(api, conn, products, start_worker) -> None:
    assert (await api.post("/api/v1/table", json=MY_JOB)).status == 200
    start_worker()
    await wait_until(lambda: conn.execute("select count(*) as n from vectorize._embeddings_my_job").fetchone()["n"] == 40)
    response = await api.get("/api/v1/search", params={"job_name": "my_job", "query": "camping gear", "limit": "2"})
    assert response.status == 200, await response.text()
    results = await response.json()
    assert len(results) == 2
    top = results[0]
    assert top["product_name"] == "Backpack"
    assert top["similarity_score"] == pytest.approx(0.482, abs=0.005)
    assert results[0]["similarity_score"] >= results[1]["similarity_score"]
    # All columns, JSON-typed.
    assert set(top) >= {"product_id", "product_name", "description", "product_category", "price", "updated_at"}
    assert isinstance(top["price"], (int, float)) and isinstance(top["product_id"], int)
    # Default limit is 10.
    response = await api.get("/api/v1/search", params={"job_name": "my_job", "query": "camping gear"})
    assert len(await response.json()) == 10


async def test_search_filters_and_post(api, conn, products, start_worker) -> None:
    assert (await api.post("/api/v1/table", json=MY_JOB)).status == 200
    start_worker()
    await wait_until(lambda: conn.execute("select count(*) as n from vectorize._embeddings_my_job").fetchone()["n"] == 40)
    response = await api.get(
        "/api/v1/search", params={"job_name": "my_job", "query": "music", "product_category": "electronics", "price": "gte.24.5"}
    )
    rows = await response.json()
    assert response.status == 200 and rows
    assert all(r["product_category"] == "electronics" and r["price"] >= 24.5 for r in rows)
    expected = conn.execute(
        "select count(*) as n from my_products where product_category = 'electronics' and price >= 24.5"
    ).fetchone()["n"]
    assert len(rows) == expected
    posted = await api.post(
        "/api/v1/search",
        json={"job_name": "my_job", "query": "music", "filters": {"price": "gte.24.5", "product_category": "electronics"}},
    )
    assert [r["product_id"] for r in await posted.json()] == [r["product_id"] for r in rows]
    for params, fragment in (
        ({"nope": "1"}, '"nope"'),
        ({"price": "like.5"}, '"like"'),
        ({"price": "gte.cheap"}, '"cheap"'),
    ):
        bad = await api.get("/api/v1/search", params={"job_name": "my_job", "query": "x", **params})
        assert bad.status == 400 and fragment in (await bad.json())["error"]


async def test_search_errors(api, conn, products) -> None:
    missing = await api.get("/api/v1/search", params={"job_name": "nope", "query": "x"})
    assert missing.status == 404 and "nope" in (await missing.json())["error"]
    no_query = await api.get("/api/v1/search", params={"job_name": "nope"})
    assert no_query.status == 400 and "query" in (await no_query.json())["error"]
    bad_limit = await api.get("/api/v1/search", params={"job_name": "nope", "query": "x", "limit": "0"})
    assert bad_limit.status == 400 and "limit" in (await bad_limit.json())["error"]


async def test_delete_job_removes_everything_and_twice_is_404(api, conn, products) -> None:
    assert (await api.post("/api/v1/table", json=MY_JOB)).status == 200
    conn.execute("update my_products set description = 'changed'")
    response = await api.delete("/api/v1/table/my_job")
    assert response.status == 200
    assert (await response.json())["job_name"] == "my_job"
    assert job_objects(conn) == NOTHING
    again = await api.delete("/api/v1/table/my_job")
    assert again.status == 404 and "my_job" in (await again.json())["error"]
    # The source table still works and queues nothing.
    conn.execute("update my_products set description = 'changed again'")
    assert job_objects(conn) == NOTHING


BAD_BODIES = [
    # (body or override, status, fragment of the message)
    ("not json", 400, "not valid JSON"),
    ("[1, 2]", 400, "JSON object"),
    ({"job_name": None}, 400, "job_name must be a string"),
    ({"src_columns": "product_name"}, 400, "src_columns must be an array"),
    ({"src_columns": [1]}, 400, "array of strings"),
    ({"extra": 1}, 400, "unknown field 'extra'"),
    ({"job_name": "1bad"}, 400, "job_name"),
    ({"job_name": "a" * 41}, 400, "job_name"),
    ({"job_name": "has space"}, 400, "job_name"),
    ({"src_columns": []}, 400, "src_columns is empty"),
    ({"src_columns": ["product_name", "product_name"]}, 400, "more than once"),
    ({"update_time_col": "price"}, 400, "numeric"),
    ({"primary_key": "product_category"}, 400, "not unique"),
    ({"model": "no/such-model"}, 400, "sentence-transformers/all-MiniLM-L6-v2"),
    ({"src_schema": "nowhere"}, 404, '"nowhere"'),
    ({"src_table": "no_table"}, 404, '"no_table"'),
    ({"src_columns": ["product_name", "colour"]}, 404, '"colour"'),
    ({"primary_key": "sku"}, 404, '"sku"'),
    ({"update_time_col": "modified"}, 404, '"modified"'),
]


@pytest.mark.parametrize(("body", "status", "fragment"), BAD_BODIES)
async def test_each_contract_rule(api, conn, products, body, status, fragment) -> None:
    if isinstance(body, dict):
        response = await api.post("/api/v1/table", json={**MY_JOB, **body})
    else:
        response = await api.post("/api/v1/table", data=body, headers={"Content-Type": "application/json"})
    assert response.status == status
    assert response.content_type == "application/json"
    assert fragment in (await response.json())["error"]
    assert job_objects(conn) == NOTHING


async def test_missing_field_is_named(api, conn, products) -> None:
    body = {k: v for k, v in MY_JOB.items() if k != "primary_key"}
    response = await api.post("/api/v1/table", json=body)
    assert response.status == 400 and "primary_key" in (await response.json())["error"]
    assert job_objects(conn) == NOTHING


async def test_timestamp_without_time_zone_is_named(api, conn, products) -> None:
    conn.execute("alter table my_products add column touched timestamp")
    response = await api.post("/api/v1/table", json={**MY_JOB, "update_time_col": "touched"})
    message = (await response.json())["error"]
    assert response.status == 400 and "timestamp without time zone" in message
    assert job_objects(conn) == NOTHING


async def test_conflicting_definition_is_409(api, conn, products) -> None:
    assert (await api.post("/api/v1/table", json=MY_JOB)).status == 200
    before = job_objects(conn)
    response = await api.post("/api/v1/table", json={**MY_JOB, "src_columns": ["product_name"]})
    assert response.status == 409 and "my_job" in (await response.json())["error"]
    assert job_objects(conn) == before


async def test_sql_insert_gets_the_same_messages(conn, products) -> None:
    import psycopg

    with pytest.raises(psycopg.Error) as info:
        conn.execute(
            "insert into vectorize.job (job_name, src_table, src_schema, src_columns, primary_key, update_time_col, model)"
            " values ('j', 'my_products', 'public', '{product_name}', 'product_id', 'price', 'sentence-transformers/all-MiniLM-L6-v2')"
        )
    assert info.value.sqlstate == "VZ400" and "numeric" in info.value.diag.message_primary
    with pytest.raises(psycopg.Error) as info:
        conn.execute(
            "insert into vectorize.job (job_name, src_table, src_schema, src_columns, primary_key, update_time_col, model)"
            " values ('j', 'nope', 'public', '{product_name}', 'product_id', 'updated_at', 'sentence-transformers/all-MiniLM-L6-v2')"
        )
    assert info.value.sqlstate == "VZ404" and '"nope"' in info.value.diag.message_primary
    assert job_objects(conn) == NOTHING


async def test_errors_are_json_everywhere(api) -> None:
    unknown = await api.get("/no/such/route")
    assert unknown.status == 404 and "error" in await unknown.json()
    wrong_method = await api.put("/api/v1/table")
    assert wrong_method.status == 405 and "error" in await wrong_method.json()
    huge = await api.post("/api/v1/table", data=b"x" * (2 << 20), headers={"Content-Type": "application/json"})
    assert huge.status == 413 and "error" in await huge.json()


async def test_health_endpoints(api) -> None:
    for path in ("/health", "/health/live", "/health/ready"):
        response = await api.get(path)
        assert response.status == 200, path
        assert "status" in await response.json()
    ready = await (await api.get("/health/ready")).json()
    assert ready["database"] is True and ready["model"] is True
