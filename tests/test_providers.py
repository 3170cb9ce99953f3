"""pg_vectorize's providers (openai/, azure/, ollama/, cohere/, voyage/, portkey/), each against a
local fake server speaking its real protocol: a job is created for any model name (registered on
first use), backfilled, follows a live change, answers searches (queries embedded as queries where
the protocol tells them apart), and rides out an outage longer than every retry with no row parked."""

from __future__ import annotations

import asyncio
import os
import sys
import time

import numpy as np
import pytest

from vectorize.embedding.catalog import ModelCatalog
from vectorize.paths import MODELS_DIR

from .fake_providers import DIM, PROVIDERS, normalised, serve_fake_providers
from .helpers import api_client, embedding_count, queue_depth, stored_vector, wait_until


@pytest.fixture
async def fake():
    async with serve_fake_providers() as served:
        yield served


def _job(model: str, name: str = "notes") -> dict:
    return {
        "job_name": name,
        "src_schema": "public",
        "src_table": "notes",
        "src_columns": ["body"],
        "primary_key": "id",
        "update_time_col": "updated_at",
        "model": model,
    }


def _current(conn, pk: int, text: str) -> bool:
    vector = stored_vector(conn, pk, job="notes", key="id")
    return vector is not None and np.allclose(vector, normalised(f"body: {text}"), atol=1e-5)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_provider_model_from_creation_through_an_outage(provider, fake, conn, settings, start_worker) -> None:
    server, protocols = fake
    catalog = ModelCatalog(MODELS_DIR, protocols=(protocols[provider],), remote_retries=1, remote_backoff=0.01)
    conn.execute("create table notes (id int primary key, body text, updated_at timestamptz not null default now())")
    conn.execute("insert into notes select g, 'note ' || g, now() from generate_series(1, 30) g")
    async with api_client(settings, catalog) as api:
        # A model name no list mentions, registered on first use; a 429 on the way is retried.
        server.script[provider] = [429]
        model = f"{provider}/fake-embed"
        created = await api.post("/api/v1/table", json=_job(model))
        assert created.status == 200, await created.text()
        dimension = conn.execute("select dimension from vectorize.model where name = %s", (model,)).fetchone()
        assert dimension == {"dimension": DIM}

        start_worker(with_catalog=catalog, embedder_backoff=0.1, embedder_backoff_max=0.3, poll_interval=0.2)
        await wait_until(lambda: embedding_count(conn, "notes") == 30 and queue_depth(conn) == 0, timeout=30)
        assert _current(conn, 7, "note 7")

        conn.execute("update notes set body = 'a live change', updated_at = now() where id = 1")
        await wait_until(lambda: _current(conn, 1, "a live change"), timeout=10)

        response = await api.get("/api/v1/search", params={"job_name": "notes", "query": "live change", "limit": "5"})
        assert response.status == 200 and len(await response.json()) == 5
        last = server.requests[provider][-1]
        if provider == "cohere":
            assert last["input_type"] == "search_query"
        if provider == "voyage":
            assert last["input_type"] == "query"

        # An outage longer than every retry: the job waits, nothing is parked, all catches up.
        server.down = True
        conn.execute("update notes set body = 'written during the outage ' || id, updated_at = now() where id between 2 and 4")
        await wait_until(
            lambda: (
                conn.execute("select sync_state from vectorize.job_status").fetchone()["sync_state"] == "waiting_for_embedder"
            ),
            timeout=10,
        )
        down_since = time.monotonic()
        await wait_until(lambda: time.monotonic() - down_since > 1.0, timeout=5)
        server.down = False
        await wait_until(lambda: all(_current(conn, pk, f"written during the outage {pk}") for pk in (2, 3, 4)), timeout=20)
        assert conn.execute("select count(*) as n from vectorize.failure").fetchone()["n"] == 0
        assert conn.execute("select status from vectorize.job").fetchone()["status"] == "active"

        # A model its provider does not know: a 400 in the provider's words, nothing created.
        refused = await api.post("/api/v1/table", json=_job(f"{provider}/nope", name="other"))
        body = await refused.json()
        assert refused.status == 400 and "not found" in body["error"] and "127.0.0.1" not in body["error"]
        assert conn.execute("select count(*) as n from vectorize.job").fetchone()["n"] == 1


def test_provider_models_need_their_provider_configured() -> None:
    """Without a key (or an endpoint) a provider's models are not offered: a clear 400 at creation."""
    catalog = ModelCatalog(MODELS_DIR)
    assert catalog.remote_protocol("cohere/embed-english-v3.0") is None
    assert catalog.remote_protocol("openai/text-embedding-3-small") is None
    listed = ModelCatalog(MODELS_DIR, openai_models=("text-embedding-3-small",))
    assert listed.remote_protocol("openai/text-embedding-3-small") is not None
    assert listed.remote_protocol("openai/text-embedding-3-large") is None  # the list is an allowlist
    keyed = ModelCatalog(MODELS_DIR, openai_api_key="sk-x")
    assert keyed.remote_protocol("openai/text-embedding-3-large") is not None  # any model, with a key


async def _register(name: str, env: dict[str, str]) -> tuple[int | None, bytes, bytes]:
    """`vectorize models register NAME` in a process of its own; its exit code and output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "vectorize",
        "models",
        "register",
        name,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    return process.returncode, out, err


async def test_models_register_lists_a_provider_model_for_sql_users(fake, conn, db_url) -> None:
    """`vectorize models register ollama/<model>`: afterwards an INSERT in psql may name it."""
    _, protocols = fake
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "VECTORIZE_OLLAMA_BASE_URL": protocols["ollama"].base_url,
        "VECTORIZE_TUNE": "off",
    }
    returncode, out, err = await _register("ollama/fake-embed", env)
    assert returncode == 0, err.decode()
    assert b"dimension 8" in out
    row = conn.execute("select dimension, provider from vectorize.model where name = 'ollama/fake-embed'").fetchone()
    assert row == {"dimension": DIM, "provider": "ollama"}
    conn.execute("create table notes (id int primary key, body text, updated_at timestamptz not null default now())")
    conn.execute(
        "insert into vectorize.job (job_name, src_schema, src_table, src_columns, primary_key, update_time_col, model)"
        " values ('notes', 'public', 'notes', '{body}', 'id', 'updated_at', 'ollama/fake-embed')"
    )
    returncode, _, err = await _register("cohere/embed-v4.0", env)
    assert returncode == 1 and b"COHERE_API_KEY" in err
