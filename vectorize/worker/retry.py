"""Whose fault a failed batch is, and what follows: the decision only; the worker acts on it.

A row's failure (a text the model rejects) costs that row one attempt, with an
exponential wait before the next; after ``max_attempts`` it is parked in
vectorize.failure. An embedder's failure (its server is down, its files cannot be
loaded) pauses the whole job with an exponential wait and costs no row anything,
so an outage of any length parks nothing that is healthy."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import psycopg

from vectorize.config import Settings
from vectorize.embedding.errors import EmbedderUnavailable, EmbeddingAborted

#: Errors that mean the job's source itself is broken, not one row.
SOURCE_BROKEN = (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn, psycopg.errors.InsufficientPrivilege)

#: Errors the database raises over one row's values when a batch is written (a tsvector over
#: 1 MB, a value a type rejects, a constraint): that row's, found by splitting the batch. Class 54
#: (program limit exceeded) is an OperationalError in psycopg, so it is named before that check.
ROW_REJECTED = (psycopg.errors.ProgramLimitExceeded, psycopg.DataError, psycopg.IntegrityError)

#: Longest wait before a failed row's next try.
ROW_BACKOFF_CAP = 300.0


class Blame(Enum):
    ROW = "row"  # split the batch until the failing rows are found, count an attempt against each
    EMBEDDER = "embedder"  # pause the job; no row is charged
    SOURCE = "source"  # the job cannot run any more: fail it
    NOBODY = "nobody"  # shutdown or a database outage: pass it up, the transaction rolls back


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    row_backoff: float = 1.0
    embedder_backoff: float = 2.0
    embedder_backoff_max: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(settings.max_attempts, settings.retry_backoff, settings.embedder_backoff, settings.embedder_backoff_max)

    @staticmethod
    def blame(exc: BaseException) -> Blame:
        if isinstance(exc, EmbedderUnavailable):
            return Blame.EMBEDDER
        if isinstance(exc, SOURCE_BROKEN):
            return Blame.SOURCE
        if isinstance(exc, ROW_REJECTED):
            return Blame.ROW
        if isinstance(exc, psycopg.OperationalError | EmbeddingAborted) or not isinstance(exc, Exception):
            return Blame.NOBODY
        return Blame.ROW

    def row_retry_delay(self, attempts: int) -> float | None:
        """Seconds before the next try of a row that has failed ``attempts`` times; None: park it."""
        if attempts >= self.max_attempts:
            return None
        return min(self.row_backoff * 2 ** (attempts - 1), ROW_BACKOFF_CAP)

    def embedder_pause(self, pauses_so_far: int, retry_after: float | None = None) -> float:
        """Seconds a job waits after its embedder failed, ``pauses_so_far`` failures in a row
        before this one. A server's own Retry-After is honoured when it asks for longer."""
        delay = min(self.embedder_backoff * 2**pauses_so_far, self.embedder_backoff_max)
        return max(delay, retry_after or 0.0)
