"""Create and delete jobs. The shape of the request is checked here; every rule
about the table, columns and model is checked by the database trigger, so SQL
users get exactly the same answers."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from .errors import UserError, from_database
from .queries import query

#: Fields of a job definition and the JSON type each must have.
JOB_FIELDS: dict[str, type] = {
    "job_name": str,
    "src_table": str,
    "src_schema": str,
    "src_columns": list,
    "primary_key": str,
    "update_time_col": str,
    "model": str,
}
_TYPE_NAMES = {str: "a string", list: "an array of strings"}


def _check_text(field: str, value: str) -> None:
    if "\x00" in value:
        raise UserError(400, f"{field} contains a NUL character, which PostgreSQL names cannot hold")


def parse_job_definition(body: Any) -> dict[str, Any]:
    """Validate the JSON shape of a VectorizeJob; missing fields are left to the database's message."""
    if not isinstance(body, dict):
        raise UserError(400, f"the request body must be a JSON object with the fields {', '.join(JOB_FIELDS)}")
    unknown = sorted(set(body) - set(JOB_FIELDS))
    if unknown:
        raise UserError(400, f"unknown field {unknown[0]!r}; a job has exactly the fields {', '.join(JOB_FIELDS)}")
    missing = [f for f in JOB_FIELDS if f not in body]
    if missing:
        raise UserError(400, f"{missing[0]} is required")
    definition: dict[str, Any] = {}
    for field, kind in JOB_FIELDS.items():
        value = body[field]
        if not isinstance(value, kind):
            raise UserError(
                400, f"{field} must be {_TYPE_NAMES[kind]}, got {type(value).__name__ if value is not None else 'null'}"
            )
        if kind is list:
            if not all(isinstance(v, str) for v in value):
                raise UserError(400, f"{field} must be an array of strings")
            for v in value:
                _check_text(field, v)
        else:
            _check_text(field, value)
        definition[field] = value
    return definition


async def create_job(pool: AsyncConnectionPool, definition: dict[str, Any]) -> str:
    """Insert the job (the trigger validates and builds its objects); returns its id."""
    try:
        async with pool.connection() as conn:
            row = await (await conn.execute(query("create_job"), definition)).fetchone()
    except psycopg.Error as exc:
        user_error = from_database(exc)
        if user_error is None:
            raise
        raise user_error from exc
    assert row is not None
    return str(row["id"])


async def delete_job(pool: AsyncConnectionPool, job_name: str) -> None:
    """Delete the job and everything it built; 404 if there is no such job."""
    async with pool.connection() as conn:
        row = await (await conn.execute(query("delete_job"), {"job_name": job_name})).fetchone()
    if row is None:
        raise UserError(404, f"job {job_name!r} does not exist")
