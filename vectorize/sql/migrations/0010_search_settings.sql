-- Search at scale: per-job search settings, and vectorize.search() with more arguments.

-- The columns search may ever return for this job (null: every column of the source row), so
-- a table with e-mail addresses or notes does not read them all out through the API; enforced
-- inside vectorize.search(), so SQL callers obey it too.
alter table vectorize.job add column if not exists return_columns text[];
-- The job's default HNSW ef_search (null: the installation's default); a search may override it.
alter table vectorize.job add column if not exists ef_search int;

-- Re-created by sql/functions/ with return_columns and ef_search arguments.
drop function if exists vectorize.search(text, @extschema:vector@.vector, int, jsonb, text, float8, float8, float8, int);
drop view if exists vectorize.job_status;
