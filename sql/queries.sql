-- Named queries the Python code runs. Each block starts with "-- name: <name>"
-- and is loaded once by vectorize.queries; Python never glues SQL together.

-- name: lock_migrations
-- Several processes may start at once; only one applies migrations at a time.
select pg_advisory_xact_lock(hashtext('vectorize.migrations'));

-- name: create_migrations_table
-- Only when missing: CREATE SCHEMA IF NOT EXISTS still needs CREATE on the database,
-- which a least-privilege role given an existing schema does not have.
do $$ begin
    if to_regnamespace('vectorize') is null then
        create schema vectorize;
    end if;
end $$;
create table if not exists vectorize.migration (
    name       text primary key,
    applied_at timestamptz not null default now()
);

-- name: applied_migrations
select name from vectorize.migration;

-- name: record_migration
insert into vectorize.migration (name) values (%(name)s);

-- name: pgvector_available
select exists (select 1 from pg_available_extensions where name = 'vector') as available,
       exists (select 1 from pg_extension where extname = 'vector') as installed;

-- name: create_pgvector
create extension if not exists vector;

-- name: upsert_model
insert into vectorize.model (name, dimension, max_tokens, provider, precision)
values (%(name)s, %(dimension)s, %(max_tokens)s, %(provider)s, %(precision)s)
on conflict (name) do update
   set dimension = excluded.dimension, max_tokens = excluded.max_tokens,
       provider = excluded.provider, precision = excluded.precision;

-- name: create_job
select vectorize.create_job(%(job_name)s, %(src_schema)s, %(src_table)s, %(src_columns)s,
                            %(primary_key)s, %(update_time_col)s, %(model)s) as id;

-- name: delete_job
delete from vectorize.job where job_name = %(job_name)s returning id;

-- name: active_jobs
select id, job_name, model, dimension, scan_active from vectorize.job where status = 'active' order by created_at;

-- name: restart_scans
-- A worker that starts up cannot know what changed while no trigger or worker
-- was running, so every job gets a reconciliation pass (cheap: it only queues
-- rows whose update_time_col is newer than their stored embedding).
update vectorize.job set scan_active = true, scan_cursor = null where status = 'active' and not scan_active;

-- name: scan_step
select vectorize.scan_step(%(job_id)s, %(page)s) as seen;

-- name: queue_depth
select count(*) as depth from vectorize.queue where job_id = %(job_id)s;

-- name: claim_batch
-- Claim the oldest pending items of one job for this transaction.
with claimed as (
    select q.id, q.pk
      from vectorize.queue q
     where q.job_id = %(job_id)s
       -- items that failed wait out their backoff before another try
       and (q.not_before is null or q.not_before <= now())
     order by q.id
     limit %(limit)s
       -- rows another worker holds are skipped, not waited for: workers never
       -- block each other, and a crash releases the locks with the transaction
       for update skip locked
)
-- One entry per source row: its newest queue id is the version we write,
-- and every claimed id is deleted in the same transaction as the write.
select pk, max(id) as version, array_agg(id) as ids
  from claimed
 group by pk
 order by min(id);

-- name: read_rows
select pk, content, source_updated_at, stored_hash from vectorize.read_rows(%(job_id)s, %(pks)s);

-- name: create_staging
create temp table if not exists vectorize_staging (
    pk                text not null,
    embedding         vector,
    content           text,
    content_hash      bytea,
    source_updated_at timestamptz,
    version           bigint not null
) on commit delete rows;

-- name: copy_staging
copy pg_temp.vectorize_staging (pk, embedding, content, content_hash, source_updated_at, version)
from stdin (format binary);

-- name: apply_batch
select vectorize.apply_batch(%(job_id)s, %(gone)s) as written;

-- name: delete_claimed
delete from vectorize.queue where id = any(%(ids)s);

-- name: defer_items
-- A failed try: count it and wait before the next (exponential backoff, capped).
update vectorize.queue
   set attempts = attempts + 1,
       not_before = now() + least(interval '1 second' * %(backoff)s * power(2, attempts), interval '5 minutes')
 where id = any(%(ids)s)
returning id, pk, attempts;

-- name: park_failure
insert into vectorize.failure (job_id, pk, attempts, last_error)
values (%(job_id)s, %(pk)s, %(attempts)s, %(error)s)
on conflict (job_id, pk) do update
   set attempts = excluded.attempts, last_error = excluded.last_error, failed_at = now();

-- name: search
select result
  from vectorize.search(%(job_name)s, %(embedding)s, %(limit)s, %(filters)s,
                        %(query)s, %(semantic_wt)s, %(fts_wt)s, %(rrf_k)s) as result;

-- name: job_status_all
select * from vectorize.job_status order by job_name;

-- name: job_status_one
select * from vectorize.job_status where job_name = %(job_name)s;

-- name: job_failures
select pk, attempts, last_error, failed_at from vectorize.failure
 where job_id = %(job_id)s order by failed_at desc limit %(limit)s;

-- name: job_model
select model from vectorize.job where job_name = %(job_name)s;

-- name: ping
select 1;

-- name: listen
listen vectorize;

-- name: claim_ids
-- Re-claim specific items (one row's) to retry them alone after a failed batch.
select pk, max(id) as version, array_agg(id) as ids
  from (select q.id, q.pk from vectorize.queue q
         where q.id = any(%(ids)s)
           for update skip locked) claimed
 group by pk;

-- name: fail_job
-- The job's pending work goes with it: nothing will process it.
with failed as (
    update vectorize.job set status = 'failed', status_message = %(message)s where id = %(job_id)s returning id
)
delete from vectorize.queue q using failed f where q.job_id = f.id;

-- name: database_exists
select 1 from pg_database where datname = %(name)s;

-- name: create_database
create database {};

-- name: table_exists
select to_regclass(%(name)s) is not null as exists;

-- name: fail_orphaned_jobs
-- A dropped source table takes its capture triggers with it, so nothing would
-- ever tell the worker; check the catalog on every pass instead (cheap).
update vectorize.job j
   set status = 'failed',
       status_message = format('source table %I.%I no longer exists; delete the job', j.src_schema, j.src_table)
 where j.status = 'active'
   and not exists (select 1 from pg_catalog.pg_class c where c.oid = j.src_relid)
returning j.job_name, j.id;

-- name: drop_failed_job_queue
delete from vectorize.queue where job_id = any(%(ids)s);

-- name: job_gauges
select job_name, pending, failed_rows, embedded_rows from vectorize.job_gauges();
