-- `GET /api/games?search=` with a term of several words. In a large catalog the
-- trigrams of a worded title ("Crimson Dragon Saga II": " Dr", "ago", "Sag"…) each
-- occur in tens of thousands of titles, and the trigram index reads and intersects
-- all of those lists: at a million games a search took 1–4 ms of SQLite's time
-- against 0.3 ms at a thousand. A term's inner words (those with a separator on each
-- side: "Dragon Saga") are whole words of every title that holds the term, and
-- together they occur in few: this index of words finds those titles, and `LIKE`
-- keeps the ones that hold the whole term (the API's `words_query` says which terms
-- it serves; the others still use the trigram index). External content, as
-- `games_search`: the search triggers now keep both indexes in step.
-- `columnsize = 0`: no table of each row's token counts, which only ranking reads.
CREATE VIRTUAL TABLE games_words USING fts5(
    title, developer, content = 'games', content_rowid = 'id',
    tokenize = 'unicode61 remove_diacritics 0', columnsize = 0
);
INSERT INTO games_words (games_words) VALUES ('rebuild');

DROP TRIGGER games_search_insert;
DROP TRIGGER games_search_delete;
DROP TRIGGER games_search_update;

CREATE TRIGGER games_search_insert AFTER INSERT ON games BEGIN
    INSERT INTO games_search (rowid, title, developer)
    VALUES (new.id, new.title, new.developer);
    INSERT INTO games_words (rowid, title, developer)
    VALUES (new.id, new.title, new.developer);
END;

CREATE TRIGGER games_search_delete AFTER DELETE ON games BEGIN
    INSERT INTO games_search (games_search, rowid, title, developer)
    VALUES ('delete', old.id, old.title, old.developer);
    INSERT INTO games_words (games_words, rowid, title, developer)
    VALUES ('delete', old.id, old.title, old.developer);
END;

CREATE TRIGGER games_search_update AFTER UPDATE OF title, developer ON games BEGIN
    INSERT INTO games_search (games_search, rowid, title, developer)
    VALUES ('delete', old.id, old.title, old.developer);
    INSERT INTO games_words (games_words, rowid, title, developer)
    VALUES ('delete', old.id, old.title, old.developer);
    INSERT INTO games_search (rowid, title, developer)
    VALUES (new.id, new.title, new.developer);
    INSERT INTO games_words (rowid, title, developer)
    VALUES (new.id, new.title, new.developer);
END;
