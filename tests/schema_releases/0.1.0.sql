-- The schema of vectorize 0.1.0 (the release before sql/functions/), as its migrations built it.
-- tests/test_upgrade.py loads this into an empty database and upgrades it.
create schema vectorize;
create table vectorize.migration (name text primary key, applied_at timestamptz not null default now());

-- ==== 0001_schema.sql
-- The durable state of vectorize: models, jobs, the work queue and parked failures.
-- Every process is stateless; everything it needs to resume lives here.

-- The schema itself is created by the migration runner (sql/queries.sql,
-- create_migrations_table), since it also holds the migrations table.

-- Models this installation can run. The daemon fills it from models/*.json at
-- start-up, so the validation trigger can check a job's model from SQL alone.
create table if not exists vectorize.model (
    name          text primary key,
    dimension     int  not null check (dimension > 0),
    max_tokens    int,
    provider      text not null default 'onnx',
    precision     text not null default 'fp32',
    registered_at timestamptz not null default now()
);

-- One row per job. The definition columns are what users write; the rest is
-- filled in by the validation trigger (from the catalog) and by the worker.
create table if not exists vectorize.job (
    id              uuid primary key default gen_random_uuid(),
    job_name        text not null unique,
    src_schema      text not null,
    src_table       text not null,
    src_columns     text[] not null,
    primary_key     text not null,
    update_time_col text not null,
    model           text not null,
    -- Resolved from the catalog when the job is created.
    src_relid       oid,
    pk_type         text,
    dimension       int,
    -- Lifecycle: 'active' while the job runs, 'failed' when its source broke.
    status          text not null default 'active' check (status in ('active', 'failed')),
    status_message  text,
    -- Keyset scan over the source that finds rows needing (re-)embedding.
    -- scan_active is true while a pass is under way; scan_cursor is the last
    -- primary key (as text) that the pass has queued.
    scan_active     boolean not null default true,
    scan_cursor     text,
    backfilled_at   timestamptz,
    created_at      timestamptz not null default now()
);

-- Pending work: "re-read this row of this job and bring its embedding up to date".
-- Append-only from the capture triggers: no unique constraint, so a user's write
-- never waits on a row the worker holds. The id doubles as the version that
-- decides which of two racing writes of the same row wins.
create table if not exists vectorize.queue (
    id          bigint generated always as identity primary key,
    job_id      uuid not null,
    pk          text not null,
    enqueued_at timestamptz not null default now(),
    attempts    int not null default 0,
    not_before  timestamptz
);
create index if not exists queue_job_id_idx on vectorize.queue (job_id, id);

-- Rows that failed to embed after every retry, with the last error.
create table if not exists vectorize.failure (
    job_id    uuid not null,
    pk        text not null,
    attempts  int  not null,
    last_error text not null,
    failed_at timestamptz not null default now(),
    primary key (job_id, pk)
);
insert into vectorize.migration (name) values ('0001_schema.sql');

-- ==== 0003_jobs.sql
-- Job validation and the objects each job owns.
--
-- The rules live here, not in the API, so `INSERT INTO vectorize.job` from psql
-- and `POST /api/v1/table` behave identically. Errors use our own SQLSTATEs,
-- which the API maps to HTTP statuses:
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

-- Names of bookkeeping columns in _embeddings_<job>; the source's primary key
-- shares that table, so it may not use one of them.
create or replace function vectorize._reserved_columns() returns text[]
language sql immutable as $$
    select array['embedding', 'fts', 'content_hash', 'source_updated_at', 'version', 'updated_at']
$$;

create or replace function vectorize._validate_job() returns trigger
language plpgsql as $$
declare
    v_nsp      oid;
    v_rel      oid;
    v_col      text;
    v_dup      text;
    v_type     oid;
    v_attnum   int2;
    v_notnull  boolean;
    v_models   text;
    v_dim      int;
    v_existing vectorize.job;
    v_qualified text;
begin
    -- Every definition field is required.
    if new.job_name is null then perform vectorize._fail('VZ400', 'job_name is required'); end if;
    if new.src_schema is null then perform vectorize._fail('VZ400', 'src_schema is required'); end if;
    if new.src_table is null then perform vectorize._fail('VZ400', 'src_table is required'); end if;
    if new.src_columns is null then perform vectorize._fail('VZ400', 'src_columns is required'); end if;
    if new.primary_key is null then perform vectorize._fail('VZ400', 'primary_key is required'); end if;
    if new.update_time_col is null then perform vectorize._fail('VZ400', 'update_time_col is required'); end if;
    if new.model is null then perform vectorize._fail('VZ400', 'model is required'); end if;

    if new.job_name !~ '^[A-Za-z_][A-Za-z0-9_]{0,39}$' then
        perform vectorize._fail('VZ400',
            format('job_name %s is invalid: use 1 to 40 letters, digits or underscores, not starting with a digit (^[A-Za-z_][A-Za-z0-9_]{0,39}$)',
                   to_json(new.job_name)));
    end if;
    if cardinality(new.src_columns) = 0 then
        perform vectorize._fail('VZ400', 'src_columns is empty: name at least one column whose text is embedded');
    end if;
    if array_position(new.src_columns, null) is not null then
        perform vectorize._fail('VZ400', 'src_columns contains a null: every entry must be a column name');
    end if;
    select c into v_dup from unnest(new.src_columns) c group by c having count(*) > 1 limit 1;
    if found then
        perform vectorize._fail('VZ400', format('src_columns names column %s more than once: list each column once', to_json(v_dup)));
    end if;

    select m.dimension into v_dim from vectorize.model m where m.name = new.model;
    if not found then
        select coalesce(string_agg(m.name, ', ' order by m.name), '(none registered: start the vectorize daemon once)')
          into v_models from vectorize.model m;
        perform vectorize._fail('VZ400',
            format('model %s is not available; this installation can run: %s', to_json(new.model), v_models));
    end if;

    if new.src_schema = 'vectorize' then
        perform vectorize._fail('VZ400', 'src_schema "vectorize" holds vectorize''s own tables; embed a table of another schema');
    end if;
    select n.oid into v_nsp from pg_catalog.pg_namespace n where n.nspname = new.src_schema;
    if not found then
        perform vectorize._fail('VZ404', format('schema %s does not exist', to_json(new.src_schema)));
    end if;
    v_qualified := format('%I.%I', new.src_schema, new.src_table);
    select c.oid into v_rel from pg_catalog.pg_class c
     where c.relnamespace = v_nsp and c.relname = new.src_table and c.relkind in ('r', 'p');
    if not found then
        perform vectorize._fail('VZ404', format('table %s does not exist in schema %s', to_json(new.src_table), to_json(new.src_schema)));
    end if;
    if not has_table_privilege(v_rel, 'SELECT') then
        perform vectorize._fail('42501', format('permission denied: role %s cannot read table %s', to_json(current_user), v_qualified),
            format('GRANT SELECT, TRIGGER ON %s TO %I', v_qualified, current_user));
    end if;

    foreach v_col in array new.src_columns || array[new.primary_key, new.update_time_col] loop
        if not exists (select 1 from pg_catalog.pg_attribute a
                        where a.attrelid = v_rel and a.attname = v_col and a.attnum > 0 and not a.attisdropped) then
            perform vectorize._fail('VZ404', format('column %s does not exist in table %s', to_json(v_col), v_qualified));
        end if;
    end loop;

    select a.atttypid into v_type from pg_catalog.pg_attribute a
     where a.attrelid = v_rel and a.attname = new.update_time_col and not a.attisdropped;
    if v_type <> 'timestamptz'::regtype then
        perform vectorize._fail('VZ400',
            format('update_time_col %s is %s; it must be timestamp with time zone', to_json(new.update_time_col), format_type(v_type, null)),
            format('ALTER TABLE %s ALTER COLUMN %I TYPE timestamptz', v_qualified, new.update_time_col));
    end if;

    select a.attnum, a.attnotnull, format_type(a.atttypid, a.atttypmod)
      into v_attnum, v_notnull, new.pk_type
      from pg_catalog.pg_attribute a
     where a.attrelid = v_rel and a.attname = new.primary_key and not a.attisdropped;
    if not v_notnull or not exists (
        select 1 from pg_catalog.pg_index i
         where i.indrelid = v_rel and i.indisunique and i.indnatts = 1 and i.indkey[0] = v_attnum
           and i.indpred is null and i.indexprs is null) then
        perform vectorize._fail('VZ400',
            format('primary_key %s of table %s is not unique and not null; name the primary key or a unique, not-null column', to_json(new.primary_key), v_qualified));
    end if;
    if new.primary_key = any(vectorize._reserved_columns()) then
        perform vectorize._fail('VZ400',
            format('primary_key %s collides with a vectorize bookkeeping column (%s); key the job on another unique column',
                   to_json(new.primary_key), array_to_string(vectorize._reserved_columns(), ', ')));
    end if;

    -- Same name again: identical definition is a no-op (scripts can re-run), a different one is a conflict.
    select * into v_existing from vectorize.job j where j.job_name = new.job_name;
    if found then
        if (v_existing.src_schema, v_existing.src_table, v_existing.src_columns, v_existing.primary_key,
            v_existing.update_time_col, v_existing.model)
           is not distinct from
           (new.src_schema, new.src_table, new.src_columns, new.primary_key, new.update_time_col, new.model) then
            return null;
        end if;
        perform vectorize._fail('VZ409',
            format('job %s already exists with a different definition; delete it first or choose another job_name', to_json(new.job_name)));
    end if;

    new.src_relid := v_rel;
    new.dimension := v_dim;
    new.status := 'active';
    new.status_message := null;
    new.scan_active := true;
    new.scan_cursor := null;
    new.backfilled_at := null;
    return new;
end $$;

-- A job's definition is fixed once created: the objects built from it would no longer match.
create or replace function vectorize._guard_job_update() returns trigger
language plpgsql as $$
begin
    if (old.job_name, old.src_schema, old.src_table, old.src_columns, old.primary_key, old.update_time_col, old.model)
       is distinct from
       (new.job_name, new.src_schema, new.src_table, new.src_columns, new.primary_key, new.update_time_col, new.model) then
        perform vectorize._fail('VZ400',
            format('the definition of job %s cannot be changed; delete the job and create it again', to_json(old.job_name)));
    end if;
    return new;
end $$;

-- Builds the per-job objects: embeddings table + indexes, the joined view, and
-- the capture triggers on the source. O(1) in the source's size: nothing is scanned.
create or replace function vectorize._create_job_objects() returns trigger
language plpgsql as $$
declare
    j         vectorize.job := new;
    v_emb     text := '_embeddings_' || j.job_name;
    v_capture text := '_capture_' || j.job_name;
    v_changed text;
begin
    execute format(
        'create table vectorize.%I (
             %I %s primary key,
             embedding vector(%s) not null,
             fts tsvector,
             content_hash bytea not null,
             source_updated_at timestamptz,
             version bigint not null,
             updated_at timestamptz not null default now())',
        v_emb, j.primary_key, j.pk_type, j.dimension);
    execute format('create index %I on vectorize.%I using hnsw (embedding vector_cosine_ops)', v_emb || '_hnsw', v_emb);
    execute format('create index %I on vectorize.%I using gin (fts)', v_emb || '_fts', v_emb);
    -- Only the key and the embedded columns: a view depends on every column it names,
    -- and naming all of them (s.*) would block DROP COLUMN of unrelated columns.
    execute format(
        'create view vectorize.%I as
             select s.%I, %s, e.embedding as vectorize_embedding, e.updated_at as vectorize_updated_at
               from %I.%I s join vectorize.%I e on e.%I = s.%I',
        j.job_name || '_view', j.primary_key,
        (select string_agg(format('s.%I', c), ', ') from unnest(j.src_columns) c where c <> j.primary_key),
        j.src_schema, j.src_table, v_emb, j.primary_key, j.primary_key);

    -- "Did any embedded column change?" compared as text, the form that is embedded
    -- (so types without an equality operator, like json, work too).
    select format('(%s) is distinct from (%s)',
                  string_agg(format('o.%I::text', c), ', '), string_agg(format('n.%I::text', c), ', '))
      into v_changed from unnest(j.src_columns) c;

    -- One capture function per job, with the job's columns written in, so the
    -- trigger runs a planned statement instead of dynamic SQL on every write.
    -- Statement-level with transition tables: a bulk write costs one set-based
    -- INSERT into the queue and one NOTIFY, never a round trip per row.
    execute format($f$
        create function vectorize.%1$I() returns trigger
        language plpgsql security definer set search_path = pg_catalog, pg_temp as $body$
        declare
            queued bigint := 0;
        begin
            -- A failed job stops collecting work (one primary-key lookup per statement).
            if not exists (select 1 from vectorize.job where id = %2$L::uuid and status = 'active') then
                return null;
            end if;
            if tg_op = 'INSERT' then
                insert into vectorize.queue (job_id, pk) select %2$L::uuid, n.%3$I::text from new_rows n;
                get diagnostics queued = row_count;
            elsif tg_op = 'UPDATE' then
                insert into vectorize.queue (job_id, pk)
                    select %2$L::uuid, n.%3$I::text
                      from new_rows n left join old_rows o on o.%3$I = n.%3$I
                     where o.%3$I is null or %4$s
                    union all
                    select %2$L::uuid, o.%3$I::text
                      from old_rows o
                     where not exists (select 1 from new_rows n where n.%3$I = o.%3$I);
                get diagnostics queued = row_count;
            elsif tg_op = 'DELETE' then
                -- Removed in the user's transaction; queued as well so that a worker
                -- racing on the same row re-checks it and cannot leave a stale vector.
                delete from vectorize.%5$I e using old_rows o where e.%3$I = o.%3$I;
                insert into vectorize.queue (job_id, pk) select %2$L::uuid, o.%3$I::text from old_rows o;
            else
                delete from vectorize.%5$I;
                delete from vectorize.queue where job_id = %2$L::uuid;
            end if;
            if queued > 0 then
                perform pg_notify('vectorize', %2$L);
            end if;
            return null;
        exception when undefined_column or undefined_table or datatype_mismatch then
            -- A column the job embeds was dropped or renamed: the user's write must
            -- still succeed, so the job is marked failed instead of raising here.
            update vectorize.job
               set status = 'failed',
                   status_message = format('the source table changed under the job (%%s); delete the job and create it again', sqlerrm)
             where id = %2$L::uuid and status <> 'failed';
            delete from vectorize.queue where job_id = %2$L::uuid;
            return null;
        end $body$ $f$,
        v_capture, j.id, j.primary_key, v_changed, v_emb);

    execute format('create trigger %I after insert on %I.%I referencing new table as new_rows
                    for each statement execute function vectorize.%I()',
                   'vectorize_' || j.job_name || '_ins', j.src_schema, j.src_table, v_capture);
    execute format('create trigger %I after update on %I.%I referencing old table as old_rows new table as new_rows
                    for each statement execute function vectorize.%I()',
                   'vectorize_' || j.job_name || '_upd', j.src_schema, j.src_table, v_capture);
    execute format('create trigger %I after delete on %I.%I referencing old table as old_rows
                    for each statement execute function vectorize.%I()',
                   'vectorize_' || j.job_name || '_del', j.src_schema, j.src_table, v_capture);
    execute format('create trigger %I after truncate on %I.%I
                    for each statement execute function vectorize.%I()',
                   'vectorize_' || j.job_name || '_trunc', j.src_schema, j.src_table, v_capture);

    perform pg_notify('vectorize', j.id::text);
    return null;
end $$;

-- Deleting the job row removes everything the job built; the capture triggers
-- depend on the capture function, so CASCADE takes them off the source too.
create or replace function vectorize._drop_job_objects() returns trigger
language plpgsql as $$
begin
    execute format('drop view if exists vectorize.%I', old.job_name || '_view');
    execute format('drop function if exists vectorize.%I() cascade', '_capture_' || old.job_name);
    execute format('drop table if exists vectorize.%I', '_embeddings_' || old.job_name);
    delete from vectorize.queue where job_id = old.id;
    delete from vectorize.failure where job_id = old.id;
    return null;
end $$;

drop trigger if exists validate_job on vectorize.job;
create trigger validate_job before insert on vectorize.job
    for each row execute function vectorize._validate_job();
drop trigger if exists guard_job_update on vectorize.job;
create trigger guard_job_update before update on vectorize.job
    for each row execute function vectorize._guard_job_update();
drop trigger if exists create_job_objects on vectorize.job;
create trigger create_job_objects after insert on vectorize.job
    for each row execute function vectorize._create_job_objects();
drop trigger if exists drop_job_objects on vectorize.job;
create trigger drop_job_objects after delete on vectorize.job
    for each row execute function vectorize._drop_job_objects();

-- The API's entry point: insert through the same trigger and return the id,
-- also when an identical job already existed (the trigger skipped the insert).
create or replace function vectorize.create_job(
    p_job_name text, p_src_schema text, p_src_table text, p_src_columns text[],
    p_primary_key text, p_update_time_col text, p_model text)
returns uuid language plpgsql as $$
declare
    v_id uuid;
begin
    insert into vectorize.job (job_name, src_schema, src_table, src_columns, primary_key, update_time_col, model)
    values (p_job_name, p_src_schema, p_src_table, p_src_columns, p_primary_key, p_update_time_col, p_model)
    returning id into v_id;
    if v_id is null then
        select j.id into v_id from vectorize.job j where j.job_name = p_job_name;
    end if;
    return v_id;
end $$;
insert into vectorize.migration (name) values ('0003_jobs.sql');

-- ==== 0004_worker.sql
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
insert into vectorize.migration (name) values ('0004_worker.sql');

-- ==== 0005_search.sql
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
        if not found then
            select string_agg(a.attname, ', ' order by a.attnum) into v_cols
              from pg_catalog.pg_attribute a where a.attrelid = j.src_relid and a.attnum > 0 and not a.attisdropped;
            perform vectorize._fail('VZ400',
                format('filter %s is not a column of %I.%I; columns are: %s', to_json(v_key), j.src_schema, j.src_table, v_cols));
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
insert into vectorize.migration (name) values ('0005_search.sql');

-- ==== 0005_job_status.sql
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
insert into vectorize.migration (name) values ('0005_job_status.sql');

-- ==== 0006_job_gauges.sql
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
insert into vectorize.migration (name) values ('0006_job_gauges.sql');
