"""Shared test fixtures: one embedded PostgreSQL for the session, a fresh database
per test cloned from a migrated template, the real ONNX model, and helpers."""

from __future__ import annotations

import os

# No test reaches the Hugging Face hub (this machine cannot): hub models come from a prepared
# cache (tests/test_hub.py). Set before huggingface_hub is imported, which reads it once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import asyncio
import itertools
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
from aiohttp.test_utils import TestClient
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg.rows import dict_row

from vectorize.config import Settings
from vectorize.db.database import make_pool, migrate, publish_models
from vectorize.db.local_postgres import embedded_postgres
from vectorize.embedding.catalog import DEFAULT_MODEL, ModelCatalog
from vectorize.http.app import HTTP_PARSER_LIMITS, create_app
from vectorize.paths import MODELS_DIR, SQL_DIR
from vectorize.worker.loop import Worker

from .helpers import MY_JOB, api_client, url_for

# In CI the property-based tests use a fixed seed, so a run is reproducible; locally they explore.
hypothesis.settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    hypothesis.settings.load_profile("ci")
TEMPLATE = "vectorize_template"
_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    # Not under pytest's tmp dir: pytest resets that to mode 0700 when another session starts,
    # which would lock out the unprivileged user the server runs as when tests run as root.
    parent = Path(tempfile.mkdtemp(prefix="vectorize-test-pg-"))
    parent.chmod(0o755)
    server = embedded_postgres().get_server(parent / "data", cleanup_mode="delete")
    url = server.get_uri()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("alter system set max_connections = 200")
        conn.execute("alter system set log_lock_waits = on")
    yield url
    server.cleanup()
    shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture(scope="session")
def template_url(pg_admin_url: str, catalog: ModelCatalog) -> str:
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(TEMPLATE)))
    url = url_for(pg_admin_url, TEMPLATE)
    migrate(url)
    with psycopg.connect(url) as conn:
        publish_models(conn, catalog.local_models())
    return url


@pytest.fixture
def db_url(pg_admin_url: str, template_url: str) -> Iterator[str]:
    """A database of its own for each test, cloned from the migrated template."""
    name = f"test_{next(_counter)}_{int(time.time() * 1000) % 100000}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {} template {}").format(sql.Identifier(name), sql.Identifier(TEMPLATE)))
    yield url_for(pg_admin_url, name)
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def catalog() -> ModelCatalog:
    models = ModelCatalog(MODELS_DIR)
    models.get(DEFAULT_MODEL)
    return models


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
        """As the service does it: finish the batches in flight, or abort them after a grace period."""
        self.stop.set()
        done, _ = await asyncio.wait({self.task}, timeout=6)
        if not done:
            self.worker.abort.set()
        await asyncio.wait_for(self.task, 15)


@pytest_asyncio.fixture
async def start_worker(settings: Settings, catalog: ModelCatalog) -> AsyncIterator[Callable[..., RunningWorker]]:
    """Start in-process workers on the test's database; each is stopped afterwards."""
    running: list[RunningWorker] = []

    def start(with_catalog: ModelCatalog | None = None, **overrides: object) -> RunningWorker:
        stop = asyncio.Event()
        worker = Worker(replace(settings, **overrides), with_catalog or catalog)
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
async def api(settings: Settings, catalog: ModelCatalog) -> AsyncIterator[TestClient]:
    async with api_client(settings, catalog) as client:
        yield client


@pytest.fixture(scope="session")
def live_api(pg_admin_url: str, template_url: str, catalog) -> Iterator[str]:
    """The real app on a real port, over a database with the example job backfilled."""
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute("drop database if exists openapi_test with (force)")
        conn.execute(sql.SQL("create database openapi_test template {}").format(sql.Identifier(TEMPLATE)))
    url = url_for(pg_admin_url, "openapi_test")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute((SQL_DIR / "demo" / "my_products.sql").read_text().encode())
        conn.execute(
            "select vectorize.create_job(%(job_name)s, %(src_schema)s, %(src_table)s, %(src_columns)s,"
            " %(primary_key)s, %(update_time_col)s, %(model)s)",
            MY_JOB,
        )
    app_settings = replace(Settings(), database_url=url)

    async def backfill() -> None:
        worker = Worker(app_settings, catalog)
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
        runner = web.AppRunner(create_app(app_settings, pool, catalog), **HTTP_PARSER_LIMITS)
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
    return url_for(pg_admin_url, "openapi_test")
