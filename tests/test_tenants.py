"""Search answers as the caller: API tokens map to PostgreSQL roles, and row-level security and
column privileges decide what comes back -- through HTTP and through vectorize.search() in psql,
with no loss of recall for a tenant that owns 1% of the rows."""

from __future__ import annotations

import dataclasses
import json

import psycopg
import pytest

from .helpers import api_client, create_job

ROWS = 20_000
TOKENS = {
    "a" * 32: {"role": "tenant_a", "jobs": ["notes"]},
    "b" * 32: {"role": "tenant_b"},
    "c" * 32: {"role": "tenant_c"},
    "d" * 32: {"role": "tenant_b", "manage": True},
}


def _embed_synthetically(conn: psycopg.Connection) -> None:
    """20,000 rows with vectors of their own, written straight into the job's table (embedding them
    with the model would take minutes and is not what this test is about), then indexed."""
    conn.execute('drop index vectorize."_embeddings_notes_hnsw"')
    conn.execute(
        'insert into vectorize."_embeddings_notes" (id, embedding, fts, content_hash, source_updated_at, version)'
        " select n.id, (select array_agg(sin(n.id * 7.31 + d * 1.37)) from generate_series(1, 384) d where n.id > 0)::vector,"
        "        to_tsvector('english', n.body), '\\x00', n.updated_at, 1"
        "   from notes n"
    )
    conn.execute(
        'create index "_embeddings_notes_hnsw" on vectorize."_embeddings_notes" using hnsw (embedding vector_cosine_ops)'
    )


@pytest.fixture
def tenants(conn):
    """Table notes of two tenants (a: 1% of the rows), each tenant a role that sees its own rows
    (row-level security) and all columns but ``secret`` (column privileges); tenant_c sees nothing."""
    conn.execute(
        "create table notes (id int primary key, tenant text not null, body text not null, secret text,"
        " updated_at timestamptz not null default now())"
    )
    conn.execute(
        "insert into notes (id, tenant, body, secret) select i, case when i %% 100 = 0 then 'tenant_a' else 'tenant_b' end,"
        " 'camping note number ' || i, 'salary ' || i from generate_series(1, %s) i",
        (ROWS,),
    )
    conn.execute("alter table notes enable row level security")
    conn.execute("create policy own_rows on notes using (tenant = current_user)")
    for role in ("tenant_a", "tenant_b", "tenant_c"):
        conn.execute(f"drop role if exists {role}")
        conn.execute(f"create role {role}")
        conn.execute(f"grant usage on schema vectorize to {role}")
    conn.execute("grant select (id, tenant, body, updated_at) on notes to tenant_a, tenant_b")
    create_job(conn, job_name="notes", src_table="notes", src_columns=["body"], primary_key="id")
    _embed_synthetically(conn)
    yield
    conn.execute("drop table notes cascade")
    conn.execute("delete from vectorize.job")
    for role in ("tenant_a", "tenant_b", "tenant_c"):
        conn.execute(f"drop owned by {role}")
        conn.execute(f"drop role {role}")


@pytest.fixture
async def tenant_api(settings, catalog, tmp_path, tenants):
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps(TOKENS))
    async with api_client(dataclasses.replace(settings, api_tokens=path), catalog) as client:
        yield client


async def _search(api, token: str, **params):
    response = await api.get(
        "/api/v1/search",
        params={"job_name": "notes", "query": "camping note", **params},
        headers={"Authorization": f"Bearer {token}"},
    )
    return response.status, await response.json()


async def test_each_token_searches_as_its_role(tenant_api) -> None:
    status, rows = await _search(tenant_api, "a" * 32, limit="10")
    assert status == 200, rows
    assert len(rows) == 10 and {r["tenant"] for r in rows} == {"tenant_a"}  # 1% of the rows, yet a full page
    assert all("secret" not in r for r in rows)  # a column the role may not read never appears
    status, rows = await _search(tenant_api, "a" * 32, limit="300")
    assert status == 200 and len(rows) == ROWS // 100  # every row it may see, and no other
    status, rows = await _search(tenant_api, "b" * 32, limit="10")
    assert status == 200 and len(rows) == 10 and {r["tenant"] for r in rows} == {"tenant_b"}
    # A filter or return column outside what the role may read is refused, never answered.
    status, error = await _search(tenant_api, "b" * 32, secret="salary 1")
    assert status == 403, error
    status, error = await _search(tenant_api, "c" * 32)
    assert status == 403 and "may not read" in error["error"]
    status, error = await _search(tenant_api, "x" * 32)
    assert status == 401


async def test_a_token_sees_only_its_jobs_and_may_not_manage_them(tenant_api, conn) -> None:
    conn.execute("create table other (id int primary key, body text, updated_at timestamptz default now())")
    conn.execute("grant select on other to tenant_a")
    create_job(conn, job_name="other", src_table="other", src_columns=["body"], primary_key="id")
    listed = await (await tenant_api.get("/api/v1/table", headers={"Authorization": "Bearer " + "a" * 32})).json()
    assert [j["job_name"] for j in listed] == ["notes"]
    hidden = await tenant_api.get("/api/v1/table/other", headers={"Authorization": "Bearer " + "a" * 32})
    assert hidden.status == 404
    # tenant_b may see every job whose source it can read: notes, not other.
    listed = await (await tenant_api.get("/api/v1/table", headers={"Authorization": "Bearer " + "b" * 32})).json()
    assert [j["job_name"] for j in listed] == ["notes"]
    deleting = await tenant_api.delete("/api/v1/table/notes", headers={"Authorization": "Bearer " + "a" * 32})
    assert deleting.status == 403
    assert conn.execute("select count(*) as n from vectorize.job").fetchone()["n"] == 2


def test_psql_users_search_as_themselves(tenants, conn) -> None:
    """vectorize.search() called by a role in psql: the same rows the API gives that role's token."""
    vector = conn.execute('select embedding from vectorize."_embeddings_notes" where id = 5').fetchone()["embedding"]
    for role, expected in (("tenant_a", "tenant_a"), ("tenant_b", "tenant_b")):
        with conn.transaction():
            conn.execute(f"set local role {role}")
            rows = [r["search"] for r in conn.execute("select vectorize.search('notes', %s::vector, 10)", (vector,)).fetchall()]
            visible = conn.execute('select count(*) as n from vectorize."_embeddings_notes"').fetchone()["n"]
        assert len(rows) == 10 and {r["tenant"] for r in rows} == {expected}
        assert all("secret" not in r for r in rows)
        assert visible == (ROWS // 100 if role == "tenant_a" else ROWS - ROWS // 100)
    with conn.transaction():
        conn.execute("set local role tenant_c")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select vectorize.search('notes', %s::vector, 10)", (vector,))


async def test_a_managing_token_defines_jobs_only_over_what_its_role_may_read(tenant_api, conn) -> None:
    job = {
        "job_name": "mine",
        "src_schema": "public",
        "src_table": "notes",
        "primary_key": "id",
        "update_time_col": "updated_at",
        "model": "sentence-transformers/all-MiniLM-L6-v2",
    }
    manage = {"Authorization": "Bearer " + "d" * 32}
    refused = await tenant_api.post("/api/v1/table", json={**job, "src_columns": ["secret"]}, headers=manage)
    assert refused.status == 403 and "may not read" in (await refused.json())["error"]
    assert conn.execute("select count(*) as n from vectorize.job where job_name = 'mine'").fetchone()["n"] == 0
    search_only = await tenant_api.post(
        "/api/v1/table", json={**job, "src_columns": ["body"]}, headers={"Authorization": "Bearer " + "b" * 32}
    )
    assert search_only.status == 403
    created = await tenant_api.post("/api/v1/table", json={**job, "src_columns": ["body"]}, headers=manage)
    assert created.status == 200, await created.text()
    deleted = await tenant_api.delete("/api/v1/table/mine", headers=manage)
    assert deleted.status == 200
