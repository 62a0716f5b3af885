//! The HTTP layer's one error type, answered as `application/problem+json` (RFC 9457).
//!
//! Client errors name the field and the reason. Internal errors are logged once, by the
//! middleware in [`super::router`] inside the request's trace span, and never shown: the
//! client gets a generic 500. The body also carries `message`, the field the original
//! page displays from an error response.

use crate::broker::BrokerError;
use crate::domain::ValidationError;
use crate::storage::StoreError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed: bad JSON, wrong types, unknown fields, bad query.
    #[error("{detail}")]
    BadRequest {
        detail: String,
        errors: Vec<FieldError>,
    },
    /// Well-formed but refused by the catalog's rules.
    #[error("{detail}")]
    Unprocessable {
        detail: String,
        errors: Vec<FieldError>,
    },
    /// The route needs a role, and the request proves none: no token, or one that is
    /// unknown, expired or revoked (see `api::auth`).
    #[error("{0}")]
    Unauthorized(String),
    /// A cross-site request the server does not take (see `api::origin`), or a token
    /// whose role falls short of the route's.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request body too large (the server's limit is --max-body-bytes)")]
    PayloadTooLarge,
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The request's `Host` does not name this server (see `api::host`).
    #[error("{0}")]
    MisdirectedRequest(String),
    /// A dependency (database, broker) is down; the client may retry.
    #[error("{0}")]
    Unavailable(String),
    /// This instance is at one of its limits (`--max-stream-subscribers`): a place frees
    /// as other clients leave, so the answer says when to try again (`Retry-After`).
    #[error("{detail}")]
    AtCapacity {
        detail: String,
        retry_after: Duration,
    },
    /// The client made more requests than `--rate-limit` allows (see
    /// `api::rate_limit`); the answer says when to try again (`Retry-After`).
    #[error("{detail}")]
    TooManyRequests {
        detail: String,
        retry_after: Duration,
    },
    /// A request sent on through the broker got no reply in time.
    #[error("{0}")]
    NoReply(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// One refused field: `field` is the JSON name (`title`, `platformId`, `limit`…).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl ApiError {
    pub fn bad_field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        let error = FieldError {
            field: field.into(),
            reason: reason.into(),
        };
        Self::BadRequest {
            detail: format!("{}: {}", error.field, error.reason),
            errors: vec![error],
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::MisdirectedRequest(_) => StatusCode::MISDIRECTED_REQUEST,
            Self::Unavailable(_) | Self::AtCapacity { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::NoReply(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Self::BadRequest { .. } => "Malformed request",
            Self::Unprocessable { .. } => "Invalid value",
            Self::Unauthorized(_) => "Unauthorized",
            Self::Forbidden(_) => "Forbidden",
            Self::NotFound(_) => "Not found",
            Self::Conflict(_) => "Conflict",
            Self::PayloadTooLarge => "Payload too large",
            Self::UnsupportedMediaType(_) => "Unsupported media type",
            Self::MisdirectedRequest(_) => "Misdirected request",
            Self::Unavailable(_) => "Service unavailable",
            Self::AtCapacity { .. } => "At capacity",
            Self::TooManyRequests { .. } => "Too many requests",
            Self::NoReply(_) => "No reply in time",
            Self::Internal(_) => "Internal server error",
        }
    }
}

impl From<ValidationError> for ApiError {
    fn from(error: ValidationError) -> Self {
        Self::Unprocessable {
            detail: error.to_string(),
            errors: vec![FieldError {
                field: error.field.into(),
                reason: error.reason,
            }],
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound { .. } => Self::NotFound(error.to_string()),
            StoreError::UnknownReference { field, entity, id } => Self::Unprocessable {
                detail: error.to_string(),
                errors: vec![FieldError {
                    field: field.into(),
                    reason: format!("no {entity} with id {id}"),
                }],
            },
            StoreError::Conflict(message) => Self::Conflict(message),
            StoreError::InvalidCursor => Self::bad_field(
                "cursor",
                "not a cursor this server issued for this sort order",
            ),
            StoreError::Unavailable(message) => {
                Self::Unavailable(format!("database unavailable: {message}"))
            }
            StoreError::Database(error) => Self::Internal(error.into()),
            StoreError::DirectRead(error) => Self::Internal(error.into()),
            StoreError::Panicked(error) => Self::Internal(error.into()),
        }
    }
}

/// The error of a group commit, shared by every request of its batch.
impl From<Arc<StoreError>> for ApiError {
    fn from(error: Arc<StoreError>) -> Self {
        match Arc::try_unwrap(error) {
            Ok(error) => error.into(),
            Err(shared) => match &*shared {
                StoreError::Unavailable(message) => StoreError::Unavailable(message.clone()).into(),
                other => Self::Internal(anyhow::anyhow!("{other}")),
            },
        }
    }
}

/// A query string that does not fit its parameters (unknown, or of the wrong type).
impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> Self {
        Self::BadRequest {
            detail: rejection.body_text(),
            errors: Vec::new(),
        }
    }
}

impl From<BrokerError> for ApiError {
    fn from(error: BrokerError) -> Self {
        match error {
            BrokerError::Unavailable(_) => {
                Self::Unavailable(format!("{error}; try again once the broker is back"))
            }
            BrokerError::NotFound(what) => Self::NotFound(what),
            BrokerError::NoReply(_) => Self::NoReply(error.to_string()),
            BrokerError::Topology(_) | BrokerError::Other(_) => Self::Internal(error.into()),
        }
    }
}

/// An error answer (RFC 9457), the body of every 4xx and 5xx the API gives.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Problem<'a> {
    /// Always `about:blank`: the status says what kind of error it is.
    #[serde(rename = "type")]
    #[schema(example = "about:blank")]
    kind: &'static str,
    #[schema(example = "Invalid value")]
    title: &'static str,
    #[schema(example = 422)]
    status: u16,
    #[schema(example = "releaseYear: must be between 1950 and 2026")]
    detail: String,
    /// The original API's error field, which its page shows: the same as `detail`.
    message: String,
    /// The fields refused, for 400 and 422 answers that concern fields.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    errors: &'a [FieldError],
}

/// Marks a response that carries an internal error, for the logging middleware.
#[derive(Clone)]
pub struct InternalError(pub std::sync::Arc<anyhow::Error>);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            Self::Internal(_) => "the server failed to answer; the error was logged".to_owned(),
            other => other.to_string(),
        };
        let errors = match &self {
            Self::BadRequest { errors, .. } | Self::Unprocessable { errors, .. } => {
                errors.as_slice()
            }
            _ => &[],
        };
        let problem = Problem {
            kind: "about:blank",
            title: self.title(),
            status: status.as_u16(),
            message: detail.clone(),
            detail,
            errors,
        };
        let mut response = (status, axum::Json(problem)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Self::AtCapacity { retry_after, .. } | Self::TooManyRequests { retry_after, .. } =
            &self
        {
            // Whole seconds (RFC 9110), at least one: 0 would invite an immediate retry.
            let seconds = retry_after.as_secs().max(1);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Self::Unauthorized(_) = &self {
            // RFC 6750: how to authenticate.
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"retrocat\""),
            );
        }
        if let Self::Internal(error) = self {
            response
                .extensions_mut()
                .insert(InternalError(std::sync::Arc::new(error)));
        }
        response
    }
}
