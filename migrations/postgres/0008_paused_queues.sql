-- Queues paused by an operator (`POST /api/queues/{name}/pause`, `retrocat queue
-- pause`): every worker of every process stops taking deliveries from a queue listed
-- here, and starts again once its row is gone. Kept here, it survives restarts.
CREATE TABLE paused_queues (
    queue     TEXT PRIMARY KEY,
    paused_at BIGINT NOT NULL
);
