-- Dry runs: what a job definition would embed, without building anything.

-- The text a definition would embed for each row of its source: every row when the table has
-- at most p_exact_rows (exact = true), else a random sample of about p_sample_rows (Bernoulli
-- over the whole table, so every part of it is represented). total_rows is the source's size
-- by vectorize._row_count's rule.
create or replace function vectorize.definition_sample(
    p_src_schema text, p_src_table text, p_src_columns text[], p_exact_rows int, p_sample_rows int)
returns table (content text, total_rows bigint, total_estimated boolean, exact boolean)
language plpgsql stable as $$
declare
    j vectorize.job;
    v_percent float8;
begin
    j.src_schema := p_src_schema;
    j.src_table := p_src_table;
    j.src_columns := p_src_columns;
    j.src_relid := to_regclass(format('%I.%I', p_src_schema, p_src_table));
    select c.row_count, c.estimated into total_rows, total_estimated from vectorize._row_count(j.src_relid) c;
    exact := total_rows <= p_exact_rows;
    v_percent := case when exact then 100 else least(100, 100.0 * p_sample_rows / greatest(total_rows, 1)) end;
    return query execute format('select %s, $1, $2, $3 from %s s tablesample bernoulli ($4)',
                                vectorize._content_expr(j), vectorize._source(j))
        using total_rows, total_estimated, exact, v_percent;
end $$;
