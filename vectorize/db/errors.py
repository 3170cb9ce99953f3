"""The database's errors in the caller's terms: our SQLSTATEs (raised by vectorize/sql/functions)
and the standard ones a caller can act on, each as a kind of core/errors.py."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from vectorize.core.errors import Conflict, Forbidden, GenerationGone, Invalid, NotFound, VectorizeError

BY_SQLSTATE: dict[str, type[VectorizeError]] = {
    "VZ400": Invalid,
    "VZ404": NotFound,
    "VZ409": Conflict,
    "VZ410": GenerationGone,  # the generation asked for is gone (a switch raced the request)
    "42501": Forbidden,  # insufficient_privilege
}


def from_database(exc: psycopg.Error) -> VectorizeError | None:
    """The caller's form of a database error, or None if it is not the caller's to fix."""
    kind = BY_SQLSTATE.get(exc.sqlstate or "")
    if kind is None:
        return None
    message = exc.diag.message_primary or str(exc)
    if exc.diag.message_hint:
        message = f"{message} (fix: {exc.diag.message_hint})"
    return kind(message)


@contextmanager
def database_errors() -> Iterator[None]:
    """Re-raise a database error the caller can fix as its kind; anything else unchanged."""
    try:
        yield
    except psycopg.Error as exc:
        error = from_database(exc)
        if error is None:
            raise
        raise error from exc
