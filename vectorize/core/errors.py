"""What can go wrong for a caller, by kind: one tree for every layer.

A domain function says *what* went wrong (the definition is invalid, the job is not found, a
lock held too long is a conflict, the role is forbidden, the embedder is unavailable); only the
boundaries translate a kind: the HTTP app into a status (http/app.py), the command line into a
message and an exit code, the database's SQLSTATEs into a kind (db/errors.py). Nobody decides
by matching a message.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar


class Kind(StrEnum):
    INVALID = "invalid"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    FORBIDDEN = "forbidden"
    UNAVAILABLE = "unavailable"


class VectorizeError(Exception):
    """A request that cannot succeed as written (or now): ``message`` tells the caller why."""

    kind: ClassVar[Kind]

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Invalid(VectorizeError):
    kind = Kind.INVALID


class NotFound(VectorizeError):
    kind = Kind.NOT_FOUND


class Conflict(VectorizeError):
    kind = Kind.CONFLICT


class GenerationGone(Conflict):
    """The generation a request read was switched away or dropped under it: asking again helps."""


class Forbidden(VectorizeError):
    kind = Kind.FORBIDDEN


class Unavailable(VectorizeError):
    """Something the request needs is down for now (the hub, a provider): retry later."""

    kind = Kind.UNAVAILABLE


def reject_nul(field: str, value: str) -> None:
    """PostgreSQL text cannot hold NUL; refuse it at the boundary rather than fail in SQL."""
    if "\x00" in value:
        raise Invalid(f"{field} contains a NUL character, which PostgreSQL text cannot hold")
