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

-- name: functions_applied
select 1 from vectorize.migration where name = %(name)s;

-- name: forget_functions
-- The digest of the function files last applied is one row, replaced on every upgrade.
delete from vectorize.migration where name like 'functions:%';

-- name: refresh_job_objects
-- After sql/functions/ is applied: rebuild per-job objects made by an older generator.
select vectorize._refresh_job_objects() as rebuilt;

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
                            %(primary_key)s, %(update_time_col)s, %(model)s,
                            %(chunking)s, %(chunk_tokens)s::int, %(chunk_overlap)s::int, %(language)s) as id;

-- name: delete_job
delete from vectorize.job where job_name = %(job_name)s returning id;

-- name: jobs_with_work
-- One row per active job with what each lane could do now. Each EXISTS walks
-- queue_job_lane_idx from the job's oldest item, so this stays cheap with
-- millions of items queued; the worker runs it once per scheduling round.
select j.id, j.job_name, j.model, j.scan_active, j.pause_count,
       greatest(extract(epoch from j.paused_until - clock_timestamp()), 0)::float8 as paused_for,
       exists (select 1 from vectorize.generation g where g.job_id = j.id and g.state = 'building') as building,
       exists (select 1 from vectorize.queue q
                where q.job_id = j.id and q.lane = 'live'
                  and (q.not_before is null or q.not_before <= now())) as live_ready,
       exists (select 1 from vectorize.queue q
                where q.job_id = j.id and q.lane = 'backfill'
                  and (q.not_before is null or q.not_before <= now())) as backfill_ready
  from vectorize.job j
 where j.status = 'active'
 order by j.created_at, j.id;

-- name: restart_scans
-- A worker that starts up cannot know what changed while no trigger or worker
-- was running, so every job gets a reconciliation pass (cheap: it only queues
-- rows whose update_time_col is newer than their stored embedding).
update vectorize.job set scan_active = true, scan_cursor = null where status = 'active' and not scan_active;

-- name: scan_step
select vectorize.scan_step(%(job_id)s, %(page)s) as seen;

-- name: claim_batch
-- Claim the oldest pending items of one job in one lane for this transaction.
with claimed as (
    select q.id, q.pk, q.enqueued_at
      from vectorize.queue q
     where q.job_id = %(job_id)s
       and q.lane = %(lane)s
       -- items that failed wait out their backoff before another try
       and (q.not_before is null or q.not_before <= now())
     order by q.id
     limit %(limit)s
       -- rows another worker holds are skipped, not waited for: workers never
       -- block each other, and a crash releases the locks with the transaction
       for update skip locked
)
-- One entry per source row, and every claimed id is deleted in the same transaction as
-- the write. The version written is drawn now, from the queue's own sequence, not taken
-- from the items: the rows are read after this, so a higher version always read text at least
-- as new. (An item's id orders by when it was queued, not committed: a pass queued after an
-- open UPDATE, and done before it committed, outranked the UPDATE's own item, which was then
-- skipped as older -- the update lost.) Stored versions from item ids stay comparable.
select pk, nextval(pg_catalog.pg_get_serial_sequence('vectorize.queue', 'id')) as version, array_agg(id) as ids
  from claimed
 group by pk
 order by min(id);

-- name: claim_ids
-- Re-claim specific items (one row's) to retry them alone after a failed batch.
select pk, nextval(pg_catalog.pg_get_serial_sequence('vectorize.queue', 'id')) as version, array_agg(id) as ids
  from (select q.id, q.pk from vectorize.queue q
         where q.id = any(%(ids)s)
           for update skip locked) claimed
 group by pk;

-- name: job_generations
select generation, model, chunking, chunk_tokens, chunk_overlap, serving from vectorize.job_generations(%(job_id)s);

-- name: read_rows
select pk, content, source_updated_at, stored_hashes, fts_stale from vectorize.read_rows(%(job_id)s, %(generation)s, %(pks)s);

-- name: create_staging
-- One line per chunk of each row of a batch (04_worker.sql).
select vectorize.create_staging();

-- name: clear_staging
-- A batch writes each generation of its job in turn through the same staging table.
delete from pg_temp.vectorize_staging_chunks;

-- name: copy_staging
copy pg_temp.vectorize_staging_chunks (pk, chunk, embedding, content, content_hash, chunk_start, chunk_end, chunks,
                                       source_updated_at, version)
from stdin (format binary);

-- name: apply_batch
select vectorize.apply_batch(%(job_id)s, %(generation)s, %(gone)s) as written;

-- name: complete_builds
-- Switch the jobs whose new generation is complete (one transaction each).
select job_name, generation from vectorize.complete_builds(%(keep_seconds)s);

-- name: drop_expired_generations
select job_name, generation from vectorize.drop_expired_generations();

-- name: rollback_job
select action, generation from vectorize.rollback_job(%(job_name)s, %(keep_seconds)s);

-- name: redefine_job
-- The same UPDATE a psql user writes: the trigger checks it and starts the new generation.
update vectorize.job
   set src_columns = %(src_columns)s, update_time_col = %(update_time_col)s, model = %(model)s,
       chunking = %(chunking)s, chunk_tokens = %(chunk_tokens)s::int, chunk_overlap = %(chunk_overlap)s::int,
       language = %(language)s,
       src_schema = %(src_schema)s, src_table = %(src_table)s, primary_key = %(primary_key)s
 where job_name = %(job_name)s
returning id;

-- name: building_generation
select g.generation, g.state from vectorize.generation g join vectorize.job j on j.id = g.job_id
 where j.job_name = %(job_name)s;

-- name: dry_run_on
-- For this transaction only: the job triggers check everything and build nothing.
select set_config('vectorize.dry_run', 'on', true);

-- name: finish_items
-- The claimed items are done: remove them, and say how long each live change
-- waited from being queued to now (the commit follows at once).
delete from vectorize.queue where id = any(%(ids)s)
returning lane, extract(epoch from clock_timestamp() - enqueued_at)::float8 as lag_seconds;

-- name: count_attempt
update vectorize.queue set attempts = attempts + 1 where id = any(%(ids)s) returning attempts;

-- name: schedule_retry
update vectorize.queue set not_before = now() + make_interval(secs => %(delay)s) where id = any(%(ids)s);

-- name: park_failure
insert into vectorize.failure (job_id, pk, attempts, last_error)
values (%(job_id)s, %(pk)s, %(attempts)s, %(error)s)
on conflict (job_id, pk) do update
   set attempts = excluded.attempts, last_error = excluded.last_error, failed_at = now();

-- name: pause_job
-- The job's embedder is down: no worker claims its items until paused_until.
update vectorize.job
   set pause_count = pause_count + 1,
       paused_until = clock_timestamp() + make_interval(secs => %(seconds)s),
       pause_reason = %(reason)s
 where id = %(job_id)s;

-- name: resume_job
update vectorize.job set pause_count = 0, paused_until = null, pause_reason = null
 where id = %(job_id)s and pause_count > 0;

-- name: fail_job
select vectorize._fail_job(%(job_id)s, %(message)s);

-- name: fail_orphaned_jobs
-- A dropped source table takes its capture triggers with it, so nothing would
-- ever tell the worker; check the catalog on every pass instead (cheap).
select j.job_name, j.id,
       vectorize._fail_job(j.id, format('source table %I.%I no longer exists; delete the job', j.src_schema, j.src_table))
  from vectorize.job j
 where j.status = 'active'
   and not exists (select 1 from pg_catalog.pg_class c where c.oid = j.src_relid);

-- name: search
-- As JSON text: the API splices it into its answer as it is (no parse and re-encode per row).
select result::text as result
  from vectorize.search(%(job_name)s, %(embedding)s, %(limit)s, %(filters)s,
                        %(query)s, %(semantic_wt)s, %(fts_wt)s, %(rrf_k)s, %(generation)s,
                        %(return_columns)s, %(ef_search)s, %(window_size)s) as result;

-- name: job_status_all
select * from vectorize.job_status order by job_name;

-- name: job_status_one
select * from vectorize.job_status where job_name = %(job_name)s;

-- name: job_failures
select pk, attempts, last_error, failed_at from vectorize.failure
 where job_id = %(job_id)s order by failed_at desc limit %(limit)s;

-- name: job_model
-- The serving generation's model: a search embeds its query with it and ranks in that generation.
select model, generation from vectorize.job where job_name = %(job_name)s;

-- name: ping
select 1;

-- name: listen
listen vectorize;

-- name: database_exists
select 1 from pg_database where datname = %(name)s;

-- name: create_database
create database {};

-- name: table_exists
select to_regclass(%(name)s) is not null as exists;

-- name: job_gauges
select job_name, pending, failed_rows, embedded_rows, lane, lane_pending, oldest_seconds, waiting_for_embedder
  from vectorize.job_gauges();

-- name: sync_position
-- Read-your-writes: the newest live change of the job committed so far ...
select coalesce(max(q.id), 0) as position
  from vectorize.queue q join vectorize.job j on j.id = q.job_id
 where j.job_name = %(job_name)s and q.lane = 'live';

-- name: synced_to
-- ... and whether every live change up to it has been embedded (or dropped).
select not exists (select 1 from vectorize.queue q join vectorize.job j on j.id = q.job_id
                    where j.job_name = %(job_name)s and q.lane = 'live' and q.id <= %(position)s) as synced;

-- name: job_definition
select id, generation, src_schema, src_table, src_columns, primary_key, update_time_col, model,
       chunking, chunk_tokens, chunk_overlap, language, return_columns, ef_search, hnsw_m, hnsw_ef_construction
  from vectorize.job where job_name = %(job_name)s;

-- name: set_search_settings
-- A job's search settings from a create or redefine request (checked by the job trigger); a
-- setting the request leaves out (set_<name> false) keeps its value.
with wanted as (
    select case when %(set_return_columns)s then %(return_columns)s::text[] else j.return_columns end as return_columns,
           case when %(set_ef_search)s then %(ef_search)s::int else j.ef_search end as ef_search,
           case when %(set_hnsw_m)s then %(hnsw_m)s::int else j.hnsw_m end as hnsw_m,
           case when %(set_hnsw_ef_construction)s then %(hnsw_ef_construction)s::int else j.hnsw_ef_construction end
               as hnsw_ef_construction
      from vectorize.job j where j.job_name = %(job_name)s)
update vectorize.job j
   set return_columns = w.return_columns, ef_search = w.ef_search, hnsw_m = w.hnsw_m,
       hnsw_ef_construction = w.hnsw_ef_construction
  from wanted w
 where j.job_name = %(job_name)s
   and (j.return_columns, j.ef_search, j.hnsw_m, j.hnsw_ef_construction)
       is distinct from (w.return_columns, w.ef_search, w.hnsw_m, w.hnsw_ef_construction);

-- name: hnsw_rebuilds
select job_name, generation, m, ef_construction, statements from vectorize.hnsw_rebuilds();

-- name: definition_sample
select content, total_rows, total_estimated, exact
  from vectorize.definition_sample(%(src_schema)s, %(src_table)s, %(src_columns)s, %(exact_rows)s, %(sample_rows)s);

-- name: try_index_lock
-- Held by the session that rebuilds one HNSW index (vectorize.hnsw_rebuilds()).
select pg_try_advisory_lock(hashtext(%(key)s));

-- name: release_index_lock
select pg_advisory_unlock(hashtext(%(key)s));

-- name: set_statement_timeout
-- For the whole session of a pooled API connection: no request's statement runs for long.
select pg_catalog.set_config('statement_timeout', %(timeout)s, false);

-- name: sync_partitions
-- Capture triggers on partitions attached since, none left on partitions detached (03_jobs.sql).
select job_name from vectorize.sync_partitions() as job_name;

-- name: set_lock_timeout
-- For the rest of this transaction: a lock on a user's table is waited for this long at most.
select pg_catalog.set_config('lock_timeout', %(timeout)s, true);

-- name: compact_tallies
-- Fold the embeddings tables' old count deltas into one row each (01_helpers.sql).
select vectorize.compact_tallies();

-- name: pin_search_path
-- Every connection of the daemon's resolves names in pg_catalog only (see vectorize/db.py).
select pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', false);

-- name: vector_schema
-- pgvector's schema, quoted: written into the function files where they name its objects.
select pg_catalog.quote_ident(n.nspname) as name
  from pg_catalog.pg_extension e join pg_catalog.pg_namespace n on n.oid = e.extnamespace
 where e.extname = 'vector';

-- name: vector_type
-- pgvector's type, schema-qualified, to adapt it without looking it up on the search_path.
select pg_catalog.format('%I.vector', n.nspname) as name
  from pg_catalog.pg_extension e join pg_catalog.pg_namespace n on n.oid = e.extnamespace
 where e.extname = 'vector';

-- name: act_as
-- For this transaction only: run as the API caller's role (its token's), so its privileges and
-- row-level security apply. The daemon must be a member of that role (GRANT role TO daemon).
select pg_catalog.set_config('role', %(role)s, true);

-- name: readable_jobs
-- The jobs whose source table a role may read (the daemon asks, on the role's behalf).
select j.job_name from vectorize.job j where pg_catalog.has_any_column_privilege(%(role)s, j.src_relid, 'SELECT');

-- name: role_may_read
-- Whether a role may read every named column of a table that exists (columns or a table that do
-- not exist are left to the job trigger's own messages): null when there is no such table.
select bool_and(pg_catalog.has_column_privilege(%(role)s, c.oid, a.attname, 'SELECT')) as ok
  from pg_catalog.pg_class c
  join pg_catalog.pg_namespace n on n.oid = c.relnamespace
  join pg_catalog.pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
 where n.nspname = %(schema)s and c.relname = %(table)s and a.attname = any(%(columns)s::text[]);

-- name: model_known
-- Whether vectorize.model lists a model (a provider's model is registered on first use).
select exists (select from vectorize.model m where m.name = %(name)s) as known;
