"""Fair, fresh scheduling: a job's live changes never wait behind another job's backfill or
embedder outage; freshness is measured and visible; a search can read its own writes."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import socket
import time
from dataclasses import replace

import aiohttp
import numpy as np
import psycopg
import pytest

from vectorize.cli.serve import model_catalog, prepare_database, serve
from vectorize.db.database import publish_models
from vectorize.embedding.catalog import ModelCatalog
from vectorize.paths import MODELS_DIR
from vectorize.worker.batch import content_hash

from .fake_openai import KEY, serve_fake_openai
from .helpers import (
    MY_JOB,
    create_job,
    embedding_count,
    load_descriptions,
    queue_depth,
    wait_until,
)

pytestmark = pytest.mark.slow

#: The issue's bound on a live change's latency while another job backfills.
P95_BOUND, P99_BOUND = 1.0, 2.0


def stored_hash(conn: psycopg.Connection, job: str, pk: int, key: str = "product_id") -> bytes | None:
    row = conn.execute(f'select content_hash from vectorize."_embeddings_{job}" where "{key}" = %s', (pk,)).fetchone()
    return None if row is None else bytes(row["content_hash"])


async def change_latency(conn: psycopg.Connection, job: str, pk: int, text: str) -> float:
    """Seconds from committing an UPDATE of one row to its new embedding being committed."""
    started = time.monotonic()
    row = conn.execute(
        f"update {job}_src set description = %s where product_id = %s returning product_name", (text, pk)
    ).fetchone()
    want = content_hash(f"product_name: {row['product_name']} description: {text}")
    await wait_until(lambda: stored_hash(conn, job, pk) == want, timeout=30, interval=0.005)
    return time.monotonic() - started


def small_job(conn: psycopg.Connection, name: str) -> None:
    """A copy of the 40 example products and a job on it."""
    conn.execute(f"create table {name}_src (like my_products including all)")
    conn.execute(f"insert into {name}_src select * from my_products")
    create_job(conn, job_name=name, src_table=f"{name}_src")


def percentiles(latencies: list[float]) -> tuple[float, float, float]:
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
    return float(p50), float(p95), float(p99)


async def probe_live_latency(conn, jobs: list[str], count: int, *, at_least: float = 0.0) -> list[float]:
    """``count`` live changes one after another, and more until ``at_least`` seconds have passed."""
    latencies: list[float] = []
    started = time.monotonic()
    for i in itertools.count():
        if i >= count and time.monotonic() - started >= at_least:
            break
        job = jobs[i % len(jobs)]
        latencies.append(await change_latency(conn, job, 1 + i % 40, f"probe {i} of live latency"))
        await asyncio.sleep(0.05)
    return latencies


async def test_a_live_change_never_waits_behind_another_jobs_backfill(conn, products, start_worker) -> None:
    small_job(conn, "small")
    start_worker()
    await wait_until(lambda: embedding_count(conn, "small") == 40 and queue_depth(conn) == 0, timeout=60)
    load_descriptions(conn, "big", 5000)
    created = time.monotonic()
    create_job(conn, job_name="big", src_table="big", src_columns=["description"], primary_key="id")
    await wait_until(lambda: embedding_count(conn, "big") > 0, timeout=120)
    # One backfill batch's time on this CPU (~1 s on AVX-512 VNNI, ~10 s on 2 AVX2 cores): the
    # probe lasts three of them, so backfill batches must commit inside it whatever the CPU's speed.
    batch_seconds = time.monotonic() - created
    embedded_before = embedding_count(conn, "big")

    latencies = await probe_live_latency(conn, ["small"], 60, at_least=3 * batch_seconds)

    embedded_during = embedding_count(conn, "big") - embedded_before
    p50, p95, p99 = percentiles(latencies)
    print(
        f"\nlive latency while a 5000-row job backfills: p50 {p50:.3f}s p95 {p95:.3f}s p99 {p99:.3f}s;"
        f" big: {embedded_during} rows embedded during the probe (one batch took {batch_seconds:.1f} s)"
    )
    assert embedding_count(conn, "big") < 5000, "the backfill ended before the probe did: nothing was measured"
    assert embedded_during > 0, "the backfill must keep going while live changes are served"
    assert p95 <= P95_BOUND and p99 <= P99_BOUND


async def test_two_workers_three_jobs_keep_live_changes_fast(conn, products, start_worker) -> None:
    small_job(conn, "left")
    small_job(conn, "right")
    first, second = start_worker(), start_worker()
    await wait_until(lambda: embedding_count(conn, "left") == 40 and embedding_count(conn, "right") == 40, timeout=60)
    await wait_until(lambda: queue_depth(conn) == 0, timeout=30)
    load_descriptions(conn, "big", 5000)
    create_job(conn, job_name="big", src_table="big", src_columns=["description"], primary_key="id")
    await wait_until(lambda: embedding_count(conn, "big") > 0, timeout=60)

    latencies = await probe_live_latency(conn, ["left", "right"], 60)

    p50, p95, p99 = percentiles(latencies)
    print(f"\ntwo workers, live latency while a third job backfills: p50 {p50:.3f}s p95 {p95:.3f}s p99 {p99:.3f}s")
    assert embedding_count(conn, "big") < 5000, "the backfill ended before the probe did: nothing was measured"
    # Both workers took part in the backfill: jobs are spread, not owned by one worker.
    assert first.worker.inferences > 0 and second.worker.inferences > 0
    assert p95 <= P95_BOUND and p99 <= P99_BOUND


async def test_an_embedder_outage_pauses_its_job_and_charges_no_row(conn, products, settings, start_worker, catalog) -> None:
    async with serve_fake_openai() as (fake, url):
        remote_catalog = ModelCatalog(MODELS_DIR, openai_models=("fake-embed",), openai_base_url=url, openai_api_key=KEY)
        remote_catalog._embedders.update({MY_JOB["model"]: catalog.get(MY_JOB["model"])})  # share the loaded ONNX model
        remote = remote_catalog.remote["openai/fake-embed"]
        remote.max_retries = 0
        models, _ = await asyncio.to_thread(remote_catalog.available)
        with psycopg.connect(settings.database_url) as c:
            publish_models(c, models)
        conn.execute("create table notes (id int primary key, body text, updated_at timestamptz default now())")
        conn.execute("insert into notes select g, 'note ' || g, now() from generate_series(1, 30) g")
        create_job(conn, job_name="notes", src_table="notes", src_columns=["body"], primary_key="id", model="openai/fake-embed")
        small_job(conn, "local")
        start_worker(
            remote_catalog, max_attempts=2, retry_backoff=0.1, embedder_backoff=0.5, embedder_backoff_max=2.0, poll_interval=1.0
        )
        try:
            await wait_until(lambda: embedding_count(conn, "notes") == 30 and embedding_count(conn, "local") == 40, timeout=60)
            await wait_until(lambda: queue_depth(conn) == 0, timeout=30)

            fake.down = True
            outage_started = time.monotonic()
            conn.execute("update notes set body = body || ' (edited in the outage)'")
            # Longer than every retry put together: row retries (2 tries, 0.1 s apart) and quick retries (none).
            latencies = []
            while time.monotonic() - outage_started < 8.0:
                latencies.append(await change_latency(conn, "local", 1 + len(latencies) % 40, f"outage probe {len(latencies)}"))
                await asyncio.sleep(0.1)
            status = conn.execute(
                "select sync_state, waiting_reason, pending_live from vectorize.job_status where job_name = 'notes'"
            ).fetchone()
            outage = time.monotonic() - outage_started
            calls = [t for t in fake.request_times if t >= outage_started]
            fake.down = False
            recovered_at = time.monotonic()

            assert status["sync_state"] == "waiting_for_embedder" and "503" in status["waiting_reason"]
            assert status["pending_live"] == 30
            assert conn.execute("select count(*) as n from vectorize.failure").fetchone()["n"] == 0
            assert conn.execute("select max(attempts) as n from vectorize.queue").fetchone()["n"] == 0
            assert 1 <= len(calls) <= outage * 1.0, f"{len(calls)} calls in {outage:.1f}s"
            p50, p95, p99 = percentiles(latencies)
            print(f"\nlocal job during the outage: {len(latencies)} changes, p50 {p50:.3f}s p95 {p95:.3f}s p99 {p99:.3f}s")
            assert p95 <= P95_BOUND and p99 <= P99_BOUND

            edited = content_hash("body: note 7 (edited in the outage)")
            await wait_until(lambda: queue_depth(conn) == 0 and stored_hash(conn, "notes", 7, key="id") == edited, timeout=30)
            print(f"recovered {time.monotonic() - recovered_at:.1f}s after the server did")
            assert conn.execute("select count(*) as n from vectorize.failure").fetchone()["n"] == 0
            state = conn.execute("select sync_state from vectorize.job_status where job_name = 'notes'").fetchone()
            assert state["sync_state"] == "live"
        finally:
            fake.down = False


async def test_lag_histogram_and_oldest_pending_gauges_move(conn, products, start_worker, api, catalog) -> None:
    create_job(conn)
    handle = start_worker()
    await wait_until(lambda: embedding_count(conn) == 40 and queue_depth(conn) == 0)

    def metric(text: str, name: str, labels: str) -> float:
        match = re.search(rf"^{name}{{{labels}}} (\S+)$", text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    before = await (await api.get("/metrics")).text()
    count_before = metric(before, "vectorize_sync_lag_seconds_count", 'job="my_job"')
    conn.execute("update my_products set description = 'lag probe' where product_id = 1")
    await wait_until(lambda: queue_depth(conn) == 0)
    after = await (await api.get("/metrics")).text()
    assert metric(after, "vectorize_sync_lag_seconds_count", 'job="my_job"') == count_before + 1
    assert metric(after, "vectorize_sync_lag_seconds_bucket", 'job="my_job",le="1.0"') >= count_before + 1
    assert metric(after, "vectorize_oldest_pending_seconds", 'job="my_job",lane="live"') == 0

    # With the worker stopped, a change waits and the oldest-pending gauge grows.
    await handle.shutdown()
    conn.execute("update my_products set description = 'waiting' where product_id = 2")
    await asyncio.sleep(0.3)  # the age being measured, not a synchronisation
    stuck = await (await api.get("/metrics")).text()
    assert metric(stuck, "vectorize_oldest_pending_seconds", 'job="my_job",lane="live"') >= 0.3
    status = await (await api.get("/api/v1/table/my_job")).json()
    assert status["pending_live"] == 1 and status["oldest_live_seconds"] >= 0.3 and status["sync_state"] == "live"
    start_worker()
    await wait_until(lambda: queue_depth(conn) == 0)
    done = await (await api.get("/metrics")).text()
    assert metric(done, "vectorize_oldest_pending_seconds", 'job="my_job",lane="live"') == 0
    assert metric(done, "vectorize_lane_rows_total", 'job="my_job",lane="live"') >= 1


async def test_read_your_writes_search_sees_every_update(conn, products, start_worker, api) -> None:
    create_job(conn)
    start_worker()
    await wait_until(lambda: embedding_count(conn) == 40 and queue_depth(conn) == 0)
    for i in range(100):
        pk = 1 + i % 40
        conn.execute("update my_products set description = %s where product_id = %s", (f"zork{i} marmalade telescope", pk))
        params = {"job_name": "my_job", "query": f"zork{i} marmalade telescope", "wait_for_sync": "5"}
        if i % 2:
            response = await api.post("/api/v1/search", json={**params, "wait_for_sync": 5})
        else:
            response = await api.get("/api/v1/search", params=params)
        assert response.status == 200, await response.text()
        assert response.headers["X-Vectorize-Fresh"] == "true"
        assert pk in [r["product_id"] for r in await response.json()], f"update {i} not seen"


async def test_wait_for_sync_says_when_it_ran_out(conn, products, api) -> None:
    create_job(conn)  # no worker: nothing gets embedded
    conn.execute("update my_products set description = 'never embedded' where product_id = 1")
    response = await api.get("/api/v1/search", params={"job_name": "my_job", "query": "x", "wait_for_sync": "0.2"})
    assert response.status == 200 and response.headers["X-Vectorize-Fresh"] == "false"
    bad = await api.get("/api/v1/search", params={"job_name": "my_job", "query": "x", "wait_for_sync": "forever"})
    assert bad.status == 400 and "wait_for_sync" in (await bad.json())["error"]


async def test_a_listener_that_dies_of_anything_is_restarted(conn, products, start_worker, caplog) -> None:
    create_job(conn)
    handle = start_worker(poll_interval=3600.0)
    await wait_until(lambda: embedding_count(conn) == 40 and queue_depth(conn) == 0, timeout=30)
    notifications = handle.worker.store.notifications
    calls = 0

    async def broken_once():
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("listener bug")
        async for item in notifications():
            yield item

    handle.worker.store.notifications = broken_once  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="vectorize.worker"):
        # Kill the current listener connection; the supervisor restarts it, the first restart dies of a bug.
        conn.execute("select pg_terminate_backend(pid) from pg_stat_activity where query ilike 'listen%%'")
        await wait_until(lambda: calls >= 2, timeout=15)
    assert any("task=listener" in r.getMessage() for r in caplog.records)
    await wait_until(
        lambda: conn.execute("select count(*) as n from pg_stat_activity where query ilike 'listen%%'").fetchone()["n"] > 0
    )
    started = time.monotonic()
    conn.execute("update my_products set description = 'heard again' where product_id = 3")
    await wait_until(lambda: queue_depth(conn) == 0, timeout=5)
    assert time.monotonic() - started < 2  # woken by NOTIFY, not by the hour-long poll


async def test_a_remote_model_down_at_start_up_is_published_once_it_answers(conn, products, settings, catalog) -> None:
    conn.execute("create table notes (id int primary key, body text, updated_at timestamptz default now())")
    conn.execute("insert into notes select g, 'note ' || g, now() from generate_series(1, 30) g")
    body = {**MY_JOB, "job_name": "notes", "src_table": "notes", "src_columns": ["body"], "primary_key": "id"}
    async with serve_fake_openai() as (fake, url):
        fake.down = True
        port = free_port()
        config = replace(
            settings, openai_models="fake-embed", openai_base_url=url, openai_api_key=KEY, openai_max_retries=0, port=port
        )
        remote_catalog = model_catalog(config)
        remote_catalog._embedders[MY_JOB["model"]] = catalog.get(MY_JOB["model"])  # share the loaded ONNX model
        config, unavailable = await asyncio.to_thread(prepare_database, config, remote_catalog)
        assert list(unavailable) == ["openai/fake-embed"]
        stop = asyncio.Event()
        service = asyncio.create_task(
            serve(config, remote_catalog, api=True, worker=True, stop=stop, unavailable_models=tuple(unavailable))
        )
        try:
            async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:

                async def create() -> aiohttp.ClientResponse:
                    async with http.post("/api/v1/table", json={**body, "model": "openai/fake-embed"}) as response:
                        await response.read()
                        return response

                await wait_until(lambda: service.done() or port_open(port), timeout=30)
                # Its server down: a 503 that says so (retry), not a 400 (the name is fine).
                refused = await create()
                assert refused.status == 503
                fake.down = False
                deadline = time.monotonic() + 15
                while (await create()).status != 200:
                    assert time.monotonic() < deadline, "the model was never published"
                    await asyncio.sleep(0.2)
            await wait_until(lambda: embedding_count(conn, "notes") == 30, timeout=30)
        finally:
            stop.set()
            await asyncio.wait_for(service, 15)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
