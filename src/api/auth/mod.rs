//! `POST /api/auth/login`, `POST /api/auth/logout` and `GET /api/auth/me`: how a person
//! gets a token, gives it up, and learns what it may do. The checks themselves are in
//! [`gate`].

pub mod gate;

use super::ApiContext;
use super::error::ApiError;
use super::extract::Json;
use crate::auth::{Role, password, token};
use crate::storage::accounts::{TokenKind, TokenRecord};
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use gate::Caller;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(me))
}

/// How long a login's token lasts unless `--session-ttl` says otherwise.
pub const DEFAULT_SESSION_TTL: chrono::TimeDelta = chrono::TimeDelta::hours(12);

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Credentials {
    #[schema(max_length = 64)]
    username: String,
    #[schema(max_length = 1024)]
    password: String,
}

/// A login's token.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Session {
    /// Send it as `Authorization: Bearer TOKEN`.
    token: String,
    expires_at: DateTime<Utc>,
    role: Role,
}

/// Log in
///
/// Exchanges a user's name and password for a token that lasts `--session-ttl` (12 h
/// by default). Every failure gets the same 401, whether the name exists or not.
#[utoipa::path(post, path = "/api/auth/login", tag = "auth",
    request_body = Credentials,
    responses(
        (status = 200, description = "Logged in", body = Session),
        (status = 401, description = "Wrong name or password"),
    ))]
async fn login(
    State(ctx): State<ApiContext>,
    Json(credentials): Json<Credentials>,
) -> Result<axum::Json<Session>, ApiError> {
    let refused = || ApiError::Unauthorized("wrong username or password".into());
    if credentials.username.len() > crate::auth::MAX_NAME
        || credentials.password.len() > password::MAX_LENGTH
    {
        return Err(refused());
    }
    let stored = ctx.store.credentials(&credentials.username).await?;
    let (hash, role) = stored.unzip();
    if !password::verify(credentials.password, hash).await {
        tracing::warn!(username = %credentials.username.escape_debug(), "login refused");
        return Err(refused());
    }
    let role = role.expect("a verified password has a user");
    let secret = token::generate();
    let created_at = Utc::now();
    let expires_at = created_at + ctx.session_ttl;
    let record = TokenRecord {
        kind: TokenKind::Session,
        name: uuid::Uuid::now_v7().to_string(),
        role,
        username: Some(credentials.username),
        created_at,
        expires_at: Some(expires_at),
    };
    ctx.store
        .add_token(&token::digest(&secret), &record)
        .await?;
    Ok(axum::Json(Session {
        token: secret,
        expires_at,
        role,
    }))
}

/// Log out
///
/// Ends the session of the request's token: at once here, within a second on other
/// instances. A machine's
/// token is revoked with `retrocat token revoke` instead (403).
#[utoipa::path(post, path = "/api/auth/logout", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "The session has ended"),
        (status = 403, description = "The token is a machine's, not a login's"),
    ))]
async fn logout(State(ctx): State<ApiContext>, parts: Parts) -> Result<StatusCode, ApiError> {
    let Some(Caller::Token(session)) = ctx.gate.caller(&parts).await? else {
        return Err(ApiError::Unauthorized(
            "log out with the session's token: Authorization: Bearer TOKEN".into(),
        ));
    };
    if session.kind != TokenKind::Session {
        return Err(ApiError::Forbidden(format!(
            "{} is a machine's token, not a login: revoke it with `retrocat token revoke {}`",
            session.name, session.name
        )));
    }
    ctx.store.end_session(&session.name).await?;
    ctx.gate.forget_session(&session.name);
    Ok(StatusCode::NO_CONTENT)
}

/// Who the caller is
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Identity {
    /// The user, the machine token's name, or `loopback`; none for a caller that
    /// proves nobody.
    name: Option<String>,
    /// What the caller may do: none for public reads only.
    role: Option<Role>,
    /// Whether a request without a token would be refused a write from here: the web
    /// UI then offers to log in.
    login_required: bool,
}

/// Who am I
///
/// The caller as the API sees it: with a token, its holder and role; without, whether
/// protected mode lets this peer change things (loopback on a fresh install) or it
/// must log in first.
#[utoipa::path(get, path = "/api/auth/me", tag = "auth",
    responses(
        (status = 200, description = "The caller", body = Identity),
        (status = 401, description = "The token is unknown, expired or revoked"),
    ))]
async fn me(State(ctx): State<ApiContext>, parts: Parts) -> Result<axum::Json<Identity>, ApiError> {
    let caller = ctx.gate.caller(&parts).await?;
    Ok(axum::Json(Identity {
        name: caller.as_ref().map(|caller| caller.name().to_owned()),
        role: caller.as_ref().map(Caller::role),
        login_required: caller.is_none(),
    }))
}
