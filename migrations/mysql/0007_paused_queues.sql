-- Queues paused by an operator (`POST /api/queues/{name}/pause`, `retrocat queue
-- pause`): every worker of every process stops taking deliveries from a queue listed
-- here, and starts again once its row is gone. Kept here, it survives restarts.
-- The key is VARCHAR: MySQL indexes no unbounded TEXT.
CREATE TABLE paused_queues (
    queue     VARCHAR(255) PRIMARY KEY,
    paused_at BIGINT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
