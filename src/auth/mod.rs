//! Who may change what: roles, accounts, tokens, and protected mode.
//!
//! Reads of the catalog are public. Writes need a role: `editor` for games and covers,
//! `admin` for everything else that writes, and for reading what holds message bodies
//! (dead letters, the audit log, received messages). A request proves its role with
//! `Authorization: Bearer TOKEN`: a machine's token (`retrocat token create`) or a
//! login's (`POST /api/auth/login`).
//!
//! Tokens are opaque and stored, not signed (JWT): the database keeps the SHA-256 of
//! each, with its role and expiry. So a revoked token or a removed user stops working
//! within a second on every API instance that shares the database, with no secret to
//! distribute or rotate; the price is one lookup by primary key a second per token, on
//! requests that need a role (see `api::auth::gate`). Public reads look nothing up.
//! Passwords are hashed with argon2id ([`password`]); a token is 32 random bytes, and
//! needs no slow hash: nobody can guess it.
//!
//! *Protected mode*, as Redis does it: while no account and no machine token exists,
//! peers on loopback may do everything, so a fresh install and the original system's
//! clients work unchanged, and every other peer is refused until an admin exists.
//! `--auth required` asks for a token from the start.

pub mod password;
pub mod token;

use serde::{Deserialize, Serialize};

/// What a caller may do. `Admin` may do everything an `Editor` may.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Games and their covers.
    Editor,
    /// Everything else that writes: platforms, genres, process-complete, the producer,
    /// dead letters and queues, users and tokens; and reading message bodies.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Editor => "editor",
            Self::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "editor" => Some(Self::Editor),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When a request without a token may write (`--auth`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Peers on loopback may, while no account and no machine token exists.
    #[default]
    Protected,
    /// Never: every write needs a token, from the start.
    Required,
}

/// The longest user or token name.
pub const MAX_NAME: usize = 64;

/// A user's or a token's name: 1 to 64 letters, digits, `.`, `_`, `-` or `@`, so that
/// it reads the same in a log line, a table and a shell.
pub fn check_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@');
    if name.is_empty() || name.len() > MAX_NAME {
        Err(format!("a name has 1 to {MAX_NAME} characters"))
    } else if !name.chars().all(allowed) {
        Err("a name has only letters, digits, '.', '_', '-' and '@'".into())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_admin_may_do_what_an_editor_may() {
        assert!(Role::Admin > Role::Editor);
        for role in [Role::Editor, Role::Admin] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn names_are_short_and_plain() {
        for good in ["alice", "ci-deploy", "bob@example.com", "a.b_c"] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        for bad in ["", "with space", "tab\t", "nul\0", "ü", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
