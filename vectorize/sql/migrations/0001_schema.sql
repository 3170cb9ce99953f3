-- The durable state of vectorize: models, jobs, the work queue and parked failures.
-- Every process is stateless; everything it needs to resume lives here.

-- The schema itself is created by the migration runner (sql/queries.sql,
-- create_migrations_table), since it also holds the migrations table.

-- Models this installation can run. The daemon fills it from models/*.json at
-- start-up, so the validation trigger can check a job's model from SQL alone.
create table if not exists vectorize.model (
    name          text primary key,
    dimension     int  not null check (dimension > 0),
    max_tokens    int,
    provider      text not null default 'onnx',
    precision     text not null default 'fp32',
    registered_at timestamptz not null default now()
);

-- One row per job. The definition columns are what users write; the rest is
-- filled in by the validation trigger (from the catalog) and by the worker.
create table if not exists vectorize.job (
    id              uuid primary key default gen_random_uuid(),
    job_name        text not null unique,
    src_schema      text not null,
    src_table       text not null,
    src_columns     text[] not null,
    primary_key     text not null,
    update_time_col text not null,
    model           text not null,
    -- Resolved from the catalog when the job is created.
    src_relid       oid,
    pk_type         text,
    dimension       int,
    -- Lifecycle: 'active' while the job runs, 'failed' when its source broke.
    status          text not null default 'active' check (status in ('active', 'failed')),
    status_message  text,
    -- Keyset scan over the source that finds rows needing (re-)embedding.
    -- scan_active is true while a pass is under way; scan_cursor is the last
    -- primary key (as text) that the pass has queued.
    scan_active     boolean not null default true,
    scan_cursor     text,
    backfilled_at   timestamptz,
    created_at      timestamptz not null default now()
);

-- Pending work: "re-read this row of this job and bring its embedding up to date".
-- Append-only from the capture triggers: no unique constraint, so a user's write
-- never waits on a row the worker holds. The id doubles as the version that
-- decides which of two racing writes of the same row wins.
create table if not exists vectorize.queue (
    id          bigint generated always as identity primary key,
    job_id      uuid not null,
    pk          text not null,
    enqueued_at timestamptz not null default now(),
    attempts    int not null default 0,
    not_before  timestamptz
);
create index if not exists queue_job_id_idx on vectorize.queue (job_id, id);

-- Rows that failed to embed after every retry, with the last error.
create table if not exists vectorize.failure (
    job_id    uuid not null,
    pk        text not null,
    attempts  int  not null,
    last_error text not null,
    failed_at timestamptz not null default now(),
    primary key (job_id, pk)
);
