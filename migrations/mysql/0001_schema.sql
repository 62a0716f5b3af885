-- The catalog on MySQL 8 and MariaDB 10.6+: the same tables and column meanings as on
-- SQLite and PostgreSQL, so the same queries and row mapping serve all three.
-- Timestamps are BIGINT milliseconds since the Unix epoch (UTC), as elsewhere.
--
-- Text is utf8mb4 with the utf8mb4_bin collation: byte order, as SQLite and PostgreSQL's
-- "C" sort, so pages come out in the same order on every backend, and names are unique
-- case-sensitively as there. (utf8mb4_bin pads: trailing spaces do not count when
-- comparing. The no-pad binary collations are named differently in MySQL and MariaDB.)
-- Search compares case-insensitively through an explicit COLLATE (see mysql.rs).
--
-- Written for both servers: foreign keys as table constraints (MySQL ignores a column's
-- REFERENCES), TEXT defaults as expressions (MySQL 8.0.13+ refuses literal ones), no
-- partial indexes. The constraint names are PostgreSQL's, which the code matches.
-- MySQL's DDL is not transactional: if this migration fails half-way, the tables it
-- created stay, and sqlx refuses to go on (the migration is recorded as failed) until
-- they are dropped by hand.

CREATE TABLE platforms (
    id           BIGINT AUTO_INCREMENT PRIMARY KEY,
    name         VARCHAR(50) NOT NULL,
    manufacturer VARCHAR(50),
    release_year INTEGER,
    CONSTRAINT platforms_name_key UNIQUE (name)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE genres (
    id          BIGINT AUTO_INCREMENT PRIMARY KEY,
    name        VARCHAR(50) NOT NULL,
    description TEXT,
    CONSTRAINT genres_name_key UNIQUE (name)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE games (
    id                BIGINT AUTO_INCREMENT PRIMARY KEY,
    title             VARCHAR(100) NOT NULL,
    platform_id       BIGINT NOT NULL,
    genre_id          BIGINT NOT NULL,
    developer         VARCHAR(100) NOT NULL,
    release_year      INTEGER NOT NULL,
    year_category     VARCHAR(10) NOT NULL,
    description       TEXT NOT NULL DEFAULT (''),
    image_url         VARCHAR(255),
    processing_status VARCHAR(10) NOT NULL DEFAULT 'pending',
    version           BIGINT NOT NULL DEFAULT 1,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    CONSTRAINT games_platform_id_fkey FOREIGN KEY (platform_id) REFERENCES platforms (id),
    CONSTRAINT games_genre_id_fkey FOREIGN KEY (genre_id) REFERENCES genres (id),
    CONSTRAINT games_processing_status_check
        CHECK (processing_status IN ('pending', 'processing', 'completed', 'failed'))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- One index per filter and per sort order of GET /api/games; the id breaks ties so
-- keyset pagination is exact. (The foreign keys use the platform and genre indexes.)
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
    game_id      BIGINT PRIMARY KEY,
    content_type TEXT NOT NULL,
    bytes        LONGBLOB NOT NULL,
    CONSTRAINT covers_game_id_fkey FOREIGN KEY (game_id) REFERENCES games (id)
        ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Derived data: written by processing, removed by processing of the delete event.
CREATE TABLE thumbnails (
    game_id BIGINT PRIMARY KEY,
    version BIGINT NOT NULL,
    png     LONGBLOB NOT NULL,
    width   BIGINT NOT NULL,
    height  BIGINT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Events committed with the write that caused them, waiting for the relay. One index
-- serves both the unsent rows in order (sent_at IS NULL, by id) and pruning (by sent_at).
CREATE TABLE outbox (
    id          BIGINT AUTO_INCREMENT PRIMARY KEY,
    exchange    TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    headers     TEXT NOT NULL DEFAULT ('{}'),
    body        LONGBLOB NOT NULL,
    created_at  BIGINT NOT NULL,
    sent_at     BIGINT
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE INDEX outbox_by_sent_at ON outbox (sent_at, id);

-- One row, locked by the relay whose turn it is to publish (see SqlStore::outbox_turn):
-- relays of several API instances take turns, so events keep their order.
CREATE TABLE outbox_relay (
    id INTEGER PRIMARY KEY,
    CONSTRAINT outbox_relay_one_row CHECK (id = 1)
) ENGINE = InnoDB;
INSERT INTO outbox_relay (id) VALUES (1);

-- Events whose processing is complete: a redelivery finds its id here and does nothing.
-- 768 characters: the longest utf8mb4 key InnoDB indexes (3,072 bytes).
CREATE TABLE inbox (
    event_id     VARCHAR(768) PRIMARY KEY,
    processed_at BIGINT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Every processing attempt, for the history and the tasks view; `worker` is the
-- worker that made it.
CREATE TABLE processing_attempts (
    id          BIGINT AUTO_INCREMENT PRIMARY KEY,
    event_id    TEXT NOT NULL,
    game_id     BIGINT NOT NULL,
    version     BIGINT NOT NULL,
    attempt     BIGINT NOT NULL,
    outcome     TEXT NOT NULL,
    error       TEXT,
    started_at  BIGINT NOT NULL,
    finished_at BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    worker      TEXT
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE INDEX processing_attempts_by_game ON processing_attempts (game_id, id);
