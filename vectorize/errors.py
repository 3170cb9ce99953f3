"""Errors a user can fix, and how database errors become them.

The database raises our own SQLSTATEs (see sql/0002_jobs.sql); this is the one
place that knows which HTTP status each one means.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

SQLSTATE_STATUS = {
    "VZ400": 400,
    "VZ404": 404,
    "VZ409": 409,
    "VZ410": 409,  # the generation asked for is gone (a switch raced the request): asking again helps
    "42501": 403,  # insufficient_privilege
}


class UserError(Exception):
    """A request that cannot succeed as written; ``status`` is the HTTP status."""

    def __init__(self, status: int, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        #: The database's SQLSTATE when it raised it (which kind of conflict, for example).
        self.sqlstate = sqlstate


def from_database(exc: psycopg.Error) -> UserError | None:
    """The user-facing form of a database error, or None if it is not the user's to fix."""
    status = SQLSTATE_STATUS.get(exc.sqlstate or "")
    if status is None:
        return None
    message = exc.diag.message_primary or str(exc)
    if exc.diag.message_hint:
        message = f"{message} (fix: {exc.diag.message_hint})"
    return UserError(status, message, sqlstate=exc.sqlstate)


@contextmanager
def database_errors() -> Iterator[None]:
    """Re-raise a database error the user can fix as a UserError; anything else unchanged."""
    try:
        yield
    except psycopg.Error as exc:
        user_error = from_database(exc)
        if user_error is None:
            raise
        raise user_error from exc


def reject_nul(field: str, value: str) -> None:
    """PostgreSQL text cannot hold NUL; refuse it at the boundary rather than fail in SQL."""
    if "\x00" in value:
        raise UserError(400, f"{field} contains a NUL character, which PostgreSQL text cannot hold")
