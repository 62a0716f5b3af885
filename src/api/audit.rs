//! What the subscribers received: the audit log (`GET /api/audit`) and the custom
//! messages the custom-message consumer took (`GET /api/messages/received`).

use super::ApiContext;
use super::auth::gate::Admin;
use super::error::ApiError;
use crate::processing::subscriber::{self, AUDIT, CUSTOM};
use crate::storage::ReceivedMessage;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new()
        .routes(routes!(audit))
        .routes(routes!(received))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct Params {
    /// A subscriber of `catalog.events` (`audit` by default).
    #[param(pattern = "^(?!custom$)[a-z0-9_-]{1,50}$")]
    subscriber: Option<String>,
    /// At most this many messages (100 by default).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// What a subscriber received
///
/// The events a subscriber of `catalog.events` received, newest first.
#[utoipa::path(get, path = "/api/audit", tag = "messages",
    security(("bearer" = [])), params(Params),
    responses((status = 200, description = "The events", body = Vec<ReceivedMessage>)))]
async fn audit(
    _: Admin,
    State(ctx): State<ApiContext>,
    query: Result<Query<Params>, QueryRejection>,
) -> Result<axum::Json<Vec<ReceivedMessage>>, ApiError> {
    let Query(params) = query?;
    let subscriber = match params.subscriber.as_deref() {
        None => AUDIT.to_owned(),
        Some(name) => subscriber::parse_name(name)
            .map_err(|reason| ApiError::bad_field("subscriber", reason))?,
    };
    let limit = super::list_limit(params.limit)?;
    Ok(axum::Json(ctx.store.received(&subscriber, limit).await?))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct LimitParam {
    /// At most this many messages (100 by default).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// Custom messages received
///
/// The custom messages the custom-message consumer received, newest first.
#[utoipa::path(get, path = "/api/messages/received", tag = "messages",
    security(("bearer" = [])), params(LimitParam),
    responses((status = 200, description = "The messages", body = Vec<ReceivedMessage>)))]
async fn received(
    _: Admin,
    State(ctx): State<ApiContext>,
    query: Result<Query<LimitParam>, QueryRejection>,
) -> Result<axum::Json<Vec<ReceivedMessage>>, ApiError> {
    let Query(params) = query?;
    let limit = super::list_limit(params.limit)?;
    Ok(axum::Json(ctx.store.received(CUSTOM, limit).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostile::{
        self, check_refused_query, nasty_string, numeric_text, query_pairs, uri_with_query,
    };
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            nasty_string(),
            numeric_text(),
            prop::sample::select(&["audit", "custom", "my-sub_1"][..]).prop_map(str::to_owned),
        ]
    }

    proptest! {
        #![proptest_config(hostile::config(512))]

        /// `GET /api/audit`'s query: a plain subscriber name and a limit of 1 to 1000,
        /// or a 400 naming the parameter.
        #[test]
        fn a_query_names_a_subscriber_and_a_limit_or_is_refused(
            pairs in query_pairs(&["subscriber", "limit"], value()),
        ) {
            let parsed = Query::<Params>::try_from_uri(&uri_with_query(&pairs)?)
                .map_err(ApiError::from)
                .and_then(|Query(params)| {
                    let subscriber = match params.subscriber.as_deref() {
                        None => AUDIT.to_owned(),
                        Some(name) => subscriber::parse_name(name)
                            .map_err(|reason| ApiError::bad_field("subscriber", reason))?,
                    };
                    Ok((subscriber, super::super::list_limit(params.limit)?))
                });
            match parsed {
                Ok((subscriber, limit)) => {
                    prop_assert!((1..=50).contains(&subscriber.len()) && subscriber != CUSTOM);
                    let plain = |b: u8| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                    };
                    prop_assert!(subscriber.bytes().all(plain), "{subscriber:?}");
                    prop_assert!((1..=1000).contains(&limit));
                }
                Err(error) => check_refused_query(&error, &pairs)?,
            }
        }
    }
}
