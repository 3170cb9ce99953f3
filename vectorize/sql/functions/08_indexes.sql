-- HNSW build parameters per job (job.hnsw_m, job.hnsw_ef_construction). A change is carried out
-- by the worker, outside any transaction, with the statements below: a new index is built
-- CONCURRENTLY beside the old one, which search keeps using until the new one is valid; then
-- the old one is dropped and the new one takes its name. A crash part-way leaves either the old
-- index (the next round starts over) or none under the usual name (likewise).

-- One integer storage parameter of an index (pg_class.reloptions holds 'name=value' strings).
create or replace function vectorize._reloption(p_options text[], p_name text, p_default int) returns int
language sql immutable as $$
    select coalesce((select split_part(o, '=', 2)::int from unnest(p_options) o where split_part(o, '=', 1) = p_name), p_default)
$$;

-- Every embeddings table whose HNSW index was built with other parameters than its job now
-- asks for, with the statements that rebuild it (to run one by one, outside a transaction).
create or replace function vectorize.hnsw_rebuilds()
returns table (job_name text, generation int, m int, ef_construction int, statements text[])
language plpgsql stable as $$
declare
    r         record;
    v_base    text;
    v_table   text;
    v_options text[];
begin
    for r in select j.job_name as name, gens.n, coalesce(j.hnsw_m, 16) as m, coalesce(j.hnsw_ef_construction, 64) as ef
               from vectorize.job j
               cross join lateral (select j.generation as n
                                   union all
                                   select g.generation from vectorize.generation g where g.job_id = j.id) gens
    loop
        v_base := vectorize._embeddings_name(r.name, r.n);
        v_table := vectorize._embeddings_table(r.name, r.n);
        continue when to_regclass(v_table) is null;
        select c.reloptions into v_options
          from pg_catalog.pg_class c join pg_catalog.pg_namespace ns on ns.oid = c.relnamespace
         where ns.nspname = 'vectorize' and c.relname = v_base || '_hnsw';
        continue when found and vectorize._reloption(v_options, 'm', 16) = r.m
                            and vectorize._reloption(v_options, 'ef_construction', 64) = r.ef;
        job_name := r.name;
        generation := r.n;
        m := r.m;
        ef_construction := r.ef;
        statements := array[
            format('drop index concurrently if exists vectorize.%I', v_base || '_hnsw_new'),
            format('create index concurrently %I on %s using hnsw (embedding @extschema:vector@.vector_cosine_ops) with (m = %s, ef_construction = %s)',
                   v_base || '_hnsw_new', v_table, r.m, r.ef),
            format('drop index concurrently if exists vectorize.%I', v_base || '_hnsw'),
            format('alter index vectorize.%I rename to %I', v_base || '_hnsw_new', v_base || '_hnsw')];
        return next;
    end loop;
end $$;
