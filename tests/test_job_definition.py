"""One job definition: the Python description (core/job_definition.py) against what the database
enforces, what the OpenAPI document says and what the CLI offers. A default or a bound changed in
one place and not the other fails here."""

from __future__ import annotations

import re

import pytest

from vectorize.cli.main import build_parser
from vectorize.core.job_definition import BY_NAME, FIELDS, OPTIONAL, REQUIRED, SETTINGS, TEXT_FIELDS, json_schema
from vectorize.http.openapi import SPEC

from .helpers import MY_JOB


def test_sql_defaults_are_the_definition_s(conn) -> None:
    columns = {
        row["column_name"]: row["column_default"]
        for row in conn.execute(
            "select column_name, column_default from information_schema.columns where table_schema = 'vectorize' and table_name = 'job'"
        ).fetchall()
    }
    for name in (*OPTIONAL, *SETTINGS):
        default = columns[name]
        expected = BY_NAME[name].default
        if expected is None:
            assert default is None, (name, default)
        else:
            assert default is not None and str(expected).lower() in default.lower(), (name, default, expected)
    arguments = conn.execute("select pg_get_function_arguments('vectorize.create_job'::regproc) as a").fetchone()["a"]
    for name in OPTIONAL:
        expected = BY_NAME[name].default
        shown = "NULL" if expected is None else str(expected).lower()
        assert re.search(rf"p_{name} \w+ DEFAULT '?{re.escape(shown)}", arguments, re.IGNORECASE), (name, arguments)


def test_the_text_fields_are_the_ones_sql_compares(conn) -> None:
    body = conn.execute(
        "select pg_get_functiondef('vectorize._same_text(vectorize.job, vectorize.job)'::regprocedure) as d"
    ).fetchone()["d"]
    assert set(re.findall(r"\ba\.(\w+)", body)) == set(TEXT_FIELDS)


async def _dry_create(api, **values: object) -> tuple[int, str]:
    response = await api.post("/api/v1/table?dry_run=true", json={**MY_JOB, **values})
    body = await response.json()
    return response.status, body.get("error", "")


@pytest.mark.parametrize("field", [f for f in FIELDS if f.minimum is not None or f.maximum is not None], ids=lambda f: f.name)
async def test_the_database_enforces_the_definition_s_bounds(api, products, field) -> None:
    """At each bound the database accepts; one past it, it refuses and names the field."""
    company = {
        "hnsw_m": {"hnsw_ef_construction": 1000},
        "hnsw_ef_construction": {"hnsw_m": 2},
        "chunk_tokens": {"chunk_overlap": 0},
    }.get(field.name, {})
    for bound, outside in ((field.minimum, -1), (field.maximum, 1)):
        if bound is None:
            continue
        status, error = await _dry_create(api, **company, **{field.name: bound})
        assert status == 200, (field.name, bound, error)
        status, error = await _dry_create(api, **company, **{field.name: bound + outside})
        assert status == 400 and field.name in error, (field.name, bound + outside, status, error)


def test_the_openapi_schema_is_derived_from_the_definition() -> None:
    schema = SPEC["components"]["schemas"]["VectorizeJob"]
    assert schema["required"] == list(REQUIRED)
    assert schema["properties"] == {f.name: json_schema(f) for f in FIELDS}
    for field in FIELDS:
        prop = schema["properties"][field.name]
        assert prop.get("default") == field.default and prop.get("minimum") == field.minimum, field.name


def test_the_cli_offers_every_optional_field_with_its_default() -> None:
    parser = build_parser()
    required = ["--table", "t", "--columns", "a", "--primary-key", "id", "--update-time-col", "u"]
    created = parser.parse_args(["jobs", "create", "j", *required])
    assert {name: getattr(created, name) for name in OPTIONAL} == {name: BY_NAME[name].default for name in OPTIONAL}
    altered = parser.parse_args(["jobs", "alter", "j"])
    assert all(getattr(altered, name) is None for name in OPTIONAL)  # left out: the job keeps its value
    changed = parser.parse_args(["jobs", "alter", "j", "--chunk-overlap", "8", "--no-chunking", "--language", "simple"])
    assert (changed.chunk_overlap, changed.chunking, changed.language) == (8, False, "simple")
