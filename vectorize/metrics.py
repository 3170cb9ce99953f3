"""Prometheus metrics. Counters live in the process that does the work (the worker's
appear on /metrics when it runs beside the API, as in `vectorize up`); the per-job
gauges are read from the database at scrape time, so any API process reports them."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

ROWS_EMBEDDED = Counter("vectorize_rows_embedded", "Rows whose embedding was written", ["job"], registry=REGISTRY)
BATCHES = Counter("vectorize_batches", "Worker batches committed", ["job"], registry=REGISTRY)
INFERENCE_SECONDS = Histogram(
    "vectorize_inference_seconds",
    "Seconds spent embedding one batch",
    ["job"],
    registry=REGISTRY,
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
GENERATION_SWITCHES = Counter(
    "vectorize_generation_switches", "Redefinitions whose new generation started serving", ["job"], registry=REGISTRY
)
ROW_FAILURES = Counter("vectorize_row_failures", "Failed tries to embed a row", ["job"], registry=REGISTRY)
LANE_ROWS = Counter(
    "vectorize_lane_rows", "Rows handled per lane (rate() of it is rows/s per lane)", ["job", "lane"], registry=REGISTRY
)
SYNC_LAG = Histogram(
    "vectorize_sync_lag_seconds",
    "Seconds from a change being queued (its commit) to its embedding being committed, live lane",
    ["job"],
    registry=REGISTRY,
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800),
)
EMBEDDER_PAUSES = Counter(
    "vectorize_embedder_pauses", "Times a job paused because its embedder was unavailable", ["job"], registry=REGISTRY
)
OLDEST_PENDING = Gauge(
    "vectorize_oldest_pending_seconds", "Age of the oldest item waiting, per job and lane", ["job", "lane"], registry=REGISTRY
)
WAITING_FOR_EMBEDDER = Gauge(
    "vectorize_waiting_for_embedder", "1 while a job is paused because its embedder is down", ["job"], registry=REGISTRY
)
QUEUE_DEPTH = Gauge("vectorize_queue_depth", "Queue items waiting, per job", ["job"], registry=REGISTRY)
FAILED_ROWS = Gauge("vectorize_failed_rows", "Rows parked in vectorize.failure, per job", ["job"], registry=REGISTRY)
EMBEDDED_ROWS = Gauge("vectorize_embedded_rows", "Rows with an embedding, per job", ["job"], registry=REGISTRY)
SEARCH_SECONDS = Histogram("vectorize_search_seconds", "Search latency, query embedding included", registry=REGISTRY)
QUERY_CACHE = Counter(
    "vectorize_query_cache", "Query texts answered from the cache (hit) or embedded (miss)", ["result"], registry=REGISTRY
)
QUERY_BATCH = Histogram(
    "vectorize_query_batch_texts", "Query texts embedded per inference call", buckets=(1, 2, 4, 8, 16, 32, 64), registry=REGISTRY
)
HTTP_REQUESTS = Counter(
    "vectorize_http_requests", "HTTP requests by route and status", ["route", "method", "status"], registry=REGISTRY
)


def update_job_gauges(rows: list[dict]) -> None:
    """Set the per-job gauges from vectorize.job_gauges() rows (one per job and lane)."""
    for gauge in (QUEUE_DEPTH, FAILED_ROWS, EMBEDDED_ROWS, OLDEST_PENDING, WAITING_FOR_EMBEDDER):
        gauge.clear()
    for row in rows:
        QUEUE_DEPTH.labels(row["job_name"]).set(row["pending"] or 0)
        FAILED_ROWS.labels(row["job_name"]).set(row["failed_rows"] or 0)
        EMBEDDED_ROWS.labels(row["job_name"]).set(row["embedded_rows"] or 0)
        WAITING_FOR_EMBEDDER.labels(row["job_name"]).set(1 if row["waiting_for_embedder"] else 0)
        OLDEST_PENDING.labels(row["job_name"], row["lane"]).set(row["oldest_seconds"] or 0)


def render() -> bytes:
    return generate_latest(REGISTRY)


__all__ = ["CONTENT_TYPE", "render"]
