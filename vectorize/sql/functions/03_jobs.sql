-- Jobs: validation, the objects each job owns, and the API's entry point.
--
-- The rules live here, not in the API, so `INSERT INTO vectorize.job` from psql
-- and `POST /api/v1/table` behave identically (errors: see vectorize._fail).

-- Check a job definition and fill in what the catalog says (src_relid, pk_type, dimension).
-- Used for a new job and for a redefinition alike, so both give the same answers.
create or replace function vectorize._check_definition(new vectorize.job, p_role name default current_user) returns vectorize.job
language plpgsql stable as $$
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
    v_window   int;
    v_qualified text;
    v_language_ok boolean;
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

    select m.dimension, m.max_tokens into v_dim, v_window from vectorize.model m where m.name = new.model;
    if not found then
        select coalesce(string_agg(m.name, ', ' order by m.name), '(none registered: start the vectorize daemon once)')
          into v_models from vectorize.model m;
        perform vectorize._fail('VZ400',
            format('model %s is not available; this installation can run: %s', to_json(new.model), v_models));
    end if;

    -- Chunking: on by default; chunk_tokens defaults to the model's window.
    if new.chunking is null then
        perform vectorize._fail('VZ400', 'chunking must be true (split long rows into chunks) or false (truncate them)');
    end if;
    if new.chunk_tokens is not null and (new.chunk_tokens < 16 or new.chunk_tokens > coalesce(v_window, 8192)) then
        perform vectorize._fail('VZ400',
            format('chunk_tokens %s is out of range: use 16 to %s (the window of model %s), or leave it out for the whole window',
                   new.chunk_tokens, coalesce(v_window, 8192), to_json(new.model)));
    end if;
    if new.chunk_overlap is null or new.chunk_overlap < 0
       or new.chunk_overlap > coalesce(new.chunk_tokens, v_window, 8192) / 2 then
        perform vectorize._fail('VZ400',
            format('chunk_overlap %s is out of range: use 0 to %s (half of chunk_tokens)',
                   coalesce(new.chunk_overlap::text, 'null'), coalesce(new.chunk_tokens, v_window, 8192) / 2));
    end if;

    -- Any text search configuration of this database (schema-qualified unless in pg_catalog).
    v_language_ok := new.language is not null;
    begin
        perform new.language::pg_catalog.regconfig;
    exception when others then
        v_language_ok := false;
    end;
    if not v_language_ok then
        perform vectorize._fail('VZ400',
            format('language %s is not a text search configuration of this database; it has: %s (simple for mixed languages)',
                   to_json(new.language),
                   (select string_agg(c.cfgname, ', ' order by c.cfgname) from pg_catalog.pg_ts_config c
                     where c.cfgnamespace = 'pg_catalog'::regnamespace)));
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
    -- The role asking (p_role: the caller, also when the check runs with vectorize's rights).
    if not has_table_privilege(p_role, v_rel, 'SELECT') then
        perform vectorize._fail('42501', format('permission denied: role %s cannot read table %s', to_json(p_role), v_qualified),
            format('GRANT SELECT, TRIGGER ON %s TO %I', v_qualified, p_role));
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

    new.src_relid := v_rel;
    new.dimension := v_dim;
    return new;
end $$;

-- A job's search settings (not part of its definition: changing them builds nothing).
create or replace function vectorize._check_search_settings(j vectorize.job) returns void
language plpgsql stable as $$
declare
    v_col  text;
    v_cols text;
begin
    if j.ef_search is not null and (j.ef_search < 1 or j.ef_search > 1000) then
        perform vectorize._fail('VZ400', format('ef_search %s is out of range: use 1 to 1000, or null for the default', j.ef_search));
    end if;
    -- pgvector's own limits, said before an index build would fail on them.
    if j.hnsw_m is not null and (j.hnsw_m < 2 or j.hnsw_m > 100) then
        perform vectorize._fail('VZ400', format('hnsw_m %s is out of range: use 2 to 100, or null for the default (16)', j.hnsw_m));
    end if;
    if j.hnsw_ef_construction is not null and (j.hnsw_ef_construction < 4 or j.hnsw_ef_construction > 1000) then
        perform vectorize._fail('VZ400', format('hnsw_ef_construction %s is out of range: use 4 to 1000, or null for the default (64)',
                                                j.hnsw_ef_construction));
    end if;
    if coalesce(j.hnsw_ef_construction, 64) < 2 * coalesce(j.hnsw_m, 16) then
        perform vectorize._fail('VZ400', format('hnsw_ef_construction (%s) must be at least twice hnsw_m (%s)',
                                                coalesce(j.hnsw_ef_construction, 64), coalesce(j.hnsw_m, 16)));
    end if;
    if j.return_columns is null then
        return;
    end if;
    if cardinality(j.return_columns) = 0 or array_position(j.return_columns, null) is not null then
        perform vectorize._fail('VZ400', 'return_columns must name at least one column (or be null: every column)');
    end if;
    foreach v_col in array j.return_columns loop
        if not exists (select 1 from pg_catalog.pg_attribute a
                        where a.attrelid = j.src_relid and a.attname = v_col and a.attnum > 0 and not a.attisdropped) then
            select string_agg(a.attname, ', ' order by a.attnum) into v_cols
              from pg_catalog.pg_attribute a where a.attrelid = j.src_relid and a.attnum > 0 and not a.attisdropped;
            perform vectorize._fail('VZ400', format('return_columns names %s, which is not a column of %I.%I; columns are: %s',
                                                    to_json(v_col), j.src_schema, j.src_table, v_cols));
        end if;
    end loop;
end $$;

-- The definition columns a user writes, as one comparable value.
create or replace function vectorize._definition(j vectorize.job) returns text[]
language sql immutable as $$
    select array[j.src_schema, j.src_table, j.src_columns::text, j.primary_key, j.update_time_col, j.model,
                 j.chunking::text, j.chunk_tokens::text, j.chunk_overlap::text, j.language]
$$;

create or replace function vectorize._validate_job() returns trigger
language plpgsql as $$
declare
    v_existing vectorize.job;
begin
    new := vectorize._check_definition(new);
    perform vectorize._check_search_settings(new);
    -- Same name again: identical definition is a no-op (scripts can re-run), a different one is a conflict.
    select * into v_existing from vectorize.job j where j.job_name = new.job_name;
    if found then
        if vectorize._definition(v_existing) is not distinct from vectorize._definition(new) then
            return null;
        end if;
        perform vectorize._fail('VZ409',
            format('job %s already exists with a different definition; to change it, redefine it (PUT /api/v1/table/%s, '
                   'UPDATE vectorize.job or vectorize jobs alter), or delete it first, or choose another job_name',
                   to_json(new.job_name), new.job_name));
    end if;
    new.generation := 1;
    new.status := 'active';
    new.status_message := null;
    new.scan_active := true;
    new.scan_cursor := null;
    new.backfilled_at := null;
    new.paused_until := null;
    new.pause_reason := null;
    new.pause_count := 0;
    new.objects_version := null;
    return new;
end $$;


-- UPDATE of a job's definition starts a redefinition: the new definition is checked like a new
-- job's, built as a new generation beside the serving one (vectorize.generation), and the job
-- row keeps the serving definition until the worker switches to the new one when it is complete.
-- Which source rows a job embeds (name, schema, table, key) cannot change: that is another job.
-- SECURITY DEFINER: an application role granted UPDATE on vectorize.job redefines its jobs without
-- any right in schema vectorize; what it may do is checked here against the caller (v_invoker).
create or replace function vectorize._redefine_job() returns trigger
language plpgsql security definer as $$
declare
    v_spare   vectorize.generation;
    v_wanted  vectorize.job;
    v_set     text;
    v_invoker name := current_setting('vectorize.invoker')::name;  -- noted by vectorize._note_invoker
begin
    if not vectorize._is_daemon(v_invoker) then
        -- Another role may redefine a job, never set what vectorize derives: a pk_type of
        -- 'integer /* anything */' would run in every statement the daemon builds from it.
        select string_agg(n.key, ', ' order by n.key) into v_set
          from jsonb_each(to_jsonb(new)) n join jsonb_each(to_jsonb(old)) o using (key)
         where n.value is distinct from o.value and n.key = any(vectorize._derived_job_columns());
        if v_set is not null then
            perform vectorize._fail('42501',
                format('permission denied: %s of vectorize.job %s kept by vectorize itself; a job is redefined through '
                       'model, src_columns, update_time_col, chunking, chunk_tokens, chunk_overlap and the search settings',
                       v_set, case when v_set like '%,%' then 'are' else 'is' end));
        end if;
    elsif current_setting('vectorize.switching', true) = 'on' then
        return new;  -- a switch or rollback (by vectorize's own role) moves a generation into the job row
    end if;
    if (old.job_name, old.src_schema, old.src_table, old.primary_key)
       is distinct from (new.job_name, new.src_schema, new.src_table, new.primary_key) then
        perform vectorize._fail('VZ400',
            format('job_name, src_schema, src_table and primary_key of job %s cannot change: they would make another job; '
                   'create a new job instead (its model, src_columns, update_time_col and chunking can be redefined)',
                   to_json(old.job_name)));
    end if;
    if (old.return_columns, old.ef_search, old.hnsw_m, old.hnsw_ef_construction)
       is distinct from (new.return_columns, new.ef_search, new.hnsw_m, new.hnsw_ef_construction) then
        perform vectorize._check_search_settings(new);
    end if;
    if vectorize._definition(old) is not distinct from vectorize._definition(new) then
        return new;
    end if;
    if old.status = 'failed' then
        perform vectorize._fail('VZ409', format('job %s has failed (%s); delete it and create it again', to_json(old.job_name), old.status_message));
    end if;
    v_wanted := vectorize._check_definition(new, v_invoker);
    select * into v_spare from vectorize.generation g where g.job_id = old.id;
    if not (v_spare.state = 'building' and vectorize._definition(vectorize._with_definition(old, v_spare))
                                            is not distinct from vectorize._definition(v_wanted)) then
        perform vectorize._start_generation(old, v_wanted);
        new.scan_active := true;  -- a pass over the source fills the new generation
        new.scan_cursor := null;
        new.objects_version := null;  -- the capture function must write the new generation too
    end if;
    -- The job row keeps describing what serves until the switch.
    select old.src_columns, old.update_time_col, old.model, old.chunking, old.chunk_tokens, old.chunk_overlap,
           old.language, old.dimension
      into new.src_columns, new.update_time_col, new.model, new.chunking, new.chunk_tokens, new.chunk_overlap,
           new.language, new.dimension;
    return new;
end $$;

-- The per-job objects that are generated from a job's definition and can be
-- rebuilt at any time without losing data: the capture function, its triggers
-- on the source, and the joined view. Re-run on start-up whenever this
-- function's body changed (vectorize._objects_version), so an upgrade reaches
-- jobs created by an older release.
create or replace function vectorize._install_job_objects(j vectorize.job) returns void
language plpgsql as $$
declare
    v_emb     text := vectorize._embeddings_table(j.job_name, j.generation);
    v_capture text := '_capture_' || j.job_name;
    v_source  text := vectorize._source(j);
    v_spare   vectorize.job := vectorize._spare_job(j);
    v_columns text[];
    v_changed text;
    v_delete  text;
    v_truncate text;
    v_tables  text[];
    v_trigger record;
    v_table   oid;
begin
    -- One row per chunk (vectorize_chunk = 0 is every row's first). Only the key and the
    -- embedded columns: a view depends on every column it names, and naming all of them
    -- (s.*) would block DROP COLUMN of unrelated columns.
    execute format('drop view if exists vectorize.%I', j.job_name || '_view');
    execute format(
        'create view vectorize.%I as
             select s.%I, %s, e.chunk as vectorize_chunk, e.chunk_start as vectorize_chunk_start,
                    e.chunk_end as vectorize_chunk_end, e.embedding as vectorize_embedding,
                    e.updated_at as vectorize_updated_at
               from %s s join %s e on e.%I = s.%I',
        j.job_name || '_view', j.primary_key,
        (select string_agg(format('s.%I', c), ', ') from unnest(j.src_columns) c where c <> j.primary_key),
        v_source, v_emb, j.primary_key, j.primary_key);

    -- "Did any embedded column change?" compared as text, the form that is embedded
    -- (so types without an equality operator, like json, work too). While the job has a second
    -- generation, the columns of both count, and a delete or truncate empties both.
    v_columns := j.src_columns || coalesce(v_spare.src_columns, array[]::text[]);
    select format('(%s) is distinct from (%s)',
                  string_agg(format('o.%I::text', c), ', '), string_agg(format('n.%I::text', c), ', '))
      into v_changed from (select distinct c from unnest(v_columns) c) cols;
    v_tables := array[v_emb];
    if v_spare.id is not null then
        v_tables := v_tables || vectorize._embeddings_table(j.job_name, v_spare.generation);
    end if;
    -- Each in a block of its own: a generation dropped while this statement waited for its table
    -- (a build cancelled, a kept generation expiring) is simply gone, not a reason to fail the job.
    select string_agg(format('begin delete from %s e using old_rows o where e.%I = o.%I; exception when undefined_table then null; end;',
                             t, j.primary_key, j.primary_key), ' '),
           string_agg(format('begin delete from %s; exception when undefined_table then null; end;', t), ' ')
      into v_delete, v_truncate
      from unnest(v_tables) t;

    -- One capture function per job, with the job's columns written in, so the
    -- trigger runs a planned statement instead of dynamic SQL on every write.
    -- Statement-level with transition tables: a bulk write costs one set-based
    -- INSERT into the queue (the live lane) and one NOTIFY, never a round trip per row.
    execute format($f$
        create or replace function vectorize.%1$I() returns trigger
        language plpgsql security definer set search_path = pg_catalog, pg_temp
            -- Keys are queued as text in one canonical form, whatever the writer's session says:
            -- a timestamptz, date, float or bytea key renders differently under another TimeZone,
            -- DateStyle, extra_float_digits or bytea_output, and would then match no row when the
            -- worker (pinned to the same settings in 04_worker.sql) reads it back.
            set TimeZone = 'UTC' set DateStyle = 'ISO, YMD' set IntervalStyle = 'postgres' set bytea_output = 'hex' set extra_float_digits = 3 as $body$
        declare
            queued bigint := 0;
            source_relid oid;
        begin
            -- A failed job stops collecting work (one primary-key lookup per statement).
            select j.src_relid into source_relid from vectorize.job j where j.id = %2$L::uuid and j.status = 'active';
            if source_relid is null then
                return null;
            end if;
            -- Only on the job's own source or one of its partitions: on any other table (a partition
            -- since detached, or a table of someone granted EXECUTE by mistake) it does nothing.
            -- EXECUTE is revoked from PUBLIC below, so nobody else can create such a trigger.
            if tg_relid <> source_relid and not exists (
                    select 1 from pg_catalog.pg_partition_ancestors(tg_relid) a where a.relid = source_relid) then
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
                %5$s
                insert into vectorize.queue (job_id, pk) select %2$L::uuid, o.%3$I::text from old_rows o;
            elsif tg_relid = source_relid then
                %6$s
                delete from vectorize.queue where job_id = %2$L::uuid;
            else
                -- TRUNCATE of one partition: which rows went is unknown here, so a reconciliation
                -- pass drops their embeddings (and re-reads the rest).
                update vectorize.job set scan_active = true, scan_cursor = null where id = %2$L::uuid and not scan_active;
                perform pg_notify('vectorize', %2$L);
            end if;
            if queued > 0 then
                perform pg_notify('vectorize', %2$L);
            end if;
            return null;
        exception when undefined_column or undefined_table or datatype_mismatch then
            -- A column the job embeds was dropped or renamed: the user's write must
            -- still succeed, so the job is marked failed instead of raising here.
            perform vectorize._fail_job(%2$L::uuid,
                format('the source table changed under the job (%%s); delete the job and create it again', sqlerrm));
            return null;
        end $body$ $f$,
        v_capture, j.id, j.primary_key, v_changed, v_delete, v_truncate);
    -- Triggers fire it without EXECUTE; a role creating a trigger of its own needs EXECUTE.
    execute format('revoke all on function vectorize.%I() from public', v_capture);

    -- One trigger per event, each with the transition tables it needs, on the source and on each
    -- of its partitions (a statement aimed at a partition fires only that partition's statement
    -- triggers; one aimed at the parent only the parent's). Triggers already in place are left
    -- alone: dropping one locks the user's table against every reader and writer, and a
    -- redefinition or switch only needs the function above replaced.
    for v_table in select vectorize._tables_captured(j) loop
        for v_trigger in select * from vectorize._trigger_kinds() loop
            continue when exists (
                select 1 from pg_catalog.pg_trigger t
                 where t.tgrelid = v_table and t.tgname = 'vectorize_' || j.job_name || v_trigger.suffix
                   and t.tgfoid = format('vectorize.%I()', v_capture)::regprocedure);
            execute format('drop trigger if exists %I on %s', 'vectorize_' || j.job_name || v_trigger.suffix, v_table::regclass);
            execute format('create trigger %I ' || format(v_trigger.event, v_table::regclass) || ' for each statement execute function vectorize.%I()',
                           'vectorize_' || j.job_name || v_trigger.suffix, v_capture);
        end loop;
    end loop;
    -- The counting triggers, on tables made before they existed (new ones get them when created).
    perform vectorize._install_tally(t::regclass) from unnest(v_tables) t;
    perform vectorize._install_row_security(j);
    if v_spare.id is not null then
        perform vectorize._install_row_security(v_spare);
    end if;
    update vectorize.job set objects_version = vectorize._objects_version() where id = j.id;
end $$;

-- Searches run as their caller (vectorize.search() from psql, or the API as a token's role), and
-- read a generation's embeddings table: every role may, but row-level security shows each only the
-- rows it may read in the source (its policies and privileges apply there), and only when it may
-- read every column the job embeds -- a row's vector and full-text terms are made of them. The
-- daemon owns the table and is not subject to it. The policy is a filter an HNSW scan keeps
-- walking through (iterative scans), so a role still gets num_results of the rows it may see.
create or replace function vectorize._install_row_security(g vectorize.job) returns void
language plpgsql as $$
declare
    v_name text := vectorize._embeddings_name(g.job_name, g.generation);
    v_emb  text := vectorize._embeddings_table(g.job_name, g.generation);
begin
    -- A generation's table keeps its definition for life, so a policy in place is the right one;
    -- replacing it would lock the table against every batch and capture function writing it.
    if exists (select from pg_catalog.pg_policy p where p.polrelid = v_emb::regclass and p.polname = 'visible_source_rows') then
        return;
    end if;
    execute format('alter table %s enable row level security', v_emb);
    execute format('create policy visible_source_rows on %s for select using (%s exists (select from %s s where s.%I = %I.%I))',
                   v_emb,
                   (select string_agg(format('pg_catalog.has_column_privilege(%s::pg_catalog.oid, %L, ''SELECT'') and ',
                                             g.src_relid, c), '')
                      from unnest(array_append(g.src_columns, g.primary_key)) c),
                   vectorize._source(g), g.primary_key, v_name, g.primary_key);
    execute format('grant select on %s to public', v_emb);
end $$;

-- The capture triggers each captured table gets: one per event, with the transition tables it needs.
create or replace function vectorize._trigger_kinds(out suffix text, out event text) returns setof record
language sql immutable as $$
    values ('_ins', 'after insert on %s referencing new table as new_rows'),
           ('_upd', 'after update on %s referencing old table as old_rows new table as new_rows'),
           ('_del', 'after delete on %s referencing old table as old_rows'),
           ('_trunc', 'after truncate on %s')
$$;

-- The tables a job's capture triggers belong on: its source and every partition under it.
create or replace function vectorize._tables_captured(j vectorize.job) returns setof oid
language sql stable as $$
    select j.src_relid
    union
    select t.relid::oid from pg_catalog.pg_partition_tree(j.src_relid) t
$$;

-- Keep capture in step with partitions attached and detached since the triggers were installed:
-- a partition without them gets them, a detached one loses them, and the job gets a
-- reconciliation pass (it embeds an attached partition's rows, drops a detached one's).
-- Run by every worker's housekeeping; returns the jobs it touched.
create or replace function vectorize.sync_partitions() returns setof text
language plpgsql as $$
declare
    j         vectorize.job;
    v_capture regprocedure;
    v_changed boolean;
    t         record;
begin
    -- Jobs whose objects an older generator built, or whose rebuild a busy source put off.
    perform vectorize._refresh_job_objects();
    for j in select * from vectorize.job where status = 'active' loop
        v_capture := to_regprocedure(format('vectorize.%I()', '_capture_' || j.job_name));
        continue when v_capture is null;
        v_changed := false;
      begin
        for t in select distinct tg.tgrelid, tg.tgname from pg_catalog.pg_trigger tg
                  where tg.tgfoid = v_capture
                    and tg.tgrelid not in (select vectorize._tables_captured(j)) loop
            execute format('drop trigger if exists %I on %s', t.tgname, t.tgrelid::regclass);
            v_changed := true;
        end loop;
        if exists (select 1 from vectorize._tables_captured(j) c(relid)
                    where (select count(*) from pg_catalog.pg_trigger tg where tg.tgrelid = c.relid and tg.tgfoid = v_capture)
                          < (select count(*) from vectorize._trigger_kinds())) then
            perform vectorize._install_job_objects(j);
            v_changed := true;
        end if;
        if v_changed then
            update vectorize.job set scan_active = true, scan_cursor = null where id = j.id;
            perform pg_notify('vectorize', j.id::text);
            return next j.job_name;
        end if;
      exception when lock_not_available then
        -- A long transaction holds a partition: the next round (a poll interval later) tries again.
        null;
      end;
    end loop;
end $$;

-- The version of the per-job object generator: a digest of its body.
create or replace function vectorize._objects_version() returns text
language sql stable as $$
    select md5(p.prosrc) from pg_catalog.pg_proc p
     where p.pronamespace = 'vectorize'::regnamespace and p.proname = '_install_job_objects'
$$;

-- Rebuild the per-job objects of every active job built by another generator
-- version (run by the migration runner after sql/functions/ is applied).
create or replace function vectorize._refresh_job_objects() returns int
language plpgsql as $$
declare
    j vectorize.job;
    v_done int := 0;
begin
    -- Triggers are (re)installed on users' tables: never queue behind (and so ahead of) their work.
    perform pg_catalog.set_config('lock_timeout', '500ms', true);
    for j in select * from vectorize.job
              where status = 'active' and objects_version is distinct from vectorize._objects_version()
              order by created_at loop
        begin
            perform vectorize._install_job_objects(j);
            v_done := v_done + 1;
        exception when lock_not_available then
            -- A long transaction holds the source: housekeeping (vectorize.sync_partitions) tries again.
            raise notice 'the objects of job % were not rebuilt now: its source table is busy', j.job_name;
        when undefined_table or undefined_column then
            -- The source broke while nothing watched it: the job cannot run any more.
            perform vectorize._fail_job(j.id, format('the source table changed under the job (%s); delete the job and create it again', sqlerrm));
        end;
    end loop;
    return v_done;
end $$;

-- One generation's embeddings table: a row per chunk of each source row.
create or replace function vectorize._create_embeddings_table(
    p_job_name text, p_generation int, p_primary_key text, p_pk_type text, p_dimension int, p_indexes boolean)
returns void language plpgsql as $$
begin
    execute format(
        'create table %s (
             %I %s not null,
             embedding @extschema:vector@.vector(%s) not null,
             fts tsvector,
             content_hash bytea not null,
             source_updated_at timestamptz,
             version bigint not null,
             updated_at timestamptz not null default now(),
             chunk int not null default 0,
             chunk_start int,
             chunk_end int,
             primary key (%I, chunk))',
        vectorize._embeddings_table(p_job_name, p_generation), p_primary_key, p_pk_type, p_dimension, p_primary_key);
    -- Vectors inline, not TOASTed out of line beside a long tsvector (migration 0012 says why).
    execute format('alter table %s alter column embedding set storage main', vectorize._embeddings_table(p_job_name, p_generation));
    perform vectorize._install_tally(vectorize._embeddings_table(p_job_name, p_generation)::regclass);
    if p_indexes then
        perform vectorize._index_embeddings_table(p_job_name, p_generation, p_primary_key);
    end if;
end $$;

-- Its search indexes (built after a bulk copy, when there is one: faster than row by row).
-- The HNSW parameters are the job's when its row is visible (a new job's trigger runs before
-- that: pgvector's defaults, then vectorize.hnsw_rebuilds() brings them in line).
create or replace function vectorize._index_embeddings_table(p_job_name text, p_generation int, p_primary_key text)
returns void language plpgsql as $$
declare
    v_emb  text := vectorize._embeddings_table(p_job_name, p_generation);
    v_base text := vectorize._embeddings_name(p_job_name, p_generation);
    v_m    int;
    v_ef   int;
begin
    select j.hnsw_m, j.hnsw_ef_construction into v_m, v_ef from vectorize.job j where j.job_name = p_job_name;
    -- Finds the rows that have more than one chunk (search looks further only where there are).
    execute format('create index %I on %s (%I) where chunk > 0', v_base || '_chunked', v_emb, p_primary_key);
    -- Parameters are written out only when the job sets them, so an index with pgvector's
    -- defaults reads the same whether it was built by this release or an older one.
    execute format('create index %I on %s using hnsw (embedding @extschema:vector@.vector_cosine_ops)%s', v_base || '_hnsw', v_emb,
                   case when v_m is not null or v_ef is not null
                        then format(' with (m = %s, ef_construction = %s)', coalesce(v_m, 16), coalesce(v_ef, 64)) else '' end);
    -- A short pending list (128 kB, not 4 MB): every full-text search reads the whole list, and
    -- at 95 pages it was 1.1 ms of a 1.7 ms search; inserts pay ~0.05 ms a row (see 0013).
    execute format('create index %I on %s using gin (fts) with (gin_pending_list_limit = 128)', v_base || '_fts', v_emb);
end $$;

-- Builds a job's objects. A new job (INSERT) gets its embeddings table and indexes first, O(1)
-- in the source's size: nothing is scanned. Then, and after a redefinition, a switch or a dropped
-- generation (UPDATE that clears objects_version), the regenerable ones: the capture function (it
-- writes every generation) and the view (it shows the serving one). A dry run builds nothing.
create or replace function vectorize._build_job_objects() returns trigger
language plpgsql security definer as $$
begin
    if current_setting('vectorize.dry_run', true) = 'on' then
        return null;
    end if;
    if tg_op = 'INSERT' then
        perform vectorize._create_embeddings_table(new.job_name, 1, new.primary_key, vectorize._pk_type(new), new.dimension, true);
    end if;
    perform vectorize._install_job_objects(new);
    perform pg_notify('vectorize', new.id::text);
    return null;
end $$;

-- Deleting the job row removes everything the job built, every generation included; the
-- capture triggers depend on the capture function, so CASCADE takes them off the source too.
-- SECURITY DEFINER, like vectorize._build_job_objects: a role granted DELETE on vectorize.job owns
-- nothing of what the job built.
create or replace function vectorize._drop_job_objects() returns trigger
language plpgsql security definer as $$
begin
    execute format('drop view if exists vectorize.%I', old.job_name || '_view');
    execute format('drop function if exists vectorize.%I() cascade', '_capture_' || old.job_name);
    perform vectorize._drop_spare(old);
    execute format('drop table if exists %s', vectorize._embeddings_table(old.job_name, old.generation));
    delete from vectorize.queue where job_id = old.id;
    delete from vectorize.failure where job_id = old.id;
    return null;
end $$;

-- The triggers on vectorize.job that make a plain INSERT/UPDATE/DELETE from psql behave like the API.
do $$
declare
    t record;
begin
    for t in select * from (values
        ('validate_job', 'before insert', '_validate_job'),
        ('invoker_noted', 'before update', '_note_invoker'),  -- fires before redefine_job (name order)
        ('redefine_job', 'before update', '_redefine_job'),
        ('create_job_objects', 'after insert', '_build_job_objects'),
        ('reinstall_job_objects', 'after update', '_build_job_objects'),
        ('drop_job_objects', 'after delete', '_drop_job_objects')) as v(name, timing, fn)
    loop
        execute format('drop trigger if exists %I on vectorize.job', t.name);
        execute format('create trigger %I %s on vectorize.job for each row %s execute function vectorize.%I()',
                       t.name, t.timing,
                       case when t.name = 'reinstall_job_objects' then 'when (new.objects_version is null and new.status = ''active'')' else '' end,
                       t.fn);
    end loop;
end $$;
-- The trigger functions that run with vectorize's rights are fired by the triggers above (which
-- need no EXECUTE); nobody may attach them to a table of their own.
revoke execute on function vectorize._redefine_job(), vectorize._build_job_objects(), vectorize._drop_job_objects() from public;

-- The API's entry point: insert through the same trigger and return the id,
-- also when an identical job already existed (the trigger skipped the insert).
create or replace function vectorize.create_job(
    p_job_name text, p_src_schema text, p_src_table text, p_src_columns text[],
    p_primary_key text, p_update_time_col text, p_model text,
    p_chunking boolean default true, p_chunk_tokens int default null, p_chunk_overlap int default 32,
    p_language text default 'english')
returns uuid language plpgsql as $$
declare
    v_id uuid;
begin
    insert into vectorize.job (job_name, src_schema, src_table, src_columns, primary_key, update_time_col, model,
                               chunking, chunk_tokens, chunk_overlap, language)
    values (p_job_name, p_src_schema, p_src_table, p_src_columns, p_primary_key, p_update_time_col, p_model,
            p_chunking, p_chunk_tokens, p_chunk_overlap, p_language)
    returning id into v_id;
    if v_id is null then
        select j.id into v_id from vectorize.job j where j.job_name = p_job_name;
    end if;
    return v_id;
end $$;
