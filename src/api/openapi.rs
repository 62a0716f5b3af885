//! `GET /openapi.json`: the OpenAPI 3.1 document of the HTTP API.
//!
//! Every route is registered by utoipa-axum's `routes!` from its handler's
//! `#[utoipa::path]` declaration, which gives both the path the router serves and the
//! operation the document lists: the two cannot drift apart (`tests/openapi.rs` checks
//! the running server against the document, and runs schemathesis on it).
//!
//! Every error is answered as `application/problem+json`. A declaration names the
//! errors particular to its route (404: no such game); [`document`] gives each error
//! the `Problem` body, and adds those a route gives by its kind: 400, 413 and 415 where
//! it takes a body, 400 where it takes parameters, and under `/api/` 429 (past
//! `--rate-limit`), and 500 and 503, where it reaches the database or the broker.

use super::ApiContext;
use super::error::{FieldError, Problem};
use axum::http::header;
use axum::response::IntoResponse;
use std::sync::LazyLock;
use utoipa::OpenApi;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Ref, Schema, Type};
use utoipa::openapi::{Content, RefOr, Required, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "retrocat",
        description = "The Retro Gaming Catalog: games, their background processing, and \
                       the messages, queues and dead letters behind it."
    ),
    tags(
        (name = "games", description = "The catalog, and each game's processing"),
        (name = "reference", description = "Platforms and genres"),
        (name = "processing", description = "Where the catalog's processing stands"),
        (name = "messages", description = "Messages sent, and what subscribers received"),
        (name = "dead letters", description = "Messages that could not be processed"),
        (name = "queues", description = "The queues and the outbox"),
        (name = "operations", description = "Probes, metrics and this document"),
        (name = "auth", description = "Logging in, and who the caller is"),
    ),
    components(schemas(Problem, FieldError)),
    modifiers(&BearerScheme)
)]
struct Declared;

/// The `bearer` scheme that routes needing a role name: `Authorization: Bearer TOKEN`,
/// a token from `POST /api/auth/login` or `retrocat token create`.
struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let scheme = Http::builder()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "A token from POST /api/auth/login or `retrocat token create`. Routes \
                 that need one: `editor` for games and covers, `admin` for the rest",
            ))
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// What the routes do not declare: the API's title, tags and shared schemas.
pub(super) fn declared() -> utoipa::openapi::OpenApi {
    Declared::openapi()
}

pub(super) fn router() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new().routes(routes!(openapi_json))
}

/// This document
///
/// The OpenAPI 3.1 document of every route.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The document", body = Object)))]
async fn openapi_json() -> impl IntoResponse {
    static JSON: LazyLock<String> = LazyLock::new(|| {
        document()
            .to_json()
            .expect("an OpenAPI document always serializes")
    });
    ([(header::CONTENT_TYPE, "application/json")], JSON.as_str())
}

/// An optional query parameter.
pub(super) fn query_param(name: &str, description: &str, schema: Schema) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Query)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(schema))
        .build()
}

/// `schema`, or a blank value, which the API reads as the parameter's absence.
pub(super) fn blank_or(schema: impl Into<Schema>) -> Schema {
    let blank = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(r"^\s*$"));
    OneOfBuilder::new().item(schema.into()).item(blank).into()
}

/// The document of every route the API serves.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut document = super::routes().into_openapi();
    complete_errors(&mut document);
    document
}

/// Adds the errors each route gives by its kind, and gives every error its body.
fn complete_errors(document: &mut utoipa::openapi::OpenApi) {
    for (path, item) in document.paths.paths.iter_mut() {
        let operations = [
            (&mut item.get, false),
            (&mut item.put, true),
            (&mut item.post, true),
            (&mut item.delete, true),
        ];
        for (operation, changes) in operations {
            let Some(operation) = operation else {
                continue;
            };
            let takes_body = operation.request_body.is_some();
            let takes_parameters = operation
                .parameters
                .as_ref()
                .is_some_and(|parameters| !parameters.is_empty());
            let responses = &mut operation.responses.responses;
            let mut add = |status: &str, description: &str| {
                responses
                    .entry(status.to_owned())
                    .or_insert_with(|| Response::new(description).into());
            };
            if takes_body {
                add(
                    "400",
                    "The body is malformed: not JSON, or not of this shape",
                );
                add(
                    "413",
                    "The body is larger than the server takes (--max-body-bytes)",
                );
                add("415", "The body is not of the type this route takes");
            }
            if takes_parameters {
                add("400", "A parameter is malformed");
            }
            add(
                "421",
                "The Host header does not name this server: an IP address, localhost or \
                 a --public-url name",
            );
            if operation.security.is_some() {
                add(
                    "401",
                    "No token, or one unknown, expired or revoked. In protected mode a \
                     peer on loopback needs none while no account exists",
                );
                add(
                    "403",
                    "The token's role falls short of the route's; or, on a write, a \
                     browser page of another origin than this server's and \
                     --cors-origins' (cross-site request)",
                );
            }
            if changes {
                add(
                    "403",
                    "A browser page of another origin than this server's and \
                     --cors-origins' may not change anything (cross-site request)",
                );
            }
            if path.starts_with("/api/") {
                add(
                    "429",
                    "This client address made more requests than --rate-limit allows (when \
                     set): try again after Retry-After",
                );
                add("500", "The server failed to answer; the error was logged");
                add(
                    "503",
                    "The database or the broker cannot be reached: try again. On a \
                     catalog write also: the outbox backlog is past its limit \
                     (--max-outbox-backlog), try again after Retry-After",
                );
            }
            for (status, response) in responses.iter_mut() {
                let is_error = status.starts_with('4') || status.starts_with('5');
                if let (true, RefOr::T(response)) = (is_error, response)
                    && response.content.is_empty()
                {
                    let problem = Content::new(Some(Ref::from_schema_name("Problem")));
                    response
                        .content
                        .insert("application/problem+json".into(), problem.into());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::domain::text::{LINES_PATTERN, ONE_LINE_PATTERN};
    use serde_json::Value;

    /// Text fields spell out, as their `pattern`, the rule `domain::text` checks: a
    /// pattern written by hand on a field that said something else would fail here.
    #[test]
    fn text_fields_state_the_control_character_rule_as_checked() {
        fn patterns<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
            match value {
                Value::Object(map) => {
                    if let Some(Value::String(pattern)) = map.get("pattern") {
                        found.push(pattern);
                    }
                    map.values().for_each(|value| patterns(value, found));
                }
                Value::Array(values) => values.iter().for_each(|value| patterns(value, found)),
                _ => {}
            }
        }
        let document = serde_json::to_value(super::document()).unwrap();
        let mut found = Vec::new();
        patterns(&document, &mut found);
        let text: Vec<&str> = found
            .into_iter()
            .filter(|pattern| pattern.contains(r"\u0000"))
            .collect();
        assert!(text.len() >= 9, "every text field and search: {text:?}");
        for pattern in text {
            assert!(
                [ONE_LINE_PATTERN, LINES_PATTERN].contains(&pattern),
                "{pattern}"
            );
        }
    }
}
