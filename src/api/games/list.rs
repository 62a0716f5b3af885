//! The query of `GET /api/games`: the original's filters, `status`, `sort` and
//! pagination, validated into a [`GameQuery`] and documented by the same type.

use crate::api::error::ApiError;
use crate::api::openapi::{blank_or, query_param};
use crate::domain::text::{MAX_SEARCH_CHARS, ONE_LINE_PATTERN, check_search};
use crate::domain::{Game, ProcessingStatus};
use crate::storage::{GameBatches, GamePage, GameQuery, GameSort, PageRequest};
use axum::body::{Body, Bytes};
use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use futures::future::ready;
use futures::stream;
use utoipa::openapi::path::{Parameter, ParameterIn};
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{IntoParams, PartialSchema, ToSchema};

/// The answer of `GET /api/games`: without pagination, every game in one JSON array,
/// written batch by batch as the database reads them; with it, a page.
pub(super) enum GameList {
    All(Body),
    Page(GamePage),
}

impl GameList {
    /// Every game of `batches`, as an array. A failure before the first batch is the
    /// answer's (a 503, say); after it, the body ends early, so that the client sees a
    /// read cut short and never a short list.
    pub(super) async fn all(mut batches: GameBatches) -> Result<Self, ApiError> {
        let first = batches.next().await.transpose()?.unwrap_or_default();
        let head = elements(b"[", &first);
        let rest = stream::unfold(batches, |mut batches| async move {
            let chunk = match batches.next().await? {
                Ok(games) => Ok(elements(b",", &games)),
                Err(error) => {
                    tracing::warn!(%error, "a list of games ended early");
                    Err(std::io::Error::other(error))
                }
            };
            Some((chunk, batches))
        });
        let end = stream::once(ready(Ok(Bytes::from_static(b"]"))));
        let body = stream::once(ready(Ok(head))).chain(rest).chain(end);
        Ok(Self::All(Body::from_stream(body)))
    }
}

/// `games` as the elements of a JSON array, after `lead`.
fn elements(lead: &[u8], games: &[Game]) -> Bytes {
    let mut json = Vec::with_capacity(lead.len() + games.len() * 512);
    json.extend_from_slice(lead);
    for (index, game) in games.iter().enumerate() {
        if index > 0 {
            json.push(b',');
        }
        serde_json::to_writer(&mut json, game).expect("a game serializes");
    }
    Bytes::from(json)
}

impl IntoResponse for GameList {
    fn into_response(self) -> Response {
        match self {
            Self::All(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
            Self::Page(page) => axum::Json(page).into_response(),
        }
    }
}

/// An array of games, or a page.
impl PartialSchema for GameList {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(ArrayBuilder::new().items(Ref::from_schema_name(Game::name())))
            .item(Ref::from_schema_name(GamePage::name()))
            .into()
    }
}

impl ToSchema for GameList {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((Game::name().into(), Game::schema()));
        <Game as ToSchema>::schemas(schemas);
        schemas.push((GamePage::name().into(), GamePage::schema()));
        <GamePage as ToSchema>::schemas(schemas);
    }
}

/// The filters of `GET /api/games`, validated.
pub(super) struct ListQuery(pub(super) GameQuery);

impl<S: Send + Sync> FromRequestParts<S> for ListQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parse_list_query(parts.uri.query().unwrap_or("")).map(Self)
    }
}

/// The parameters [`parse_list_query`] reads. A blank value is as if it were absent.
impl IntoParams for ListQuery {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let text = |max: usize| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(max))
        };
        let pattern = |pattern: &str| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(pattern))
        };
        let integer = |minimum: i64, maximum: i64| {
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(minimum))
                .maximum(Some(maximum))
        };
        let statuses = ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(ProcessingStatus::ALL.map(ProcessingStatus::as_str)));
        let max_limit = PageRequest::MAX_LIMIT.into();
        vec![
            query_param(
                "search",
                "A substring of the title or the developer, case-insensitive",
                text(MAX_SEARCH_CHARS)
                    .pattern(Some(ONE_LINE_PATTERN))
                    .into(),
            ),
            query_param(
                "platformId",
                "Games of this platform",
                blank_or(integer(1, i64::MAX)),
            ),
            query_param(
                "genreId",
                "Games of this genre",
                blank_or(integer(1, i64::MAX)),
            ),
            query_param(
                "yearCategory",
                "Games of this decade, such as `1980s`",
                blank_or(pattern(r"^-?[0-9]*0s$")),
            ),
            query_param(
                "status",
                "Games at this processing status",
                blank_or(statuses),
            ),
            query_param(
                "sort",
                "`title` (the default), `releaseYear` or `createdAt`; a leading `-` reverses",
                blank_or(pattern(r"^-?(title|releaseYear|createdAt)$")),
            ),
            query_param(
                "limit",
                "A page of at most this many games (50 by default)",
                blank_or(integer(1, max_limit)),
            ),
            query_param(
                "cursor",
                "The previous page's `nextCursor`",
                ObjectBuilder::new().schema_type(Type::String).into(),
            ),
        ]
    }
}

pub(super) fn parse_list_query(raw: &str) -> Result<GameQuery, ApiError> {
    let mut query = GameQuery::default();
    let mut limit = None;
    let mut cursor = None;
    for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        match key.as_ref() {
            "search" => {
                check_search(value).map_err(|reason| ApiError::bad_field("search", reason))?;
                query.search = Some(value.to_owned());
            }
            "platformId" => query.platform_id = Some(query_id("platformId", value)?),
            "genreId" => query.genre_id = Some(query_id("genreId", value)?),
            "yearCategory" => {
                let decade = value
                    .strip_suffix('s')
                    .and_then(|year| year.parse::<i32>().ok())
                    .filter(|year| year % 10 == 0);
                if decade.is_none() {
                    return Err(ApiError::bad_field(
                        "yearCategory",
                        "must be a decade such as 1980s",
                    ));
                }
                query.year_category = Some(value.to_owned());
            }
            "status" => {
                query.status = Some(ProcessingStatus::parse(value).ok_or_else(|| {
                    ApiError::bad_field(
                        "status",
                        "must be one of pending, processing, completed, failed",
                    )
                })?)
            }
            "sort" => {
                query.sort = GameSort::parse(value).ok_or_else(|| {
                    ApiError::bad_field("sort", format!("must be one of {}", GameSort::NAMES))
                })?
            }
            "limit" => {
                let max = PageRequest::MAX_LIMIT;
                limit = Some(
                    value
                        .parse::<u32>()
                        .ok()
                        .filter(|n| (1..=max).contains(n))
                        .ok_or_else(|| {
                            ApiError::bad_field("limit", format!("must be between 1 and {max}"))
                        })?,
                );
            }
            "cursor" => cursor = Some(value.to_owned()),
            // Unknown parameters are ignored, as the original did (cache busters…).
            _ => {}
        }
    }
    if limit.is_some() || cursor.is_some() {
        query.page = Some(PageRequest {
            limit: limit.unwrap_or(PageRequest::DEFAULT_LIMIT),
            cursor,
        });
    }
    Ok(query)
}

fn query_id(field: &'static str, value: &str) -> Result<i64, ApiError> {
    value
        .parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::bad_field(field, "must be a positive integer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_query_without_paging_is_a_plain_list() {
        let query = parse_list_query("search=mario&platformId=2&yearCategory=1980s").unwrap();
        assert_eq!(query.search.as_deref(), Some("mario"));
        assert_eq!(query.platform_id, Some(2));
        assert_eq!(query.page, None);
    }

    #[test]
    fn list_query_refuses_bad_values_naming_them() {
        for (raw, field) in [
            ("platformId=abc", "platformId"),
            ("genreId=-1", "genreId"),
            ("yearCategory=eighties", "yearCategory"),
            ("status=done", "status"),
            ("sort=rating", "sort"),
            ("limit=0", "limit"),
            ("limit=100000", "limit"),
            ("search=mario%00", "search"),
            ("search=a%1B%5B2Jb", "search"),
        ] {
            match parse_list_query(raw) {
                Err(ApiError::BadRequest { errors, .. }) => assert_eq!(errors[0].field, field),
                other => panic!("{raw}: expected a 400, got {other:?}"),
            }
        }
    }

    mod properties {
        use super::*;
        use crate::hostile::{
            self, encode_query, last_value, nasty_char, nasty_string, query_pairs,
        };
        use proptest::prelude::*;

        const PARAMETERS: &[&str] = &[
            "search",
            "platformId",
            "genreId",
            "yearCategory",
            "status",
            "sort",
            "limit",
            "cursor",
        ];

        fn value() -> impl Strategy<Value = String> {
            prop_oneof![
                3 => nasty_string(),
                1 => prop::sample::select(&[
                    "pending", "failed", "title", "-title", "releaseYear", "-createdAt",
                    "1980s", "-10s", "0s", "1985s", "mario", "1", "500", "501",
                ][..])
                .prop_map(str::to_owned),
            ]
        }

        /// What an accepted query must hold: each parameter's last non-blank value,
        /// within the bounds `/openapi.json` documents.
        fn check_accepted(
            query: &GameQuery,
            pairs: &[(String, String)],
        ) -> Result<(), TestCaseError> {
            let last = |key| last_value(pairs, key);
            prop_assert_eq!(query.search.as_deref(), last("search"));
            if let Some(search) = &query.search {
                prop_assert!(search.chars().count() <= 100);
                prop_assert!(!search.chars().any(char::is_control));
            }
            let id = |key| last(key).map(|value| value.parse::<i64>().unwrap());
            prop_assert_eq!(query.platform_id, id("platformId"));
            prop_assert_eq!(query.genre_id, id("genreId"));
            prop_assert!(query.platform_id.is_none_or(|id| id >= 1));
            prop_assert!(query.genre_id.is_none_or(|id| id >= 1));
            prop_assert_eq!(query.year_category.as_deref(), last("yearCategory"));
            if let Some(decade) = &query.year_category {
                let year: i32 = decade.strip_suffix('s').unwrap().parse().unwrap();
                prop_assert_eq!(year % 10, 0);
            }
            prop_assert_eq!(
                query.status,
                last("status").and_then(ProcessingStatus::parse)
            );
            match &query.page {
                None => prop_assert!(last("limit").is_none() && last("cursor").is_none()),
                Some(page) => {
                    prop_assert!((1..=PageRequest::MAX_LIMIT).contains(&page.limit));
                    prop_assert_eq!(page.cursor.as_deref(), last("cursor"));
                }
            }
            Ok(())
        }

        /// A refusal is a 400 naming one parameter the query holds.
        fn check_refused(error: ApiError, pairs: &[(String, String)]) -> Result<(), TestCaseError> {
            let ApiError::BadRequest { errors, .. } = error else {
                return Err(TestCaseError::fail(format!("not a 400: {error:?}")));
            };
            prop_assert_eq!(errors.len(), 1);
            let field = errors[0].field.as_str();
            prop_assert!(PARAMETERS.contains(&field), "{field}");
            prop_assert!(last_value(pairs, field).is_some(), "{field} was not sent");
            Ok(())
        }

        proptest! {
            #![proptest_config(hostile::config(1024))]

            #[test]
            fn a_query_is_within_bounds_or_refused_naming_the_field(
                pairs in query_pairs(PARAMETERS, value()),
            ) {
                match parse_list_query(&encode_query(&pairs)) {
                    Ok(query) => check_accepted(&query, &pairs)?,
                    Err(error) => check_refused(error, &pairs)?,
                }
            }

            /// Raw query strings, not percent-encoded as a browser would: stray `%`,
            /// `&` and `=`, and bytes that do not decode as UTF-8.
            #[test]
            fn a_raw_query_never_panics(
                raw in prop::collection::vec(nasty_char(), 0..64).prop_map(String::from_iter),
            ) {
                let pairs: Vec<(String, String)> = form_urlencoded::parse(raw.as_bytes())
                    .into_owned()
                    .collect();
                match parse_list_query(&raw) {
                    Ok(query) => check_accepted(&query, &pairs)?,
                    Err(error) => check_refused(error, &pairs)?,
                }
            }
        }
    }
}
