-- Fair scheduling (lanes, embedder pauses), regenerated per-job objects.
-- Migrations hold tables, columns, indexes and data changes only; functions and
-- views live in sql/functions/ and are re-applied on every start. A function or
-- view whose signature changes is dropped here, once, so that the re-applied file
-- can create it again.

-- Which lane an item belongs to: 'live' for changes captured by the triggers,
-- 'backfill' for rows queued by a backfill or reconciliation scan. Live items
-- are always served first.
alter table vectorize.queue add column if not exists lane text not null default 'live'
    check (lane in ('live', 'backfill'));
-- The lag of a change is measured from the moment it was queued, not from the
-- start of the user's transaction.
alter table vectorize.queue alter column enqueued_at set default clock_timestamp();
drop index if exists vectorize.queue_job_id_idx;
create index if not exists queue_job_lane_idx on vectorize.queue (job_id, lane, id);

-- An embedder that is down pauses its job (not its rows): until paused_until no
-- worker claims the job's items; pause_count drives the exponential backoff.
alter table vectorize.job add column if not exists paused_until timestamptz;
alter table vectorize.job add column if not exists pause_reason text;
alter table vectorize.job add column if not exists pause_count int not null default 0;
-- Which version of the per-job object generator built this job's capture
-- function, triggers and view; a start-up regenerates them when it differs.
alter table vectorize.job add column if not exists objects_version text;

-- Re-created by sql/functions/ with new result columns.
drop view if exists vectorize.job_status;
drop function if exists vectorize.job_stats(uuid);
drop function if exists vectorize.job_gauges();
