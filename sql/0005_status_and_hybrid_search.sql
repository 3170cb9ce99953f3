-- Job progress for operators, and hybrid (vector + full-text) search ranked by
-- reciprocal rank fusion.

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

drop function if exists vectorize.search(text, vector, int, jsonb);

-- Nearest rows by vector, fused with full-text matches of the query text:
-- rrf_score = semantic_wt / (rrf_k + semantic_rank) + fts_wt / (rrf_k + fts_rank),
-- a missing rank contributing nothing. Without query text it is a pure vector search.
create or replace function vectorize.search(
    p_job_name        text,
    p_query_embedding vector,
    p_num_results     int     default 10,
    p_filters         jsonb   default '{}',
    p_query_text      text    default null,
    p_semantic_wt     float8  default 1.0,
    p_fts_wt          float8  default 1.0,
    p_rrf_k           float8  default 60)
returns setof jsonb language plpgsql as $$
declare
    j vectorize.job := vectorize._job_by_name(p_job_name);
    v_filter text;
begin
    if p_num_results is null or p_num_results < 1 then
        perform vectorize._fail('VZ400', 'num_results must be a positive integer');
    end if;
    if p_rrf_k is null or p_rrf_k < 0 or p_semantic_wt is null or p_fts_wt is null
       or p_semantic_wt < 0 or p_fts_wt < 0 then
        perform vectorize._fail('VZ400', 'semantic_wt, fts_wt and rrf_k must be non-negative numbers');
    end if;
    if j.status = 'failed' then
        perform vectorize._fail('VZ409', format('job %s has failed: %s', to_json(j.job_name), j.status_message),
                                'delete the job and create it again');
    end if;
    begin
        perform vectorize._source(j);
    exception when undefined_table then
        perform vectorize._fail('VZ409', format('the source table of job %s no longer exists', to_json(j.job_name)),
                                'delete the job');
    end;
    v_filter := vectorize._filter_clause(j, p_filters);
    -- Filtered HNSW scans keep going until enough rows pass the filter, so a
    -- selective filter still yields num_results rows when that many match.
    perform set_config('hnsw.iterative_scan', 'strict_order', true);
    -- A query of only stop words is fine here; keep PostgreSQL's NOTICE about it off the client.
    perform set_config('client_min_messages', 'warning', true);
    return query execute format(
        'with semantic as (
             select e.%3$I as pk, 1 - (e.embedding <=> $1) as similarity,
                    row_number() over (order by e.embedding <=> $1) as rank
               from (select e.* from vectorize.%1$I e join %2$s s on s.%3$I = e.%3$I
                      where %4$s order by e.embedding <=> $1 limit $2) e),
         fts as (
             select e.%3$I as pk, row_number() over (order by ts_rank_cd(e.fts, q) desc, e.%3$I) as rank
               from vectorize.%1$I e join %2$s s on s.%3$I = e.%3$I,
                    websearch_to_tsquery(''english'', coalesce($3, '''')) q
              where $3 is not null and e.fts @@ q and %4$s
              order by ts_rank_cd(e.fts, q) desc, e.%3$I
              limit $2),
         fused as (
             select coalesce(se.pk, f.pk) as pk, se.rank as semantic_rank, f.rank as fts_rank,
                    coalesce($4 / ($6 + se.rank), 0) + coalesce($5 / ($6 + f.rank), 0) as rrf_score
               from semantic se full join fts f on f.pk = se.pk)
         select to_jsonb(s) || jsonb_build_object(
                    ''similarity_score'', 1 - (e.embedding <=> $1),
                    ''semantic_rank'', fu.semantic_rank, ''fts_rank'', fu.fts_rank, ''rrf_score'', fu.rrf_score)
           from fused fu
           join %2$s s on s.%3$I = fu.pk
           join vectorize.%1$I e on e.%3$I = fu.pk
          order by fu.rrf_score desc, e.embedding <=> $1
          limit $2',
        '_embeddings_' || j.job_name, vectorize._source(j), j.primary_key, v_filter)
    using p_query_embedding, p_num_results, nullif(p_query_text, ''), p_semantic_wt, p_fts_wt, p_rrf_k;
end $$;
