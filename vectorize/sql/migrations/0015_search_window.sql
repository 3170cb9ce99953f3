-- vectorize.search() takes window_size (pg_vectorize's: each half's candidates before fusion) as a
-- last argument; the signature without it goes, or calls that leave it out would match both.
drop function if exists vectorize.search(text, @extschema:vector@.vector, int, jsonb, text, float8, float8, float8, int, text[], int);
