"""Helpers shared by the tests: waiting on conditions, the example job, looking at a job's tables."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import numpy as np
import psycopg
from aiohttp.test_utils import TestClient, TestServer
from psycopg import sql

from vectorize.cli.console import DEMO_JOB
from vectorize.config import Settings
from vectorize.db.database import make_pool
from vectorize.embedding.catalog import DEFAULT_MODEL, ModelCatalog
from vectorize.http.app import create_app

FIXTURES = Path(__file__).parent / "fixtures"
#: 5000 real Debian package descriptions (the benchmark's corpus), for tables with some bulk.
DESCRIPTIONS = Path(__file__).parent.parent / "bench" / "data" / "debian_descriptions_5000.jsonl.gz"


def load_descriptions(conn: psycopg.Connection, table: str, rows: int) -> None:
    """A table ``(id, description, updated_at)`` holding the first ``rows`` descriptions."""
    conn.execute(
        sql.SQL("create table {} (id int primary key, description text, updated_at timestamptz not null default now())").format(
            sql.Identifier(table)
        )
    )
    with (
        gzip.open(DESCRIPTIONS, "rt", encoding="utf-8") as handle,
        conn.cursor().copy(sql.SQL("copy {} (id, description) from stdin").format(sql.Identifier(table))) as copy,
    ):
        for number, line in enumerate(handle, start=1):
            if number > rows:
                break
            item = json.loads(line)
            copy.write_row((number, f"{item['package']}: {item['short_description']}. {item['long_description']}"))


def manpages(limit: int | None = None) -> list[dict]:
    """Real manual pages, 12-25 kB each (tests/fixtures/README.md), ``{"name", "text"}``."""
    with gzip.open(FIXTURES / "manpages_100.jsonl.gz", "rt", encoding="utf-8") as handle:
        pages = [json.loads(line) for line in handle]
    return pages[:limit]


def load_manpages(conn: psycopg.Connection, pages: list[dict], table: str = "pages") -> None:
    """A table ``(id, name, body, updated_at)`` of the pages, numbered from 1 in order."""
    conn.execute(
        sql.SQL("create table {} (id int primary key, name text, body text, updated_at timestamptz default now())").format(
            sql.Identifier(table)
        )
    )
    with conn.cursor().copy(sql.SQL("copy {} (id, name, body) from stdin").format(sql.Identifier(table))) as copy:
        for number, page in enumerate(pages, start=1):
            copy.write_row((number, page["name"], page["text"]))


def deep_sentence(text: str, offsets: list[tuple[int, int]]) -> str:
    """A query from deep inside a document: the longest whole sentence (10+ words) in the ~6000
    characters after its 400th token, where a model that truncates at 256 never reads. The
    longest, because a short one ("This option can be given more than once.") belongs to no
    document in particular. ``offsets``: the text's tokens as character spans."""
    window = text[offsets[400][0] : offsets[400][0] + 6000]
    whole = [" ".join(m.group(0).split()) for m in re.finditer(r"(?<=[.!?]\s)[A-Z][^.!?]{60,400}[.!?]", window)]
    # A line-wrap hyphen ("hap\u2010 pen") is an artefact of the rendering, not a sentence.
    found = [s for s in whole if "\u2010 " not in s and len(s.split()) >= 10] or whole
    found = found or [" ".join(m.group(0).split()) for m in re.finditer(r"[A-Z][^.!?]{40,300}[.!?]", window)]
    return max(found, key=len)


def url_for(admin_url: str, database: str) -> str:
    """The URL of another database on the same server."""
    return psycopg.conninfo.make_conninfo(admin_url, dbname=database)


def _poll(predicate: Callable[[], object], deadline: float, timeout: float) -> object:
    """One look at ``predicate``: its value if truthy, None if not yet, AssertionError once past the deadline."""
    value = predicate()
    if value:
        return value
    if time.monotonic() > deadline:
        raise AssertionError(f"condition not met within {timeout}s (last value: {value!r})")
    return None


async def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02) -> object:
    """Poll ``predicate`` (sync) until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (value := _poll(predicate, deadline, timeout)) is None:
        await asyncio.sleep(interval)
    return value


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.05) -> object:
    """``wait_until`` for synchronous tests (subprocess and CLI tests)."""
    deadline = time.monotonic() + timeout
    while (value := _poll(predicate, deadline, timeout)) is None:
        time.sleep(interval)
    return value


#: The example job (pg_vectorize's my_products, as `vectorize demo` creates it).
MY_JOB = dict(DEMO_JOB)
MODEL = DEFAULT_MODEL


def create_job(conn: psycopg.Connection, **overrides: object) -> str:
    job = {**MY_JOB, **overrides}
    row = conn.execute(
        "insert into vectorize.job (job_name, src_table, src_schema, src_columns, primary_key, update_time_col, model)"
        " values (%(job_name)s, %(src_table)s, %(src_schema)s, %(src_columns)s, %(primary_key)s, %(update_time_col)s, %(model)s)"
        " returning id",
        job,
    ).fetchone()
    return str(row["id"] if isinstance(row, dict) else row[0])


def embedding_count(conn: psycopg.Connection, job: str = "my_job") -> int:
    return conn.execute(f'select count(*) as n from vectorize."_embeddings_{job}"').fetchone()["n"]


def stored_vector(conn: psycopg.Connection, pk: object, job: str = "my_job", key: str = "product_id") -> np.ndarray | None:
    row = conn.execute(f'select embedding from vectorize."_embeddings_{job}" where "{key}" = %s', (pk,)).fetchone()
    return None if row is None else row["embedding"].to_numpy().astype(np.float32)


def queue_depth(conn: psycopg.Connection) -> int:
    return conn.execute("select count(*) as n from vectorize.queue").fetchone()["n"]


def vector_of(catalog: ModelCatalog, text: str) -> np.ndarray:
    return catalog.get(MODEL).embed([text])[0]


async def backfilled_job(conn: psycopg.Connection, start_worker: Callable[..., object], **worker_settings: object) -> None:
    """The example job, created and fully backfilled by a running worker."""
    create_job(conn)
    start_worker(**worker_settings)
    await wait_until(lambda: embedding_count(conn) == 40 and queue_depth(conn) == 0)


@contextmanager
def scratch_database(admin_url: str, name: str, roles: tuple[str, ...]) -> Iterator[str]:
    """A new database and new login ``roles``, for a test of privileges; yields the database's
    URL (as the admin) and drops both afterwards."""
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
        for role in roles:
            admin.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("create role {} login").format(sql.Identifier(role)))
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        yield url_for(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(name)))
            for role in roles:
                admin.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))


@asynccontextmanager
async def api_client(settings: Settings, catalog: ModelCatalog) -> AsyncIterator[TestClient]:
    """The API app over a pool of its own, for a test that needs other settings or models."""
    pool = make_pool(settings.database_url or "", min_size=1, max_size=4)
    await pool.open()
    client = TestClient(TestServer(create_app(settings, pool, catalog)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()
        await pool.close()
