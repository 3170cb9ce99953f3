-- Search: nearest source rows to a query vector, with optional column filters,
-- fused with full-text matches. The API calls exactly this function, so psql
-- users get the same results.

-- Turn {"col": "op.value" | value, ...} into a WHERE clause over alias "s",
-- after checking each column against the source table's real columns and each
-- value against the column's type. Anything else is a VZ400 that names it.
create or replace function vectorize._filter_clause(j vectorize.job, p_filters jsonb)
returns text language plpgsql stable as $$
declare
    v_key    text;
    v_raw    jsonb;
    v_text   text;
    v_op     text;
    v_sqlop  text;
    v_type   text;
    v_parts  text[] := array[]::text[];
    v_cols   text;
begin
    if p_filters is null or p_filters = '{}'::jsonb then
        return 'true';
    end if;
    if jsonb_typeof(p_filters) <> 'object' then
        perform vectorize._fail('VZ400', 'filters must be a JSON object of column: "op.value" pairs');
    end if;
    for v_key, v_raw in select * from jsonb_each(p_filters) order by 1 loop
        select format_type(a.atttypid, a.atttypmod) into v_type
          from pg_catalog.pg_attribute a
         where a.attrelid = j.src_relid and a.attname = v_key and a.attnum > 0 and not a.attisdropped;
        -- The job's return_columns bound filters too: a filter on another column would answer,
        -- row by row, what that column holds (salary=gte.100000 is an oracle).
        if not found or not (j.return_columns is null or v_key = any(j.return_columns)) then
            select string_agg(a.attname, ', ' order by a.attnum) into v_cols
              from pg_catalog.pg_attribute a
             where a.attrelid = j.src_relid and a.attnum > 0 and not a.attisdropped
               and (j.return_columns is null or a.attname = any(j.return_columns));
            perform vectorize._fail('VZ400',
                format('filter %s is not a column of %I.%I that job %s may return; columns are: %s',
                       to_json(v_key), j.src_schema, j.src_table, to_json(j.job_name), v_cols));
        end if;
        if jsonb_typeof(v_raw) in ('object', 'array', 'null') then
            perform vectorize._fail('VZ400', format('filter %s must be a string, number or boolean', to_json(v_key)));
        end if;
        v_text := v_raw #>> '{}';
        v_op := 'eq';
        if jsonb_typeof(v_raw) = 'string' and v_text ~ '^[a-z]+\.' then
            v_op := split_part(v_text, '.', 1);
            v_text := substr(v_text, length(v_op) + 2);
        end if;
        v_sqlop := case v_op when 'eq' then '=' when 'gt' then '>' when 'gte' then '>='
                             when 'lt' then '<' when 'lte' then '<=' end;
        if v_sqlop is null then
            perform vectorize._fail('VZ400',
                format('filter %s uses unknown operator %s; use one of eq, gt, gte, lt, lte (e.g. %s=gte.10)',
                       to_json(v_key), to_json(v_op), v_key));
        end if;
        begin
            execute format('select %L::%s', v_text, v_type);
        exception when others then
            perform vectorize._fail('VZ400',
                format('filter %s: value %s is not a valid %s', to_json(v_key), to_json(v_text), v_type));
        end;
        v_parts := v_parts || format('s.%I %s %L::%s', v_key, v_sqlop, v_text, v_type);
    end loop;
    return array_to_string(v_parts, ' and ');
end $$;

-- The full-text half of a search, for any text a user can type or paste: web-search syntax
-- ("quoted phrases", -exclusions, or) when it parses; else the text's words alone, every
-- operator, quote and punctuation mark dropped; else none (the semantic half still answers).
-- Only the first 4000 characters count: a long pasted text matches by its words anyway.
create or replace function vectorize._text_query(p_text text, p_language text default 'english') returns tsquery
language plpgsql stable as $$
declare
    v_query tsquery;
begin
    if p_text is null or p_text = '' then
        return null;
    end if;
    begin
        v_query := websearch_to_tsquery(p_language::regconfig, left(p_text, 4000));
        perform to_tsvector('') @@ v_query;  -- some queries parse but cannot be evaluated
        return v_query;
    exception when others then
        null;
    end;
    begin
        v_query := plainto_tsquery(p_language::regconfig, regexp_replace(left(p_text, 4000), '[^[:alnum:]]+', ' ', 'g'));
        perform to_tsvector('') @@ v_query;
        return v_query;
    exception when others then
        return null;
    end;
end $$;

-- The columns a search returns: the caller's choice (p_columns) within the job's allowlist
-- (job.return_columns), or the allowlist, or every column (null). A name that is not a column,
-- or not allowed, is a VZ400 that names it.
-- The columns a search returns: the ones asked for (each checked), else the job's return_columns,
-- else every column -- in each case only those the caller may read (column privileges).
create or replace function vectorize._returned_columns(j vectorize.job, p_columns text[]) returns text[]
language plpgsql stable as $$
declare
    v_col  text;
    v_cols text;
begin
    if p_columns is null then
        return array(select a.attname::text from pg_catalog.pg_attribute a
                      where a.attrelid = j.src_relid and a.attnum > 0 and not a.attisdropped
                        and (j.return_columns is null or a.attname = any(j.return_columns))
                        and pg_catalog.has_column_privilege(j.src_relid, a.attnum, 'SELECT')
                      order by a.attnum);
    end if;
    if cardinality(p_columns) = 0 then
        perform vectorize._fail('VZ400', 'return_columns is empty: name the columns to return, or leave it out for all');
    end if;
    foreach v_col in array p_columns loop
        if not exists (select 1 from pg_catalog.pg_attribute a
                        where a.attrelid = j.src_relid and a.attname = v_col and a.attnum > 0 and not a.attisdropped) then
            select string_agg(a.attname, ', ' order by a.attnum) into v_cols
              from pg_catalog.pg_attribute a where a.attrelid = j.src_relid and a.attnum > 0 and not a.attisdropped;
            perform vectorize._fail('VZ400', format('return_columns names %s, which is not a column of %I.%I; columns are: %s',
                                                    to_json(coalesce(v_col, 'null')), j.src_schema, j.src_table, v_cols));
        end if;
        if j.return_columns is not null and not v_col = any(j.return_columns) then
            perform vectorize._fail('VZ400', format('column %s is not among the columns job %s may return: %s',
                                                    to_json(v_col), to_json(j.job_name), array_to_string(j.return_columns, ', ')));
        end if;
    end loop;
    return array(select c from unnest(p_columns) c where pg_catalog.has_column_privilege(j.src_relid, c, 'SELECT'));
end $$;

-- A JSON object of the source row's columns (alias s), built column by column: to_jsonb(s) would
-- need SELECT on every column. jsonb_build_object takes at most 100 arguments, so 50 a call.
create or replace function vectorize._row_object(p_columns text[]) returns text
language sql immutable as $$
    select coalesce(string_agg(part, ' || '), '''{}''::jsonb')
      from (select format('jsonb_build_object(%s)', string_agg(format('%L, s.%I', c, c), ', ' order by n)) as part
              from unnest(p_columns) with ordinality as u(c, n)
             group by (n - 1) / 50) parts
$$;

-- How many rows of the source the filter matches, as the planner estimates it (no scan).
create or replace function vectorize._estimated_matches(j vectorize.job, p_filter text) returns float8
language plpgsql as $$
declare
    v_plan json;
begin
    execute format('explain (format json) select 1 from %s s where %s', vectorize._source(j), p_filter) into v_plan;
    return (v_plan -> 0 -> 'Plan' ->> 'Plan Rows')::float8;
end $$;

-- The name of a prepared statement of this session for p_sql (prepared now if it is not yet),
-- so that a search without filters is planned once per session, not twice per call: planning
-- was ~1.1 ms of a ~5 ms hybrid search. Only statements without filter values come here (their
-- number stays small: one per job, generation, limit and kind); more than 64 are all dropped
-- and prepared again as needed. DEALLOCATE ALL in a session is harmless: they come back.
create or replace function vectorize._prepared(p_sql text, p_types text) returns text
language plpgsql as $$
declare
    v_name text := 'vectorize_' || md5(p_types || p_sql);
    v_ours text[];
    v_old  text;
begin
    if not exists (select 1 from pg_catalog.pg_prepared_statements p where p.name = v_name) then
        v_ours := array(select p.name from pg_catalog.pg_prepared_statements p where p.name like 'vectorize\_%');
        if cardinality(v_ours) >= 64 then
            foreach v_old in array v_ours loop
                execute format('deallocate %I', v_old);
            end loop;
        end if;
        execute format('prepare %I%s as %s', v_name, case when p_types = '' then '' else '(' || p_types || ')' end, p_sql);
    end if;
    return v_name;
end $$;

-- Nearest rows by vector (each row by its best chunk, returned as "chunk" with its
-- text and offsets), fused with full-text matches of the query text:
-- rrf_score = semantic_wt / (rrf_k + semantic_rank) + fts_wt / (rrf_k + fts_rank),
-- a missing rank contributing nothing. Without query text it is a pure vector search.
-- A half whose weight is 0 is not computed at all (semantic_wt = 0 needs no vector).
-- A filter the planner expects to match at most 15,000 rows ranks those rows exactly (their
-- chunks found through the source's own indexes, every distance computed: exact recall, about
-- 2 us a row, so at most ~35 ms); a wider one walks the HNSW index with iterative scans until
-- enough rows pass it (a narrow filter there would mean thousands of index steps of ~17 us).
-- p_generation: answer from that generation of the job (the serving one or the one kept
-- beside it); by default the serving one. p_return_columns: which source columns each
-- result carries (within the job's return_columns). p_ef_search: HNSW ef_search for this
-- query (default: the job's, else 100). p_window_size: how many candidates each half ranks before
-- the fusion (pg_vectorize's window_size; default 5 x p_num_results).
create or replace function vectorize.search(
    p_job_name        text,
    p_query_embedding @extschema:vector@.vector,
    p_num_results     int     default 10,
    p_filters         jsonb   default '{}',
    p_query_text      text    default null,
    p_semantic_wt     float8  default 1.0,
    p_fts_wt          float8  default 1.0,
    p_rrf_k           float8  default 60,
    p_generation      int     default null,
    p_return_columns  text[]  default null,
    p_ef_search       int     default null,
    p_window_size     int     default null)
returns setof jsonb language plpgsql as $$
declare
    -- The serving generation, or the one the caller embedded its query for (an API request
    -- that raced a switch still ranks against the generation its query vector belongs to).
    j vectorize.job := vectorize._generation_job((vectorize._job_by_name(p_job_name)).id, p_generation);
    v_emb      text;
    v_filter   text;
    v_columns  text[];
    v_text     tsquery;
    v_semantic boolean;
    v_exact    boolean := false;
    v_chunked  boolean;
    v_chunks   int;
    v_pks      text[];
    v_distances float8[];
    v_nearest  text;
    v_hits     text;
    v_ef       int;
    v_sql      text;
    v_cached   boolean;
    v_plan_mode text;
    v_col      text;
    v_window   int;
begin
    if p_num_results is null or p_num_results < 1 then
        perform vectorize._fail('VZ400', 'num_results must be a positive integer');
    end if;
    if p_rrf_k is null or p_rrf_k < 0 or p_semantic_wt is null or p_fts_wt is null
       or p_semantic_wt < 0 or p_fts_wt < 0 then
        perform vectorize._fail('VZ400', 'semantic_wt, fts_wt and rrf_k must be non-negative numbers');
    end if;
    if p_window_size is not null and (p_window_size < 1 or p_window_size > 10000) then
        perform vectorize._fail('VZ400', format('window_size %s is out of range: use 1 to 10000', p_window_size));
    end if;
    -- Each half ranks this many candidates before they are fused (pg_vectorize's window_size).
    v_window := coalesce(p_window_size, 5 * p_num_results);
    if p_ef_search is not null and (p_ef_search < 1 or p_ef_search > 1000) then
        perform vectorize._fail('VZ400', format('ef_search %s is out of range: use 1 to 1000', p_ef_search));
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
    -- Searching ranks by what the job embeds: a caller who may not read all of it gets a clear
    -- 42501 (the API's 403), not an answer made of columns it may not see.
    select c into v_col from unnest(array_append(j.src_columns, j.primary_key)) c
     where not pg_catalog.has_column_privilege(j.src_relid, c, 'SELECT') limit 1;
    if found then
        perform vectorize._fail('42501', format('permission denied: role %s may not read column %s of %s.%s, which job %s embeds',
                                               current_user, to_json(v_col), j.src_schema, j.src_table, to_json(j.job_name)));
    end if;
    v_emb := vectorize._embeddings_table(j.job_name, j.generation);
    v_filter := vectorize._filter_clause(j, p_filters);
    v_columns := vectorize._returned_columns(j, p_return_columns);
    v_semantic := p_semantic_wt > 0 and p_query_embedding is not null;
    v_text := case when p_fts_wt > 0 then vectorize._text_query(p_query_text, j.language) end;
    -- 100 unless the query or the job says otherwise: pgvector's own 40 gave recall@10 0.951 on
    -- 63k real rows (one query found none of its 10), 100 gave 0.984 for +0.8 ms (bench/search.py).
    v_ef := coalesce(p_ef_search, j.ef_search, 100);
    perform set_config('hnsw.ef_search', v_ef::text, true);
    -- Filtered HNSW scans keep going until enough rows pass the filter, so a
    -- selective filter still yields num_results rows when that many match.
    perform set_config('hnsw.iterative_scan', 'strict_order', true);
    -- A query of only stop words is fine here; keep PostgreSQL's NOTICE about it off the client.
    perform set_config('client_min_messages', 'warning', true);
    if v_semantic and v_filter <> 'true' then
        v_exact := vectorize._estimated_matches(j, v_filter) <= 15000;
    end if;
    -- The nearest chunks, found once and kept as two arrays. Rows rank by their best chunk, each
    -- row once: where rows have several chunks, twice num_results chunks are looked at, more
    -- (x4 each time) only when they held fewer than num_results distinct rows.
    v_pks := array[]::text[];
    v_distances := array[]::float8[];
    -- Without filter values the statements below are prepared once per session and run with
    -- generic plans (see vectorize._prepared); with them, planned for their values each time.
    v_cached := v_filter = 'true';
    if v_cached then
        v_plan_mode := current_setting('plan_cache_mode');
        perform set_config('plan_cache_mode', 'force_generic_plan', true);
    end if;
    if v_semantic then
        if v_exact then
            -- The keys of the matching rows through the source's own indexes, then their chunks
            -- through the embeddings' primary key as one bitmap scan (pages read in order: half
            -- the time of a lookup per row), every distance computed; each row by its best chunk.
            v_nearest := format('select e.%3$I as pk, min(e.embedding OPERATOR(@extschema:vector@.<=>) $1) as distance
                                   from %1$s e
                                  where e.%3$I = any (array(select s.%3$I from %2$s s where %4$s))
                                  group by e.%3$I order by 2 limit ',
                                v_emb, vectorize._source(j), j.primary_key, v_filter);
        else
            v_nearest := format('select e.%3$I as pk, e.embedding OPERATOR(@extschema:vector@.<=>) $1 as distance
                                   from %1$s e join %2$s s on s.%3$I = e.%3$I
                                  where %4$s order by e.embedding OPERATOR(@extschema:vector@.<=>) $1 limit ', v_emb, vectorize._source(j), j.primary_key, v_filter);
            v_sql := format('select exists (select 1 from %s where chunk > 0)', v_emb);
            if v_cached then
                execute format('execute %I', vectorize._prepared(v_sql, '')) into v_chunked;
            else
                execute v_sql into v_chunked;
            end if;
        end if;
        v_chunks := case when v_chunked then v_window * 2 else v_window end;
        loop
            v_sql := format('select coalesce(array_agg(h.pk::text order by h.distance), ''{}''),
                                    coalesce(array_agg(h.distance order by h.distance), ''{}'')
                               from (%s) h', v_nearest || v_chunks);  -- the limit ends the statement
            if v_cached then
                execute format('execute %I(%L)', vectorize._prepared(v_sql, '@extschema:vector@.vector'), p_query_embedding)
                   into v_pks, v_distances;
            else
                execute v_sql into v_pks, v_distances using p_query_embedding;
            end if;
            exit when v_exact or not coalesce(v_chunked, false) or cardinality(v_pks) < v_chunks or v_chunks >= 1000000
                   or (select count(distinct x) from unnest(v_pks) x) >= v_window;
            v_chunks := v_chunks * 4;
        end loop;
    end if;
    v_hits := format('select h.pk::%s as pk, h.distance from unnest($7::text[], $9::float8[]) as h(pk, distance)', vectorize._pk_type(j));
    v_sql := format(
        'with hits as (%6$s),
         semantic as (
             select b.pk, row_number() over (order by b.distance) as rank
               from (select distinct on (h.pk) h.pk, h.distance from hits h order by h.pk, h.distance) b
              order by b.distance limit %10$s),
         fts as (
             select e.%3$I as pk, row_number() over (order by ts_rank_cd(e.fts, q) desc, e.%3$I) as rank
               from %1$s e join %2$s s on s.%3$I = e.%3$I, (select $3::tsquery as q) text_query
              where $3 is not null and e.chunk = 0 and e.fts @@ q and %4$s
              order by ts_rank_cd(e.fts, q) desc, e.%3$I
              limit %10$s),
         fused as (
             select coalesce(se.pk, f.pk) as pk, se.rank as semantic_rank, f.rank as fts_rank,
                    coalesce($4 / ($6 + se.rank), 0) + coalesce($5 / ($6 + f.rank), 0) as rrf_score
               from semantic se full join fts f on f.pk = se.pk),
         best as (
             select distinct on (e.%3$I) e.%3$I as pk, e.chunk, e.chunk_start, e.chunk_end, e.embedding OPERATOR(@extschema:vector@.<=>) $1 as distance
               from %1$s e join fused fu on fu.pk = e.%3$I
              order by e.%3$I, e.embedding OPERATOR(@extschema:vector@.<=>) $1 nulls last, e.chunk)
         select %8$s || jsonb_build_object(
                    ''similarity_score'', 1 - b.distance,
                    ''semantic_rank'', fu.semantic_rank, ''fts_rank'', fu.fts_rank, ''rrf_score'', fu.rrf_score,
                    ''chunk'', jsonb_build_object(
                        ''index'', b.chunk, ''start'', coalesce(b.chunk_start, 0), ''end'', coalesce(b.chunk_end, length(t.content)),
                        ''text'', case when %9$s then substr(t.content, coalesce(b.chunk_start, 0) + 1,
                                         coalesce(b.chunk_end, length(t.content)) - coalesce(b.chunk_start, 0)) end))
           from fused fu
           join %2$s s on s.%3$I = fu.pk
           join best b on b.pk = fu.pk
           cross join lateral (select %5$s as content) t
          order by fu.rrf_score desc, b.distance
          limit %7$s',
        v_emb, vectorize._source(j), j.primary_key, v_filter, vectorize._content_expr(j), v_hits, p_num_results,
        vectorize._row_object(v_columns),
        -- The chunk's text is made of the embedded columns: shown only when the job may return all of them.
        (j.return_columns is null or j.src_columns <@ j.return_columns)::text, v_window);
    if v_cached then
        return query execute format('execute %I(%L, %L, %L, %L, %L, %L, %L, %L, %L)',
                                    vectorize._prepared(v_sql, '@extschema:vector@.vector, int, tsquery, float8, float8, float8, text[], text[], float8[]'),
                                    p_query_embedding, p_num_results, v_text, p_semantic_wt, p_fts_wt, p_rrf_k,
                                    v_pks, v_columns, v_distances);
        perform set_config('plan_cache_mode', v_plan_mode, true);
    else
        return query execute v_sql
        using p_query_embedding, p_num_results, v_text, p_semantic_wt, p_fts_wt, p_rrf_k, v_pks, v_columns, v_distances;
    end if;
end $$;
