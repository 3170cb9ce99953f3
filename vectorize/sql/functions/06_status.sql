-- Job progress for operators: per-job counts, the vectorize.job_status view, and
-- the cheap gauges GET /metrics reads on every scrape.

-- Pending work of one job per lane: how many items, and how long the oldest has waited.
create or replace function vectorize._lane_backlog(p_job_id uuid, p_lane text, out pending bigint, out oldest_seconds float8)
language sql stable as $$
    select (select count(*) from vectorize.queue q where q.job_id = p_job_id and q.lane = p_lane),
           (select extract(epoch from clock_timestamp() - q.enqueued_at)::float8
              from vectorize.queue q where q.job_id = p_job_id and q.lane = p_lane order by q.id limit 1)
$$;

-- What a job is doing now, in one word: failed, waiting_for_embedder (its model's
-- server or files are unavailable; pause_reason says why), backfilling, or live.
create or replace function vectorize._sync_state(j vectorize.job, p_backfill_pending bigint) returns text
language sql stable as $$
    select case
        when j.status = 'failed' then 'failed'
        when j.paused_until > now() and j.pause_reason like 'the job''s source cannot be read now%' then 'waiting_for_source'
        when j.paused_until > now() then 'waiting_for_embedder'
        when j.scan_active or p_backfill_pending > 0 then 'backfilling'
        else 'live'
    end
$$;

-- Counts for one job; source rows by vectorize._row_count's rule.
create or replace function vectorize.job_stats(p_job_id uuid)
returns table (
    source_rows bigint, source_rows_estimated boolean, embedded_rows bigint, pending bigint,
    pending_live bigint, pending_backfill bigint, oldest_live_seconds float8, oldest_backfill_seconds float8,
    failed_rows bigint, embedded_last_minute bigint, last_activity timestamptz)
language plpgsql stable as $$
declare
    j vectorize.job;
begin
    select * into j from vectorize.job where id = p_job_id;
    select b.pending, b.oldest_seconds into pending_live, oldest_live_seconds from vectorize._lane_backlog(p_job_id, 'live') b;
    select b.pending, b.oldest_seconds into pending_backfill, oldest_backfill_seconds
      from vectorize._lane_backlog(p_job_id, 'backfill') b;
    pending := pending_live + pending_backfill;
    select count(*) into failed_rows from vectorize.failure f where f.job_id = p_job_id;
    begin
        select t.row_count, t.written_last_minute, t.last_written into embedded_rows, embedded_last_minute, last_activity
          from vectorize._tally(vectorize._embeddings_table(j.job_name, j.generation)::regclass) t;
        select c.row_count, c.estimated into source_rows, source_rows_estimated
          from vectorize._row_count(vectorize._source(j)::regclass) c;
    exception when undefined_table or undefined_column or insufficient_privilege then
        -- The source (or the job's table) is gone: report what is known.
        null;
    end;
    return next;
end $$;

-- Each generation of a job, serving one first: its definition, how far it is, and for the
-- one being built, an ETA from the last minute's rate.
create or replace function vectorize._generations(j vectorize.job, p_source_rows bigint) returns jsonb
language plpgsql stable as $$
declare
    g       vectorize.job;
    v_state text;
    v_spare vectorize.generation;
    v_rows  bigint;
    v_recent bigint;
    v_out   jsonb := '[]';
begin
    select * into v_spare from vectorize.generation where job_id = j.id;
    foreach g in array array[j, vectorize._spare_job(j)] loop
        continue when g.id is null;
        v_state := case when g.generation = j.generation then 'serving' else v_spare.state end;
        -- Copies whose text is still to be checked ('-infinity', see vectorize._start_generation) are not done.
        select t.checked_rows, t.written_last_minute into v_rows, v_recent
          from vectorize._tally(to_regclass(vectorize._embeddings_table(g.job_name, g.generation))) t;
        v_out := v_out || jsonb_build_object(
            'generation', g.generation, 'state', v_state, 'model', g.model, 'src_columns', g.src_columns,
            'update_time_col', g.update_time_col, 'chunking', g.chunking, 'chunk_tokens', g.chunk_tokens,
            'chunk_overlap', g.chunk_overlap, 'language', g.language, 'embedded_rows', v_rows,
            'progress', case when p_source_rows > 0 then round(least(v_rows::numeric / p_source_rows, 1), 4) end,
            'eta_seconds', case when v_state = 'building' and v_recent > 0
                                then round(greatest(p_source_rows - v_rows, 0) * 60.0 / v_recent) end,
            'building_since', case when v_state = 'building' then v_spare.created_at end,
            'serving_until', case when v_state = 'previous' then v_spare.retired_at end,
            'kept_until', case when v_state = 'previous' then v_spare.keep_until end);
    end loop;
    return v_out;
end $$;

create or replace view vectorize.job_status as
select j.job_name, j.id, j.src_schema, j.src_table, j.src_columns, j.primary_key, j.update_time_col, j.model,
       j.chunking, j.chunk_tokens, j.chunk_overlap, j.language, j.return_columns, j.ef_search, j.hnsw_m, j.hnsw_ef_construction, j.status, j.status_message, vectorize._sync_state(j, s.pending_backfill) as sync_state,
       case when j.paused_until > now() then j.pause_reason end as waiting_reason,
       case when j.paused_until > now() then j.paused_until end as waiting_until,
       s.source_rows, s.source_rows_estimated, s.embedded_rows, s.pending, s.pending_live, s.pending_backfill,
       s.oldest_live_seconds, s.oldest_backfill_seconds,
       s.failed_rows, s.embedded_last_minute, j.backfilled_at is not null as backfill_done, j.backfilled_at,
       s.last_activity, j.created_at, j.generation,
       vectorize._generations(j, s.source_rows) as generations
  from vectorize.job j
 cross join lateral vectorize.job_stats(j.id) s;

-- Per-job gauges for GET /metrics, cheap enough for every scrape: unlike
-- vectorize.job_status this never counts the source table.
create or replace function vectorize.job_gauges()
returns table (job_name text, pending bigint, failed_rows bigint, embedded_rows bigint,
               lane text, lane_pending bigint, oldest_seconds float8, waiting_for_embedder boolean)
language plpgsql stable as $$
declare
    j     vectorize.job;
    v_emb regclass;
begin
    for j in select * from vectorize.job jj order by jj.job_name loop
        job_name := j.job_name;
        select count(*) into pending from vectorize.queue q where q.job_id = j.id;
        select count(*) into failed_rows from vectorize.failure f where f.job_id = j.id;
        v_emb := to_regclass(vectorize._embeddings_table(j.job_name, j.generation));
        embedded_rows := case when v_emb is null then null else (select t.row_count from vectorize._tally(v_emb) t) end;
        waiting_for_embedder := coalesce(j.paused_until > now(), false);
        foreach lane in array array['live', 'backfill'] loop
            select b.pending, b.oldest_seconds into lane_pending, oldest_seconds from vectorize._lane_backlog(j.id, lane) b;
            return next;
        end loop;
    end loop;
end $$;
