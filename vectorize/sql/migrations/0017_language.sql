-- A job's full-text configuration ("language"): any text search configuration of the database,
-- for its stored tsvectors and its queries alike. english, as every job had it until now.
alter table vectorize.job add column if not exists language text not null default 'english';
alter table vectorize.generation add column if not exists language text not null default 'english';
-- Re-created by sql/functions/ with the language (a column, an argument, a result column).
drop view if exists vectorize.job_status;
drop function if exists vectorize.create_job(text, text, text, text[], text, text, text, boolean, int, int);
drop function if exists vectorize._text_query(text);
drop function if exists vectorize.read_rows(uuid, int, text[]);
