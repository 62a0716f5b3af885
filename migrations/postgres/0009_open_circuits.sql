-- Cover hosts whose circuit breaker holds fetches back in some worker (open or
-- half-open), as each worker process last reported them: `GET /api/queues` shows them.
-- A worker replaces its rows once a second while it has a breaker open; rows older than
-- a few seconds are stale (the worker closed its breakers, or stopped).
CREATE TABLE open_circuits (
    worker      TEXT NOT NULL,
    target      TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('open', 'half-open')),
    until_at    BIGINT NOT NULL,
    reported_at BIGINT NOT NULL,
    PRIMARY KEY (worker, target)
);
