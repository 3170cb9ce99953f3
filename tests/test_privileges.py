"""The daemon runs as a plain role with the documented grants; others cannot reach what they may not read."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from vectorize.db.database import migrate, publish_models

from .helpers import MY_JOB, scratch_database, wait_until

GRANTS = """
create extension if not exists vector;
create schema vectorize authorization vz_daemon;
create table public.my_products (product_id int primary key, product_name text, description text,
                                 updated_at timestamptz default now());
insert into public.my_products values (1, 'Tent', 'Shelter for camping'), (2, 'Stove', 'Cooks food outdoors');
grant select, trigger on public.my_products to vz_daemon;
"""


@pytest.fixture
def least_privilege_db(pg_admin_url: str):
    with scratch_database(pg_admin_url, "least_priv", ("vz_daemon", "vz_intruder", "vz_manager")) as owner_url:
        with psycopg.connect(owner_url, autocommit=True) as owner:
            owner.execute(GRANTS)
        yield owner_url


async def test_daemon_works_as_a_non_superuser(least_privilege_db: str, catalog, start_worker, settings) -> None:
    daemon_url = psycopg.conninfo.make_conninfo(least_privilege_db, user="vz_daemon")
    with psycopg.connect(daemon_url) as conn:
        assert conn.execute("select rolsuper from pg_roles where rolname = current_user").fetchone()[0] is False
    migrate(daemon_url)
    with psycopg.connect(daemon_url) as conn:
        publish_models(conn, catalog.local_models())
    with psycopg.connect(daemon_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "select vectorize.create_job(%(job_name)s, %(src_schema)s, %(src_table)s, %(src_columns)s,"
                " %(primary_key)s, %(update_time_col)s, %(model)s)"
            ),
            MY_JOB,
        )
    start_worker(database_url=daemon_url)
    with psycopg.connect(least_privilege_db, autocommit=True) as owner:
        count = "select count(*) from vectorize._embeddings_my_job"
        await wait_until(lambda: owner.execute(count).fetchone()[0] == 2, timeout=30)
        # The table's owner (not the daemon) writes; the capture trigger still queues the change.
        owner.execute("insert into public.my_products values (3, 'Lantern', 'Light for the tent')")
        await wait_until(lambda: owner.execute(count).fetchone()[0] == 3, timeout=10)


def test_role_without_access_cannot_create_a_job(least_privilege_db: str, catalog) -> None:
    daemon_url = psycopg.conninfo.make_conninfo(least_privilege_db, user="vz_daemon")
    migrate(daemon_url)
    with psycopg.connect(daemon_url, autocommit=True) as conn:
        publish_models(conn, catalog.local_models())
        conn.execute("grant usage on schema vectorize to vz_intruder")
        conn.execute("grant insert, select on vectorize.job to vz_intruder")
        conn.execute("grant select on vectorize.model to vz_intruder")
    intruder_url = psycopg.conninfo.make_conninfo(least_privilege_db, user="vz_intruder")
    with psycopg.connect(intruder_url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            conn.execute(
                "insert into vectorize.job (job_name, src_table, src_schema, src_columns, primary_key, update_time_col, model)"
                " values ('steal', 'my_products', 'public', '{description}', 'product_id', 'updated_at', %s)",
                (MY_JOB["model"],),
            )
        assert "cannot read table public.my_products" in info.value.diag.message_primary
    with psycopg.connect(least_privilege_db) as owner:
        assert owner.execute("select count(*) from vectorize.job").fetchone()[0] == 0
        assert owner.execute("select count(*) from pg_trigger where tgname like 'vectorize_%'").fetchone()[0] == 0


@pytest.fixture
def app_role(db_url: str, products, conn) -> str:
    """A URL for ``vz_app``: USAGE on schema vectorize, SELECT and UPDATE on vectorize.job (the
    README's redefinition grant), its own temp tables -- and a job of another role to attack."""
    from .helpers import create_job

    create_job(conn)
    conn.execute("drop role if exists vz_app")
    conn.execute("create role vz_app login")
    conn.execute("grant usage on schema vectorize to vz_app")
    conn.execute("grant select, update on vectorize.job to vz_app")
    conn.execute("grant select on public.my_products to vz_app")
    yield psycopg.conninfo.make_conninfo(db_url, user="vz_app")
    conn.execute("drop owned by vz_app")
    conn.execute("drop role vz_app")


def test_a_capture_function_cannot_be_fired_from_another_table(app_role: str, conn) -> None:
    """The per-job capture function runs with the daemon's rights: a role with USAGE on the schema
    once wiped a job's embeddings with a TRUNCATE trigger on a temp table of its own."""
    conn.execute("insert into vectorize.queue (job_id, pk) select id, '1' from vectorize.job")
    with psycopg.connect(app_role, autocommit=True) as app:
        app.execute("create temp table t (product_id int)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("create trigger w after truncate on t for each statement execute function vectorize._capture_my_job()")
    # Even a role that may execute it (granted by mistake) cannot fire it on another table.
    conn.execute("grant execute on function vectorize._capture_my_job() to vz_app")
    with psycopg.connect(app_role, autocommit=True) as app:
        app.execute("create temp table t (product_id int)")
        app.execute("create trigger w after truncate on t for each statement execute function vectorize._capture_my_job()")
        app.execute("truncate t")  # fires it, on a table that is not the job's source: nothing happens
    assert conn.execute("select count(*) as n from vectorize.queue").fetchone()["n"] == 1
    assert conn.execute("select status from vectorize.job").fetchone()["status"] == "active"


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("pk_type", "integer /* injected */"),
        ("src_relid", "1259"),
        ("dimension", "3"),
        ("status", "failed"),
        ("scan_cursor", "0"),
        ("generation", "7"),
        ("objects_version", "x"),
    ],
)
def test_a_role_that_may_redefine_jobs_cannot_set_what_vectorize_derives(app_role: str, conn, column: str, value: str) -> None:
    before = conn.execute("select * from vectorize.job").fetchone()
    with psycopg.connect(app_role, autocommit=True) as app:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=f"{column} of vectorize.job is kept by vectorize"):
            app.execute(sql.SQL("update vectorize.job set {} = %s").format(sql.Identifier(column)), (value,))
        # Nor by setting the switch marker, which once skipped every check.
        app.execute("set vectorize.switching = 'on'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute(sql.SQL("update vectorize.job set {} = %s").format(sql.Identifier(column)), (value,))
    after = conn.execute("select * from vectorize.job").fetchone()
    assert {k: after[k] for k in (column, "pk_type", "src_relid", "status")} == {
        k: before[k] for k in (column, "pk_type", "src_relid", "status")
    }
    assert conn.execute("select count(*) as n from vectorize.generation").fetchone()["n"] == 0


SHADOWS = """
create table public.loot (secret text);
create function public.format(text, text) returns text language plpgsql as
    $$ begin insert into public.loot select s::text from hr.secret s; return pg_catalog.format($1, $2); end $$;
create function public.concat_ws(text, text, text) returns text language plpgsql as
    $$ begin insert into public.loot select s::text from hr.secret s; return pg_catalog.concat_ws($1, $2, $3); end $$;
create function public.to_tsvector(text, text) returns tsvector language plpgsql as
    $$ begin insert into public.loot select s::text from hr.secret s; return pg_catalog.to_tsvector($1::regconfig, $2); end $$;
"""


@pytest.mark.parametrize("schema", ["public", "the daemon's $user schema"])
async def test_functions_shadowed_in_public_never_run_as_the_daemon(conn, products, api, start_worker, db_url, schema) -> None:
    """CVE-2018-1058's pattern: a role that may create in ``public`` defines better-matching
    overloads of built-ins our SQL calls. Nothing of the daemon's (a live batch, an API search, a
    psql user's vectorize.search()) may ever run them: their rights are not ours."""
    from .helpers import create_job

    conn.execute("create schema hr")
    conn.execute("create table hr.secret (salary int)")
    conn.execute("insert into hr.secret values (250000)")
    conn.execute("drop role if exists vz_shadow")
    conn.execute("create role vz_shadow login")
    conn.execute("grant usage, create on schema public to vz_shadow")
    conn.execute("grant usage on schema vectorize to vz_shadow")
    conn.execute("grant select on vectorize.job to vz_shadow")
    target = "public"
    if schema != "public":  # a schema the attacker owns, named as the daemon's role: first on its default path
        target = conn.execute("select current_user as u").fetchone()["u"]
        conn.execute(sql.SQL("create schema {} authorization vz_shadow").format(sql.Identifier(target)))
    try:
        create_job(conn)
        start_worker()
        await wait_until(lambda: conn.execute("select count(*) as n from vectorize._embeddings_my_job").fetchone()["n"] == 40)
        with psycopg.connect(psycopg.conninfo.make_conninfo(db_url, user="vz_shadow"), autocommit=True) as shadow:
            shadow.execute(sql.SQL(SHADOWS.replace("public.", "{schema}.")).format(schema=sql.Identifier(target)))
            conn.execute(sql.SQL("grant insert on {}.loot to public").format(sql.Identifier(target)))  # any victim may write it
        conn.execute("update my_products set description = 'a changed text' where product_id = 1")
        await wait_until(
            lambda: (
                conn.execute(
                    "select count(*) as n from vectorize._embeddings_my_job e join my_products p using (product_id)"
                    " where e.fts @@ to_tsquery('english', 'changed')"
                ).fetchone()["n"]
                == 1
            )
        )
        response = await api.get("/api/v1/search", params={"job_name": "my_job", "query": "camping gear"})
        assert response.status == 200 and len(await response.json()) > 0
        # A psql user's own call, with the default search_path ("$user", public).
        rows = conn.execute(
            "select count(*) as n from vectorize.search('my_job', (select embedding from vectorize._embeddings_my_job limit 1),"
            " 5, '{}', 'camping')"
        ).fetchone()
        assert rows["n"] == 5
        loot = conn.execute(sql.SQL("select count(*) as n from {}.loot").format(sql.Identifier(target))).fetchone()
        assert loot["n"] == 0
    finally:
        conn.execute("drop owned by vz_shadow cascade")
        conn.execute("drop role vz_shadow")


async def test_the_readme_setup_three_roles(least_privilege_db: str, catalog, start_worker) -> None:
    """The README's least-privilege setup: the daemon (not a superuser), an application role that
    manages its own job through SQL alone (INSERT, UPDATE, rollback, DELETE on vectorize.job, no
    right in schema vectorize besides USAGE), and a role with only USAGE, which gets nowhere."""
    daemon_url, manager_url, intruder_url = (
        psycopg.conninfo.make_conninfo(least_privilege_db, user=role) for role in ("vz_daemon", "vz_manager", "vz_intruder")
    )
    migrate(daemon_url)
    with psycopg.connect(daemon_url, autocommit=True) as daemon:
        publish_models(daemon, catalog.local_models())
        daemon.execute(
            "grant usage on schema vectorize to vz_manager, vz_intruder; "
            "grant select, insert, update, delete on vectorize.job to vz_manager"
        )
    with psycopg.connect(least_privilege_db, autocommit=True) as owner:
        owner.execute("grant select on public.my_products to vz_manager")
    start_worker(database_url=daemon_url)
    insert = sql.SQL(
        "insert into vectorize.job (job_name, src_table, src_schema, src_columns, primary_key, update_time_col, model)"
        " values (%(job_name)s, %(src_table)s, %(src_schema)s, %(src_columns)s, %(primary_key)s, %(update_time_col)s, %(model)s)"
    )
    with psycopg.connect(manager_url, autocommit=True) as manager:
        manager.execute(insert, MY_JOB)
        count = "select count(*) from vectorize._embeddings_my_job"
        await wait_until(lambda: manager.execute(count).fetchone()[0] == 2, timeout=30)  # it reads its own rows
        manager.execute("update vectorize.job set chunk_tokens = 64 where job_name = 'my_job'")
        with psycopg.connect(least_privilege_db) as owner:
            assert owner.execute("select state from vectorize.generation").fetchone()[0] == "building"
        assert manager.execute("select action from vectorize.rollback_job('my_job')").fetchone()[0] == "cancelled"
        rows = manager.execute(
            "select vectorize.search('my_job', (select embedding from vectorize._embeddings_my_job limit 1), 2)"
        ).fetchall()
        assert len(rows) == 2

    with psycopg.connect(intruder_url, autocommit=True) as intruder:
        intruder.execute("notify vectorize, 'garbage'")  # anyone may wake the workers; it changes nothing
        for statement in (
            "select count(*) from vectorize._embeddings_my_job",  # the policy asks the source, which it may not read
            "select * from vectorize.search('my_job', (select embedding from vectorize._embeddings_my_job limit 1), 2)",
            "select * from vectorize.rollback_job('my_job')",
            "update vectorize.job set model = model",
            "delete from vectorize.job",
            "create temp table t (product_id int);"
            " create trigger w after truncate on t for each statement execute function vectorize._capture_my_job()",
            "create temp table t2 (id int);"
            " create trigger w2 after insert on t2 for each row execute function vectorize._build_job_objects()",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                intruder.execute(statement)

    with psycopg.connect(least_privilege_db) as owner:  # every attack changed nothing
        job = owner.execute("select status, pk_type, src_relid::regclass::text from vectorize.job").fetchone()
        assert job == ("active", "integer", "my_products")
        assert owner.execute("select count(*) from vectorize._embeddings_my_job").fetchone()[0] == 2
    with psycopg.connect(manager_url, autocommit=True) as manager:
        manager.execute("delete from vectorize.job where job_name = 'my_job'")
    with psycopg.connect(least_privilege_db) as owner:
        assert owner.execute("select count(*) from vectorize.job").fetchone()[0] == 0
        assert owner.execute("select to_regclass('vectorize._embeddings_my_job')").fetchone()[0] is None
        assert owner.execute("select count(*) from pg_trigger where tgname like 'vectorize\\_%'").fetchone()[0] == 0
