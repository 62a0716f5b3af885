-- Cover hosts whose circuit breaker holds fetches back in some worker (open or
-- half-open), as each worker process last reported them: `GET /api/queues` shows them.
-- A worker replaces its rows once a second while it has a breaker open; rows older than
-- a few seconds are stale (the worker closed its breakers, or stopped).
-- The keys are VARCHAR: MySQL indexes no unbounded TEXT.
CREATE TABLE open_circuits (
    worker      VARCHAR(255) NOT NULL,
    target      VARCHAR(300) NOT NULL,
    state       VARCHAR(16) NOT NULL CHECK (state IN ('open', 'half-open')),
    until_at    BIGINT NOT NULL,
    reported_at BIGINT NOT NULL,
    PRIMARY KEY (worker, target)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
