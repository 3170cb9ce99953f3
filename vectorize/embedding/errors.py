"""How an embedder says that a call did not produce vectors, and whose fault it was.

The worker acts on the difference: a row's failure costs that row one attempt;
an embedder's failure pauses the whole job and costs no row anything."""

from __future__ import annotations


class EmbeddingAborted(Exception):
    """``embed`` stopped between inference calls because its abort event was set (shutdown)."""


class EmbedderUnavailable(Exception):
    """The model cannot embed anything right now: its server is down, overloaded, refuses our
    credentials, or its files cannot be loaded. Nothing about the texts would change that."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        #: Seconds the server asked us to wait (``Retry-After``), if it said.
        self.retry_after = retry_after
