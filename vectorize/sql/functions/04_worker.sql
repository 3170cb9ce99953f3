-- What the worker runs against a job's tables. Each function builds its
-- statement from the job row with format('%I'), so the worker never glues
-- identifiers together in Python.
--
-- Every function here that turns a key into text or text into a key pins the settings that
-- decide the text form (TimeZone, DateStyle, IntervalStyle, bytea_output, extra_float_digits)
-- to the values the capture triggers use (03_jobs.sql): a key queued by a writer in Asia/Kolkata
-- with DateStyle 'SQL, DMY' is the same text the worker reads back, whatever either session says.

-- One page of the keyset scan that backfills a job and reconciles it after
-- downtime: queue the next rows (by primary key) whose embedding is missing or
-- older than the row's update_time_col. Returns how many rows it looked at;
-- fewer than p_page means the pass is complete. The rows go to the backfill lane,
-- behind every live change. Only one worker advances a job's scan at a time (the
-- job row is locked with SKIP LOCKED): another gets -2 and tries again later; -1
-- means the job has no scan to run.
create or replace function vectorize.scan_step(p_job_id uuid, p_page int)
returns int language plpgsql
set TimeZone = 'UTC' set DateStyle = 'ISO, YMD' set IntervalStyle = 'postgres' set bytea_output = 'hex' set extra_float_digits = 3 as $$
declare
    j        vectorize.job;
    v_spare  vectorize.job;
    v_stale  text;
    v_seen   int;
    v_last   text;
    v_queued int;
begin
    if not exists (select 1 from vectorize.job where id = p_job_id and scan_active and status = 'active') then
        return -1;
    end if;
    select * into j from vectorize.job where id = p_job_id and scan_active and status = 'active'
       for update skip locked;
    if not found then
        return -2;
    end if;
    -- A row needs work when a generation lacks it, or holds an older version of it than the
    -- row's update_time_col (each generation by its own update_time_col).
    v_stale := format('not exists (select 1 from %s e where e.%I = p.pk and e.chunk = 0 and e.source_updated_at >= p.version)',
                      vectorize._embeddings_table(j.job_name, j.generation), j.primary_key);
    v_spare := vectorize._spare_job(j);
    if v_spare.id is not null then
        v_stale := v_stale || format(
            ' or not exists (select 1 from %s e where e.%I = p.pk and e.chunk = 0 and e.source_updated_at >= p.spare_version)',
            vectorize._embeddings_table(j.job_name, v_spare.generation), j.primary_key);
    end if;
    execute format(
        'with page as (
             select s.%1$I as pk, s.%3$I as version, s.%6$I as spare_version
               from %2$s s
              where $1::text is null or s.%1$I > $1::%4$s
              order by s.%1$I
              limit $2),
         queued as (
             insert into vectorize.queue (job_id, pk, lane)
             select $3, p.pk::text, ''backfill'' from page p
              where %5$s
             returning 1)
         select (select count(*) from page)::int,
                (select p.pk::text from page p order by p.pk desc limit 1),
                (select count(*) from queued)::int',
        j.primary_key, vectorize._source(j), j.update_time_col, vectorize._pk_type(j), v_stale,
        coalesce(v_spare.update_time_col, j.update_time_col))
      into v_seen, v_last, v_queued
      using j.scan_cursor, p_page, j.id;
    if v_seen < p_page then
        -- The pass is complete: rows deleted while no trigger saw it (a restore with triggers
        -- disabled, session_replication_role = replica, a partition detached) leave every generation.
        perform vectorize._drop_deleted_rows(j, j.generation);
        if v_spare.id is not null then
            perform vectorize._drop_deleted_rows(j, v_spare.generation);
        end if;
        update vectorize.job set scan_active = false, scan_cursor = null,
               backfilled_at = coalesce(backfilled_at, now())
         where id = j.id;
    else
        update vectorize.job set scan_cursor = v_last where id = j.id;
    end if;
    if v_queued > 0 then
        -- Other workers may take a share of the page at once, instead of at their next poll.
        perform pg_notify('vectorize', j.id::text);
    end if;
    return v_seen;
end $$;

-- Delete one generation's embeddings of rows the source no longer has (one anti-join, at the end
-- of a pass that already read every source key). Returns how many rows' chunks went.
create or replace function vectorize._drop_deleted_rows(j vectorize.job, p_generation int)
returns int language plpgsql as $$
declare
    v_gone int;
begin
    execute format(
        'with gone as (delete from %1$s e where not exists (select 1 from %2$s s where s.%3$I = e.%3$I) returning e.%3$I)
         select count(distinct %3$I)::int from gone',
        vectorize._embeddings_table(j.job_name, p_generation), vectorize._source(j), j.primary_key)
      into v_gone;
    return v_gone;
end $$;

-- The generations a batch of the job writes: the serving one, and the one being built or kept
-- for rollback. The latter's row is KEY SHARE locked until the batch commits, so it cannot be
-- dropped under the batch (vectorize._drop_spare waits); a switch can happen meanwhile, and
-- then the batch writes both generations all the same.
create or replace function vectorize.job_generations(p_job_id uuid)
returns table (generation int, model text, chunking boolean, chunk_tokens int, chunk_overlap int, serving boolean)
language plpgsql as $$
begin
    return query
        select g.generation, g.model, g.chunking, g.chunk_tokens, g.chunk_overlap, false
          from vectorize.generation g where g.job_id = p_job_id for key share;
    return query
        select j.generation, j.model, j.chunking, j.chunk_tokens, j.chunk_overlap, true
          from vectorize.job j where j.id = p_job_id;
end $$;

-- The current text and version of the given rows, with the content hashes of
-- their stored chunks in chunk order. Rows that no longer exist are absent.
-- fts_stale: the stored row is a copy still to be checked whose full-text terms are of another
-- language (see vectorize._start_generation): its text is written again even where unchanged.
create or replace function vectorize.read_rows(p_job_id uuid, p_generation int, p_pks text[])
returns table (pk text, content text, source_updated_at timestamptz, stored_hashes bytea[], fts_stale boolean)
language plpgsql stable
set TimeZone = 'UTC' set DateStyle = 'ISO, YMD' set IntervalStyle = 'postgres' set bytea_output = 'hex' set extra_float_digits = 3 as $$
declare
    j vectorize.job := vectorize._generation_job(p_job_id, p_generation);
begin
    return query execute format(
        'select s.%1$I::text, %2$s, s.%3$I, stored.hashes, coalesce(stored.fts_stale, false)
           from %4$s s
           cross join lateral (
               select array_agg(e.content_hash order by e.chunk) as hashes,
                      bool_or(e.chunk = 0 and e.source_updated_at = ''-infinity'') as fts_stale
                 from %5$s e where e.%1$I = s.%1$I) stored
          where s.%1$I = any($1::%6$s[])',
        j.primary_key, vectorize._content_expr(j), j.update_time_col, vectorize._source(j),
        vectorize._embeddings_table(j.job_name, j.generation), vectorize._pk_type(j))
    using p_pks;
end $$;

-- The session's staging table of a batch: one line per chunk of each of its rows, emptied at
-- every commit, written with COPY and merged by vectorize.apply_batch.
create or replace function vectorize.create_staging() returns void
language plpgsql as $$
begin
    create temp table if not exists vectorize_staging_chunks (
        pk                text not null,
        chunk             int not null,
        embedding         @extschema:vector@.vector,
        content           text,
        content_hash      bytea,
        chunk_start       int,
        chunk_end         int,
        chunks            int not null,
        source_updated_at timestamptz,
        version           bigint not null
    ) on commit delete rows;
end $$;

-- Apply one batch (of one generation of the job) that the worker COPYed into pg_temp.vectorize_staging_chunks, one
-- line per chunk of each row (its "chunks" says how many the row has now):
--  * chunks with an embedding: upsert them, unless a newer version of the row is
--    stored (newest wins when two workers race on the same row), and only while
--    the source row still exists (a delete may have committed since it was read);
--  * chunks without one (their text is unchanged): record the newer version and offsets;
--  * chunks past the row's new count: dropped (the text got shorter);
--  * "content" (the whole row's text, on chunk 0 when the row changed) renews the
--    row's full-text vector, kept on chunk 0;
--  * p_gone: keys whose source row was missing when read: drop their chunks.
-- Successfully written keys also leave the failures table.
create or replace function vectorize.apply_batch(p_job_id uuid, p_generation int, p_gone text[])
returns int language plpgsql
set TimeZone = 'UTC' set DateStyle = 'ISO, YMD' set IntervalStyle = 'postgres' set bytea_output = 'hex' set extra_float_digits = 3 as $$
declare
    j     vectorize.job := vectorize._generation_job(p_job_id, p_generation);
    v_emb text := vectorize._embeddings_table(j.job_name, j.generation);
    v_written int;
begin
    -- One batch at a time per row, in key order (so two batches cannot deadlock): otherwise a
    -- batch with an older, longer text could add a chunk beside a newer text's chunks.
    perform pg_advisory_xact_lock(hashtextextended(p_job_id::text || '/' || k.pk, 0))
       from (select distinct s.pk from pg_temp.vectorize_staging_chunks s order by 1) k;
    execute format(
        'insert into %1$s as e (%2$I, chunk, embedding, fts, content_hash, chunk_start, chunk_end,
                                source_updated_at, version, updated_at)
         select s.pk::%3$s, s.chunk, s.embedding, to_tsvector(%5$L::regconfig, s.content), s.content_hash,
                s.chunk_start, s.chunk_end, s.source_updated_at, s.version, now()
           from pg_temp.vectorize_staging_chunks s
          where s.embedding is not null
            and exists (select 1 from %4$s src where src.%2$I = s.pk::%3$s)
            and not exists (select 1 from %1$s n where n.%2$I = s.pk::%3$s and n.version > s.version)
         on conflict (%2$I, chunk) do update
            set embedding = excluded.embedding, fts = excluded.fts, content_hash = excluded.content_hash,
                chunk_start = excluded.chunk_start, chunk_end = excluded.chunk_end,
                source_updated_at = excluded.source_updated_at, version = excluded.version, updated_at = now()
          where e.version <= excluded.version',
        v_emb, j.primary_key, vectorize._pk_type(j), vectorize._source(j), j.language);
    get diagnostics v_written = row_count;
    execute format(
        'update %1$s e
            set source_updated_at = s.source_updated_at, version = s.version,
                chunk_start = s.chunk_start, chunk_end = s.chunk_end,
                fts = case when s.content is null then e.fts else to_tsvector(%4$L::regconfig, s.content) end
           from pg_temp.vectorize_staging_chunks s
          where s.embedding is null and e.%2$I = s.pk::%3$s and e.chunk = s.chunk and e.version < s.version',
        v_emb, j.primary_key, vectorize._pk_type(j), j.language);
    execute format(
        'delete from %1$s e
          using (select s.pk, max(s.chunks) as chunks, max(s.version) as version
                   from pg_temp.vectorize_staging_chunks s group by s.pk) s
          where e.%2$I = s.pk::%3$s and e.chunk >= s.chunks and e.version <= s.version',
        v_emb, j.primary_key, vectorize._pk_type(j));
    if cardinality(p_gone) > 0 then
        execute format(
            'delete from %1$s e
              where e.%2$I = any($1::%3$s[])
                and not exists (select 1 from %4$s src where src.%2$I = e.%2$I)',
            v_emb, j.primary_key, vectorize._pk_type(j), vectorize._source(j))
        using p_gone;
    end if;
    delete from vectorize.failure f
     where f.job_id = p_job_id
       and (f.pk in (select s.pk from pg_temp.vectorize_staging_chunks s) or f.pk = any(p_gone));
    return v_written;
end $$;
