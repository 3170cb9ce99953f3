"""`make bench`: embedding speed and quality against sentence-transformers, then the
database path (backfill throughput, sync latency, worker memory) on a real PostgreSQL.

Engine and sentence-transformers rounds alternate on the same texts and threads;
figures are medians over rounds. sentence-transformers runs in .venv-bench (PyTorch
is never installed in the project's own environment).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import psycopg
import tokenizers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.corpus import load_texts
from bench.dry_runs import plan_work, print_comparison, stored_work
from bench.long_documents import long_document_benchmarks, print_rows
from vectorize.core.chunking import split_texts
from vectorize.db.database import migrate, publish_models
from vectorize.db.local_postgres import embedded_postgres
from vectorize.embedding.build.tuning import top_k_overlap
from vectorize.embedding.build.tuning_records import cpu_description, cpu_flags
from vectorize.embedding.catalog import ModelCatalog
from vectorize.embedding.manifests import load_manifests, source_dir
from vectorize.paths import MODELS_DIR

ROOT = Path(__file__).resolve().parent.parent
BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
INT8_MODEL = "sentence-transformers/all-MiniLM-L6-v2-int8"


def engine_round(encoder, texts: list[str]) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    vectors = encoder.embed(texts)
    return len(texts) / (time.perf_counter() - started), vectors


#: sentence-transformers' CPU backends, as ``st_reference.py`` names them: PyTorch, its ONNX
#: export at the optimisation levels that keep fp32 on a CPU (O4 is fp16, for GPUs), and its
#: dynamic int8 export with the config matching this CPU (filled in by ``st_quant_config``).
ST_TORCH = "torch"
ST_ONNX_FP32 = ("onnx:model_O2", "onnx:model_O3")


def st_quant_config() -> str:
    """The ``export_dynamic_quantized_onnx_model`` config sentence-transformers offers for this CPU."""
    flags = cpu_flags()
    return "avx512_vnni" if "avx512_vnni" in flags else "avx512" if "avx512f" in flags else "avx2"


def st_int8_backend(workdir: Path) -> str:
    """The int8 export ``prepare`` built: optimum names it by its weight type, ``model_qint8_avx512_vnni``
    on AVX-512 but ``model_quint8_avx2`` on AVX2 (uint8 weights there)."""
    found = sorted((workdir / "model" / "onnx").glob(f"model_q*int8_{st_quant_config()}.onnx"))
    if not found:
        raise RuntimeError(f"sentence-transformers built no int8 export for {st_quant_config()} in {workdir}")
    return f"onnx:{found[0].stem}"


def st_backends(workdir: Path) -> list[str]:
    return [ST_TORCH, *ST_ONNX_FP32, st_int8_backend(workdir)]


def st_prepare(workdir: Path) -> None:
    """Build sentence-transformers' own ONNX exports from the same official weights (no hub)."""
    model_dir = source_dir(load_manifests(MODELS_DIR)[MODEL])
    subprocess.run(
        [str(BENCH_PYTHON), str(ROOT / "bench" / "st_reference.py"), "prepare", str(model_dir), str(workdir), st_quant_config()],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def st_round(texts: list[str], threads: int, workdir: Path) -> dict[str, tuple[float, np.ndarray]]:
    """One round of every sentence-transformers backend: {backend: (texts/s, vectors)}."""
    texts_file = workdir / "texts.json"
    texts_file.write_text(json.dumps(texts))
    backends = st_backends(workdir)
    script = str(ROOT / "bench" / "st_reference.py")
    result = subprocess.run(
        [str(BENCH_PYTHON), script, "run", str(workdir), str(texts_file), str(workdir), str(threads), *backends],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    speeds = json.loads(result.stdout.strip().splitlines()[-1])
    return {b: (speeds[b], np.load(workdir / f"{b.replace(':', '_')}.npy")) for b in backends}


def reference_versions() -> str:
    """PyTorch and sentence-transformers as installed in .venv-bench (never in the project's venv)."""
    if not BENCH_PYTHON.exists():
        return "sentence-transformers not installed"
    code = (
        "import torch, sentence_transformers as st; print(f'torch {torch.__version__}, sentence-transformers {st.__version__}')"
    )
    result = subprocess.run([str(BENCH_PYTHON), "-c", code], capture_output=True, text=True, check=False)
    return result.stdout.strip() or "sentence-transformers unavailable"


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def wait(predicate, timeout: float, interval: float = 0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("benchmark condition not met")


def cpu_seconds(comm: str | None = None, pid: int | None = None) -> float:
    """CPU time (user + system) used so far by one process, or by every process named ``comm``."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in [Path(f"/proc/{pid}/stat")] if pid else Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended meanwhile
            continue
        name, fields = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()
        if pid or name == comm:
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def update_latencies(conn: psycopg.Connection, updates: int, label: str, poll: float = 0.001) -> list[float]:
    """Milliseconds from committing a single-row UPDATE of notes to its new embedding being committed,
    looking every ``poll`` seconds (a tight poll costs CPU that a concurrent backfill would miss)."""
    latencies = []
    for i in range(updates):
        row = 1 + i % 100
        before = conn.execute("select content_hash from vectorize._embeddings_notes where id = %s", (row,)).fetchone()[0]
        started = time.perf_counter()
        conn.execute("update notes set title = %s where id = %s", (f"note {row} revision {i} {label}", row))
        wait(
            lambda row=row, before=before: (
                conn.execute("select content_hash from vectorize._embeddings_notes where id = %s", (row,)).fetchone()[0] != before
            ),
            30,
            poll,
        )
        latencies.append((time.perf_counter() - started) * 1000)
        time.sleep(0.05)  # single changes, as a user makes them
    return latencies


def scratch_database(prefix: str) -> tuple[Any, str]:
    """A throw-away embedded PostgreSQL with the schema and the local models: (server, url);
    ``server.cleanup()`` deletes it."""
    parent = Path(tempfile.mkdtemp(prefix=prefix))
    parent.chmod(0o755)
    return embedded_database(parent / "data", "delete")


def embedded_database(data_dir: Path, cleanup_mode: str) -> tuple[Any, str]:
    """An embedded PostgreSQL in ``data_dir`` with the schema and the local models: (server, url)."""
    server = embedded_postgres().get_server(data_dir, cleanup_mode=cleanup_mode)
    url = server.get_uri()
    migrate(url)
    with psycopg.connect(url) as conn:
        publish_models(conn, ModelCatalog(MODELS_DIR).local_models())
    return server, url


def database_benchmarks(texts: list[str], updates: int, batch_size: int | None = None) -> dict[str, Any]:
    """Backfill a table of the corpus with a worker process, then time single-row updates."""
    server, url = scratch_database("vectorize-bench-")
    figures: dict[str, Any] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("create table packages (id int primary key, body text, updated_at timestamptz default now())")
        conn.execute("create table packages_again (like packages including all)")
        for table in ("packages", "packages_again"):
            with conn.cursor().copy(f"copy {table} (id, body) from stdin") as copy:
                for i, text in enumerate(texts, 1):
                    copy.write_row((i, text))
        conn.execute("create table notes (id int primary key, title text, updated_at timestamptz default now())")
        conn.execute("insert into notes select g, 'note ' || g from generate_series(1, 100) g")
        env = {**os.environ, "DATABASE_URL": url, "VECTORIZE_LOG_LEVEL": "WARNING"}
        if batch_size:
            env["VECTORIZE_BATCH_SIZE"] = str(batch_size)
        worker = subprocess.Popen([sys.executable, "-m", "vectorize", "worker"], env=env)
        try:
            wait(lambda: conn.execute("select count(*) from pg_stat_activity where query ilike 'listen%'").fetchone()[0], 120)
            definition = {
                "job_name": "packages",
                "src_schema": "public",
                "src_table": "packages",
                "src_columns": ["body"],
                "primary_key": "id",
                "update_time_col": "updated_at",
                "model": MODEL,
            }
            figures["plan_create"] = plan_work(url, definition, redefine=False)
            started = time.perf_counter()
            pg_cpu, worker_cpu = cpu_seconds("postgres"), cpu_seconds(pid=worker.pid)
            conn.execute(
                "insert into vectorize.job (job_name, src_table, src_schema, src_columns, primary_key, update_time_col, model)"
                " values ('packages', 'packages', 'public', '{body}', 'id', 'updated_at', %s)",
                (MODEL,),
            )
            # Done when the pass over the table has ended and nothing is queued (a batch deletes its
            # items as it writes). Polled cheaply: counting the embedded rows every 50 ms took ~1.4 s
            # of PostgreSQL's CPU from the backfill it was timing.
            wait(
                lambda: conn.execute(
                    "select backfilled_at is not null and not exists (select 1 from vectorize.queue q where q.job_id = j.id)"
                    " from vectorize.job j where j.job_name = 'packages'"
                ).fetchone()[0],
                3600,
                0.05,
            )
            figures["backfill_tps"] = len(texts) / (time.perf_counter() - started)
            figures["backfill_wall_s"] = time.perf_counter() - started
            assert conn.execute("select count(distinct id) from vectorize._embeddings_packages").fetchone()[0] == len(texts)
            figures["backfill_pg_cpu_s"] = cpu_seconds("postgres") - pg_cpu
            figures["backfill_worker_cpu_s"] = cpu_seconds(pid=worker.pid) - worker_cpu
            figures["real_create"] = stored_work(conn, "packages", 1, MODEL)
            status = Path(f"/proc/{worker.pid}/status").read_text()
            figures["peak_rss_mb"] = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) / 1024
            conn.execute(
                "insert into vectorize.job (job_name, src_table, src_schema, src_columns, primary_key, update_time_col, model)"
                " values ('notes', 'notes', 'public', '{title}', 'id', 'updated_at', %s)",
                (MODEL,),
            )
            wait(lambda: conn.execute("select count(*) from vectorize._embeddings_notes").fetchone()[0] == 100, 120)
            latencies = update_latencies(conn, updates, "idle")
            figures["latency_p50_ms"] = float(np.percentile(latencies, 50))
            figures["latency_p99_ms"] = float(np.percentile(latencies, 99))
            # Fairness: the same single-row updates while another job backfills the corpus again.
            conn.execute(
                "insert into vectorize.job (job_name, src_table, src_schema, src_columns, primary_key, update_time_col, model)"
                " values ('packages_again', 'packages_again', 'public', '{body}', 'id', 'updated_at', %s)",
                (MODEL,),
            )
            count = "select count(distinct id) from vectorize._embeddings_packages_again"
            wait(lambda: conn.execute(count).fetchone()[0] > 0, 120)
            started, embedded = time.perf_counter(), conn.execute(count).fetchone()[0]
            latencies = update_latencies(conn, updates, "during a backfill", poll=0.01)
            figures["busy_backfill_tps"] = (conn.execute(count).fetchone()[0] - embedded) / (time.perf_counter() - started)
            figures["busy_still_backfilling"] = float(conn.execute(count).fetchone()[0] < len(texts))
            for p in (50, 95, 99):
                figures[f"busy_latency_p{p}_ms"] = float(np.percentile(latencies, p))
            # Online redefinition: the same 5,000 rows switched to the int8 model.
            wait(lambda: conn.execute("select count(*) from vectorize.queue").fetchone()[0] == 0, 3600, 0.05)
            figures["plan_redefine"] = plan_work(url, {**definition, "model": INT8_MODEL}, redefine=True)
            started = time.perf_counter()
            conn.execute("update vectorize.job set model = %s where job_name = 'packages'", (INT8_MODEL,))
            wait(
                lambda: conn.execute("select generation from vectorize.job where job_name = 'packages'").fetchone()[0] == 2,
                3600,
                0.05,
            )
            figures["redefine_wall_s"] = time.perf_counter() - started
            figures["real_redefine"] = stored_work(conn, "packages", 2, INT8_MODEL)
        finally:
            worker.terminate()
            worker.wait(15)
    server.cleanup()
    return figures


def print_comparison_with_st(row, st_tps: dict[str, list[float]], theirs: dict[str, np.ndarray], ours: dict) -> None:
    """Every sentence-transformers CPU backend and ours, side by side: speed, each round's ratio
    to the reference, quality against PyTorch (cosine and top-10 neighbours on the same texts)."""
    torch_tps, reference = st_tps[ST_TORCH], theirs[ST_TORCH]
    best_onnx = max(ST_ONNX_FP32, key=lambda b: statistics.median(st_tps[b]))
    st_int8 = next(b for b in st_tps if "int8" in b)

    def quality(vectors: np.ndarray) -> str:
        cos = cosine_rows(vectors, reference)
        return f"cos {cos.min():.4f}/{cos.mean():.5f}, top10 {top_k_overlap(reference, vectors, 10):.3f}"

    def ratios(mine: list[float], other: list[float]) -> str:
        return " ".join(f"{m / o:.2f}" for m, o in zip(mine, other, strict=True))

    for backend, tps in st_tps.items():
        label = "sentence-transformers " + ("PyTorch" if backend == ST_TORCH else backend.replace("onnx:model_", "ONNX "))
        row(f"{label} texts/s", f"{statistics.median(tps):.1f}", "reference" if backend == ST_TORCH else "")
        if backend != ST_TORCH:
            row("   quality vs PyTorch (cos min/mean, top-10 overlap)", quality(theirs[backend]), "")
    for precision, (tps, vectors) in ours.items():
        row(f"vectorize {precision} texts/s (median)", f"{statistics.median(tps):.1f}", "")
        gate = ">= 0.9999" if precision == "fp32" else ">= .98/.995, .9"
        row("   quality vs PyTorch (cos min/mean, top-10 overlap)", quality(vectors), gate)
        row("   x PyTorch, each round", ratios(tps, torch_tps), ">= 1.8x" if precision == "fp32" else ">= 2.8x")
        other = best_onnx if precision == "fp32" else st_int8
        target = ">= 1.2x" if precision == "fp32" else ">= 1.1x"
        row(f"   x {other.replace('onnx:model_', 'ONNX ')}, each round", ratios(tps, st_tps[other]), target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--texts", type=int, default=1000, help="texts per speed round (default 1000)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--backfill-rows", type=int, default=5000)
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--skip-st", action="store_true", help="no sentence-transformers comparison")
    parser.add_argument("--engine-only", action="store_true", help="only the engine comparison (no database, no backfill)")
    parser.add_argument("--batch-size", type=int, help="worker batch size (default: the worker's own)")
    parser.add_argument("--long-copies", type=int, default=10, help="copies of the 100 man pages to backfill (default 10)")
    args = parser.parse_args()

    manifests = load_manifests(MODELS_DIR)
    # The engine as the worker runs it: with the settings tuned for this CPU (`make models`).
    catalog = ModelCatalog(MODELS_DIR, args.threads)
    encoder, int8 = catalog.get(MODEL), catalog.get(INT8_MODEL)
    tuned = {m: catalog.tuner.settings_for(manifests[m])[0].describe() for m in (MODEL, INT8_MODEL)}
    texts = load_texts(args.texts)
    encoder.embed(texts[:64])  # warm-up
    int8.embed(texts[:64])
    with_st = not args.skip_st and BENCH_PYTHON.exists()
    engine_tps: list[float] = []
    int8_tps: list[float] = []
    st_tps: dict[str, list[float]] = {}
    theirs: dict[str, np.ndarray] = {}
    ours = ours8 = None
    with tempfile.TemporaryDirectory() as workdir:
        if with_st:
            st_prepare(Path(workdir))
        for _ in range(args.rounds):
            if with_st:
                for backend, (tps, vectors) in st_round(texts, args.threads, Path(workdir)).items():
                    st_tps.setdefault(backend, []).append(tps)
                    theirs[backend] = vectors
            tps, ours = engine_round(encoder, texts)
            engine_tps.append(tps)
            tps, ours8 = engine_round(int8, texts)
            int8_tps.append(tps)
    if not args.engine_only:
        backfill_texts = load_texts(args.backfill_rows)
        # The backfill embeds "body: <text>", cut into chunks where it is longer than the model's
        # window; the engine is timed on exactly those chunk texts for the ratio.
        bodies = ["body: " + t for t in backfill_texts]
        chunk_texts = [
            body[a:b] for body, spans in zip(bodies, split_texts(bodies, encoder.counter, 254, 32), strict=True) for a, b in spans
        ]
        engine_before, _ = engine_round(encoder, chunk_texts)
        _, fp32_all = engine_round(encoder, bodies)
        _, int8_all = engine_round(int8, bodies)
        overlap = top_k_overlap(fp32_all, int8_all, 10)
        db = database_benchmarks(backfill_texts, args.updates, args.batch_size)
        long_docs = long_document_benchmarks(args.long_copies)
        # The engine is timed before and after the backfill; the mean evens out the machine's drift.
        engine_after, _ = engine_round(encoder, chunk_texts)
        engine_on_backfill = (engine_before + engine_after) / 2
    engine_med = statistics.median(engine_tps)

    print(
        f"\nmachine: {os.cpu_count()} cores, {cpu_description()}, Python {platform.python_version()}, "
        f"onnxruntime {onnxruntime.__version__}, tokenizers {tokenizers.__version__}, numpy {np.__version__}, "
        f"{reference_versions()}\nrun: threads {args.threads}, {args.texts} texts x {args.rounds} rounds\n"
        f"engine settings tuned for this CPU: fp32 {tuned[MODEL]}; int8 {tuned[INT8_MODEL]}\n"
    )
    print(f"| {'what':52} | {'figure':>34} | {'target':>16} |")
    print(f"|{'-' * 54}|{'-' * 36}|{'-' * 18}|")

    def row(what: str, figure: str, target: str) -> None:
        print(f"| {what:52} | {figure:>34} | {target:>16} |")

    if with_st:
        print_comparison_with_st(row, st_tps, theirs, {"fp32": (engine_tps, ours), "int8": (int8_tps, ours8)})
    else:
        row("vectorize fp32 / int8 texts/s (median)", f"{engine_med:.1f} / {statistics.median(int8_tps):.1f}", "")
    if args.engine_only:
        return
    row(f"int8 top-10 neighbour overlap with fp32, {args.backfill_rows} texts", f"{overlap:.3f}", ">= 0.9")
    backfill_chunks = len(chunk_texts) / db["backfill_wall_s"]
    row(f"backfill end to end, {args.backfill_rows} rows ({len(chunk_texts)} chunks), rows/s", f"{db['backfill_tps']:.1f}", "")
    row("engine texts/s on the same chunk texts, before/after", f"{engine_before:.0f}/{engine_after:.0f}", "")
    row("backfill vs engine, chunks/s", f"{backfill_chunks / engine_on_backfill:.2f}", ">= 0.90")
    short_tokens = sum(len(offsets) for offsets in encoder.counter.offsets(bodies))
    row(f"backfill of those {args.backfill_rows} short rows, tokens/s", f"{short_tokens / db['backfill_wall_s']:.0f}", "")
    cores = os.cpu_count() or 1
    row(
        "backfill CPU: worker / PostgreSQL, % of all cores",
        f"{100 * db['backfill_worker_cpu_s'] / (cores * db['backfill_wall_s']):.0f} / "
        f"{100 * db['backfill_pg_cpu_s'] / (cores * db['backfill_wall_s']):.0f}",
        "",
    )
    row(f"sync latency p50 over {args.updates} updates (ms)", f"{db['latency_p50_ms']:.1f}", "<= 100")
    row(f"sync latency p99 over {args.updates} updates (ms)", f"{db['latency_p99_ms']:.1f}", "<= 300")
    row("worker peak RSS during backfill (MB)", f"{db['peak_rss_mb']:.0f}", "<= 600")
    row(
        f"sync latency while another job backfills, p50/p95/p99 (ms){'' if db['busy_still_backfilling'] else ' *'}",
        f"{db['busy_latency_p50_ms']:.0f}/{db['busy_latency_p95_ms']:.0f}/{db['busy_latency_p99_ms']:.0f}",
        "p95<=1000 p99<=2000",
    )
    row("that backfill's rows/s meanwhile vs alone", f"{db['busy_backfill_tps']:.1f} / {db['backfill_tps']:.1f}", "")
    print_rows(long_docs, row)
    print_comparison(f"create, {args.backfill_rows} rows, {MODEL}", db["plan_create"], db["real_create"], db["backfill_wall_s"])
    print_comparison(
        f"redefine to {INT8_MODEL} (build beside the serving generation, then switch)",
        db["plan_redefine"],
        db["real_redefine"],
        db["redefine_wall_s"],
    )
    if not db["busy_still_backfilling"]:
        print("* the backfill ended before the updates did: part of them ran on an idle worker")


if __name__ == "__main__":
    main()
