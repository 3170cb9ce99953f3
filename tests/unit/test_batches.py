"""Batch planning and the encoder's priority hand-off, without a model."""

from __future__ import annotations

import threading

from vectorize.core.scheduler import BULK, URGENT
from vectorize.embedding.encoder import SessionPool, plan_batches


def test_batches_respect_the_token_budget() -> None:
    lengths = [5, 200, 7, 120, 9, 256, 30]
    batches = plan_batches(lengths, token_budget=300, max_rows=4)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 4
        assert len(batch) == 1 or max(lengths[i] for i in batch) * len(batch) <= 300
    # Shortest first: each batch's rows are no longer than the next batch's.
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat)


def test_a_released_session_goes_to_the_most_urgent_waiter() -> None:
    pool = SessionPool(["only-session"])  # type: ignore[list-item]
    held = pool.acquire(BULK)
    order: list[str] = []
    started: list[threading.Thread] = []

    def wait(name: str, priority: int) -> None:
        session = pool.acquire(priority)
        order.append(name)
        pool.release(session)

    # Two bulk slices queue first, then an urgent one: the urgent one must run next.
    for name, priority in (("bulk-1", BULK), ("bulk-2", BULK), ("urgent", URGENT)):
        thread = threading.Thread(target=wait, args=(name, priority))
        thread.start()
        started.append(thread)
        while len(pool._waiters) < len(started):  # wait until it queued (no sleeps as synchronisation)
            threading.Event().wait(0.001)
    pool.release(held)
    for thread in started:
        thread.join(5)
    assert order == ["urgent", "bulk-1", "bulk-2"]


def test_an_idle_session_is_taken_at_once() -> None:
    pool = SessionPool(["a", "b"])  # type: ignore[list-item]
    assert {pool.acquire(BULK), pool.acquire(URGENT)} == {"a", "b"}
