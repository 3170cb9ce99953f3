-- Online redefinition: a job's model, columns or chunking can change while search keeps
-- answering. The job row always holds the definition that serves (search, the view and the
-- worker read it as before); a second generation -- the one being built for a new
-- definition, or the previous one kept for a rollback -- lives beside it in
-- vectorize.generation, with its own embeddings table.

-- The number of the generation the job row's definition describes (the one serving).
alter table vectorize.job add column if not exists generation int not null default 1;

-- At most one other generation per job: 'building' (filled by the backfill lane while every
-- live change is applied to it too) or 'previous' (kept after a switch until keep_until, so
-- a rollback is instant; still kept fresh). Its definition columns mean what the job's do.
create table if not exists vectorize.generation (
    job_id          uuid primary key,
    generation      int  not null,
    state           text not null check (state in ('building', 'previous')),
    src_columns     text[] not null,
    update_time_col text not null,
    model           text not null,
    dimension       int  not null,
    chunking        boolean not null,
    chunk_tokens    int,
    chunk_overlap   int  not null,
    -- When the build started and (for 'previous') when it stopped serving and until when it stays.
    created_at      timestamptz not null default now(),
    retired_at      timestamptz,
    keep_until      timestamptz
);

-- Re-created by sql/functions/ with a generation argument (or result columns).
drop function if exists vectorize._embeddings_table(text);
drop function if exists vectorize.read_rows(uuid, text[]);
drop function if exists vectorize.apply_batch(uuid, text[]);
drop function if exists vectorize.search(text, @extschema:vector@.vector, int, jsonb, text, float8, float8, float8);
drop function if exists vectorize._guard_job_update() cascade;
-- Became _build_job_objects (for new jobs and rebuilt objects alike); its trigger is re-created.
drop function if exists vectorize._create_job_objects() cascade;
drop view if exists vectorize.job_status;
