"""The worker's decisions on an in-memory store and a fake embedder (no PostgreSQL, no model):
which chunks are embedded, how many rows a batch takes, whose fault a failure is, whose turn it
is, when a backfill scans. The same Worker class the daemon runs; the SQL behind each store call
has its integration tests."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np

from vectorize.config import Settings
from vectorize.core.scheduler import Lane
from vectorize.worker.batch import content_hash
from vectorize.worker.loop import Worker

from .memory_store import FakeCatalog, FakeEmbedder, MemoryStore, vector


def _worker(store: MemoryStore, embedder: FakeEmbedder, **settings: object) -> Worker:
    return Worker(replace(Settings(), **settings), FakeCatalog(embedder), store=store)


def _drain(worker: Worker) -> int:
    return asyncio.run(worker.drain())


def test_only_changed_chunks_are_embedded_and_each_text_once() -> None:
    store, embedder = MemoryStore(), FakeEmbedder()
    job = store.add_job("docs", {"a": "red apples grow", "b": "red apples grow", "c": "blue sky"})
    store.queue(job, ["a", "b", "c"])
    worker = _worker(store, embedder)
    assert _drain(worker) == 3
    assert sorted(embedder.embedded) == ["blue sky", "red apples grow"]  # a and b share one inference
    assert set(store.stored(job)) == {"a", "b", "c"}
    before = store.stored(job)["a"][0].vector

    store.change(job, "c", "blue sea")
    store.queue(job, ["a"])  # touched, its text unchanged
    embedder.calls.clear()
    assert _drain(worker) == 2
    assert embedder.embedded == ["blue sea"]  # the hash of a's chunk matched: no inference for it
    assert np.array_equal(store.stored(job)["a"][0].vector, before)
    assert np.array_equal(store.stored(job)["c"][0].vector, vector("blue sea"))
    assert not store.items


def test_a_long_row_is_cut_into_chunks_of_the_window_less_the_special_tokens() -> None:
    store, embedder = MemoryStore(), FakeEmbedder(max_tokens=8)
    words = [f"w{i}" for i in range(14)]
    job = store.add_job("long", {"x": " ".join(words)})
    store.queue(job, ["x"])
    _drain(_worker(store, embedder))
    chunks = store.stored(job)["x"]
    assert [c.chunk for c in chunks] == [0, 1, 2] and all(c.chunks == 3 for c in chunks)
    assert [store.stored(job)["x"][k].content_hash for k in range(3)] == [
        content_hash(" ".join(part)) for part in (words[0:6], words[6:12], words[12:14])
    ]
    assert sorted(embedder.embedded) == sorted(" ".join(part) for part in (words[0:6], words[6:12], words[12:14]))


def test_a_batch_takes_rows_up_to_its_chunk_budget() -> None:
    """Rows of two chunks each and a budget of 4 chunks: a batch embeds two rows (4 of the 5 its
    slack allows; a third would make 6); the rows left over stay queued for the next batch, and
    the next claims take about the budget's worth of rows, learned from the chunks per row."""
    store, embedder = MemoryStore(), FakeEmbedder(max_tokens=8)
    rows = {f"r{i}": " ".join(f"t{i}x{k}" for k in range(12)) for i in range(6)}
    job = store.add_job("budget", rows)
    store.queue(job, list(rows))
    _drain(_worker(store, embedder, batch_size=4))
    assert max(len(call) for call in embedder.calls) <= 5
    assert len(embedder.calls[0]) == 4 and len(store.claims[0][2]) == 4  # claimed 4 rows, embedded 2
    assert len(embedder.embedded) == 12 == len(set(embedder.embedded))  # every chunk once
    assert set(store.stored(job)) == set(rows) and not store.items
    assert [len(pks) for _, _, pks in store.claims[2:]] and max(len(pks) for _, _, pks in store.claims[2:]) <= 3


def test_an_embedder_outage_pauses_the_job_and_charges_no_row() -> None:
    store, embedder = MemoryStore(), FakeEmbedder()
    job = store.add_job("outage", {"a": "one", "b": "two", "c": "three"})
    store.queue(job, ["a", "b", "c"])
    embedder.down = True
    worker = _worker(store, embedder, embedder_backoff=2.0)
    assert _drain(worker) == 0
    assert len(store.pauses) == 1 and store.pauses[0][1] == 2.0 and "unavailable" in store.pauses[0][2]
    assert len(store.items) == 3 and all(i.attempts == 0 for i in store.items.values()) and not store.parked

    _drain(worker)  # still paused: nobody tries
    assert len(store.pauses) == 1
    store.tick()
    _drain(worker)  # the probe fails again: a longer pause
    assert [p[1] for p in store.pauses] == [2.0, 4.0]
    embedder.down = False
    store.tick()
    assert _drain(worker) == 3
    assert store.resumed == ["outage"] and set(store.stored(job)) == {"a", "b", "c"} and not store.parked


def test_a_rejected_row_is_found_by_halving_and_charged_alone_then_parked() -> None:
    store, embedder = MemoryStore(), FakeEmbedder()
    rows = {f"r{i}": f"healthy text {i}" for i in range(8)}
    rows["r5"] = "poison text"
    job = store.add_job("poisoned", rows)
    store.queue(job, list(rows))
    embedder.poison = {"poison"}
    worker = _worker(store, embedder, max_attempts=2)
    _drain(worker)
    assert set(store.stored(job)) == set(rows) - {"r5"}  # the seven healthy rows committed
    (waiting,) = store.items.values()
    assert waiting.pk == "r5" and waiting.attempts == 1 and waiting.waiting and not store.parked
    batches = len(store.claims)
    assert batches <= 1 + 2 * 3  # the batch, then halves down to one row: about log2(8) levels

    store.tick()
    _drain(worker)
    assert [(job_name, pk, attempts) for job_name, pk, attempts, _ in store.parked] == [("poisoned", "r5", 2)]
    assert "rejects" in store.parked[0][3] and not store.items and not store.pauses


def test_a_row_over_the_text_budget_is_parked_without_inference() -> None:
    store, embedder = MemoryStore(), FakeEmbedder()
    job = store.add_job("huge", {"small": "fine", "big": "word " * 40})
    store.queue(job, ["small", "big"])
    _drain(_worker(store, embedder, max_row_chars=100))
    assert embedder.embedded == ["fine"]
    assert [(pk, attempts) for _, pk, attempts, _ in store.parked] == [("big", 1)]
    assert "over the limit of 100" in store.parked[0][3] and not store.items


def test_jobs_take_turns_in_a_lane() -> None:
    """Two jobs with a backlog each: batches alternate between them, one batch per turn."""
    store, embedder = MemoryStore(), FakeEmbedder()
    first = store.add_job("first", {f"a{i}": f"alpha {i}" for i in range(8)})
    second = store.add_job("second", {f"b{i}": f"beta {i}" for i in range(8)})
    store.queue(first, list(first.rows), Lane.BACKFILL)
    store.queue(second, list(second.rows), Lane.BACKFILL)
    _drain(_worker(store, embedder, backfill_batch_size=2))
    order = [job_name for job_name, _, pks in store.claims if pks]
    assert order[:6] in (["first", "second"] * 3, ["second", "first"] * 3), order
    assert set(store.stored(first)) == set(first.rows) and set(store.stored(second)) == set(second.rows)


def test_a_live_change_is_served_in_its_own_lane_beside_a_backfill() -> None:
    store, embedder = MemoryStore(), FakeEmbedder()
    job = store.add_job("mixed", {f"r{i}": f"row {i}" for i in range(6)})
    store.queue(job, [f"r{i}" for i in range(5)], Lane.BACKFILL)
    store.change(job, "r5", "changed row")
    _drain(_worker(store, embedder, backfill_batch_size=2))
    lanes = {lane for _, lane, pks in store.claims if "r5" in pks}
    assert lanes == {"live"} and set(store.stored(job)) == set(job.rows)


def test_a_backfill_with_nothing_queued_scans_the_next_page() -> None:
    """A page fills the batches in flight: with a 2-row batch and two in flight, pages of 4 rows."""
    store, embedder = MemoryStore(), FakeEmbedder()
    job = store.add_job("scan", {f"k{i:02}": f"text {i}" for i in range(10)}, scan=True)
    _drain(_worker(store, embedder, backfill_batch_size=2))
    assert [seen for _, _, seen in store.scan_pages] == [4, 4, 2, 0]
    assert {page for _, page, _ in store.scan_pages} == {4}
    assert set(store.stored(job)) == set(job.rows) and not job.scan_active
