-- Application roles that create jobs (INSERT INTO vectorize.job) read the models a job may name:
-- the job trigger checks the definition with their rights. The list holds nothing secret.
grant select on vectorize.model to public;
-- _check_definition takes the role it checks for (see vectorize._redefine_job).
drop function if exists vectorize._check_definition(vectorize.job);
-- _is_daemon takes the role it asks about.
drop function if exists vectorize._is_daemon();
