//! The web UI: static pages, their assets embedded in the binary at build time, so
//! `retrocat serve` needs no files beside it. The pages call the JSON API.

use axum::Router;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rust_embed::Embed;

#[derive(Embed)]
#[folder = "assets/"]
struct Assets;

/// `/` (Catalog), `/processing`, `/producer`, `/queues`, and every asset by its path.
pub fn router() -> Router {
    Router::new()
        .route("/", get(|| async { asset("index.html") }))
        .route("/processing", get(|| async { asset("processing.html") }))
        .route("/producer", get(|| async { asset("producer.html") }))
        .route("/queues", get(|| async { asset("queues.html") }))
        .fallback(get(|uri: Uri| async move {
            asset(uri.path().trim_start_matches('/'))
        }))
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

    #[tokio::test]
    async fn unknown_paths_are_404() {
        assert_eq!(get("/nope.html").await.status(), StatusCode::NOT_FOUND);
        assert_eq!(get("/../Cargo.toml").await.status(), StatusCode::NOT_FOUND);
    }
}
