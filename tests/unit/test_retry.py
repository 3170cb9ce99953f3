"""Whose fault a failure is, and how long to wait."""

from __future__ import annotations

import psycopg
import pytest

from vectorize.embedding.errors import EmbedderUnavailable, EmbeddingAborted
from vectorize.embedding.remote import RemoteEmbeddingError, RemoteUnavailable
from vectorize.worker.retry import Blame, RetryPolicy


@pytest.mark.parametrize(
    ("error", "blame"),
    [
        (ValueError("a text the model rejects"), Blame.ROW),
        (RemoteEmbeddingError("400: 'input' is invalid"), Blame.ROW),
        (RemoteUnavailable("503: overloaded"), Blame.EMBEDDER),
        (EmbedderUnavailable("model cannot be loaded"), Blame.EMBEDDER),
        (psycopg.errors.UndefinedTable("gone"), Blame.SOURCE),
        (psycopg.errors.InsufficientPrivilege("revoked"), Blame.SOURCE),
        (psycopg.OperationalError("server closed the connection"), Blame.NOBODY),
        (EmbeddingAborted("shutdown"), Blame.NOBODY),
    ],
)
def test_blame(error: Exception, blame: Blame) -> None:
    assert RetryPolicy.blame(error) is blame


def test_rows_back_off_exponentially_then_park() -> None:
    policy = RetryPolicy(max_attempts=4, row_backoff=1.0)
    assert [policy.row_retry_delay(n) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert policy.row_retry_delay(4) is None
    assert RetryPolicy(max_attempts=100, row_backoff=1.0).row_retry_delay(20) == 300.0


def test_an_embedder_pause_grows_to_a_cap_and_honours_retry_after() -> None:
    policy = RetryPolicy(embedder_backoff=2.0, embedder_backoff_max=60.0)
    assert [policy.embedder_pause(n) for n in range(7)] == [2, 4, 8, 16, 32, 60, 60]
    assert policy.embedder_pause(0, retry_after=30.0) == 30.0
    assert policy.embedder_pause(5, retry_after=1.0) == 60.0
