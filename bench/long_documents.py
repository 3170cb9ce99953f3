"""Long documents: deep-sentence retrieval with chunking on and off, and a worker backfilling
many ~4,000-token documents (tokens/s, peak RSS). Part of `make bench`; runs alone too:
`.venv/bin/python bench/long_documents.py [--copies 10]`."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from pgvector.psycopg import register_vector

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import deep_sentence, load_manpages, manpages
from vectorize.db.database import migrate, publish_models
from vectorize.db.local_postgres import embedded_postgres
from vectorize.embedding.catalog import DEFAULT_MODEL, ModelCatalog
from vectorize.paths import MODELS_DIR

JOB = (
    "insert into vectorize.job (job_name, src_table, src_schema, src_columns, primary_key, update_time_col, model, chunking)"
    " values (%s, %s, 'public', '{name,body}', 'id', 'updated_at', %s, %s)"
)


def wait(predicate, timeout: float, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the worker did not finish in time")
        time.sleep(interval)


def backfilled(conn: psycopg.Connection, job: str) -> bool:
    row = conn.execute(
        "select j.backfilled_at is not null and not exists (select 1 from vectorize.queue q where q.job_id = j.id)"
        " from vectorize.job j where job_name = %s",
        (job,),
    ).fetchone()
    return bool(row and row[0])


def retrieval(conn: psycopg.Connection, job: str, pages: list[dict], catalog: ModelCatalog) -> tuple[int, int]:
    """How many deep-sentence queries find their page first, and in the top 10 (semantic only)."""
    encoder = catalog.get(DEFAULT_MODEL)
    first = top10 = 0
    for number, page in enumerate(pages, start=1):
        query = deep_sentence(page["text"], encoder.counter.offsets([page["text"]])[0])
        vector = encoder.embed([query])[0]
        rows = conn.execute("select r->'id' from vectorize.search(%s, %s, 10, '{}', null, 1, 0, 60) r", (job, vector))
        ids = [r[0] for r in rows.fetchall()]
        first += ids[:1] == [number]
        top10 += number in ids
    return first, top10


def long_document_benchmarks(copies: int = 10) -> dict[str, float]:
    catalog = ModelCatalog(MODELS_DIR)
    pages = manpages()
    parent = Path(tempfile.mkdtemp(prefix="vectorize-bench-long-"))
    parent.chmod(0o755)
    server = embedded_postgres().get_server(parent / "data", cleanup_mode="delete")
    url = server.get_uri()
    migrate(url)
    figures: dict[str, float] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        publish_models(conn, catalog.local_models())
        load_manpages(conn, pages)
        # Many documents: the pages again and again, each copy made distinct by its name.
        tiled = [{"name": f"{p['name']} (copy {k})", "text": p["text"]} for k in range(copies) for p in pages]
        load_manpages(conn, tiled, table="many")
        tokens = sum(
            len(o) for o in catalog.get(DEFAULT_MODEL).counter.offsets([f"name: {p['name']} body: {p['text']}" for p in tiled])
        )
        env = {**os.environ, "DATABASE_URL": url, "VECTORIZE_LOG_LEVEL": "WARNING"}
        worker = subprocess.Popen([sys.executable, "-m", "vectorize", "worker"], env=env)
        try:
            wait(lambda: conn.execute("select count(*) from pg_stat_activity where query ilike 'listen%'").fetchone()[0], 120)
            for job, chunking in (("pages", True), ("pages_truncated", False)):
                conn.execute(JOB, (job, "pages", DEFAULT_MODEL, chunking))
                wait(lambda job=job: backfilled(conn, job), 1800)
                figures[f"{job}_first"], figures[f"{job}_top10"] = retrieval(conn, job, pages, catalog)
            started = time.perf_counter()
            conn.execute(JOB, ("many", "many", DEFAULT_MODEL, True))
            wait(lambda: backfilled(conn, "many"), 7200)
            figures["many_seconds"] = time.perf_counter() - started
            figures["many_docs"] = len(tiled)
            figures["many_tokens"] = tokens
            figures["many_chunks"] = conn.execute("select count(*) from vectorize._embeddings_many").fetchone()[0]
            status = Path(f"/proc/{worker.pid}/status").read_text()
            figures["peak_rss_mb"] = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) / 1024
        finally:
            worker.terminate()
            worker.wait(30)
    server.cleanup()
    figures["pages"] = len(pages)
    return figures


def print_rows(figures: dict[str, float], row) -> None:
    pages = int(figures["pages"])
    for job, label in (("pages", "chunked"), ("pages_truncated", "truncated at 256 tokens")):
        row(
            f"deep-sentence queries, {pages} man pages, {label}: first / top 10",
            f"{figures[f'{job}_first']:.0f} / {figures[f'{job}_top10']:.0f}",
            ">= 80% / 90%" if job == "pages" else "",
        )
    row(
        f"backfill of {figures['many_docs']:.0f} long documents ({figures['many_chunks']:.0f} chunks), tokens/s",
        f"{figures['many_tokens'] / figures['many_seconds']:.0f}",
        "",
    )
    row("worker peak RSS during that backfill (MB)", f"{figures['peak_rss_mb']:.0f}", "<= 600")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--copies", type=int, default=10, help="copies of the 100 pages to backfill (default 10: 1000 documents)")
    args = parser.parse_args()
    figures = long_document_benchmarks(args.copies)

    def row(what: str, figure: str, target: str) -> None:
        print(f"| {what:64} | {figure:>12} | {target:>14} |")

    print_rows(figures, row)


if __name__ == "__main__":
    main()
