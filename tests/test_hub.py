"""Any sentence-transformers model by its hub name, through the real huggingface_hub code against a
prepared cache (this machine cannot reach the hub): described by its configuration files when a job
names it, its weights awaited by the worker (the job waits, nothing fails), then exported and
embedding exactly as sentence-transformers would, its query and document prompts included."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from vectorize.embedding.build.tuning import Tuner
from vectorize.embedding.build.tuning_records import TuningStore
from vectorize.embedding.catalog import ModelCatalog
from vectorize.embedding.hub import Hub
from vectorize.embedding.manifests import load_manifests, source_dir
from vectorize.paths import MODELS_DIR

from .fake_hub import FakeHub
from .helpers import MODEL, MY_JOB, api_client, embedding_count, queue_depth, stored_vector, vector_of, wait_until

REVISION = "0123456789abcdef0123456789abcdef01234567"
WEIGHTS = ("model.safetensors", "tokenizer.json")


def _snapshot(cache: Path, repo: str) -> Path:
    """An entry of huggingface_hub's cache, laid out as it lays them out."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(REVISION)
    snapshot = folder / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path: Path) -> Path:
    """acme/minilm: all-MiniLM-L6-v2's own files, its weights not yet arrived; acme/gpt: a GPT-2
    config (an architecture the exporter does not build); acme/custom: a model that needs its own code."""
    cache = tmp_path / "hf"
    official = source_dir(load_manifests(MODELS_DIR)[MODEL])
    minilm = _snapshot(cache, "acme/minilm")
    for item in official.iterdir():
        if item.name in WEIGHTS:
            continue
        (shutil.copytree if item.is_dir() else shutil.copy)(item, minilm / item.name)
    # e5's way: a prompt before queries and one before passages (sentence-transformers' config).
    prompts = {"prompts": {"query": "query: ", "passage": "passage: "}, "default_prompt_name": None}
    (minilm / "config_sentence_transformers.json").write_text(json.dumps(prompts))
    gpt = _snapshot(cache, "acme/gpt")
    (gpt / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 768}))
    custom = _snapshot(cache, "acme/custom")
    (custom / "config.json").write_text(json.dumps({"model_type": "bert", "auto_map": {"AutoModel": "x.Y"}}))
    return cache


def _arrive(cache: Path) -> None:
    """The weights finish downloading."""
    official = source_dir(load_manifests(MODELS_DIR)[MODEL])
    for name in WEIGHTS:
        shutil.copy(official / name, cache / "models--acme--minilm" / "snapshots" / REVISION / name)


async def test_a_hub_model_waits_for_its_weights_then_embeds_like_sentence_transformers(
    hub_cache, tmp_path, conn, products, settings, start_worker, catalog
) -> None:
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    for manifest in MODELS_DIR.glob("*.json"):  # ours, without their exports (the hub model's go here)
        shutil.copy(manifest, models_dir)
    tuner = Tuner(TuningStore([models_dir]), models_dir, 2, enabled=False)
    hub_catalog = ModelCatalog(models_dir, tuner=tuner, hub=Hub(cache_dir=hub_cache, offline=True))
    async with api_client(settings, hub_catalog) as api:
        created = await api.post("/api/v1/table", json={**MY_JOB, "model": "acme/minilm"})
        assert created.status == 200, await created.text()
        assert conn.execute("select dimension from vectorize.model where name = 'acme/minilm'").fetchone()["dimension"] == 384

        start_worker(with_catalog=hub_catalog, embedder_backoff=0.1, embedder_backoff_max=0.3, poll_interval=0.2)
        waiting = await wait_until(
            lambda: conn.execute(
                "select waiting_reason from vectorize.job_status where sync_state = 'waiting_for_embedder'"
            ).fetchone(),
            timeout=20,
        )
        assert "acme/minilm" in waiting["waiting_reason"]
        assert embedding_count(conn) == 0 and conn.execute("select count(*) as n from vectorize.failure").fetchone()["n"] == 0

        _arrive(hub_cache)
        await wait_until(lambda: embedding_count(conn) == 40 and queue_depth(conn) == 0, timeout=120)
        assert conn.execute("select count(*) as n from vectorize.failure").fetchone()["n"] == 0
        name = conn.execute("select product_name, description from my_products where product_id = 3").fetchone()
        ours = stored_vector(conn, 3)
        # As sentence-transformers' encode_document / encode_query: the prompt, then the text.
        theirs = vector_of(catalog, f"passage: product_name: {name['product_name']} description: {name['description']}")
        assert float(np.dot(ours, theirs)) >= 0.9999
        query = hub_catalog.get("acme/minilm").embed(["camping gear"], kind="query")[0]
        assert float(np.dot(query, vector_of(catalog, "query: camping gear"))) >= 0.9999
        assert float(np.dot(query, vector_of(catalog, "camping gear"))) < 0.99  # the prompt made a difference
        assert (models_dir / "acme--minilm.json").exists()  # the next start finds it without the hub

        for model, words in (
            ("acme/gpt", "model_type 'gpt2' is not supported; supported: BERT"),
            ("acme/custom", "custom code"),
            ("acme/absent", "not in the local Hugging Face cache"),
        ):
            refused = await api.post("/api/v1/table", json={**MY_JOB, "job_name": "other", "model": model})
            body = await refused.json()
            assert refused.status == 400 and words in body["error"], body
            assert "sentence-transformers/all-MiniLM-L6-v2" in body["error"]


def test_models_pull_fetches_and_exports_ahead_of_the_first_job(hub_cache, tmp_path) -> None:
    """`vectorize models pull <org>/<name>`: the files through huggingface_hub (here its cache, set
    by HF_HUB_CACHE as a user would), the graph exported, the manifest there for the next start."""
    import os
    import subprocess
    import sys

    _arrive(hub_cache)
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    for manifest in MODELS_DIR.glob("*.json"):
        shutil.copy(manifest, models_dir)
    env = {**os.environ, "HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1", "VECTORIZE_MODELS_DIR": str(models_dir)}
    pulled = subprocess.run(
        [sys.executable, "-m", "vectorize", "models", "pull", "acme/minilm"], env=env, capture_output=True, text=True
    )
    assert pulled.returncode == 0, pulled.stderr
    assert (models_dir / "acme--minilm" / "model.onnx").exists() and "384 dimensions" in pulled.stdout
    assert "acme/minilm" in load_manifests(models_dir)
    refused = subprocess.run(
        [sys.executable, "-m", "vectorize", "models", "pull", "acme/gpt"], env=env, capture_output=True, text=True
    )
    assert refused.returncode == 1 and "'gpt2'" in refused.stderr and "MPNet" in refused.stderr


TINY = Path(__file__).parent / "fixtures" / "tiny_models"


def _status(conn) -> dict:
    return conn.execute("select sync_state, waiting_reason from vectorize.job_status where job_name = 'my_job'").fetchone()


async def test_a_hub_download_through_huggingface_hub_shows_its_size_and_progress_and_outlives_an_outage(
    tmp_path, conn, products, settings, start_worker, monkeypatch
) -> None:
    """The real huggingface_hub code against a local server speaking the hub's protocol: a dry run
    says the download size (and counts tokens with the model's own tokenizer, its weights not
    fetched); a job waits while the hub fails (nothing failed, nothing parked), then shows the
    download's progress, then backfills with the model, an XLM-RoBERTa, without an operator."""
    from aiohttp.test_utils import TestServer
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # conftest keeps every other test offline
    # Its reads are 10 MB each (a real model's progress moves in those steps); ours is 0.1 MB.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 4096)
    model_files = TINY / "xlm-roberta-mean"
    fake = FakeHub({"acme/tiny-xlmr": model_files})
    server = TestServer(fake.app)
    await server.start_server()
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    for manifest in MODELS_DIR.glob("*.json"):
        shutil.copy(manifest, models_dir)
    hub = Hub(cache_dir=tmp_path / "hf", endpoint=str(server.make_url("")).rstrip("/"))
    hub_catalog = ModelCatalog(models_dir, tuner=Tuner(TuningStore([models_dir]), models_dir, 2, enabled=False), hub=hub)
    job = {**MY_JOB, "model": "acme/tiny-xlmr"}
    try:
        async with api_client(settings, hub_catalog) as api:
            dry = await api.post("/api/v1/table?dry_run=true", json=job)
            plan = await dry.json()
            assert dry.status == 200, plan
            run_files = ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
            assert plan["download_bytes"] == sum((model_files / f).stat().st_size for f in run_files)
            assert "MB from the Hugging Face hub (acme/tiny-xlmr)" in plan["download"] and plan["tokens"] > 0
            assert "model.safetensors" not in fake.downloads and plan["rate_tokens_per_second"] is None

            fake.broken = True
            created = await api.post("/api/v1/table", json=job)
            assert created.status == 200, await created.text()
            start_worker(with_catalog=hub_catalog, embedder_backoff=0.1, embedder_backoff_max=0.3, poll_interval=0.2)
            failed = await wait_until(
                lambda: (s := _status(conn))["waiting_reason"] and "could not be fetched" in s["waiting_reason"] and s, timeout=60
            )
            assert failed["sync_state"] == "waiting_for_embedder"
            assert embedding_count(conn) == 0 and conn.execute("select count(*) as n from vectorize.failure").fetchone()["n"] == 0

            fake.hold = asyncio.Event()
            fake.broken = False
            # Held half-way through the weights: the waiting reason says how far the download is.
            fetching = await wait_until(
                lambda: (
                    (s := _status(conn))["waiting_reason"]
                    and (m := re.search(r"\((\d+)% of 0\.\d MB\)", s["waiting_reason"]))
                    and int(m.group(1)) >= 40
                    and m
                ),
                timeout=60,
            )
            assert int(fetching.group(1)) < 100, fetching.group(0)
            fake.hold.set()
            rows_embedded = 'select count(distinct product_id) as n from vectorize."_embeddings_my_job"'
            await wait_until(lambda: conn.execute(rows_embedded).fetchone()["n"] == 40 and queue_depth(conn) == 0, timeout=120)
            assert conn.execute("select count(*) as n from vectorize.failure").fetchone()["n"] == 0
            assert (
                conn.execute("select dimension from vectorize.model where name = 'acme/tiny-xlmr'").fetchone()["dimension"] == 32
            )
            searched = await api.get("/api/v1/search", params={"job_name": "my_job", "query": "camping", "limit": "3"})
            assert searched.status == 200 and len(await searched.json()) == 3
            assert {"acme--tiny-xlmr.json", "acme--tiny-xlmr-int8.json"} <= {p.name for p in models_dir.iterdir()}
    finally:
        await server.close()
