-- Run once by the PostgreSQL container on its first start (mounted into /docker-entrypoint-initdb.d
-- by compose.yaml), as the image's superuser: the daemon gets its own role, which is not a
-- superuser, with what it needs and no more (docs/security.md). Grant it SELECT and TRIGGER on
-- each table you embed: grant select, trigger on public.my_table to vectorize_daemon;
create extension if not exists vector;
create role vectorize_daemon login password 'vectorize_daemon';
create schema vectorize authorization vectorize_daemon;
grant connect on database vectorize to vectorize_daemon;
-- vectorize demo creates its example table in public.
grant usage, create on schema public to vectorize_daemon;
