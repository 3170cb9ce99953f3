-- Every function of ours resolves names in pg_catalog only (then pg_temp, last, so a temporary
-- object never shadows a built-in): whoever calls it, with whatever search_path, a function or
-- operator that another role created in a schema on that path (public, on PostgreSQL 14, is
-- writable by every role) can never run inside ours with our rights. Our own objects are named
-- with their schema, pgvector's too (@extschema:vector@ in these files, see vectorize/queries.py).
-- Last of the function files, so it covers every function they created or replaced.
do $$
declare
    f regprocedure;
begin
    for f in select p.oid::regprocedure from pg_catalog.pg_proc p
              where p.pronamespace = 'vectorize'::pg_catalog.regnamespace
                and p.prokind = 'f'
                and not exists (select from pg_catalog.unnest(p.proconfig) c where c like 'search\_path=%') loop
        execute pg_catalog.format('alter function %s set search_path = pg_catalog, pg_temp', f);
    end loop;
end $$;
