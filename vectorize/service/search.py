"""Query text in, nearest source rows out; the ranking itself is vectorize.search() in SQL."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from psycopg.types.json import Jsonb

from vectorize import metrics
from vectorize.core.errors import GenerationGone, Invalid, NotFound, reject_nul
from vectorize.db.database import Pool, act_as
from vectorize.db.errors import database_errors
from vectorize.db.queries import query
from vectorize.service.query_embedding import QueryEmbedder

MAX_LIMIT = 1000
#: Longest read-your-writes wait a request may ask for.
MAX_WAIT_FOR_SYNC = 60.0
#: How often a read-your-writes wait looks at the queue: soon at first (most waits are short),
#: then less often, so that many waiting clients cost the database little.
SYNC_POLL_SECONDS, SYNC_POLL_MAX_SECONDS = 0.01, 0.2


#: Hybrid-ranking options and their defaults (the one home of these numbers; the SQL
#: function's defaults and the OpenAPI document are checked against them in the tests).
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
            raise Invalid(f"{name} must be a non-negative number, got {raw!r}") from None
        if isinstance(raw, bool) or not value >= 0 or value == float("inf"):
            raise Invalid(f"{name} must be a non-negative number, got {raw!r}")
        ranking[name] = value
    return ranking


def _integer_in(raw: object, name: str, low: int, high: int) -> int | None:
    """An integer parameter from a query string or a JSON body (None when absent). JSON's 2.5 or
    true is refused, not truncated to 2 or read as 1."""
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        value = low - 1
    if isinstance(raw, bool | float) or not low <= value <= high:
        raise Invalid(f"{name} must be an integer from {low} to {high}, got {raw!r}")
    return value


def parse_limit(raw: object, default: int = 10) -> int:
    limit = _integer_in(raw, "limit", 1, MAX_LIMIT)
    return default if limit is None else limit


def parse_wait_for_sync(raw: object) -> float | None:
    """``wait_for_sync``: seconds (0 to MAX_WAIT_FOR_SYNC) to wait for the job to catch up; None: don't."""
    if raw is None or raw == "":
        return None
    try:
        seconds = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = -1.0
    if isinstance(raw, bool) or not 0 <= seconds <= MAX_WAIT_FOR_SYNC:
        raise Invalid(f"wait_for_sync must be a number of seconds from 0 to {MAX_WAIT_FOR_SYNC:g}, got {raw!r}")
    return seconds


async def wait_until_synced(pool: Pool, job_name: str, timeout: float) -> bool:
    """Read-your-writes: wait, up to ``timeout`` seconds, until every change to the job's table
    committed before this call is embedded. True if it is (the answer will be fresh)."""
    reject_nul("job_name", job_name)
    deadline = time.monotonic() + timeout
    async with pool.connection() as conn:
        row = await (await conn.execute(query("sync_position"), {"job_name": job_name})).fetchone()
    position = row["position"] if row else 0
    pause = SYNC_POLL_SECONDS
    while True:
        # A connection per look, none held while waiting: twenty waiting clients must not
        # take the pool from other searches and the health checks.
        async with pool.connection() as conn:
            done = await (await conn.execute(query("synced_to"), {"job_name": job_name, "position": position})).fetchone()
        if done and done["synced"]:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(min(pause, max(deadline - time.monotonic(), 0.0)))
        pause = min(pause * 1.5, SYNC_POLL_MAX_SECONDS)


def parse_return_columns(raw: object) -> list[str] | None:
    """``return_columns``: a comma-separated string (GET) or an array of strings (POST); None: all."""
    if raw is None or raw == "":
        return None
    names = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise Invalid("return_columns must name columns: col1,col2 (GET) or an array of column names (POST)")
    for name in names:
        reject_nul("return_columns", name)
    return [n.strip() for n in names]


#: Largest candidate window of each half of a hybrid search (window_size).
MAX_WINDOW = 10_000


def parse_window_size(raw: object) -> int | None:
    """``window_size`` (pg_vectorize's): how many candidates each half (vector, full-text) ranks
    before they are fused; default 5 x limit. Larger: fusion sees more, slower."""
    return _integer_in(raw, "window_size", 1, MAX_WINDOW)


def parse_ef_search(raw: object) -> int | None:
    """``ef_search``: HNSW candidates kept while searching (1 to 1000; more = better recall, slower)."""
    return _integer_in(raw, "ef_search", 1, 1000)


@dataclass
class Answer:
    """A search's results and the generation of the job that ranked them (it changes when a
    redefinition switches; the X-Vectorize-Generation header). Each result is kept as the JSON
    text PostgreSQL wrote: the API sends them as they are, and only a caller that reads the rows
    pays for parsing them."""

    rows_json: list[str]
    generation: int

    @property
    def results(self) -> list[dict[str, Any]]:
        return [json.loads(row) for row in self.rows_json]

    def json_array(self) -> str:
        return "[" + ",".join(self.rows_json) + "]"


async def search(
    pool: Pool,
    queries: QueryEmbedder,
    job_name: str,
    text: str,
    limit: int = 10,
    filters: dict[str, Any] | None = None,
    ranking: dict[str, float] | None = None,
    return_columns: list[str] | None = None,
    ef_search: int | None = None,
    role: str | None = None,
    window_size: int | None = None,
) -> Answer:
    """Hybrid search: vector neighbours fused with full-text matches (see vectorize.search in SQL).
    The query is embedded with the serving generation's model and ranked in that generation, even
    if a switch commits in between (the generation it replaced is kept); should that generation be
    gone by then (dropped by another redefinition), the search is asked again once. ``role``: the
    caller's PostgreSQL role; its privileges and row-level security decide what is returned."""
    reject_nul("job_name", job_name)
    reject_nul("query", text)
    for key, value in (filters or {}).items():
        reject_nul(f"filter {key!r}", key)
        if isinstance(value, str):
            reject_nul(f"filter {key!r}", value)
    options = {
        **RANKING_OPTIONS,
        **(ranking or {}),
        "return_columns": return_columns,
        "ef_search": ef_search,
        "window_size": window_size,
    }
    with metrics.SEARCH_SECONDS.time():
        for attempt in (1, 2):
            try:
                with database_errors():
                    return await _search_once(pool, queries, job_name, text, limit, filters, options, role)
            except GenerationGone:
                if attempt == 2:
                    raise
    raise AssertionError("unreachable")


async def _search_once(
    pool: Pool,
    queries: QueryEmbedder,
    job_name: str,
    text: str,
    limit: int,
    filters: dict[str, Any] | None,
    options: dict[str, Any],
    role: str | None,
) -> Answer:
    async with pool.connection() as conn:
        row = await (await conn.execute(query("job_model"), {"job_name": job_name})).fetchone()
    if row is None:
        raise NotFound(f"job {job_name!r} does not exist")
    # A search that ranks by text alone needs no vector. The query is embedded holding no
    # connection: a slow remote embedder must not hold the pool. The generation read above is
    # the one ranked, even if a switch commits meanwhile (the replaced one is kept a while).
    vector = await queries.embed(row["model"], text) if options["semantic_wt"] > 0 else None
    async with pool.connection() as conn, conn.transaction():
        await act_as(conn, role)
        cur = await conn.execute(
            query("search"),
            {
                "job_name": job_name,
                "embedding": vector,
                "limit": limit,
                "filters": Jsonb(filters or {}),
                "query": text,
                **options,
                "generation": row["generation"],
            },
        )
        return Answer([r["result"] for r in await cur.fetchall()], row["generation"])
