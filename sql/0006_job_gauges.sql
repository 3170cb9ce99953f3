-- Per-job gauges for GET /metrics, cheap enough for every scrape: unlike
-- vectorize.job_status this never counts the source table, and it counts a
-- job's embeddings exactly only up to 1M rows (above that, the planner's
-- estimate, the same rule job_status applies to sources).
create or replace function vectorize.job_gauges()
returns table (job_name text, pending bigint, failed_rows bigint, embedded_rows bigint)
language plpgsql stable as $$
declare
    j          vectorize.job;
    v_emb      regclass;
    v_estimate double precision;
begin
    for j in select * from vectorize.job jj order by jj.job_name loop
        job_name := j.job_name;
        select count(*) into pending from vectorize.queue q where q.job_id = j.id;
        select count(*) into failed_rows from vectorize.failure f where f.job_id = j.id;
        v_emb := to_regclass(format('vectorize.%I', '_embeddings_' || j.job_name));
        select c.reltuples into v_estimate from pg_catalog.pg_class c where c.oid = v_emb;
        if v_emb is null then
            embedded_rows := null;
        elsif v_estimate > 1000000 then
            embedded_rows := v_estimate::bigint;
        else
            execute format('select count(*) from %s', v_emb) into embedded_rows;
        end if;
        return next;
    end loop;
end $$;
