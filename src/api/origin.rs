//! Cross-site request forgery: a request that changes something, sent by a browser from
//! a page of another origin, is refused (403) unless that origin is one the API was told
//! to trust (`--cors-origins`).
//!
//! Browsers name the page's origin in `Origin` on every cross-origin request that is not
//! a plain read, so a form on another site that posts here, or a script that calls here,
//! says where it comes from. Clients that are not browsers (curl, the original system's
//! producer) send no `Origin` and are not concerned; the Host check (`api::host`) and,
//! once they exist, accounts stand guard there.

use super::error::ApiError;
use axum::body::Body;
use axum::http::header::{HOST, ORIGIN};
use axum::http::{HeaderValue, Method, Request};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use tower_http::validate_request::ValidateRequest;

/// The origins, besides the server's own, whose pages may change things here: those of
/// `--cors-origins` (`*`: any).
#[derive(Clone, Debug)]
pub struct TrustedOrigins(Arc<[HeaderValue]>);

impl TrustedOrigins {
    pub fn new(origins: &[HeaderValue]) -> Self {
        Self(origins.into())
    }

    /// Whether a request from a page of `origin` to the server called `host` may change
    /// things: the same origin, or a trusted one.
    fn trust(&self, origin: &HeaderValue, host: Option<&HeaderValue>) -> bool {
        let same_origin = origin.to_str().ok().is_some_and(|origin| {
            let authority = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"));
            authority
                .zip(host.and_then(|host| host.to_str().ok()))
                .is_some_and(|(authority, host)| authority.eq_ignore_ascii_case(host))
        });
        same_origin
            || self
                .0
                .iter()
                .any(|trusted| trusted == "*" || trusted == origin)
    }
}

impl<B> ValidateRequest<B> for TrustedOrigins {
    type ResponseBody = Body;

    fn validate(&mut self, request: &mut Request<B>) -> Result<(), Response> {
        let reads = [Method::GET, Method::HEAD, Method::OPTIONS];
        let Some(origin) = request.headers().get(ORIGIN) else {
            return Ok(());
        };
        if reads.contains(request.method()) || self.trust(origin, request.headers().get(HOST)) {
            return Ok(());
        }
        Err(ApiError::Forbidden(format!(
            "a page of {} may not change anything here (cross-site request): start the \
             server with --cors-origins naming that origin to allow it",
            String::from_utf8_lossy(origin.as_bytes())
        ))
        .into_response())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, origin: Option<&'static str>) -> Request<()> {
        let mut request = Request::builder()
            .method(method)
            .uri("/api/games")
            .header(HOST, "127.0.0.1:8080");
        if let Some(origin) = origin {
            request = request.header(ORIGIN, origin);
        }
        request.body(()).unwrap()
    }

    #[test]
    fn only_same_origin_and_trusted_pages_may_change_things() {
        let mut origins = TrustedOrigins::new(&[HeaderValue::from_static("http://localhost")]);
        let mut allowed =
            |method: Method, origin| origins.validate(&mut request(method, origin)).is_ok();
        assert!(allowed(Method::POST, None), "not a browser");
        assert!(
            allowed(Method::POST, Some("http://127.0.0.1:8080")),
            "same origin"
        );
        assert!(allowed(Method::DELETE, Some("http://localhost")), "trusted");
        assert!(allowed(Method::GET, Some("http://evil.example")), "a read");
        assert!(!allowed(Method::POST, Some("http://evil.example")));
        assert!(!allowed(
            Method::PUT,
            Some("https://127.0.0.1:8080.evil.example")
        ));
        assert!(!allowed(Method::DELETE, Some("null")), "a sandboxed page");
        let mut any = TrustedOrigins::new(&[HeaderValue::from_static("*")]);
        assert!(
            any.validate(&mut request(Method::POST, Some("http://evil.example")))
                .is_ok()
        );
    }
}
