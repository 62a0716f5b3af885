-- Who may change the catalog: accounts with a role and an argon2id password hash, and
-- bearer tokens, stored as the SHA-256 of the secret (shown once, never stored).
-- A token is a machine's (`token`, named by `retrocat token create`) or a login's
-- (`session`, named by a random id and tied to its user).
CREATE TABLE users (
    name          TEXT PRIMARY KEY,
    role          TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at    INTEGER NOT NULL
);
CREATE TABLE tokens (
    digest     TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    name       TEXT NOT NULL,
    role       TEXT NOT NULL,
    username   TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    UNIQUE (kind, name)
);
CREATE INDEX tokens_by_user ON tokens (username);
