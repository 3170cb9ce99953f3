"""The OpenAPI document matches what the running app really answers (schemathesis)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace

import psycopg
import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from psycopg import sql

from vectorize.api import create_app
from vectorize.config import Settings
from vectorize.db import make_pool
from vectorize.openapi import SPEC
from vectorize.paths import SQL_DIR
from vectorize.worker import Worker

from .conftest import MY_JOB, TEMPLATE, _url_for

schema = schemathesis.openapi.from_dict(SPEC)


@pytest.fixture(scope="module")
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
        runner = web.AppRunner(create_app(app_settings, pool, encoders))
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


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_endpoint_answers_as_documented(case, live_api: str) -> None:
    # Valid-looking input may still be refused (an unknown job is a documented 404), so the
    # "positive data must be accepted" check does not apply; everything else does, including
    # no 5xx, documented status codes, content types and response schemas.
    case.call_and_validate(base_url=live_api, excluded_checks=[schemathesis.checks.positive_data_acceptance])


def test_document_is_served(live_api: str) -> None:
    import json
    import urllib.request

    with urllib.request.urlopen(f"{live_api}/api/v1/openapi.json") as response:
        served = json.loads(response.read())
    assert served["openapi"].startswith("3.") and set(served["paths"]) >= {"/api/v1/table", "/api/v1/search", "/health"}
