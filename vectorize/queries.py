"""The SQL files: named blocks of ``sql/queries.sql`` (parsed once), the numbered
migrations and the re-applied function files."""

from __future__ import annotations

import re
from functools import cache

from psycopg import sql

from .paths import SQL_DIR

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def _load() -> dict[str, str]:
    text = (SQL_DIR / "queries.sql").read_text()
    parts = _NAME.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def query(name: str) -> sql.SQL:
    """The query called ``name``, ready to execute with named parameters."""
    return sql.SQL(_load()[name])  # type: ignore[arg-type]


def migration_files() -> list[tuple[str, str]]:
    """Numbered migrations in order, as (file name, SQL): tables, columns, indexes, data; run once each."""
    return [(p.name, p.read_text()) for p in sorted((SQL_DIR / "migrations").glob("[0-9][0-9][0-9][0-9]_*.sql"))]


def function_files() -> list[tuple[str, str]]:
    """Functions, triggers and views in order, as (file name, SQL): re-applied whenever they change."""
    return [(p.name, p.read_text()) for p in sorted((SQL_DIR / "functions").glob("*.sql"))]
