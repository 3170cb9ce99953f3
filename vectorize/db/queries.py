"""The SQL files: named blocks of ``sql/queries.sql`` (parsed once), the numbered
migrations and the re-applied function files."""

from __future__ import annotations

import re
from functools import cache

from psycopg import sql

from vectorize.paths import SQL_DIR

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def _load() -> dict[str, str]:
    text = (SQL_DIR / "queries.sql").read_text()
    parts = _NAME.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def query(name: str) -> sql.SQL:
    """The query called ``name``, ready to execute with named parameters."""
    return sql.SQL(_load()[name])


#: Written in the SQL files wherever a pgvector object is named (its type, operator class,
#: operator): replaced by the schema pgvector is installed in, quoted. Our functions run with
#: ``search_path = pg_catalog, pg_temp``, so nothing of a schema others may write to is ever
#: found by its bare name (the CVE-2018-1058 pattern). PostgreSQL's own spelling in extensions.
VECTOR_SCHEMA = "@extschema:vector@"


def migration_files(vector_schema: str) -> list[tuple[str, str]]:
    """Numbered migrations in order, as (file name, SQL): tables, columns, indexes, data; run once
    each. ``vector_schema`` as for function_files."""
    return [
        (p.name, p.read_text().replace(VECTOR_SCHEMA, vector_schema))
        for p in sorted((SQL_DIR / "migrations").glob("[0-9][0-9][0-9][0-9]_*.sql"))
    ]


def function_files(vector_schema: str) -> list[tuple[str, str]]:
    """Functions, triggers and views in order, as (file name, SQL): re-applied whenever they change.
    ``vector_schema``: pgvector's schema, already quoted (by the server's ``quote_ident``)."""
    return [(p.name, p.read_text().replace(VECTOR_SCHEMA, vector_schema)) for p in sorted((SQL_DIR / "functions").glob("*.sql"))]
