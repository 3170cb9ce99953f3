-- Job progress for operators: counts per job and the vectorize.job_status view.

-- Counts for one job. Exact counts on tables up to 1M rows; above that the
-- planner's estimate (flagged), so a status query never scans a huge table.
create or replace function vectorize.job_stats(p_job_id uuid)
returns table (
    source_rows bigint, source_rows_estimated boolean, embedded_rows bigint, pending bigint,
    failed_rows bigint, embedded_last_minute bigint, last_activity timestamptz)
language plpgsql stable as $$
declare
    j          vectorize.job;
    v_estimate double precision;
    v_emb      text;
begin
    select * into j from vectorize.job where id = p_job_id;
    v_emb := '_embeddings_' || j.job_name;
    select count(*) into pending from vectorize.queue q where q.job_id = p_job_id;
    select count(*) into failed_rows from vectorize.failure f where f.job_id = p_job_id;
    select c.reltuples into v_estimate from pg_catalog.pg_class c where c.oid = j.src_relid;
    begin
        if v_estimate is null then
            source_rows := null;
        elsif v_estimate > 1000000 then
            source_rows := v_estimate::bigint;
            source_rows_estimated := true;
        else
            execute format('select count(*) from %s', vectorize._source(j)) into source_rows;
            source_rows_estimated := false;
        end if;
        execute format('select count(*), count(*) filter (where updated_at > now() - interval ''1 minute''), max(updated_at)
                          from vectorize.%I', v_emb)
           into embedded_rows, embedded_last_minute, last_activity;
    exception when undefined_table or undefined_column or insufficient_privilege then
        -- The source (or the job's table) is gone: report what is known.
        null;
    end;
    return next;
end $$;

create or replace view vectorize.job_status as
select j.job_name, j.id, j.src_schema, j.src_table, j.src_columns, j.primary_key, j.update_time_col, j.model,
       j.status, j.status_message, s.source_rows, s.source_rows_estimated, s.embedded_rows, s.pending,
       s.failed_rows, s.embedded_last_minute, j.backfilled_at is not null as backfill_done, j.backfilled_at,
       s.last_activity, j.created_at
  from vectorize.job j
 cross join lateral vectorize.job_stats(j.id) s;
