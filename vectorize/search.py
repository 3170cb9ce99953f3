"""Query text in, nearest source rows out; the ranking itself is vectorize.search() in SQL."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from .errors import UserError, from_database
from .models import EncoderCache
from .queries import query

MAX_LIMIT = 1000


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
) -> list[dict[str, Any]]:
    try:
        async with pool.connection() as conn:
            row = await (await conn.execute(query("job_model"), {"job_name": job_name})).fetchone()
            if row is None:
                raise UserError(404, f"job {job_name!r} does not exist")
            encoder = await asyncio.to_thread(encoders.get, row["model"])
            (vector,) = await asyncio.to_thread(encoder.embed, [text])
            cur = await conn.execute(
                query("search"),
                {"job_name": job_name, "embedding": vector, "limit": limit, "filters": Jsonb(filters or {})},
            )
            return [r["result"] for r in await cur.fetchall()]
    except psycopg.Error as exc:
        user_error = from_database(exc)
        if user_error is None:
            raise
        raise user_error from exc
