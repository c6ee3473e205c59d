-- The API request that created a job (its x-openstack-request-id), carried by the job's log lines.
ALTER TABLE jobs ADD COLUMN request_id TEXT;
