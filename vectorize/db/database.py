"""Connections and schema: pgvector check, migrations and function files, the model
table, connection pool factory."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

import psycopg
from pgvector.psycopg.vector import register_vector_info
from psycopg.rows import DictRow, dict_row
from psycopg.types import TypeInfo
from psycopg_pool import AsyncConnectionPool

from vectorize.core.errors import Forbidden
from vectorize.db.queries import function_files, migration_files, query
from vectorize.embedding.catalog import ModelInfo

#: The logger keeps the name it has had since the first release (operators filter on it).
log = logging.getLogger("vectorize.db")

#: The daemon's connections: rows as dicts (column name -> value).
Connection = psycopg.AsyncConnection[DictRow]
#: A pool of them (make_pool).
Pool = AsyncConnectionPool[Connection]


class PgvectorMissing(RuntimeError):
    """The server has no pgvector; the message says how to install it."""


PGVECTOR_HELP = (
    "the pgvector extension is not available on this PostgreSQL server. Install it "
    "(Debian/Ubuntu: apt install postgresql-<version>-pgvector; Docker: the pgvector/pgvector image; "
    "see https://github.com/pgvector/pgvector#installation), or unset DATABASE_URL to use "
    "vectorize's embedded PostgreSQL, which ships with pgvector"
)


def ensure_pgvector(conn: psycopg.Connection) -> None:
    row = conn.execute(query("pgvector_available")).fetchone()
    assert row is not None
    available, installed = row
    if installed:
        return
    if not available:
        raise PgvectorMissing(PGVECTOR_HELP)
    try:
        conn.execute(query("create_pgvector"))
    except psycopg.errors.InsufficientPrivilege as exc:
        raise PgvectorMissing(
            "pgvector is installed on the server but not enabled in this database, and this role may not "
            "enable it: run CREATE EXTENSION vector; once as a superuser"
        ) from exc


def connect(database_url: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """A connection of the daemon's, with the session settings every one of them has (pin_session)."""
    conn = psycopg.connect(database_url, **kwargs)
    try:
        pin_session(conn)
    except BaseException:
        conn.close()
        raise
    return conn


async def connect_async(database_url: str, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
    """The same for asyncio: vector values adapted, the session pinned."""
    conn = await psycopg.AsyncConnection.connect(database_url, **kwargs)
    try:
        await _configure_async(conn)
    except BaseException:
        await conn.close()
        raise
    return conn


def pin_session(conn: psycopg.Connection[Any]) -> None:
    """Resolve names only in pg_catalog (then pg_temp): a function or operator that a SQL user
    creates in ``public`` (or any schema on the default path) with a better-matching signature
    would otherwise run, as the daemon, inside our queries. Everything of ours is qualified."""
    conn.execute(query("pin_search_path"))
    if not conn.autocommit:
        conn.commit()


async def _configure_async(conn: psycopg.AsyncConnection[Any]) -> None:
    """Adapt pgvector's type by its schema-qualified name (found in the extension's catalog row,
    not on the search_path), then pin the search_path."""
    row = await (await conn.execute(query("vector_type"))).fetchone()
    if row is not None:  # before the first migration there may be no pgvector yet
        name = row["name"] if isinstance(row, dict) else row[0]
        info = await TypeInfo.fetch(conn, name)
        if info is not None:
            register_vector_info(conn, info)
    await conn.execute(query("pin_search_path"))
    if not conn.autocommit:
        await conn.commit()


async def act_as(conn: psycopg.AsyncConnection[Any], role: str | None) -> None:
    """Run the rest of this transaction as ``role`` (None: as the daemon). A role that does not
    exist, or that the daemon is not a member of, is the token's configuration error: a 403."""
    if role is None:
        return
    try:
        await conn.execute(query("act_as"), {"role": role})
    except (psycopg.errors.InvalidParameterValue, psycopg.errors.InsufficientPrivilege) as exc:
        raise Forbidden(
            f"this token's role {role!r} does not exist or vectorize may not act as it (GRANT {role} TO <daemon role>)"
        ) from exc


def migrate(database_url: str) -> list[str]:
    """Bring the schema up to date in one transaction; returns the migrations it applied.

    Migrations not yet recorded run once, in order. Then, when the function files differ from
    the ones last applied (their digest is recorded beside the migrations), every one is applied
    again (``create or replace``), so a changed function body reaches a database that was
    migrated long ago, and per-job objects built by an older generator are rebuilt. A restart of
    the same release takes no DDL lock at all: re-creating the triggers on vectorize.job would
    queue behind, and deadlock with, psql sessions reading vectorize.job_status."""
    with psycopg.connect(database_url) as conn:
        ensure_pgvector(conn)
        row = conn.execute(query("vector_schema")).fetchone()
        assert row is not None
        vector_schema = row[0]
        conn.commit()
        pin_session(conn)
        with conn.transaction():
            conn.execute(query("lock_migrations"))
            conn.execute(query("create_migrations_table"))
            done = {row[0] for row in conn.execute(query("applied_migrations"))}
            applied = []
            for name, body in migration_files(vector_schema):
                if name in done:
                    continue
                conn.execute(body.encode())
                conn.execute(query("record_migration"), {"name": name})
                applied.append(name)
            functions = function_files(vector_schema)
            digest = "functions:" + hashlib.sha256("".join(n + b for n, b in functions).encode()).hexdigest()
            if applied or conn.execute(query("functions_applied"), {"name": digest}).fetchone() is None:
                for _, body in functions:
                    conn.execute(body.encode())
                conn.execute(query("forget_functions"))
                conn.execute(query("record_migration"), {"name": digest})
            row = conn.execute(query("refresh_job_objects")).fetchone()
            rebuilt = row[0] if row else 0
    for name in applied:
        log.info("event=migration_applied name=%s", name)
    if rebuilt:
        log.info("event=job_objects_rebuilt jobs=%d", rebuilt)
    return applied


def publish_models(conn: psycopg.Connection, models: list[ModelInfo]) -> None:
    """Tell the database which models this installation can run (job validation reads it)."""
    with conn.transaction():
        for m in models:
            conn.execute(query("upsert_model"), asdict(m))


def _configurer(statement_timeout: float | None) -> Callable[[Connection], Awaitable[None]]:
    async def configure(conn: Connection) -> None:
        # Keep the pool's idle connections out of a transaction.
        await conn.set_autocommit(True)
        await _configure_async(conn)
        if statement_timeout:
            await conn.execute(query("set_statement_timeout"), {"timeout": f"{int(statement_timeout * 1000)}ms"})

    return configure


def make_pool(
    database_url: str,
    *,
    min_size: int = 1,
    max_size: int = 4,
    name: str = "vectorize",
    timeout: float = 5.0,
    statement_timeout: float | None = None,
) -> Pool:
    """A pool that reconnects by itself after a server restart (checked before each use).

    ``timeout`` bounds the wait for a connection, so a request during a database outage
    fails fast (the API answers 503) instead of hanging; ``statement_timeout`` (seconds) bounds
    every statement on its connections, so no request holds one for long."""
    return AsyncConnectionPool(
        database_url,
        connection_class=Connection,
        min_size=min_size,
        max_size=max_size,
        timeout=timeout,
        kwargs={"row_factory": dict_row},
        configure=_configurer(statement_timeout),
        check=AsyncConnectionPool.check_connection,
        open=False,
        name=name,
        # Give up a reconnection attempt after a few seconds instead of backing off for an
        # hour: the next request starts a fresh attempt, so service resumes within about a
        # second of the server coming back (the worker and API retry on their own schedule).
        reconnect_timeout=3,
    )
