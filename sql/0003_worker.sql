-- What the worker runs against a job's tables. Each function builds its
-- statement from the job row with format('%I'), so the worker never glues
-- identifiers together in Python.

-- The text embedded for a row, as a SQL expression over alias "s":
-- '<column>: <value>' for each source column in order, joined by single spaces,
-- NULL as the empty string (the pg_vectorize server's format).
create or replace function vectorize._content_expr(j vectorize.job) returns text
language sql stable as $$
    select format('concat_ws(%L, %s)', ' ',
                  string_agg(format('%L || coalesce(s.%I::text, %L)', c || ': ', c, ''), ', ' order by ord))
      from unnest(j.src_columns) with ordinality as u(c, ord)
$$;

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

-- One page of the keyset scan that backfills a job and reconciles it after
-- downtime: queue the next rows (by primary key) whose embedding is missing or
-- older than the row's update_time_col. Returns how many rows it looked at;
-- 0 means the pass is complete. Only one worker advances a job's scan at a time
-- (the job row is locked with SKIP LOCKED); others simply get -1 and move on.
create or replace function vectorize.scan_step(p_job_id uuid, p_page int)
returns int language plpgsql as $$
declare
    j        vectorize.job;
    v_seen   int;
    v_last   text;
begin
    select * into j from vectorize.job where id = p_job_id and scan_active and status = 'active'
       for update skip locked;
    if not found then
        return -1;
    end if;
    execute format(
        'with page as (
             select s.%1$I as pk, s.%3$I as version
               from %2$s s
              where $1::text is null or s.%1$I > $1::%4$s
              order by s.%1$I
              limit $2),
         queued as (
             insert into vectorize.queue (job_id, pk)
             select $3, p.pk::text from page p
              where not exists (select 1 from vectorize.%5$I e
                                 where e.%1$I = p.pk and e.source_updated_at >= p.version)
             returning 1)
         select (select count(*) from page)::int,
                (select p.pk::text from page p order by p.pk desc limit 1),
                (select count(*) from queued)::int',
        j.primary_key, vectorize._source(j), j.update_time_col, j.pk_type, '_embeddings_' || j.job_name)
      into v_seen, v_last
      using j.scan_cursor, p_page, j.id;
    if v_seen < p_page then
        update vectorize.job set scan_active = false, scan_cursor = null,
               backfilled_at = coalesce(backfilled_at, now())
         where id = j.id;
    else
        update vectorize.job set scan_cursor = v_last where id = j.id;
    end if;
    return v_seen;
end $$;

-- The current text, version and stored content hash of the given rows. Rows
-- that no longer exist are simply absent from the result.
create or replace function vectorize.read_rows(p_job_id uuid, p_pks text[])
returns table (pk text, content text, source_updated_at timestamptz, stored_hash bytea)
language plpgsql stable as $$
declare
    j vectorize.job;
begin
    select * into j from vectorize.job where id = p_job_id;
    return query execute format(
        'select s.%1$I::text, %2$s, s.%3$I, e.content_hash
           from %4$s s
           left join vectorize.%5$I e on e.%1$I = s.%1$I
          where s.%1$I = any($1::%6$s[])',
        j.primary_key, vectorize._content_expr(j), j.update_time_col, vectorize._source(j),
        '_embeddings_' || j.job_name, j.pk_type)
    using p_pks;
end $$;

-- Apply one batch that the worker COPYed into pg_temp.vectorize_staging:
--  * rows with an embedding: upsert it, unless a newer version is stored
--    (newest wins when two workers race on the same row), and only while the
--    source row still exists (a delete may have committed since it was read);
--  * rows without one (text unchanged): just record the newer version;
--  * p_gone: keys whose source row was missing when read: drop their embedding.
-- Successfully written keys also leave the failures table.
create or replace function vectorize.apply_batch(p_job_id uuid, p_gone text[])
returns int language plpgsql as $$
declare
    j     vectorize.job;
    v_emb text;
    v_written int;
begin
    select * into j from vectorize.job where id = p_job_id;
    v_emb := '_embeddings_' || j.job_name;
    execute format(
        'insert into vectorize.%1$I as e (%2$I, embedding, fts, content_hash, source_updated_at, version, updated_at)
         select s.pk::%3$s, s.embedding, to_tsvector(''english'', s.content), s.content_hash, s.source_updated_at, s.version, now()
           from pg_temp.vectorize_staging s
          where s.embedding is not null
            and exists (select 1 from %4$s src where src.%2$I = s.pk::%3$s)
         on conflict (%2$I) do update
            set embedding = excluded.embedding, fts = excluded.fts, content_hash = excluded.content_hash,
                source_updated_at = excluded.source_updated_at, version = excluded.version, updated_at = now()
          where e.version <= excluded.version',
        v_emb, j.primary_key, j.pk_type, vectorize._source(j));
    get diagnostics v_written = row_count;
    execute format(
        'update vectorize.%1$I e
            set source_updated_at = s.source_updated_at, version = s.version
           from pg_temp.vectorize_staging s
          where s.embedding is null and e.%2$I = s.pk::%3$s and e.version < s.version',
        v_emb, j.primary_key, j.pk_type);
    if cardinality(p_gone) > 0 then
        execute format(
            'delete from vectorize.%1$I e
              where e.%2$I = any($1::%3$s[])
                and not exists (select 1 from %4$s src where src.%2$I = e.%2$I)',
            v_emb, j.primary_key, j.pk_type, vectorize._source(j))
        using p_gone;
    end if;
    delete from vectorize.failure f
     where f.job_id = p_job_id
       and (f.pk in (select s.pk from pg_temp.vectorize_staging s) or f.pk = any(p_gone));
    return v_written;
end $$;
