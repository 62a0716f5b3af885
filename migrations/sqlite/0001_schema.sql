-- The catalog: the original system's tables, plus a version per game and what
-- processing needs (covers, thumbnails, attempts), the outbox and the inbox.
-- Timestamps are integer milliseconds since the Unix epoch (UTC): portable, compact,
-- and ordered as numbers.

CREATE TABLE platforms (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    name         VARCHAR(50) NOT NULL UNIQUE,
    manufacturer VARCHAR(50),
    release_year INTEGER
);

CREATE TABLE genres (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        VARCHAR(50) NOT NULL UNIQUE,
    description TEXT
);

CREATE TABLE games (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    title             VARCHAR(100) NOT NULL,
    platform_id       INTEGER NOT NULL REFERENCES platforms (id),
    genre_id          INTEGER NOT NULL REFERENCES genres (id),
    developer         VARCHAR(100) NOT NULL,
    release_year      INTEGER NOT NULL,
    year_category     VARCHAR(10) NOT NULL,
    description       TEXT NOT NULL DEFAULT '',
    image_url         VARCHAR(255),
    processing_status VARCHAR(10) NOT NULL DEFAULT 'pending'
        CHECK (processing_status IN ('pending', 'processing', 'completed', 'failed')),
    version           INTEGER NOT NULL DEFAULT 1,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
);

-- One index per filter and per sort order of GET /api/games; the id breaks ties so
-- keyset pagination is exact.
CREATE INDEX games_by_title ON games (title, id);
CREATE INDEX games_by_release_year ON games (release_year, id);
CREATE INDEX games_by_created_at ON games (created_at, id);
CREATE INDEX games_by_updated_at ON games (updated_at, id);
CREATE INDEX games_by_platform ON games (platform_id);
CREATE INDEX games_by_genre ON games (genre_id);
CREATE INDEX games_by_year_category ON games (year_category);
CREATE INDEX games_by_status ON games (processing_status, created_at);

-- Uploaded covers: source data, deleted with their game.
CREATE TABLE covers (
    game_id      INTEGER PRIMARY KEY REFERENCES games (id) ON DELETE CASCADE,
    content_type TEXT NOT NULL,
    bytes        BLOB NOT NULL
);

-- Derived data: written by processing, removed by processing of the delete event.
CREATE TABLE thumbnails (
    game_id INTEGER PRIMARY KEY,
    version INTEGER NOT NULL,
    png     BLOB NOT NULL,
    width   INTEGER NOT NULL,
    height  INTEGER NOT NULL
);

-- Events committed with the write that caused them, waiting for the relay.
CREATE TABLE outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    exchange    TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    headers     TEXT NOT NULL DEFAULT '{}',
    body        BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    sent_at     INTEGER
);
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;

-- Events whose processing is complete: a redelivery finds its id here and does nothing.
CREATE TABLE inbox (
    event_id     TEXT PRIMARY KEY,
    processed_at INTEGER NOT NULL
);

-- Every processing attempt, for the history and the tasks view.
CREATE TABLE processing_attempts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT NOT NULL,
    game_id     INTEGER NOT NULL,
    version     INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    outcome     TEXT NOT NULL,
    error       TEXT,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL
);
CREATE INDEX processing_attempts_by_game ON processing_attempts (game_id, id);
