//! Passwords, hashed with argon2id (RFC 9106) in the PHC string format, salt and
//! parameters included, so that stronger parameters later still verify older hashes.
//!
//! A hash takes about 19 MiB and tens of milliseconds, by design: it runs on tokio's
//! blocking pool, at most one per core at once, so that a flood of logins queues
//! rather than exhausting memory or stalling the server's other requests.

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use std::sync::LazyLock;
use tokio::sync::Semaphore;

/// The shortest password accepted.
pub const MIN_LENGTH: usize = 8;
/// The longest: argon2 takes any length, a request body does not need more.
pub const MAX_LENGTH: usize = 1024;

/// Whether `password` may be set: 8 to 1024 characters.
pub fn check_new(password: &str) -> Result<(), String> {
    let length = password.chars().count();
    if length < MIN_LENGTH {
        Err(format!("a password has at least {MIN_LENGTH} characters"))
    } else if password.len() > MAX_LENGTH {
        Err(format!("a password has at most {MAX_LENGTH} bytes"))
    } else {
        Ok(())
    }
}

/// The argon2id hash of `password`, with a new random salt.
pub async fn hash(password: String) -> String {
    one_at_a_time_per_core(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .expect("argon2's default parameters always hash")
            .to_string()
    })
    .await
}

/// Whether `password` is the one `hash` was made from. Without a hash (no such user),
/// checks against a hash of nothing, so that an unknown name takes as long to refuse as
/// a wrong password: timing tells nobody which names exist.
pub async fn verify(password: String, hash: Option<String>) -> bool {
    one_at_a_time_per_core(move || {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| UNKNOWN_USER.clone());
        let Ok(parsed) = PasswordHash::new(&hash) else {
            tracing::error!("a stored password hash is not a PHC string");
            return false;
        };
        let matches = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        known && matches
    })
    .await
}

/// A hash to verify against when the user does not exist.
static UNKNOWN_USER: LazyLock<String> = LazyLock::new(|| {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(b"no such user", &salt)
        .expect("argon2's default parameters always hash")
        .to_string()
});

/// Runs `work` on the blocking pool, one at a time per core.
async fn one_at_a_time_per_core<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    static SLOTS: LazyLock<Semaphore> = LazyLock::new(|| {
        Semaphore::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    });
    let _slot = SLOTS.acquire().await.expect("never closed");
    tokio::task::spawn_blocking(work)
        .await
        .expect("hashing never panics")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_password_verifies_against_its_hash_and_nothing_else_does() {
        let hash = super::hash("correct horse".into()).await;
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify("correct horse".into(), Some(hash.clone())).await);
        assert!(!verify("correct horsE".into(), Some(hash.clone())).await);
        assert!(!verify("correct horse".into(), None).await);
        assert!(!verify("x".into(), Some("not a hash".into())).await);
        let again = super::hash("correct horse".into()).await;
        assert_ne!(hash, again, "each hash has its own salt");
    }

    #[test]
    fn passwords_are_long_enough_and_not_absurd() {
        assert!(check_new("short").is_err());
        assert!(check_new("long enough").is_ok());
        assert!(check_new(&"x".repeat(MAX_LENGTH + 1)).is_err());
    }
}
