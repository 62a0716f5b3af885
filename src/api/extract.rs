//! Extractors that turn every malformed input into our problem+json errors.
//!
//! axum's own rejections answer in plain text; these wrappers name the field at fault
//! (`platformId: invalid type: string "abc", expected an integer`) so a client, or the
//! UI's inline errors, can point at it.

use super::error::ApiError;
use crate::domain::number::whole;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use utoipa::openapi::Required;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};

/// A JSON body, decoded with the path of the offending field in errors.
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<mime_guess::Mime>().ok())
            .is_some_and(|mime| {
                mime.type_() == "application"
                    && (mime.subtype() == "json" || mime.suffix().is_some_and(|s| s == "json"))
            });
        if !is_json {
            return Err(ApiError::UnsupportedMediaType(
                "send the body as JSON with Content-Type: application/json".into(),
            ));
        }
        let body = body_bytes(request, state).await?;
        decode_json(&body).map(Json)
    }
}

/// Reads the whole body, mapping an over-limit body to 413.
pub async fn body_bytes<S: Send + Sync>(request: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(request, state)
        .await
        .map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::BadRequest {
                    detail: format!("cannot read the request body: {rejection}"),
                    errors: Vec::new(),
                }
            }
        })
}

/// Decodes JSON, naming the field at fault when the shape is wrong.
pub fn decode_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let deserializer = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let inner = error.inner();
        // serde_json calls a number where an enum's name belongs a syntax error
        // ("expected value"): only a body that does not parse at all is malformed.
        let malformed = (inner.is_syntax() || inner.is_eof())
            && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err();
        if malformed {
            return ApiError::BadRequest {
                detail: format!("body is not valid JSON: {inner}"),
                errors: Vec::new(),
            };
        }
        let path = error.path().to_string();
        let message = inner.to_string();
        let field = if path == "." {
            // Missing and unknown fields are reported at the parent: name them.
            quoted_name(&message).unwrap_or_default()
        } else {
            path
        };
        let reason = strip_position(&message);
        if field.is_empty() {
            ApiError::BadRequest {
                detail: format!("body has the wrong shape: {reason}"),
                errors: Vec::new(),
            }
        } else {
            ApiError::bad_field(field, reason)
        }
    })
}

/// `missing field `title`` → `title`.
fn quoted_name(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let end = start + message[start..].find('`')?;
    Some(message[start..end].to_owned())
}

/// serde_json appends " at line 1 column 42"; the field name says more.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(index) => message[..index].to_owned(),
        None => message.to_owned(),
    }
}

/// A positive numeric id from the path (`/api/games/{id}`).
pub struct Id(pub i64);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::bad_field("id", e.body_text()))?;
        // `5`, `+5`, `007`; and `5.0`, a whole number as JSON Schema counts it.
        let id = raw
            .parse::<i64>()
            .ok()
            .or_else(|| raw.parse().ok().as_ref().and_then(whole));
        match id {
            Some(id) if id > 0 => Ok(Id(id)),
            _ => Err(ApiError::bad_field(
                "id",
                format!("must be a positive integer, got {raw:?}"),
            )),
        }
    }
}

/// `{id}` in the document of every operation that takes an [`Id`].
impl utoipa::IntoParams for Id {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let positive = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(1));
        vec![
            ParameterBuilder::new()
                .name("id")
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .description(Some("The numeric id: a positive integer"))
                .schema(Some(positive))
                .build(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Body {
        title: String,
        platform_id: i64,
    }

    fn field_of(body: &str) -> Option<String> {
        match decode_json::<Body>(body.as_bytes()) {
            Err(ApiError::BadRequest { errors, .. }) => errors.first().map(|e| e.field.clone()),
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(field_of(r#"{"title":"x"}"#).as_deref(), Some("platformId"));
        assert_eq!(
            field_of(r#"{"title":1,"platformId":1}"#).as_deref(),
            Some("title")
        );
        assert_eq!(
            field_of(r#"{"title":"x","platformId":1,"bogus":2}"#).as_deref(),
            Some("bogus")
        );
        assert_eq!(field_of("{not json"), None);
    }

    /// Found by the property tests: serde_json reports a number for an enum as a
    /// syntax error, which was answered "not valid JSON", naming no field.
    #[test]
    fn a_number_for_a_name_is_the_fields_error_not_malformed_json() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        enum Action {
            Create,
        }
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Event {
            action: Option<Action>,
        }
        match decode_json::<Event>(br#"{"action":0}"#) {
            Err(ApiError::BadRequest { errors, .. }) => assert_eq!(errors[0].field, "action"),
            other => panic!("expected a 400 naming action, got {other:?}"),
        }
    }
}
