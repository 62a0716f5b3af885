-- Who may change the catalog: accounts with a role and an argon2id password hash, and
-- bearer tokens, stored as the SHA-256 of the secret (shown once, never stored).
-- A token is a machine's (`token`, named by `retrocat token create`) or a login's
-- (`session`, named by a random id and tied to its user).
-- Key columns are VARCHAR: MySQL indexes no unbounded TEXT.
CREATE TABLE users (
    name          VARCHAR(64) PRIMARY KEY,
    role          VARCHAR(16) NOT NULL,
    password_hash VARCHAR(255) NOT NULL,
    created_at    BIGINT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE TABLE tokens (
    digest     CHAR(64) PRIMARY KEY,
    kind       VARCHAR(16) NOT NULL,
    name       VARCHAR(64) NOT NULL,
    role       VARCHAR(16) NOT NULL,
    username   VARCHAR(64),
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    CONSTRAINT tokens_named_once UNIQUE (kind, name)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE INDEX tokens_by_user ON tokens (username);
