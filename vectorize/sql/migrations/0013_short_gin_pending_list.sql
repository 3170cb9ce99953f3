-- Keep the full-text indexes' pending lists short. GIN collects new entries in an unsorted
-- pending list (up to 4 MB by default) that every search reads in full: on 63k real rows it
-- held 95 pages after a backfill and took 1.1 ms of a 1.7 ms full-text search. 128 kB (at most
-- 16 pages) costs inserts ~0.05 ms a row, against ~5 ms to embed one; the list is emptied now.
do $$
declare
    r record;
begin
    for r in select i.indexrelid::regclass as idx
               from pg_catalog.pg_index i
               join pg_catalog.pg_class c on c.oid = i.indexrelid
               join pg_catalog.pg_namespace n on n.oid = c.relnamespace
               join pg_catalog.pg_am am on am.oid = c.relam
              where n.nspname = 'vectorize' and am.amname = 'gin' and c.relname like '\_embeddings\_%' loop
        execute format('alter index %s set (gin_pending_list_limit = 128)', r.idx);
        perform gin_clean_pending_list(r.idx);
    end loop;
end $$;
