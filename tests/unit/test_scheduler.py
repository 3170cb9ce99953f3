"""Turn-taking between jobs inside a lane."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from vectorize.core.scheduler import Lane, Rotation


@dataclass(frozen=True)
class Job:
    id: str


A, B, C = Job("a"), Job("b"), Job("c")


def test_jobs_take_turns_round_robin() -> None:
    rotation = Rotation()
    picks = [rotation.pick([A, B, C], {}) for _ in range(7)]
    assert [p.id for p in picks] == ["a", "b", "c", "a", "b", "c", "a"]


def test_a_job_that_joins_waits_at_most_one_round() -> None:
    rotation = Rotation()
    assert rotation.pick([A, B], {}) == A
    assert rotation.pick([A, B], {}) == B
    # C arrives: it is served before A gets a second turn in a row... and never waits longer than a round.
    served = [rotation.pick([A, B, C], {}).id for _ in range(3)]
    assert served.index("c") <= 2 and sorted(served) == ["a", "b", "c"]


def test_a_job_with_a_batch_in_flight_goes_after_idle_ones() -> None:
    rotation = Rotation()
    assert rotation.pick([A, B], Counter({"a": 1})) == B
    assert rotation.pick([A, B], Counter({"a": 1, "b": 1})) in (A, B)
    # Alone, a job may have a second batch in flight (two overlap database work and inference).
    assert Rotation().pick([A], Counter({"a": 1})) == A


def test_a_job_that_left_is_skipped() -> None:
    rotation = Rotation()
    rotation.pick([A, B, C], {})
    assert rotation.pick([B, C], {}) == B
    assert rotation.pick([], {}) is None


def test_live_changes_outrank_backfill_in_the_encoder() -> None:
    assert Lane.LIVE.priority < Lane.BACKFILL.priority
