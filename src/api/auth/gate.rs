//! Who is calling, and whether they may: a handler that needs a role takes [`Editor`]
//! or [`Admin`] as its first argument, so the check runs before anything else of the
//! request is read. See [`crate::auth`] for the rules.

use crate::api::ApiContext;
use crate::api::error::ApiError;
use crate::auth::{AuthMode, Role, token};
use crate::storage::Store;
use crate::storage::accounts::TokenRecord;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Who made a request.
#[derive(Clone, Debug)]
pub enum Caller {
    /// A peer on loopback, in protected mode, while no account exists: it may do
    /// everything, as before accounts existed.
    Loopback,
    /// The holder of a token, a machine's or a login's.
    Token(TokenRecord),
}

impl Caller {
    pub fn role(&self) -> Role {
        match self {
            Self::Loopback => Role::Admin,
            Self::Token(token) => token.role,
        }
    }

    /// How the caller shows in logs: the token's name, or `loopback`.
    pub fn name(&self) -> &str {
        match self {
            Self::Loopback => "loopback",
            Self::Token(token) => token.username.as_deref().unwrap_or(&token.name),
        }
    }
}

/// How long the answer to "does any account exist?", and a token found valid, are
/// reused. An account made by `retrocat user add` in another process ends protected
/// mode here within this time, and a token revoked (or a user removed) elsewhere stops
/// working here within it; meanwhile a client's writes cost no query each. On SQLite
/// a lookup per request cost a fifth of the create throughput.
const REUSED_FOR: Duration = Duration::from_secs(1);

/// Tokens found valid, kept for [`REUSED_FOR`]; emptied when it reaches this many.
const MAX_REUSED_TOKENS: usize = 1024;

/// The checks of every request that needs a role, with what they share.
#[derive(Clone)]
pub struct Gate(Arc<Inner>);

struct Inner {
    store: Arc<dyn Store>,
    mode: AuthMode,
    /// When [`Accounts::has_accounts`] was last asked, and its answer.
    accounts_seen: Mutex<Option<(Instant, bool)>>,
    /// Tokens found valid, by digest, with when they were looked up.
    valid: Mutex<HashMap<String, (Instant, TokenRecord)>>,
}

impl Gate {
    pub fn new(store: Arc<dyn Store>, mode: AuthMode) -> Self {
        Self(Arc::new(Inner {
            store,
            mode,
            accounts_seen: Mutex::new(None),
            valid: Mutex::default(),
        }))
    }

    /// The caller of `parts`, if it proves to be anyone: `None` for a request without a
    /// token that protected mode does not let in, an error for a token that is not
    /// one, or no longer one.
    pub async fn caller(&self, parts: &Parts) -> Result<Option<Caller>, ApiError> {
        if let Some(value) = parts.headers.get(AUTHORIZATION) {
            let secret = value
                .to_str()
                .ok()
                .and_then(token::from_authorization)
                .ok_or_else(|| {
                    ApiError::Unauthorized("Authorization: expected `Bearer TOKEN`".into())
                })?;
            return self.bearer(secret).await.map(Some);
        }
        let on_loopback = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .is_some_and(|ConnectInfo(peer)| peer.ip().to_canonical().is_loopback());
        let open =
            self.0.mode == AuthMode::Protected && on_loopback && !self.has_accounts().await?;
        Ok(open.then_some(Caller::Loopback))
    }

    /// The caller of `parts`, if it may act as `role`.
    pub async fn require(&self, parts: &Parts, role: Role) -> Result<Caller, ApiError> {
        let Some(caller) = self.caller(parts).await? else {
            return Err(ApiError::Unauthorized(
                self.how_to_authenticate(role).await?,
            ));
        };
        if caller.role() < role {
            return Err(ApiError::Forbidden(format!(
                "this needs the {role} role; {} is an {}",
                caller.name(),
                caller.role()
            )));
        }
        tracing::Span::current().record("caller", caller.name());
        Ok(caller)
    }

    /// Forgets the session named `name`: it was just ended here (a logout).
    pub fn forget_session(&self, name: &str) {
        let mut valid = self.0.valid.lock().expect("never poisoned");
        valid.retain(|_, (_, record)| record.name != name);
    }

    /// The token of `secret`, if it is valid now.
    async fn bearer(&self, secret: &str) -> Result<Caller, ApiError> {
        let digest = token::digest(secret);
        let reused = self
            .0
            .valid
            .lock()
            .expect("never poisoned")
            .get(&digest)
            .cloned();
        if let Some((at, record)) = reused
            && at.elapsed() < REUSED_FOR
            && !record.is_expired(chrono::Utc::now())
        {
            return Ok(Caller::Token(record));
        }
        let Some(record) = self.0.store.token(&digest).await? else {
            return Err(ApiError::Unauthorized(
                "unknown or revoked token: log in again, or ask an admin for a new token".into(),
            ));
        };
        if record.is_expired(chrono::Utc::now()) {
            return Err(ApiError::Unauthorized(
                "the token has expired: log in again, or ask an admin for a new token".into(),
            ));
        }
        let mut valid = self.0.valid.lock().expect("never poisoned");
        if valid.len() >= MAX_REUSED_TOKENS {
            valid.clear();
        }
        valid.insert(digest, (Instant::now(), record.clone()));
        Ok(Caller::Token(record))
    }

    /// What a request without a token must do to get `role`.
    async fn how_to_authenticate(&self, role: Role) -> Result<String, ApiError> {
        Ok(if self.has_accounts().await? {
            format!(
                "this needs the {role} role: log in (POST /api/auth/login) and send \
                 Authorization: Bearer TOKEN"
            )
        } else {
            "no account exists yet, and only peers on loopback may change things until one \
             does: on the server, create the first admin with `retrocat user add NAME --role \
             admin`, then log in (POST /api/auth/login) and send Authorization: Bearer TOKEN"
                .into()
        })
    }

    /// Whether any user or machine token exists, asked at most once per
    /// [`REUSED_FOR`].
    async fn has_accounts(&self) -> Result<bool, ApiError> {
        let seen = *self.0.accounts_seen.lock().expect("never poisoned");
        if let Some((at, exist)) = seen
            && at.elapsed() < REUSED_FOR
        {
            return Ok(exist);
        }
        let exist = self.0.store.has_accounts().await?;
        *self.0.accounts_seen.lock().expect("never poisoned") = Some((Instant::now(), exist));
        Ok(exist)
    }
}

/// A caller who may act as an editor: change games and their covers.
pub struct Editor(pub Caller);

/// A caller who may act as an admin.
pub struct Admin(pub Caller);

impl FromRequestParts<ApiContext> for Editor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, ctx: &ApiContext) -> Result<Self, ApiError> {
        ctx.gate.require(parts, Role::Editor).await.map(Self)
    }
}

impl FromRequestParts<ApiContext> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, ctx: &ApiContext) -> Result<Self, ApiError> {
        ctx.gate.require(parts, Role::Admin).await.map(Self)
    }
}
