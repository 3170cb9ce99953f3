"""Terminal commands over the database: jobs, search, demo. Tables and progress bars
come from rich; every rule is still enforced by the database, as for HTTP and SQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from vectorize.config import Settings
from vectorize.db.database import Pool, make_pool
from vectorize.db.queries import query
from vectorize.embedding.catalog import DEFAULT_MODEL, ModelCatalog
from vectorize.paths import SQL_DIR
from vectorize.service import jobs
from vectorize.service.dry_run import plan
from vectorize.service.query_embedding import QueryEmbedder
from vectorize.service.search import search as search_rows
from vectorize.service.search import wait_until_synced
from vectorize.worker.loop import Worker

console = Console()
DEMO_JOB = {
    "job_name": "my_job",
    "src_schema": "public",
    "src_table": "my_products",
    "src_columns": ["product_name", "description"],
    "primary_key": "product_id",
    "update_time_col": "updated_at",
    "model": DEFAULT_MODEL,
}


@asynccontextmanager
async def _pool(settings: Settings) -> AsyncIterator[Pool]:
    """A small pool for one command, so the console calls the same domain functions as the API."""
    pool = make_pool(settings.database_url or "", min_size=1, max_size=2, name="console")
    await pool.open()
    try:
        yield pool
    finally:
        await pool.close()


def _source_rows(status: dict[str, Any]) -> str:
    if status["source_rows"] is None:
        return "?"
    return f"~{status['source_rows']}" if status["source_rows_estimated"] else str(status["source_rows"])


def _cell(value: object, width: int = 80) -> str:
    """A value for a terminal table, shortened to ``width`` characters."""
    text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _age(*seconds: float | None) -> str:
    """The oldest pending item's age, for a terminal."""
    known = [s for s in seconds if s is not None]
    return f"{max(known):.1f}s" if known else "-"


async def jobs_list(settings: Settings) -> int:
    async with _pool(settings) as pool:
        statuses = await jobs.list_jobs(pool)
    table = Table("job", "table", "model", "state", "embedded", "source rows", "pending", "oldest", "failed", "backfill")
    for r in statuses:
        table.add_row(
            r["job_name"],
            f"{r['src_schema']}.{r['src_table']}",
            r["model"],
            r["sync_state"],
            str(r["embedded_rows"]),
            _source_rows(r),
            str(r["pending"]),
            _age(r["oldest_live_seconds"], r["oldest_backfill_seconds"]),
            str(r["failed_rows"]),
            "done" if r["backfill_done"] else "running",
        )
    console.print(table)
    return 0


async def jobs_show(settings: Settings, job_name: str) -> int:
    async with _pool(settings) as pool:
        status = await jobs.show_job(pool, job_name)
    failures = status.pop("last_errors")
    generations = status.pop("generations") or []
    table = Table("field", "value", show_header=False)
    for key, value in status.items():
        table.add_row(key, str(value))
    console.print(table)
    console.print(_generations_table(job_name, generations))
    for f in failures:
        console.print(f"[red]failed[/red] key={f['pk']} attempts={f['attempts']}: {f['error']}")
    return 0


def _generations_table(job_name: str, generations: list[dict[str, Any]]) -> Table:
    table = Table(
        "generation", "state", "model", "columns", "chunks", "embedded", "progress", "eta", title=f"{job_name}: generations"
    )
    for g in generations:
        chunks = f"{g['chunk_tokens'] or 'window'}/{g['chunk_overlap']}" if g["chunking"] else "truncate"
        progress = "-" if g["progress"] is None else f"{100 * g['progress']:.1f}%"
        eta = g["eta_seconds"]
        if g["state"] == "previous":
            eta = f"kept until {g['kept_until']}"
        table.add_row(
            str(g["generation"]),
            g["state"],
            g["model"],
            ", ".join(g["src_columns"]),
            chunks,
            str(g["embedded_rows"]),
            progress,
            "-" if eta is None else (f"{eta:.0f}s" if isinstance(eta, int | float) else str(eta)),
        )
    return table


def _print_plan(answer: dict[str, Any]) -> None:
    """A dry run's answer, for a terminal."""
    seconds = answer["estimated_seconds"]
    console.print(
        f"dry run ({answer['action']}, nothing changed): {answer['source_rows']} source rows, "
        f"{answer['chunks']} chunks, {answer['tokens']} tokens ({answer['method']}); embeds {answer['embeds']}"
    )
    if seconds is not None:
        console.print(f"about {seconds:.0f}s at {answer['rate_tokens_per_second']} tokens/s ({answer['rate_source']})")
    else:
        console.print(answer["rate_source"])


async def jobs_create(settings: Settings, catalog: ModelCatalog, definition: dict[str, Any], dry_run: bool = False) -> int:
    async with _pool(settings) as pool:
        if dry_run:
            _print_plan(await plan(pool, catalog, definition, redefine=False))
            return 0
        job_id = await jobs.create_job(pool, definition)
    console.print(f"job {definition['job_name']} created: id {job_id}")
    return 0


async def jobs_alter(
    settings: Settings, catalog: ModelCatalog, job_name: str, changes: dict[str, Any], dry_run: bool = False
) -> int:
    """Redefine a job from the fields given on the command line; the rest stay as they are."""
    async with _pool(settings) as pool:
        definition = {**await jobs.job_definition(pool, job_name), **changes, "job_name": job_name}
        if dry_run:
            _print_plan(await plan(pool, catalog, definition, redefine=True))
            return 0
        answer = await jobs.redefine_job(pool, definition, settings.generation_keep_seconds)
    console.print(f"job {job_name}: {answer['message']}")
    return 0


async def jobs_rollback(settings: Settings, job_name: str) -> int:
    async with _pool(settings) as pool:
        answer = await jobs.rollback_job(pool, job_name, settings.generation_keep_seconds)
    console.print(f"job {job_name}: {answer['message']}")
    return 0


async def jobs_delete(settings: Settings, job_name: str) -> int:
    async with _pool(settings) as pool:
        await jobs.delete_job(pool, job_name)
    console.print(f"job {job_name} deleted, with its triggers, queue items and embeddings")
    return 0


async def jobs_wait(settings: Settings, job_name: str, timeout: float | None = None) -> int:
    """A progress bar until the backfill is done and nothing is pending; 1 if the job failed."""
    started = time.monotonic()
    async with _pool(settings) as pool:
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
                status = await jobs.job_status(pool, job_name)
                progress.update(
                    task,
                    total=status["source_rows"],
                    completed=status["embedded_rows"] or 0,
                    rate=f"{status['rate_per_second']:.1f}",
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


async def search(
    settings: Settings,
    catalog: ModelCatalog,
    job_name: str,
    text: str,
    limit: int,
    wait_for_sync: float | None = None,
    return_columns: list[str] | None = None,
) -> int:
    async with _pool(settings) as pool:
        job = await jobs.job_status(pool, job_name)
        if wait_for_sync is not None and not await wait_until_synced(pool, job_name, wait_for_sync):
            console.print(
                f"[yellow]changes to {job_name} are still being embedded after {wait_for_sync:g}s; results may be stale[/yellow]"
            )
        answer = await search_rows(pool, QueryEmbedder(catalog), job_name, text, limit, return_columns=return_columns)
        results = answer.results
    # The key and the embedded columns fit a terminal (the API returns every column), or the ones asked for.
    columns = return_columns or [job["primary_key"], *(c for c in job["src_columns"] if c != job["primary_key"])]
    table = Table("similarity", *columns, "passage", title=f"{job_name}: {text!r}")
    for r in results:
        passage = " ".join((r["chunk"]["text"] or "").split())
        table.add_row(
            f"{r['similarity_score']:.3f}",
            *(_cell(r.get(c)) for c in columns),
            f"#{r['chunk']['index']}: {_cell(passage)}",
        )
    console.print(table)
    return 0


async def demo(settings: Settings, catalog: ModelCatalog) -> int:
    """pg_vectorize's example end to end: table, job, backfill with a worker, two searches."""
    async with _pool(settings) as pool:
        async with pool.connection() as conn:
            exists = await (await conn.execute(query("table_exists"), {"name": "public.my_products"})).fetchone()
            if exists is None or not exists["exists"]:
                await conn.execute((SQL_DIR / "demo" / "my_products.sql").read_text().encode())
                console.print("created table my_products with 40 products")
        await jobs.create_job(pool, DEMO_JOB)
    console.print("created job my_job (or found it already there)")
    stop = asyncio.Event()
    worker = asyncio.create_task(Worker(replace(settings), catalog).run(stop))
    try:
        code = await jobs_wait(settings, "my_job", timeout=300)
    finally:
        stop.set()
        await worker
    if code:
        return code
    for text in ("camping gear", "something to write with"):
        await search(settings, catalog, "my_job", text, 3)
    return 0
