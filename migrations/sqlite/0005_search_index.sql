-- `GET /api/games?search=` finds its term anywhere in a title or developer. LIKE
-- '%term%' can use no ordinary index, so at a million games every search read every
-- row (2 s). A trigram full-text index finds the games that hold a substring of three
-- or more characters directly; the API falls back to LIKE for shorter terms.
-- External content: the index holds only trigrams, the text stays in `games`, and
-- these triggers keep the two in step (a status change does not touch the index).
CREATE VIRTUAL TABLE games_search USING fts5(
    title, developer, content = 'games', content_rowid = 'id', tokenize = 'trigram'
);
INSERT INTO games_search (games_search) VALUES ('rebuild');

CREATE TRIGGER games_search_insert AFTER INSERT ON games BEGIN
    INSERT INTO games_search (rowid, title, developer)
    VALUES (new.id, new.title, new.developer);
END;

CREATE TRIGGER games_search_delete AFTER DELETE ON games BEGIN
    INSERT INTO games_search (games_search, rowid, title, developer)
    VALUES ('delete', old.id, old.title, old.developer);
END;

CREATE TRIGGER games_search_update AFTER UPDATE OF title, developer ON games BEGIN
    INSERT INTO games_search (games_search, rowid, title, developer)
    VALUES ('delete', old.id, old.title, old.developer);
    INSERT INTO games_search (rowid, title, developer)
    VALUES (new.id, new.title, new.developer);
END;
