//! The web UI: static pages, their assets embedded in the binary at build time, so
//! `retrocat serve` needs no files beside it. The pages call the JSON API.

use axum::Router;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rust_embed::Embed;
use tower_http::set_header::SetResponseHeaderLayer;

#[derive(Embed)]
#[folder = "assets/"]
struct Assets;

/// What a browser lets the pages do: scripts, styles, images and API calls from this
/// origin only (the pages hold no inline script, so an injected one does not run), no
/// plugins, no `<base>` rewriting, forms posted here only, and no framing by any page
/// (clickjacking).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; \
    base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// `/` (Catalog), `/processing`, `/producer`, `/queues`, and every asset by its path,
/// under the [`CONTENT_SECURITY_POLICY`], and sending no referrer to other sites.
pub fn router() -> Router {
    Router::new()
        .route("/", get(|| async { asset("index.html") }))
        .route("/processing", get(|| async { asset("processing.html") }))
        .route("/producer", get(|| async { asset("producer.html") }))
        .route("/queues", get(|| async { asset("queues.html") }))
        .fallback(get(|uri: Uri| async move {
            asset(uri.path().trim_start_matches('/'))
        }))
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
}

fn asset(path: &str) -> Response {
    match Assets::get(path) {
        Some(file) => {
            let mime = mime_guess::from_path(path).first_or_octet_stream();
            (
                [
                    (header::CONTENT_TYPE, mime.as_ref().to_owned()),
                    // Assets change with the binary: revalidate, but allow conditional
                    // requests to be cheap.
                    (header::CACHE_CONTROL, "no-cache".to_owned()),
                ],
                file.data,
            )
                .into_response()
        }
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(path: &str) -> Response {
        router()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn pages_and_assets_are_served_with_their_types() {
        let index = get("/").await;
        assert_eq!(index.status(), StatusCode::OK);
        assert_eq!(index.headers()[header::CONTENT_TYPE], "text/html");
        let body = axum::body::to_bytes(index.into_body(), usize::MAX)
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&body).contains("RETRO GAMING CATALOG"));
        assert_eq!(get("/processing").await.status(), StatusCode::OK);
        assert_eq!(get("/producer").await.status(), StatusCode::OK);
        let script = get("/app.js").await;
        assert!(
            script.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .contains("javascript")
        );
        assert_eq!(
            get("/style.css").await.headers()[header::CONTENT_TYPE],
            "text/css"
        );
    }

    /// Every page is sent with the policy, and holds nothing the policy would block:
    /// no inline script, no event-handler attribute, no inline style.
    #[tokio::test]
    async fn pages_carry_the_policy_and_need_nothing_it_forbids() {
        for page in ["/", "/processing", "/producer", "/queues"] {
            let response = get(page).await;
            let headers = response.headers();
            assert_eq!(
                headers[header::CONTENT_SECURITY_POLICY],
                CONTENT_SECURITY_POLICY
            );
            assert_eq!(headers[header::REFERRER_POLICY], "no-referrer");
        }
        assert!(CONTENT_SECURITY_POLICY.contains("frame-ancestors 'none'"));
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
        for path in Assets::iter().filter(|path| path.ends_with(".html")) {
            let html = String::from_utf8(Assets::get(&path).unwrap().data.into_owned()).unwrap();
            let inline_scripts =
                html.matches("<script").count() - html.matches("<script src=").count();
            assert_eq!(inline_scripts, 0, "{path}: inline script");
            for attribute in [
                " onclick=",
                " onload=",
                " onsubmit=",
                " onerror=",
                " style=",
            ] {
                assert!(!html.contains(attribute), "{path}: {attribute}");
            }
        }
    }

    #[tokio::test]
    async fn unknown_paths_are_404() {
        assert_eq!(get("/nope.html").await.status(), StatusCode::NOT_FOUND);
        assert_eq!(get("/../Cargo.toml").await.status(), StatusCode::NOT_FOUND);
    }
}
