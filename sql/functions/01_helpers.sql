-- Small helpers every other file uses: errors, names, counts, failing a job.

-- Raise one of our SQLSTATEs, which the API maps to HTTP statuses (vectorize/errors.py):
--   VZ400 -> 400 (bad definition)   VZ404 -> 404 (schema/table/column missing)
--   VZ409 -> 409 (name taken by a different definition)   42501 -> 403 (no privilege)
create or replace function vectorize._fail(code text, message text, hint text default null)
returns void language plpgsql as $$
begin
    if hint is null then
        raise exception using errcode = code, message = message;
    end if;
    raise exception using errcode = code, message = message, hint = hint;
end $$;

-- Names of bookkeeping columns in a job's embeddings table; the source's primary
-- key shares that table, so it may not use one of them.
create or replace function vectorize._reserved_columns() returns text[]
language sql immutable as $$
    select array['embedding', 'fts', 'content_hash', 'source_updated_at', 'version', 'updated_at', 'chunk', 'chunk_start', 'chunk_end']
$$;

-- The one spelling of a job generation's embeddings table, quoted and schema-qualified:
-- _embeddings_<job> for the first generation, _embeddings_<job>$<n> after a redefinition
-- ("$" cannot occur in a job name, so no two jobs' tables can collide). Unquoted, it is also
-- the stem of the table's index names.
create or replace function vectorize._embeddings_name(p_job_name text, p_generation int default 1) returns text
language sql immutable as $$
    select '_embeddings_' || p_job_name || case when p_generation > 1 then '$' || p_generation else '' end
$$;

-- The same, quoted and schema-qualified.
create or replace function vectorize._embeddings_table(p_job_name text, p_generation int default 1) returns text
language sql immutable as $$
    select format('vectorize.%I', vectorize._embeddings_name(p_job_name, p_generation))
$$;

-- The job as one of its generations sees it: the job row with that generation's definition
-- (src_columns, update_time_col, model, dimension, chunking) and number. Null generation:
-- the serving one. Raises VZ409 when the generation no longer exists (switched out and dropped).
create or replace function vectorize._generation_job(p_job_id uuid, p_generation int default null) returns vectorize.job
language plpgsql stable as $$
declare
    j vectorize.job;
    g vectorize.generation;
begin
    select * into j from vectorize.job where id = p_job_id;
    if not found then
        perform vectorize._fail('VZ404', format('job %s does not exist', p_job_id));
    end if;
    if p_generation is null or p_generation = j.generation then
        return j;
    end if;
    select * into g from vectorize.generation where job_id = p_job_id and generation = p_generation;
    if not found then
        perform vectorize._fail('VZ409', format('generation %s of job %s no longer exists', p_generation, to_json(j.job_name)),
                                'ask again: the job has switched to another generation');
    end if;
    return vectorize._with_definition(j, g);
end $$;

-- The job row carrying another generation's definition.
create or replace function vectorize._with_definition(j vectorize.job, g vectorize.generation) returns vectorize.job
language plpgsql immutable as $$
begin
    j.generation := g.generation;
    j.src_columns := g.src_columns;
    j.update_time_col := g.update_time_col;
    j.model := g.model;
    j.dimension := g.dimension;
    j.chunking := g.chunking;
    j.chunk_tokens := g.chunk_tokens;
    j.chunk_overlap := g.chunk_overlap;
    return j;
end $$;

-- The job's other generation (building or previous) as a job row, or null when it has none.
create or replace function vectorize._spare_job(j vectorize.job) returns vectorize.job
language sql stable as $$
    select vectorize._with_definition(j, g) from vectorize.generation g where g.job_id = j.id
$$;

-- How many rows a table has: exact up to 1M rows, the planner's estimate above
-- that (estimated = true), so a status query never scans a huge table.
create or replace function vectorize._row_count(p_table regclass, out row_count bigint, out estimated boolean)
language plpgsql stable as $$
declare
    v_estimate double precision;
begin
    select c.reltuples into v_estimate from pg_catalog.pg_class c where c.oid = p_table;
    if v_estimate > 1000000 then
        row_count := v_estimate::bigint;
        estimated := true;
    else
        execute format('select count(*) from %s', p_table) into row_count;
        estimated := false;
    end if;
end $$;

-- Mark a job failed with the reason, and drop its pending work: nothing will process it.
-- The one path for every cause (a dropped source table, a dropped embedded column, a
-- source the worker can no longer read).
create or replace function vectorize._fail_job(p_job_id uuid, p_message text)
returns void language plpgsql as $$
begin
    update vectorize.job set status = 'failed', status_message = p_message
     where id = p_job_id and status <> 'failed';
    delete from vectorize.queue where job_id = p_job_id;
end $$;

-- The source table's current qualified name, found by OID so a renamed table is
-- followed. A dropped table raises undefined_table, which fails the job.
create or replace function vectorize._source(j vectorize.job) returns text
language plpgsql stable as $$
declare
    v_name text;
begin
    select format('%I.%I', n.nspname, c.relname) into v_name
      from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
     where c.oid = j.src_relid;
    if v_name is null then
        raise exception using errcode = 'undefined_table',
            message = format('source table %I.%I of job %s no longer exists', j.src_schema, j.src_table, j.job_name);
    end if;
    return v_name;
end $$;

-- The text embedded for a row, as a SQL expression over alias "s":
-- '<column>: <value>' for each source column in order, joined by single spaces,
-- NULL as the empty string (the pg_vectorize server's format).
create or replace function vectorize._content_expr(j vectorize.job) returns text
language sql stable as $$
    select format('concat_ws(%L, %s)', ' ',
                  string_agg(format('%L || coalesce(s.%I::text, %L)', c || ': ', c, ''), ', ' order by ord))
      from unnest(j.src_columns) with ordinality as u(c, ord)
$$;

create or replace function vectorize._job_by_name(p_job_name text) returns vectorize.job
language plpgsql stable as $$
declare
    j vectorize.job;
begin
    select * into j from vectorize.job where job_name = p_job_name;
    if not found then
        perform vectorize._fail('VZ404', format('job %s does not exist', to_json(p_job_name)));
    end if;
    return j;
end $$;

-- Is the current role vectorize's own: the owner of its tables, or a member of that role (the
-- daemon, or the DBA who set it up)? Only such a role may set the columns of vectorize.job that
-- vectorize derives or keeps (pk_type is spliced into the SQL the daemon runs), or skip the
-- redefinition check during a switch; application roles granted UPDATE may only redefine.
create or replace function vectorize._is_daemon() returns boolean
language sql stable set search_path = pg_catalog, pg_temp as $$
    select pg_catalog.pg_has_role(current_user, c.relowner, 'MEMBER')
      from pg_catalog.pg_class c where c.oid = 'vectorize.job'::pg_catalog.regclass
$$;

-- The columns of vectorize.job that vectorize fills in or keeps itself.
create or replace function vectorize._derived_job_columns() returns text[]
language sql immutable as $$
    select array['id', 'src_relid', 'pk_type', 'dimension', 'status', 'status_message', 'scan_active', 'scan_cursor',
                 'backfilled_at', 'created_at', 'paused_until', 'pause_reason', 'pause_count', 'objects_version',
                 'generation']
$$;
