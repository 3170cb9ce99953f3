-- Per-job HNSW build parameters (null: pgvector's defaults, m 16 and ef_construction 64). A change
-- rebuilds the job's HNSW indexes beside the old ones (CREATE INDEX CONCURRENTLY, by the worker),
-- so search keeps its index until the new one is ready.
alter table vectorize.job add column if not exists hnsw_m int;
alter table vectorize.job add column if not exists hnsw_ef_construction int;

-- Re-created by sql/functions/ with the HNSW columns.
drop view if exists vectorize.job_status;
