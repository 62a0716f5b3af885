-- What the subscribers received: the audit log of domain events (subscriber `audit`,
-- and any other named subscriber of catalog.events) and the custom messages (`custom`).
-- One row per message per subscriber: a redelivery finds its row and adds nothing.
CREATE TABLE received_messages (
    id          INTEGER PRIMARY KEY,
    subscriber  TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    exchange    TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    headers     TEXT NOT NULL DEFAULT '{}',
    body        BLOB NOT NULL,
    received_at INTEGER NOT NULL,
    UNIQUE (subscriber, message_id)
);
CREATE INDEX received_messages_by_subscriber ON received_messages (subscriber, id);
