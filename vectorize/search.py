"""Query text in, nearest source rows out; the ranking itself is vectorize.search() in SQL."""

from __future__ import annotations

import asyncio
from typing import Any

from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from . import metrics
from .errors import UserError, database_errors, reject_nul
from .models import EncoderCache
from .queries import query

MAX_LIMIT = 1000


#: Search options besides job_name/query/limit; any other GET parameter is a filter.
RANKING_OPTIONS = {"semantic_wt": 1.0, "fts_wt": 1.0, "rrf_k": 60.0}


def parse_ranking(params: dict[str, Any]) -> dict[str, float]:
    """Pop the hybrid-ranking options out of ``params`` (defaults where absent)."""
    ranking = {}
    for name, default in RANKING_OPTIONS.items():
        raw = params.pop(name, None)
        if raw is None or raw == "":
            ranking[name] = default
            continue
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise UserError(400, f"{name} must be a non-negative number, got {raw!r}") from None
        if isinstance(raw, bool) or not value >= 0 or value == float("inf"):
            raise UserError(400, f"{name} must be a non-negative number, got {raw!r}")
        ranking[name] = value
    return ranking


def parse_limit(raw: object, default: int = 10) -> int:
    if raw is None or raw == "":
        return default
    try:
        limit = int(raw)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise UserError(400, f"limit must be an integer from 1 to {MAX_LIMIT}, got {raw!r}") from None
    if isinstance(raw, bool) or not 1 <= limit <= MAX_LIMIT:
        raise UserError(400, f"limit must be an integer from 1 to {MAX_LIMIT}, got {raw!r}")
    return limit


async def search(
    pool: AsyncConnectionPool,
    encoders: EncoderCache,
    job_name: str,
    text: str,
    limit: int = 10,
    filters: dict[str, Any] | None = None,
    ranking: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Hybrid search: vector neighbours fused with full-text matches (see vectorize.search in SQL)."""
    reject_nul("job_name", job_name)
    reject_nul("query", text)
    for key, value in (filters or {}).items():
        reject_nul(f"filter {key!r}", key)
        if isinstance(value, str):
            reject_nul(f"filter {key!r}", value)
    with metrics.SEARCH_SECONDS.time(), database_errors():
        async with pool.connection() as conn:
            row = await (await conn.execute(query("job_model"), {"job_name": job_name})).fetchone()
            if row is None:
                raise UserError(404, f"job {job_name!r} does not exist")
            encoder = await asyncio.to_thread(encoders.get, row["model"])
            (vector,) = await asyncio.to_thread(encoder.embed, [text])
            cur = await conn.execute(
                query("search"),
                {
                    "job_name": job_name,
                    "embedding": vector,
                    "limit": limit,
                    "filters": Jsonb(filters or {}),
                    "query": text,
                    **RANKING_OPTIONS,
                    **(ranking or {}),
                },
            )
            return [r["result"] for r in await cur.fetchall()]
