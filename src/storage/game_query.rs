//! `GET /api/games` as one statement: its filters ([`GameQuery`]), sort orders, keyset
//! cursors and pages, written once for sqlx and for SQLite's direct reads
//! ([`QuerySink`]).

use super::StoreError;
use super::cursor::{self, Position};
use super::rows::GAME_COLUMNS;
use crate::domain::{Game, ProcessingStatus};
use serde::Serialize;
use sqlx::{Database, Encode, QueryBuilder, Type};

/// Sort orders of `GET /api/games`; `-` means descending. The original sorted by title.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GameSort {
    #[default]
    Title,
    TitleDesc,
    ReleaseYear,
    ReleaseYearDesc,
    CreatedAt,
    CreatedAtDesc,
}

impl GameSort {
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "title" => Self::Title,
            "-title" => Self::TitleDesc,
            "releaseYear" => Self::ReleaseYear,
            "-releaseYear" => Self::ReleaseYearDesc,
            "createdAt" => Self::CreatedAt,
            "-createdAt" => Self::CreatedAtDesc,
            _ => return None,
        })
    }

    pub const NAMES: &'static str =
        "title, -title, releaseYear, -releaseYear, createdAt, -createdAt";
}

/// Filters of `GET /api/games`, already validated.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GameQuery {
    /// Substring of the title or the developer, case-insensitive.
    pub search: Option<String>,
    pub platform_id: Option<i64>,
    pub genre_id: Option<i64>,
    pub year_category: Option<String>,
    pub status: Option<ProcessingStatus>,
    pub sort: GameSort,
    /// `None`: every matching game, as the original answered.
    pub page: Option<PageRequest>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageRequest {
    /// 1..=[`PageRequest::MAX_LIMIT`].
    pub limit: u32,
    /// Opaque, from a previous page's `nextCursor`; keyset pagination, so deep pages
    /// cost the same as the first.
    pub cursor: Option<String>,
}

impl PageRequest {
    pub const DEFAULT_LIMIT: u32 = 50;
    pub const MAX_LIMIT: u32 = 500;
}

#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GamePage {
    pub items: Vec<Game>,
    pub next_cursor: Option<String>,
}

/// SQLite's full-text tables of the games' titles and developers (FTS5), which
/// `?search=` reads instead of scanning every game with `LIKE`
/// ([`Dialect::FULL_TEXT`]).
///
/// [`Dialect::FULL_TEXT`]: super::sql::Dialect::FULL_TEXT
#[derive(Debug, Clone, Copy)]
pub struct FullText {
    /// Tokenized in trigrams: matches a term of three characters or more as a
    /// substring, ignoring case.
    pub trigrams: &'static str,
    /// Tokenized in words (`unicode61`): finds the games that hold a term's inner
    /// words, far fewer than those that share its trigrams in a large catalog.
    pub words: &'static str,
}

/// `GET /api/games` as one query, written to `sql`: filters, keyset position, order and
/// limit. `like` is the backend's case-insensitive `LIKE` (SQLite's `LIKE` already
/// ignores ASCII case); `full_text` names its full-text tables, if it has them.
pub(super) fn games_query<Q: QuerySink>(
    sql: &mut Q,
    query: &GameQuery,
    like: &str,
    full_text: Option<FullText>,
) -> Result<(), StoreError> {
    sql.push(GAME_COLUMNS).push(" WHERE 1 = 1");
    match (&query.search, full_text) {
        (Some(search), Some(FullText { trigrams, words })) if search.chars().count() >= 3 => {
            match words_query(search) {
                // The word index narrows a large catalog to far fewer games than
                // share the term's trigrams; `LIKE` keeps those that hold the term.
                Some(words_query) => {
                    sql.push(format_args!(
                        " AND g.id IN (SELECT rowid FROM {words} WHERE {words} MATCH "
                    ))
                    .push_text(words_query)
                    .push(")");
                    push_like(sql, like, search);
                }
                // A trigram index matches a phrase of three characters or more as a
                // substring, ignoring case; inside the phrase's quotes only a quote
                // is special.
                None => {
                    sql.push(format_args!(
                        " AND g.id IN (SELECT rowid FROM {trigrams} WHERE {trigrams} MATCH "
                    ))
                    .push_text(format!("\"{}\"", search.replace('"', "\"\"")))
                    .push(")");
                }
            }
        }
        (Some(search), _) => push_like(sql, like, search),
        (None, _) => {}
    }
    if let Some(id) = query.platform_id {
        sql.push(" AND g.platform_id = ").push_int(id);
    }
    if let Some(id) = query.genre_id {
        sql.push(" AND g.genre_id = ").push_int(id);
    }
    if let Some(decade) = &query.year_category {
        sql.push(" AND g.year_category = ")
            .push_text(decade.clone());
    }
    if let Some(status) = query.status {
        sql.push(" AND g.processing_status = ")
            .push_text(status.as_str().to_owned());
    }
    let sort = query.sort;
    let column = sort.column();
    let direction = if sort.descending() { "DESC" } else { "ASC" };
    if let Some(text) = query.page.as_ref().and_then(|p| p.cursor.as_deref()) {
        let position = cursor::decode(sort.name(), sort.by_title(), text)?;
        cursor::push_after(sql, column, sort.descending(), position);
    }
    sql.push(format_args!(
        " ORDER BY {column} {direction}, g.id {direction}"
    ));
    if let Some(page) = &query.page {
        // One row more than asked tells whether a next page exists. Written into the
        // statement, not bound: SQLite compiled the statement again on every run when
        // the limit was a parameter (13% of the server's time in a list-only load, by
        // perf). The value is a number we computed, and each page size is one statement
        // in the connection's cache.
        sql.push(format_args!(" LIMIT {}", i64::from(page.limit) + 1));
    }
    Ok(())
}

/// The `LIKE` pattern (with `ESCAPE '!'`) of the texts that hold `part` literally.
pub(super) fn holding(part: &str) -> String {
    // `!` escapes the wildcards: a backslash, the usual choice, starts an escape
    // sequence in MySQL's string literals, so `ESCAPE '\'` would not parse there.
    let escaped = part
        .replace('!', "!!")
        .replace('%', "!%")
        .replace('_', "!_");
    format!("%{escaped}%")
}

/// `AND (title LIKE '%search%' OR developer LIKE '%search%')`, with `search` literal.
fn push_like<Q: QuerySink>(sql: &mut Q, like: &str, search: &str) {
    let pattern = holding(search);
    sql.push(format_args!(" AND (g.title {like} "))
        .push_text(pattern.clone())
        .push(format_args!(" ESCAPE '!' OR g.developer {like} "))
        .push_text(pattern)
        .push(" ESCAPE '!')");
}

/// An FTS5 query of the words that every title or developer holding `search` holds,
/// for the word index (`unicode61`, which splits text at every ASCII character that
/// is not a letter or a digit). The words between two separators of `search` are
/// whole words of such a text, one after the other: "Crimson Dragon Saga II" gives
/// the phrase `"Dragon Saga"`. The first and the last piece may be parts of longer
/// words ("XCrimson", "IIx"); with a single inner word, the last piece, if it is long
/// enough to begin few words, joins the phrase as a prefix: "Radiant Labyrinth Saga"
/// gives `"Labyrinth Saga" *`. `None` (the trigram index answers) when that leaves
/// one word alone, which may be in a large share of the catalog, or when `search` is
/// not ASCII: SQLite's `LIKE`, which then decides, ignores the case of ASCII
/// letters only, where the trigram index folds every letter's.
fn words_query(search: &str) -> Option<String> {
    if !search.is_ascii() {
        return None;
    }
    let pieces: Vec<&str> = search.split(|c: char| !c.is_ascii_alphanumeric()).collect();
    let [_, inner @ .., last] = pieces.as_slice() else {
        return None;
    };
    // An empty piece: two separators in a row.
    let inner: Vec<&str> = inner.iter().copied().filter(|p| !p.is_empty()).collect();
    match inner.as_slice() {
        [] => None,
        [word] if last.len() >= 4 => Some(format!("\"{word} {last}\" *")),
        [_] => None,
        words => Some(format!("\"{}\"", words.join(" "))),
    }
}

/// Where [`games_query`] writes its statement: sqlx's `QueryBuilder`, or the SQL and
/// parameters of a direct read ([`super::direct`]).
pub(super) trait QuerySink {
    fn push(&mut self, sql: impl std::fmt::Display) -> &mut Self;
    fn push_int(&mut self, value: i64) -> &mut Self;
    fn push_text(&mut self, value: String) -> &mut Self;
}

impl<DB> QuerySink for QueryBuilder<DB>
where
    DB: Database,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> String: Encode<'t, DB> + Type<DB>,
{
    fn push(&mut self, sql: impl std::fmt::Display) -> &mut Self {
        QueryBuilder::push(self, sql)
    }
    fn push_int(&mut self, value: i64) -> &mut Self {
        self.push_bind(value)
    }
    fn push_text(&mut self, value: String) -> &mut Self {
        self.push_bind(value)
    }
}

/// The page of [`games_query`]'s rows, with the cursor of its last row when more follow.
pub(super) fn games_page(query: &GameQuery, mut items: Vec<Game>) -> GamePage {
    let next_cursor = match &query.page {
        Some(page) if items.len() > page.limit as usize => {
            items.truncate(page.limit as usize);
            let sort = query.sort;
            items
                .last()
                .map(|last| cursor::encode(sort.name(), sort.position(last)))
        }
        _ => None,
    };
    GamePage { items, next_cursor }
}

impl GameSort {
    fn column(self) -> &'static str {
        match self {
            Self::Title | Self::TitleDesc => "g.title",
            Self::ReleaseYear | Self::ReleaseYearDesc => "g.release_year",
            Self::CreatedAt | Self::CreatedAtDesc => "g.created_at",
        }
    }

    fn descending(self) -> bool {
        matches!(
            self,
            Self::TitleDesc | Self::ReleaseYearDesc | Self::CreatedAtDesc
        )
    }

    fn name(self) -> &'static str {
        match self {
            Self::Title => "title",
            Self::TitleDesc => "-title",
            Self::ReleaseYear => "releaseYear",
            Self::ReleaseYearDesc => "-releaseYear",
            Self::CreatedAt => "createdAt",
            Self::CreatedAtDesc => "-createdAt",
        }
    }

    fn by_title(self) -> bool {
        matches!(self, Self::Title | Self::TitleDesc)
    }

    /// Where `game` stands in this order, for the cursor of a page it ends.
    fn position(self, game: &Game) -> Position {
        match self {
            Self::Title | Self::TitleDesc => Position::Text(game.title.clone(), game.id),
            Self::ReleaseYear | Self::ReleaseYearDesc => {
                Position::Int(game.release_year.into(), game.id)
            }
            Self::CreatedAt | Self::CreatedAtDesc => {
                Position::Int(game.created_at.timestamp_millis(), game.id)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::words_query;

    #[test]
    fn a_words_query_holds_the_words_that_stand_whole_in_the_term() {
        for (search, query) in [
            ("Crimson Dragon Saga II", Some("\"Dragon Saga\"")),
            (
                "Lunar Phoenix Frontier Advance",
                Some("\"Phoenix Frontier\""),
            ),
            ("Mega Man: X-2 Turbo", Some("\"Man X 2\"")),
            // A separator at either end makes the word beside it whole.
            (" Dragon Saga ", Some("\"Dragon Saga\"")),
            // One inner word: the last word joins it as a prefix, if long enough.
            ("Radiant Labyrinth Saga", Some("\"Labyrinth Saga\" *")),
            ("Dragon Saga ", None),
            ("Crimson Dragon II", None),
            // No inner word: the trigram index answers.
            ("Super Mario", None),
            ("\"hi\"", None),
            ("a", None),
            ("", None),
            // `LIKE` would tell "É" from "é", where the trigram index does not.
            ("Café Dragon Saga II", None),
        ] {
            assert_eq!(words_query(search).as_deref(), query, "{search:?}");
        }
    }
}
