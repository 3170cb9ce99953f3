"""Terminal commands over the database: jobs, search, demo. Tables and progress bars
come from rich; every rule is still enforced by the database, as for HTTP and SQL."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import psycopg
from pgvector.psycopg import register_vector_async
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from .config import Settings
from .errors import UserError, from_database
from .models import EncoderCache
from .paths import SQL_DIR
from .queries import query
from .search import RANKING_OPTIONS
from .worker import Worker

console = Console()
DEMO_JOB = {
    "job_name": "my_job",
    "src_schema": "public",
    "src_table": "my_products",
    "src_columns": ["product_name", "description"],
    "primary_key": "product_id",
    "update_time_col": "updated_at",
    "model": "sentence-transformers/all-MiniLM-L6-v2",
}


async def _connect(settings: Settings) -> psycopg.AsyncConnection:
    conn = await psycopg.AsyncConnection.connect(settings.database_url or "", autocommit=True, row_factory=dict_row)
    await register_vector_async(conn)
    return conn


async def _run(conn: psycopg.AsyncConnection, name: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    try:
        cur = await conn.execute(query(name), params)
        return await cur.fetchall() if cur.description else []
    except psycopg.Error as exc:
        user_error = from_database(exc)
        if user_error is None:
            raise
        raise user_error from exc


async def jobs_list(settings: Settings) -> int:
    async with await _connect(settings) as conn:
        rows = await _run(conn, "job_status_all")
    table = Table("job", "table", "model", "status", "embedded", "source rows", "pending", "failed", "backfill")
    for r in rows:
        table.add_row(
            r["job_name"],
            f"{r['src_schema']}.{r['src_table']}",
            r["model"],
            r["status"],
            str(r["embedded_rows"]),
            _source_rows(r),
            str(r["pending"]),
            str(r["failed_rows"]),
            "done" if r["backfill_done"] else "running",
        )
    console.print(table)
    return 0


def _source_rows(row: dict[str, Any]) -> str:
    if row["source_rows"] is None:
        return "?"
    return f"~{row['source_rows']}" if row["source_rows_estimated"] else str(row["source_rows"])


async def jobs_show(settings: Settings, job_name: str) -> int:
    async with await _connect(settings) as conn:
        rows = await _run(conn, "job_status_one", {"job_name": job_name})
        if not rows:
            raise UserError(404, f"job {job_name!r} does not exist")
        failures = await _run(conn, "job_failures", {"job_id": rows[0]["id"], "limit": 10})
    table = Table("field", "value", show_header=False)
    for key, value in rows[0].items():
        table.add_row(key, str(value))
    console.print(table)
    for f in failures:
        console.print(f"[red]failed[/red] key={f['pk']} attempts={f['attempts']}: {f['last_error']}")
    return 0


async def jobs_create(settings: Settings, definition: dict[str, Any]) -> int:
    async with await _connect(settings) as conn:
        rows = await _run(conn, "create_job", definition)
    console.print(f"job {definition['job_name']} created: id {rows[0]['id']}")
    return 0


async def jobs_delete(settings: Settings, job_name: str) -> int:
    async with await _connect(settings) as conn:
        if not await _run(conn, "delete_job", {"job_name": job_name}):
            raise UserError(404, f"job {job_name!r} does not exist")
    console.print(f"job {job_name} deleted, with its triggers, queue items and embeddings")
    return 0


async def jobs_wait(settings: Settings, job_name: str, timeout: float | None = None) -> int:
    """A progress bar until the backfill is done and nothing is pending; 1 if the job failed."""
    started = time.monotonic()
    async with await _connect(settings) as conn:
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} rows/s"),
            TimeRemainingColumn(),
            console=console,
        ) as progress:
            task = progress.add_task(job_name, total=None, rate="-")
            while True:
                rows = await _run(conn, "job_status_one", {"job_name": job_name})
                if not rows:
                    raise UserError(404, f"job {job_name!r} does not exist")
                status = rows[0]
                progress.update(
                    task,
                    total=status["source_rows"],
                    completed=status["embedded_rows"] or 0,
                    rate=f"{(status['embedded_last_minute'] or 0) / 60:.1f}",
                )
                if status["status"] == "failed":
                    console.print(f"[red]job {job_name} failed: {status['status_message']}[/red]")
                    return 1
                if status["backfill_done"] and status["pending"] == 0:
                    break
                if timeout is not None and time.monotonic() - started > timeout:
                    console.print(f"[red]job {job_name} is still running after {timeout:.0f}s[/red]")
                    return 1
                await asyncio.sleep(0.5)
    if status["failed_rows"]:
        console.print(
            f"[yellow]{status['failed_rows']} rows could not be embedded; see `vectorize jobs show {job_name}`[/yellow]"
        )
        return 1
    console.print(f"job {job_name}: {status['embedded_rows']} rows embedded")
    return 0


async def search(settings: Settings, encoders: EncoderCache, job_name: str, text: str, limit: int) -> int:
    async with await _connect(settings) as conn:
        jobs = await _run(conn, "job_status_one", {"job_name": job_name})
        if not jobs:
            raise UserError(404, f"job {job_name!r} does not exist")
        job = jobs[0]
        vector = (await asyncio.to_thread(encoders.get(job["model"]).embed, [text]))[0]
        rows = await _run(
            conn,
            "search",
            {
                "job_name": job_name,
                "embedding": vector,
                "limit": limit,
                "filters": Jsonb({}),
                "query": text,
                **RANKING_OPTIONS,
            },
        )
    # The key and the embedded columns fit a terminal; the API returns every column.
    columns = [job["primary_key"], *(c for c in job["src_columns"] if c != job["primary_key"])]
    table = Table("similarity", *columns, title=f"{job_name}: {text!r}")
    for r in (row["result"] for row in rows):
        table.add_row(f"{r['similarity_score']:.3f}", *(str(r.get(c)) for c in columns))
    console.print(table)
    return 0


async def demo(settings: Settings, encoders: EncoderCache) -> int:
    """pg_vectorize's example end to end: table, job, backfill with a worker, two searches."""
    async with await _connect(settings) as conn:
        if not (await _run(conn, "table_exists", {"name": "public.my_products"}))[0]["exists"]:
            await conn.execute((SQL_DIR / "demo" / "my_products.sql").read_text().encode())
            console.print("created table my_products with 40 products")
        await _run(conn, "create_job", DEMO_JOB)
    console.print("created job my_job (or found it already there)")
    stop = asyncio.Event()
    worker = asyncio.create_task(Worker(replace(settings), encoders).run(stop))
    try:
        code = await jobs_wait(settings, "my_job", timeout=300)
    finally:
        stop.set()
        await worker
    if code:
        return code
    for text in ("camping gear", "something to write with"):
        await search(settings, encoders, "my_job", text, 3)
    return 0
