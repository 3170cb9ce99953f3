-- Generations: a redefined job is built as a second embeddings table beside the serving one,
-- switched to in one transaction when complete, and the one it replaced is kept for rollback.
-- The job row always holds the serving definition; vectorize.generation the other one.
-- (Started by vectorize._redefine_job in 03_jobs.sql; fed by every batch of the worker.)

-- Create the generation that will replace the serving one for definition d (replacing any other
-- generation the job kept: a build in progress, or the previous one kept for rollback). When the
-- model stays, the serving embeddings are copied in first, so only chunks whose text changed are
-- embedded again. In a dry run nothing is created.
create or replace function vectorize._start_generation(j vectorize.job, d vectorize.job) returns int
language plpgsql as $$
declare
    v_number int;
    v_cols   text;
begin
    select greatest(j.generation, coalesce(max(g.generation), 0)) + 1 into v_number
      from vectorize.generation g where g.job_id = j.id;
    if current_setting('vectorize.dry_run', true) = 'on' then
        return v_number;
    end if;
    perform vectorize._drop_spare(j);
    insert into vectorize.generation (job_id, generation, state, src_columns, update_time_col, model, dimension,
                                      chunking, chunk_tokens, chunk_overlap, language)
    values (j.id, v_number, 'building', d.src_columns, d.update_time_col, d.model, d.dimension,
            d.chunking, d.chunk_tokens, d.chunk_overlap, d.language);
    perform vectorize._create_embeddings_table(j.job_name, v_number, j.primary_key, vectorize._pk_type(j), d.dimension, false);
    if d.model = j.model then
        v_cols := format('%I, embedding, fts, content_hash, source_updated_at, version, updated_at, chunk, chunk_start, chunk_end',
                         j.primary_key);
        -- When the text changes (other columns, other chunks), the copies only spare the chunks
        -- whose text stays: marked as older than any row version, every row is queued by the pass
        -- and checked chunk by chunk (vectorize.scan_step). Another language keeps every vector but
        -- not the full-text terms: marked the same way, each row's are made again (no inference).
        -- Otherwise they are current as they are.
        execute format('insert into %s (%s) select %s from %s', vectorize._embeddings_table(j.job_name, v_number), v_cols,
                       case when vectorize._same_text(j, d) and j.language = d.language then v_cols
                            else replace(v_cols, 'source_updated_at', '''-infinity''::timestamptz') end,
                       vectorize._embeddings_table(j.job_name, j.generation));
    end if;
    perform vectorize._index_embeddings_table(j.job_name, v_number, j.primary_key);
    raise notice 'job % keeps serving generation % while generation % is built for the new definition; vectorize.job_status shows its progress',
        j.job_name, j.generation, v_number;
    return v_number;
end $$;

-- Whether two definitions of a job make the same text (and chunks) of every row.
create or replace function vectorize._same_text(a vectorize.job, b vectorize.job) returns boolean
language sql immutable as $$
    select (a.src_columns, a.chunking, a.chunk_tokens, a.chunk_overlap)
           is not distinct from (b.src_columns, b.chunking, b.chunk_tokens, b.chunk_overlap)
$$;

-- Remove the job's other generation and its table. Batches that are writing to it hold a
-- KEY SHARE lock on its row (vectorize.job_generations), so this waits for them to commit.
create or replace function vectorize._drop_spare(j vectorize.job) returns int
language plpgsql as $$
declare
    v_number int;
begin
    delete from vectorize.generation g where g.job_id = j.id returning g.generation into v_number;
    if v_number is not null then
        execute format('drop table if exists %s', vectorize._embeddings_table(j.job_name, v_number));
    end if;
    return v_number;
end $$;

-- Exchange the serving definition with the other generation's, in one transaction: search, the
-- view and vectorize.search() answer from the other one from the commit on. The one that stops
-- serving is kept (and kept fresh) for p_keep_seconds, so switching back is instant.
create or replace function vectorize._swap_generations(p_job_id uuid, p_keep_seconds float8) returns int
language plpgsql as $$
declare
    j vectorize.job;
    g vectorize.generation;
begin
    select * into j from vectorize.job where id = p_job_id for update;
    select * into g from vectorize.generation where job_id = p_job_id for update;
    if not found then
        return null;
    end if;
    perform set_config('vectorize.switching', 'on', true);
    update vectorize.generation
       set generation = j.generation, state = 'previous', src_columns = j.src_columns, update_time_col = j.update_time_col,
           model = j.model, dimension = j.dimension, chunking = j.chunking, chunk_tokens = j.chunk_tokens,
           chunk_overlap = j.chunk_overlap, language = j.language, retired_at = now(),
           keep_until = now() + make_interval(secs => p_keep_seconds)
     where job_id = p_job_id;
    update vectorize.job
       set generation = g.generation, src_columns = g.src_columns, update_time_col = g.update_time_col, model = g.model,
           dimension = g.dimension, chunking = g.chunking, chunk_tokens = g.chunk_tokens, chunk_overlap = g.chunk_overlap,
           language = g.language, objects_version = null  -- the view now shows the new generation
     where id = p_job_id;
    perform set_config('vectorize.switching', 'off', true);
    return g.generation;
end $$;

-- Switch every job whose new generation is complete: its pass over the source has ended and
-- no backfill item is left (live changes keep reaching both generations, before and after).
-- Every worker's housekeeping and backfill lane call this, so two can find the same build
-- complete: each takes the job row's lock first and checks again (a fresh snapshot) before it
-- switches; the one that comes second finds it switched already. (Without the second check it
-- swapped back: generation 1 serving, the new one "previous", a build that never lands.)
create or replace function vectorize.complete_builds(p_keep_seconds float8)
returns table (job_name text, generation int) language plpgsql as $$
declare
    r record;
begin
    for r in select j.id, j.job_name from vectorize.job j
              where vectorize._build_complete(j.id)
              order by j.job_name loop
        perform 1 from vectorize.job j where j.id = r.id for update;
        continue when not vectorize._build_complete(r.id);
        job_name := r.job_name;
        generation := vectorize._swap_generations(r.id, p_keep_seconds);
        perform pg_notify('vectorize', r.id::text);
        return next;
    end loop;
end $$;

create or replace function vectorize._build_complete(p_job_id uuid) returns boolean
language sql volatile as $$
    select exists (
        select 1 from vectorize.job j join vectorize.generation g on g.job_id = j.id
         where j.id = p_job_id and g.state = 'building' and j.status = 'active' and not j.scan_active
           and not exists (select 1 from vectorize.queue q where q.job_id = j.id and q.lane = 'backfill'))
$$;

-- Drop previous generations whose grace period is over.
create or replace function vectorize.drop_expired_generations()
returns table (job_name text, generation int) language plpgsql as $$
declare
    j vectorize.job;
begin
    for j in select jj.* from vectorize.job jj join vectorize.generation g on g.job_id = jj.id
              where g.state = 'previous' and g.keep_until <= now() order by jj.job_name loop
        job_name := j.job_name;
        generation := vectorize._drop_spare(j);
        update vectorize.job set objects_version = null where id = j.id;  -- the capture stops writing it
        return next;
    end loop;
end $$;

-- Undo a redefinition: a build in progress is cancelled (its generation dropped); after a
-- switch, the previous generation serves again at once (and the one it replaces is kept for
-- p_keep_seconds, so this can be undone the same way). Returns what was done.
-- SECURITY DEFINER (it drops or swaps tables of vectorize's): the role that logged in must be one
-- that may UPDATE vectorize.job, as a redefinition needs.
create or replace function vectorize.rollback_job(p_job_name text, p_keep_seconds float8 default 3600)
returns table (action text, generation int) language plpgsql security definer as $$
declare
    j vectorize.job := vectorize._job_by_name(p_job_name);
    g vectorize.generation;
begin
    if not pg_catalog.has_table_privilege(session_user, 'vectorize.job', 'UPDATE') then
        perform vectorize._fail('42501', format('permission denied: role %s may not redefine jobs (UPDATE on vectorize.job)',
                                               to_json(session_user::text)));
    end if;
    -- The job row first, as a switch takes it: a rollback and a switch go one after the other.
    perform 1 from vectorize.job where id = j.id for update;
    select * into g from vectorize.generation where job_id = j.id for update;
    if not found then
        perform vectorize._fail('VZ409',
            format('job %s has nothing to roll back: no redefinition is being built and no previous generation is kept', to_json(p_job_name)),
            'a previous generation is kept for generation_keep_seconds after a switch');
    end if;
    if g.state = 'building' then
        perform vectorize._drop_spare(j);
        update vectorize.job set objects_version = null where id = j.id;
        action := 'cancelled';
        generation := j.generation;
    else
        action := 'rolled_back';
        generation := vectorize._swap_generations(j.id, p_keep_seconds);
        perform pg_notify('vectorize', j.id::text);
    end if;
    return next;
end $$;
