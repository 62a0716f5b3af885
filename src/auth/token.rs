//! Bearer tokens: `rc_` and 32 random bytes in base64url. The database keeps only the
//! SHA-256 of each ([`digest`]): whoever reads it cannot call the API with what is there.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// What every token starts with, so that one is recognized in a config file or a leak
/// report.
pub const PREFIX: &str = "rc_";

/// A new token: shown once to whoever asked for it, stored only as its [`digest`].
pub fn generate() -> String {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(secret))
}

/// What the database keeps of `token`: its SHA-256, in hex.
pub fn digest(token: &str) -> String {
    let hash = Sha256::digest(token.as_bytes());
    hash.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The token of an `Authorization` header's value: `Bearer TOKEN` (the scheme in any
/// case, RFC 9110). `None` for any other form.
pub fn from_authorization(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    let printable = |c: char| c.is_ascii_graphic();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && token.chars().all(printable))
        .then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_stored_as_a_digest_only() {
        let (one, two) = (generate(), generate());
        assert_ne!(one, two);
        assert!(
            one.starts_with(PREFIX) && one.len() == PREFIX.len() + 43,
            "{one}"
        );
        assert_eq!(digest(&one), digest(&one));
        assert_ne!(digest(&one), digest(&two));
        assert_eq!(digest(&one).len(), 64);
        assert!(!digest(&one).contains(&one[PREFIX.len()..]));
    }

    #[test]
    fn only_a_bearer_header_carries_a_token() {
        assert_eq!(from_authorization("Bearer rc_abc"), Some("rc_abc"));
        assert_eq!(from_authorization("bearer  rc_abc "), Some("rc_abc"));
        for other in [
            "Basic dXNlcjpwdw==",
            "Bearer",
            "Bearer ",
            "rc_abc",
            "Bearer a b",
        ] {
            assert_eq!(from_authorization(other), None, "{other:?}");
        }
    }
}
