"""Upgrades: a database made by an older release ends up with exactly the schema of a fresh
install, and a changed function body reaches an existing database on the next start."""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from vectorize.db import queries
from vectorize.db.database import migrate, publish_models
from vectorize.paths import SQL_DIR

from .helpers import MY_JOB, url_for

RELEASES = Path(__file__).parent / "schema_releases"
JOB_ID = "6f1c2d3e-0000-4000-8000-000000000001"


def schema_of(url: str) -> dict[str, list]:
    """Everything an upgrade must get right: tables and columns, indexes, constraints,
    function bodies (per-job ones included), views, triggers, and each job's generator version."""
    with psycopg.connect(url, row_factory=dict_row) as conn:

        def rows(query: str) -> list:
            return [tuple(r.values()) for r in conn.execute(query).fetchall()]

        return {
            "columns": rows(
                "select table_name, column_name, ordinal_position, data_type, is_nullable, column_default"
                " from information_schema.columns where table_schema = 'vectorize' order by 1, 3"
            ),
            "indexes": rows("select indexname, indexdef from pg_indexes where schemaname = 'vectorize' order by 1"),
            "constraints": rows(
                "select conrelid::regclass::text, conname, pg_get_constraintdef(oid) from pg_constraint"
                " where connamespace = 'vectorize'::regnamespace order by 1, 2"
            ),
            "functions": rows(
                "select proname, pg_get_function_identity_arguments(oid), pg_get_functiondef(oid) from pg_proc"
                " where pronamespace = 'vectorize'::regnamespace order by 1, 2"
            ),
            "views": rows("select viewname, definition from pg_views where schemaname = 'vectorize' order by 1"),
            "triggers": rows(
                "select tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) from pg_trigger"
                " where not tgisinternal order by 1, 2"
            ),
            "jobs": rows("select job_name, objects_version is not null from vectorize.job order by 1"),
            # How each column is stored (embeddings inline: migration 0012).
            "storage": rows(
                "select c.relname, a.attname, a.attstorage from pg_attribute a join pg_class c on c.oid = a.attrelid"
                " where c.relnamespace = 'vectorize'::regnamespace and c.relkind = 'r' and a.attnum > 0"
                " and not a.attisdropped order by 1, 2"
            ),
        }


def make_job(url: str) -> None:
    """The example table and job, with a fixed id (capture functions have the id written in)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute((SQL_DIR / "demo" / "my_products.sql").read_text().encode())
        conn.execute(
            "insert into vectorize.job (id, job_name, src_schema, src_table, src_columns, primary_key, update_time_col, model)"
            " values (%(id)s, %(job_name)s, %(src_schema)s, %(src_table)s, %(src_columns)s, %(primary_key)s,"
            " %(update_time_col)s, %(model)s)",
            {**MY_JOB, "id": JOB_ID},
        )


@pytest.fixture
def empty_db(pg_admin_url: str):
    """A database with pgvector and nothing else, dropped afterwards."""
    made: list[str] = []

    def make(name: str) -> str:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        made.append(name)
        url = url_for(pg_admin_url, name)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("create extension vector")
        return url

    yield make
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        for name in made:
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def test_a_database_of_the_previous_release_upgrades_to_a_fresh_install(empty_db, catalog) -> None:
    old = empty_db("upgrade_from_0_1_0")
    with psycopg.connect(old, autocommit=True) as conn:
        conn.execute((RELEASES / "0.1.0.sql").read_text().encode())
        conn.execute("insert into vectorize.model (name, dimension, max_tokens) values (%s, 384, 256)", (MY_JOB["model"],))
    make_job(old)  # built by the old release's generator
    with psycopg.connect(old, autocommit=True) as conn:
        conn.execute("update my_products set description = 'queued before the upgrade' where product_id = 1")
        queued_before = conn.execute("select count(*) from vectorize.queue").fetchone()[0]
    assert queued_before > 0
    migrate(old)

    fresh = empty_db("fresh_install")
    migrate(fresh)
    with psycopg.connect(fresh) as conn:
        publish_models(conn, catalog.local_models())
    make_job(fresh)

    upgraded, installed = schema_of(old), schema_of(fresh)
    for part in installed:
        assert upgraded[part] == installed[part], f"{part} differ after the upgrade"
    assert ("_embeddings_my_job", "embedding", "m") in installed["storage"]
    # Full-text indexes keep a short pending list (every search reads all of it).
    assert any(name == "_embeddings_my_job_fts" and "gin_pending_list_limit='128'" in d for name, d in installed["indexes"])
    with psycopg.connect(old) as conn:
        # The work queued by the old release is still there, now in the live lane,
        # and the regenerated capture trigger queues new changes.
        assert conn.execute("select count(*) from vectorize.queue where lane = 'live'").fetchone()[0] == queued_before
        conn.execute("update my_products set description = 'after the upgrade' where product_id = 2")
        assert conn.execute("select count(*) from vectorize.queue").fetchone()[0] == queued_before + 1


def test_a_changed_function_reaches_an_existing_database_on_the_next_start(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_job(db_url)
    changed = tmp_path / "sql"
    shutil.copytree(SQL_DIR, changed)
    worker_sql = changed / "functions" / "04_worker.sql"
    worker_sql.write_text(
        worker_sql.read_text().replace("    v_written int;\nbegin\n", "    v_written int;\nbegin\n    -- changed by hand\n", 1)
    )
    jobs_sql = changed / "functions" / "03_jobs.sql"
    jobs_sql.write_text(jobs_sql.read_text().replace("-- A failed job stops collecting work", "-- generated anew", 1))
    with psycopg.connect(db_url) as conn:
        version_before = conn.execute("select objects_version from vectorize.job").fetchone()[0]
    monkeypatch.setattr(queries, "SQL_DIR", changed)
    assert migrate(db_url) == []  # no migration is new: only the functions are re-applied
    with psycopg.connect(db_url) as conn:
        body = conn.execute("select pg_get_functiondef('vectorize.apply_batch(uuid, int, text[])'::regprocedure)").fetchone()[0]
        assert "-- changed by hand" in body
        # The job's objects were rebuilt by the new generator.
        capture = conn.execute("select pg_get_functiondef('vectorize._capture_my_job'::regproc)").fetchone()[0]
        assert "-- generated anew" in capture
        version_after = conn.execute("select objects_version from vectorize.job").fetchone()[0]
        assert version_after != version_before
        assert version_after == conn.execute("select vectorize._objects_version()").fetchone()[0]
