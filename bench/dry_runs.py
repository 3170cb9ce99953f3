"""Dry-run estimates next to the real work: what ``?dry_run=true`` predicts for a job (rows,
chunks, tokens, seconds at the engine's measured rate) and what the worker then did."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from vectorize.db.database import make_pool
from vectorize.embedding.catalog import ModelCatalog
from vectorize.paths import MODELS_DIR
from vectorize.service.dry_run import SPECIAL_TOKENS, plan


def plan_work(url: str, definition: dict[str, Any], *, redefine: bool) -> dict[str, Any]:
    """The dry run's answer, as the API would give it."""

    async def ask() -> dict[str, Any]:
        pool = make_pool(url, min_size=1, max_size=2)
        await pool.open()
        try:
            return await plan(pool, ModelCatalog(MODELS_DIR), definition, redefine=redefine)
        finally:
            await pool.close()

    return asyncio.run(ask())


def stored_work(conn: psycopg.Connection, job: str, generation: int, model: str) -> dict[str, int]:
    """Rows, chunks and tokens the worker really embedded into a generation's table."""
    table = conn.execute("select vectorize._embeddings_table(%s, %s)", (job, generation)).fetchone()[0]
    texts = conn.execute(
        f"select substr('body: ' || p.body, e.chunk_start + 1, e.chunk_end - e.chunk_start) from {table} e"
        " join packages p using (id)"
    ).fetchall()
    embedder = ModelCatalog(MODELS_DIR).get(model)
    lengths = [len(o) for o in embedder.counter.offsets([t for (t,) in texts])]
    rows = conn.execute(f"select count(distinct id) from {table}").fetchone()[0]
    return {
        "rows": rows,
        "chunks": len(texts),
        "tokens": sum(min(n + SPECIAL_TOKENS, embedder.max_tokens) for n in lengths),
    }


def print_comparison(label: str, planned: dict[str, Any], real: dict[str, int], seconds: float) -> None:
    print(f"\ndry run vs real work: {label} ({planned['method']}; embeds {planned['embeds']})")
    print("| figure | dry run | real | off by |\n|---|---|---|---|")
    for key, real_key in (("source_rows", "rows"), ("chunks", "chunks"), ("tokens", "tokens")):
        off = (planned[key] - real[real_key]) / real[real_key] if real[real_key] else 0.0
        print(f"| {real_key} | {planned[key]} | {real[real_key]} | {100 * off:+.1f}% |")
    estimate = planned["estimated_seconds"]
    print(
        f"| seconds | {estimate} (at {planned['rate_tokens_per_second']} tokens/s, engine alone) | {seconds:.1f} (end to end) | "
        + (f"{100 * (estimate - seconds) / seconds:+.1f}% |" if estimate else "- |")
    )
