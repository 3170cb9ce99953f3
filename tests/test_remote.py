"""openai/<model>: a local fake server speaking OpenAI's embeddings protocol, errors included."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import psycopg
import pytest

from vectorize.db.database import publish_models
from vectorize.embedding.catalog import ModelCatalog
from vectorize.embedding.remote import OpenAIEmbedder, RemoteEmbeddingError
from vectorize.paths import MODELS_DIR
from vectorize.worker.loop import Worker

from .fake_openai import DIM, KEY, fake_vector, serve_fake_openai
from .helpers import create_job, embedding_count, queue_depth, wait_until


@pytest.fixture
async def fake_openai():
    async with serve_fake_openai() as (fake, url):
        yield fake, url


def embedder(base_url: str, **kwargs) -> OpenAIEmbedder:
    return OpenAIEmbedder("openai/fake-embed", api_key=KEY, base_url=base_url, sleep=lambda s: None, **kwargs)


async def test_batches_keep_order_and_learn_the_dimension(fake_openai) -> None:
    fake, url = fake_openai
    client = embedder(url)
    texts = [f"text {i}" for i in range(600)] + [""]
    vectors = await asyncio.to_thread(client.embed, texts)
    assert [len(r["input"]) for r in fake.requests] == [256, 256, 89]
    assert fake.requests[0]["model"] == "fake-embed"
    assert client.dimension == DIM and vectors.shape == (601, DIM)
    want = np.array(fake_vector("text 300"), dtype=np.float32)
    assert np.allclose(vectors[300], want / np.linalg.norm(want), atol=1e-6)


async def test_retries_429_and_5xx_with_backoff(fake_openai) -> None:
    fake, url = fake_openai
    waits: list[float] = []
    client = OpenAIEmbedder("openai/fake-embed", api_key=KEY, base_url=url, sleep=waits.append, backoff=0.5)
    fake.script = [429, 500, 500]
    vectors = await asyncio.to_thread(client.embed, ["hello"])
    assert vectors.shape == (1, DIM) and len(fake.requests) == 4
    assert waits == [0.0, 1.0, 2.0]  # Retry-After: 0 honoured, then exponential backoff


async def test_client_errors_are_not_retried_and_carry_the_message(fake_openai) -> None:
    fake, url = fake_openai
    fake.script = [400]
    with pytest.raises(RemoteEmbeddingError, match="'input' is invalid"):
        await asyncio.to_thread(embedder(url).embed, ["hello"])
    assert len(fake.requests) == 1
    bad_key = OpenAIEmbedder("openai/fake-embed", api_key="wrong", base_url=url, sleep=lambda s: None)
    with pytest.raises(RemoteEmbeddingError, match=r"401.*Incorrect API key"):
        await asyncio.to_thread(bad_key.embed, ["hello"])


async def test_gives_up_after_max_retries(fake_openai) -> None:
    fake, url = fake_openai
    fake.script = [500] * 10
    with pytest.raises(RemoteEmbeddingError, match="500"):
        await asyncio.to_thread(embedder(url, max_retries=2).embed, ["hello"])
    assert len(fake.requests) == 3


async def test_a_job_on_a_remote_model_is_embedded_by_the_worker(fake_openai, conn, settings) -> None:
    fake, url = fake_openai
    cache = ModelCatalog(MODELS_DIR, openai_models=("fake-embed",), openai_base_url=url, openai_api_key=KEY)
    with psycopg.connect(settings.database_url) as c:
        models, unavailable = await asyncio.to_thread(cache.available)
        publish_models(c, models)
    assert not unavailable
    assert any(m.name == "openai/fake-embed" and m.dimension == DIM for m in models)
    conn.execute("create table notes (id int primary key, body text, updated_at timestamptz default now())")
    conn.execute("insert into notes select g, 'note ' || g, now() from generate_series(1, 30) g")
    create_job(conn, job_name="notes", src_table="notes", src_columns=["body"], primary_key="id", model="openai/fake-embed")
    assert (
        conn.execute(
            "select format_type(atttypid, atttypmod) as t from pg_attribute where attrelid = 'vectorize._embeddings_notes'::regclass and attname = 'embedding'"
        ).fetchone()["t"]
        == f"vector({DIM})"
    )
    stop = asyncio.Event()
    task = asyncio.create_task(Worker(replace(settings), cache).run(stop))
    try:
        await wait_until(lambda: embedding_count(conn, "notes") == 30 and queue_depth(conn) == 0, timeout=30)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    assert fake.requests and all(r["model"] == "fake-embed" for r in fake.requests)
