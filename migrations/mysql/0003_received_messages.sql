-- What the subscribers received: the audit log of domain events (subscriber `audit`,
-- and any other named subscriber of catalog.events) and the custom messages (`custom`).
-- One row per message per subscriber: a redelivery finds its row and adds nothing.
-- Key columns are VARCHAR: MySQL indexes no unbounded TEXT.
CREATE TABLE received_messages (
    id          BIGINT AUTO_INCREMENT PRIMARY KEY,
    subscriber  VARCHAR(50) NOT NULL,
    message_id  VARCHAR(255) NOT NULL,
    exchange    VARCHAR(255) NOT NULL,
    routing_key VARCHAR(255) NOT NULL,
    headers     TEXT NOT NULL,
    body        LONGBLOB NOT NULL,
    received_at BIGINT NOT NULL,
    CONSTRAINT received_messages_once UNIQUE (subscriber, message_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE INDEX received_messages_by_subscriber ON received_messages (subscriber, id);
