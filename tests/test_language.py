"""A job's language: the text search configuration of its full-text half, for the stored terms and
for queries alike; any the database has; changing it re-makes the terms and embeds nothing."""

from __future__ import annotations

from .helpers import MODEL, embedding_count, queue_depth, wait_until

ROWS = [
    (1, "Die alten Häuser am Fluss wurden renoviert"),
    (2, "Der Hund schläft im Garten"),
    (3, "Ein Buch über Computer und Netzwerke"),
]


def _job(name: str, language: str | None) -> dict:
    job = {
        "job_name": name,
        "src_schema": "public",
        "src_table": "texte",
        "src_columns": ["body"],
        "primary_key": "id",
        "update_time_col": "updated_at",
        "model": MODEL,
    }
    return job if language is None else {**job, "language": language}


async def _fts_rank_of_houses(api, job: str) -> int | None:
    """ "Haus" matches "Häuser" only when German stemming makes both "haus"."""
    response = await api.get("/api/v1/search", params={"job_name": job, "query": "Haus", "limit": "3"})
    assert response.status == 200
    return next(r["fts_rank"] for r in await response.json() if r["id"] == 1)


async def test_a_german_job_stems_german_and_an_english_one_does_not(conn, api, start_worker) -> None:
    conn.execute("create table texte (id int primary key, body text, updated_at timestamptz not null default now())")
    for row in ROWS:
        conn.execute("insert into texte (id, body) values (%s, %s)", row)
    assert (await api.post("/api/v1/table", json=_job("deutsch", "german"))).status == 200
    assert (await api.post("/api/v1/table", json=_job("englisch", None))).status == 200
    start_worker()
    await wait_until(
        lambda: embedding_count(conn, "deutsch") == 3 and embedding_count(conn, "englisch") == 3 and queue_depth(conn) == 0
    )
    assert await _fts_rank_of_houses(api, "deutsch") == 1
    assert await _fts_rank_of_houses(api, "englisch") is None
    job = await (await api.get("/api/v1/table/deutsch")).json()
    assert job["language"] == "german" and job["generations"][0]["language"] == "german"
    # The same from SQL: vectorize.search() reads the job's language for the query too.
    rows = conn.execute(
        "select r from vectorize.search('deutsch', (select embedding from vectorize._embeddings_deutsch where id = 2), 3, '{}', 'Haus') r"
    ).fetchall()
    assert next(r["r"]["fts_rank"] for r in rows if r["r"]["id"] == 1) == 1


async def test_an_unknown_language_is_a_400_that_lists_the_installed_ones(conn, api) -> None:
    conn.execute("create table texte (id int primary key, body text, updated_at timestamptz not null default now())")
    response = await api.post("/api/v1/table", json=_job("deutsch", "klingon"))
    body = await response.json()
    assert response.status == 400 and '"klingon"' in body["error"] and "german" in body["error"] and "simple" in body["error"]
    assert conn.execute("select count(*) as n from vectorize.job").fetchone()["n"] == 0


async def test_changing_the_language_embeds_nothing_and_remakes_the_terms(conn, api, start_worker) -> None:
    conn.execute("create table texte (id int primary key, body text, updated_at timestamptz not null default now())")
    for row in ROWS:
        conn.execute("insert into texte (id, body) values (%s, %s)", row)
    assert (await api.post("/api/v1/table", json=_job("texte", None))).status == 200
    handle = start_worker(poll_interval=0.2)
    await wait_until(lambda: embedding_count(conn, "texte") == 3 and queue_depth(conn) == 0)
    assert await _fts_rank_of_houses(api, "texte") is None
    plan = await (await api.put("/api/v1/table/texte?dry_run=true", json=_job("texte", "german"))).json()
    assert plan["embeds"] == "nothing", plan
    before = handle.worker.inferences
    response = await api.put("/api/v1/table/texte", json=_job("texte", "german"))
    assert response.status == 202, await response.text()
    await wait_until(lambda: conn.execute("select generation from vectorize.job").fetchone()["generation"] == 2, timeout=60)
    assert handle.worker.inferences == before  # not one text embedded again
    assert await _fts_rank_of_houses(api, "texte") == 1
    assert conn.execute("select language from vectorize.job").fetchone()["language"] == "german"
