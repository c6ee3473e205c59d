-- GET /haven/v1/jobs lists jobs newest first, a page at a time after a marker (created_at, id): the
-- cloud admin's list of every project's jobs reads this index instead of sorting the whole table;
-- a project's list reads jobs_project (project_id, created_at).
CREATE INDEX jobs_created ON jobs (created_at, id);
