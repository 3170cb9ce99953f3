-- Keep each embedding in its row. A 384-float vector (1.5 kB) plus the row's tsvector passes
-- PostgreSQL's 2 kB TOAST threshold, and pgvector's type is stored EXTERNAL: about half the
-- vectors of a real table had been moved out of line, so every exact distance (filtered search,
-- a row's best chunk) read a second table through its index. MAIN keeps a vector inline unless
-- the row could not fit on a page otherwise (vectors of several thousand dimensions still work).
-- Rows written from now on are inline; older ones move as they are re-embedded.
do $$
declare
    r record;
begin
    for r in select c.oid::regclass as tbl
               from pg_catalog.pg_class c
               join pg_catalog.pg_namespace n on n.oid = c.relnamespace
               join pg_catalog.pg_attribute a on a.attrelid = c.oid and a.attname = 'embedding' and not a.attisdropped
              where n.nspname = 'vectorize' and c.relkind = 'r' and c.relname like '\_embeddings\_%' loop
        execute format('alter table %s alter column embedding set storage main', r.tbl);
    end loop;
end $$;
