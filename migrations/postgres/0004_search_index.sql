-- `GET /api/games?search=` finds its term anywhere in a title or developer: ILIKE
-- '%term%', which no B-tree index can serve, so at a million games every search read
-- every row. pg_trgm's GIN indexes serve ILIKE directly for a term of three characters
-- or more (shorter ones still scan). pg_trgm ships with PostgreSQL and is a trusted
-- extension since PostgreSQL 13: the owner of the database may create it.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX games_title_trigrams ON games USING gin (title gin_trgm_ops);
CREATE INDEX games_developer_trigrams ON games USING gin (developer gin_trgm_ops);
