-- Small helpers every other file uses: errors, names, counts, failing a job.

-- Raise one of our SQLSTATEs, which the API maps to HTTP statuses (vectorize/errors.py):
--   VZ400 -> 400 (bad definition)   VZ404 -> 404 (schema/table/column missing)
--   VZ409 -> 409 (name taken by a different definition)   42501 -> 403 (no privilege)
--   VZ410 -> 409 (the generation asked for was switched out and dropped: ask again)
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
-- the serving one. Raises VZ410 when the generation no longer exists (switched out and dropped):
-- a conflict of its own kind, which a caller that raced a switch answers by asking again.
create or replace function vectorize._generation_job(p_job_id uuid, p_generation int default null) returns vectorize.job
language plpgsql stable security definer as $$
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
        perform vectorize._fail('VZ410', format('generation %s of job %s no longer exists', p_generation, to_json(j.job_name)),
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
    j.language := g.language;
    return j;
end $$;

-- The job's other generation (building or previous) as a job row, or null when it has none.
create or replace function vectorize._spare_job(j vectorize.job) returns vectorize.job
language sql stable as $$
    select vectorize._with_definition(j, g) from vectorize.generation g where g.job_id = j.id
$$;

-- The key's type as a job's embeddings tables hold it (its source's, when they do not exist yet),
-- rendered from the catalog by format_type: schema-qualified under our pinned search_path, and
-- never text that a session could have written into vectorize.job (pk_type there is for people).
create or replace function vectorize._pk_type(j vectorize.job) returns text
language sql stable as $$
    select coalesce(
        (select pg_catalog.format_type(a.atttypid, a.atttypmod) from pg_catalog.pg_attribute a
          where a.attrelid = pg_catalog.to_regclass(vectorize._embeddings_table(j.job_name, j.generation))
            and a.attname = j.primary_key and not a.attisdropped),
        (select pg_catalog.format_type(a.atttypid, a.atttypmod) from pg_catalog.pg_attribute a
          where a.attrelid = j.src_relid and a.attname = j.primary_key and not a.attisdropped))
$$;

-- How many rows a table has: exact up to 10,000 rows, the planner's estimate above that
-- (estimated = true), so a status query never scans a large table. A table never analysed
-- (reltuples < 0) is counted up to that bound, and reported as at least that many.
create or replace function vectorize._row_count(p_table regclass, out row_count bigint, out estimated boolean)
language plpgsql stable as $$
declare
    v_bound    constant bigint := 10000;
    v_estimate double precision;
begin
    select c.reltuples into v_estimate from pg_catalog.pg_class c where c.oid = p_table;
    if v_estimate > v_bound then
        row_count := v_estimate::bigint;
        estimated := true;
        return;
    end if;
    execute format('select count(*) from (select from %s limit %s) t', p_table, v_bound + 1) into row_count;
    estimated := row_count > v_bound;
    if estimated then
        row_count := greatest(v_estimate::bigint, row_count);
    end if;
end $$;

-- The counting triggers of one embeddings table (see migration 0014): each write appends its
-- deltas to vectorize.row_tally, in the writer's transaction, so the counts commit with the rows.
create or replace function vectorize._tally_write() returns trigger
language plpgsql set search_path = pg_catalog, pg_temp as $$
begin
    if tg_op = 'INSERT' then
        insert into vectorize.row_tally (relid, row_count, checked_rows, written)
        select tg_relid, count(*) filter (where n.chunk = 0),
               count(*) filter (where n.chunk = 0 and n.source_updated_at is distinct from '-infinity'),
               count(*) filter (where n.chunk = 0)
          from new_rows n having count(*) > 0;
    elsif tg_op = 'UPDATE' then
        insert into vectorize.row_tally (relid, row_count, checked_rows, written)
        select tg_relid, 0, n.checked - o.checked, n.written
          from (select count(*) filter (where chunk = 0 and source_updated_at is distinct from '-infinity') as checked,
                       count(*) filter (where chunk = 0) as written from new_rows) n,
               (select count(*) filter (where chunk = 0 and source_updated_at is distinct from '-infinity') as checked
                  from old_rows) o
         where n.written > 0 or n.checked <> o.checked;
    else
        insert into vectorize.row_tally (relid, row_count, checked_rows, written)
        select tg_relid, -count(*) filter (where o.chunk = 0),
               -count(*) filter (where o.chunk = 0 and o.source_updated_at is distinct from '-infinity'), 0
          from old_rows o having count(*) filter (where o.chunk = 0) > 0;
    end if;
    return null;
end $$;
revoke execute on function vectorize._tally_write() from public;

-- Whether an embeddings table has its counting triggers.
create or replace function vectorize._tallied(p_emb regclass) returns boolean
language sql stable as $$
    select exists (select from pg_catalog.pg_trigger t where t.tgrelid = p_emb and t.tgname = 'tally_ins')
$$;

-- Put the counting triggers on an embeddings table that lacks them (a new one, or one made by
-- an older release: counted once here, under the trigger's lock so no write slips between).
-- The same events and transition tables as the capture triggers (vectorize._trigger_kinds);
-- a TRUNCATE of an embeddings table never happens (deletes do).
create or replace function vectorize._install_tally(p_emb regclass) returns void
language plpgsql as $$
declare
    v_kind record;
begin
    if vectorize._tallied(p_emb) then
        return;
    end if;
    -- A table's OID can be one a dropped table had: its deltas are not this table's.
    delete from vectorize.row_tally where relid = p_emb;
    for v_kind in select * from vectorize._trigger_kinds() k where k.suffix <> '_trunc' loop
        execute format('create trigger %I ' || format(v_kind.event, p_emb) || ' for each statement execute function vectorize._tally_write()',
                       'tally' || v_kind.suffix);
    end loop;
    execute format('insert into vectorize.row_tally (relid, row_count, checked_rows, written)
                    select %s, count(*), count(*) filter (where source_updated_at is distinct from ''-infinity''), 0
                      from %s where chunk = 0', p_emb::oid, p_emb);
end $$;

-- An embeddings table's counts: rows, rows whose text is checked, rows written in the last
-- minute, and when it was last written (null: not known). A table without the counting
-- triggers (a failed job's, made by an older release) is counted by vectorize._row_count.
create or replace function vectorize._tally(p_emb regclass, out row_count bigint, out checked_rows bigint,
                                            out written_last_minute bigint, out last_written timestamptz)
language plpgsql stable as $$
begin
    if p_emb is null then
        return;
    end if;
    if not vectorize._tallied(p_emb) then
        select c.row_count into row_count from vectorize._row_count(p_emb) c;
        checked_rows := row_count;
        written_last_minute := 0;
        return;
    end if;
    select coalesce(sum(t.row_count), 0)::bigint, coalesce(sum(t.checked_rows), 0)::bigint,
           coalesce(sum(t.written) filter (where t.at > now() - interval '1 minute'), 0)::bigint,
           max(t.at) filter (where t.written > 0)
      into row_count, checked_rows, written_last_minute, last_written
      from vectorize.row_tally t where t.relid = p_emb;
end $$;

-- Fold each table's deltas older than two minutes into one row (housekeeping, every poll), and
-- forget the tables that are gone.
create or replace function vectorize.compact_tallies() returns void
language sql as $$
    delete from vectorize.row_tally t where not exists (select from pg_catalog.pg_class c where c.oid = t.relid);
    with old as (
        delete from vectorize.row_tally t
         where t.at < now() - interval '2 minutes'
           and t.relid in (select o.relid from vectorize.row_tally o where o.at < now() - interval '2 minutes'
                            group by o.relid having count(*) > 1)
        returning t.*)
    insert into vectorize.row_tally (relid, row_count, checked_rows, written, at)
    select o.relid, sum(o.row_count), sum(o.checked_rows), coalesce(sum(o.written), 0),
           coalesce(max(o.at) filter (where o.written > 0), max(o.at))
      from old o group by o.relid;
$$;

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

-- SECURITY DEFINER (like vectorize._generation_job): a role that searches through
-- vectorize.search() needs no privilege on vectorize.job itself.
create or replace function vectorize._job_by_name(p_job_name text) returns vectorize.job
language plpgsql stable security definer as $$
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
-- vectorize derives or keeps (src_relid names the table the daemon reads), or skip the
-- redefinition check during a switch; application roles granted UPDATE may only redefine.
create or replace function vectorize._is_daemon(p_role name default current_user) returns boolean
language sql stable set search_path = pg_catalog, pg_temp as $$
    select pg_catalog.pg_has_role(p_role, c.relowner, 'MEMBER')
      from pg_catalog.pg_class c where c.oid = 'vectorize.job'::pg_catalog.regclass
$$;

-- Who is changing vectorize.job. The redefinition trigger runs with vectorize's rights (it builds a
-- generation: tables in schema vectorize), so it cannot ask current_user; the trigger that fires just
-- before it (invoker_noted, with the caller's rights) notes the caller here. A session cannot forge
-- it: every UPDATE of vectorize.job sets it again before the redefinition trigger reads it.
create or replace function vectorize._note_invoker() returns trigger
language plpgsql as $$
begin
    perform pg_catalog.set_config('vectorize.invoker', current_user, true);
    return new;
end $$;

-- The columns of vectorize.job that vectorize fills in or keeps itself.
create or replace function vectorize._derived_job_columns() returns text[]
language sql immutable as $$
    select array['id', 'src_relid', 'pk_type', 'dimension', 'status', 'status_message', 'scan_active', 'scan_cursor',
                 'backfilled_at', 'created_at', 'paused_until', 'pause_reason', 'pause_count', 'objects_version',
                 'generation']
$$;
