-- Row counts of the embeddings tables, kept as they change instead of counted per request:
-- a status call on a job of 10⁷ rows read every row two or three times (seconds). Statement
-- triggers on each embeddings table append one row of deltas per write (no row is updated, so
-- concurrent batches never wait on each other); housekeeping folds old deltas into one row.
-- The triggers and first counts of existing tables are installed by vectorize._install_tally.
create table vectorize.row_tally (
    relid        oid not null,           -- the embeddings table
    row_count    bigint not null,        -- delta of its rows (chunk 0)
    checked_rows bigint not null,        -- delta of its rows whose text is checked (not '-infinity')
    written      bigint not null,        -- rows written by the statement (embedded or re-embedded)
    at           timestamptz not null default now()
);
create index row_tally_relid on vectorize.row_tally (relid, at);
