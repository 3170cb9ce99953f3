-- Chunking: a long row is embedded as several chunks, each fitting the model's window.

-- A job's chunking settings. New jobs chunk by default; jobs that existed before keep
-- pg_vectorize's truncation (their stored embeddings were made that way).
alter table vectorize.job add column if not exists chunking boolean not null default true;
alter table vectorize.job add column if not exists chunk_tokens int;
alter table vectorize.job add column if not exists chunk_overlap int not null default 32;
update vectorize.job set chunking = false;

-- Each job's embeddings are keyed by (source key, chunk number), with the chunk's character
-- offsets in the row's text. The full-text vector stays on chunk 0 (it indexes the whole row).
do $$
declare
    j      vectorize.job;
    v_emb  regclass;
    v_pkey text;
begin
    for j in select * from vectorize.job loop
        v_emb := to_regclass(format('vectorize.%I', '_embeddings_' || j.job_name));
        continue when v_emb is null;
        execute format('alter table %s add column if not exists chunk int not null default 0,
                                       add column if not exists chunk_start int,
                                       add column if not exists chunk_end int', v_emb);
        select c.conname into v_pkey from pg_catalog.pg_constraint c where c.conrelid = v_emb and c.contype = 'p';
        execute format('alter table %s drop constraint %I', v_emb, v_pkey);
        execute format('alter table %s add constraint %I primary key (%I, chunk)', v_emb, v_pkey, j.primary_key);
        execute format('create index if not exists %I on %s (%I) where chunk > 0',
                       '_embeddings_' || j.job_name || '_chunked', v_emb, j.primary_key);
    end loop;
end $$;

-- Re-created by sql/functions/ with the chunking arguments.
drop function if exists vectorize.create_job(text, text, text, text[], text, text, text);
drop function if exists vectorize.read_rows(uuid, text[]);
drop view if exists vectorize.job_status;
