-- The repository's size over time (the console's growth chart, GET /haven/v1/repository): a sample
-- when a service starts, then at most one an hour across the processes sharing the catalog, and one
-- after each garbage collection (services/repository-service.ts). Sizes in bytes, times in ms.
CREATE TABLE repository_samples (
  taken_at BIGINT NOT NULL,
  bytes BIGINT NOT NULL
);
CREATE INDEX repository_samples_taken ON repository_samples (taken_at);
