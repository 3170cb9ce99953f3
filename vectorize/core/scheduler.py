"""Who goes next: the worker's two lanes and the turn-taking between jobs inside a lane.

Live changes (captured by the triggers) and backfill work (rows queued by a scan)
run as two lanes side by side, each with its own batches in flight; the encoder
serves live batches' inference calls first (embedding/encoder.py), so a change
never waits behind a backfill batch. Inside a lane, jobs take turns round-robin,
one batch per turn, and a job gets a second batch in flight only when no other
job is waiting: no job's change waits for more than about one batch of another
job's work."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from enum import StrEnum
from typing import Protocol, TypeVar

#: Priorities of the encoder's inference calls (embedding/encoder.py): lower runs first, so a
#: live lane's call takes the next free session ahead of any backfill call waiting for one.
URGENT = 0
BULK = 1


class Lane(StrEnum):
    LIVE = "live"
    BACKFILL = "backfill"

    @property
    def priority(self) -> int:
        """The encoder priority of this lane's inference calls."""
        return URGENT if self is Lane.LIVE else BULK


class HasId(Protocol):
    @property
    def id(self) -> Hashable: ...


J = TypeVar("J", bound=HasId)


class Rotation:
    """Round-robin over the jobs that have work, resuming after the last one served."""

    def __init__(self) -> None:
        self._last: Hashable | None = None

    def pick(self, ready: Sequence[J], in_flight: Mapping[Hashable, int]) -> J | None:
        """The next job to serve among ``ready`` (a stable order), given how many batches each
        job has in flight: jobs with none first, then the least busy."""
        if not ready:
            return None
        ids = [job.id for job in ready]
        start = ids.index(self._last) + 1 if self._last in ids else 0
        order = [*ready[start:], *ready[:start]]
        chosen = min(order, key=lambda job: in_flight.get(job.id, 0))  # min keeps rotation order among ties
        self._last = chosen.id
        return chosen
