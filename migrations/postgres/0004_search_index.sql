-- `GET /api/games?search=` finds its term anywhere in a title or developer (ILIKE
-- '%term%'), which no B-tree index serves: at a million games every search read every
-- row. Trigram GIN indexes serve ILIKE with leading wildcards. pg_trgm ships with
-- PostgreSQL and is a trusted extension: a database owner may create it.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX games_title_trigrams ON games USING gin (title gin_trgm_ops);
CREATE INDEX games_developer_trigrams ON games USING gin (developer gin_trgm_ops);
