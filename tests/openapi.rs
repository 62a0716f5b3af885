//! `/openapi.json` against the server it describes: the router serves every operation
//! the document lists and no other method on its paths, and schemathesis, fuzzing every
//! operation with every check, finds no 5xx and no answer the document does not allow.

mod common;

use common::{TestApp, game_body};
use reqwest::Method;
use serde_json::Value;
use std::time::Duration;

/// The methods a path of the document may list (the API uses no other).
const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

#[tokio::test]
async fn the_router_serves_exactly_the_operations_the_document_lists() {
    let app = TestApp::spawn().await;
    app.create_game(&game_body("Documented Quest")).await;
    let document = app.get_json("/openapi.json").await;
    assert_eq!(document["openapi"], "3.1.0");
    assert_eq!(
        document,
        serde_json::to_value(retrocat::api::openapi::document()).unwrap(),
        "the document served is the one the code builds"
    );

    let paths = document["paths"].as_object().expect("paths");
    assert!(paths.len() >= 25, "{} paths", paths.len());
    let mut operations = 0;
    for (path, item) in paths {
        let concrete = path.replace("{id}", "1");
        for method in METHODS {
            let documented = item.get(method).is_some();
            let status = request(&app, method, &concrete).await;
            if documented {
                operations += 1;
                assert_ne!(status, 405, "{method} {path} is documented but not routed");
                assert!(
                    status != 404 || !is_unknown_route(&app, method, &concrete).await,
                    "{method} {path} is documented but answered by the unknown-route fallback"
                );
                let answers = item[method]["responses"].as_object().unwrap();
                assert!(
                    answers.keys().any(|status| status.starts_with('2')),
                    "{method} {path} documents no success"
                );
            } else {
                assert_eq!(status, 405, "{method} {path} is routed but not documented");
            }
        }
    }
    assert!(operations >= 35, "{operations} operations");
    app.stop().await;
}

/// The status of `method path`, with an empty JSON object as the body of a write.
async fn request(app: &TestApp, method: &str, path: &str) -> u16 {
    let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
    let mut request = reqwest::Client::new().request(method.clone(), app.url(path));
    if method != Method::GET && method != Method::DELETE {
        request = request.json(&serde_json::json!({}));
    }
    // Headers are enough, and the live stream never ends.
    let response = request.send().await.expect("request");
    response.status().as_u16()
}

/// Whether `method path` reached the `/api/*` fallback rather than a route.
async fn is_unknown_route(app: &TestApp, method: &str, path: &str) -> bool {
    let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
    let response = reqwest::Client::new()
        .request(method, app.url(path))
        .send()
        .await
        .expect("request");
    let problem: Value = response.json().await.unwrap_or_default();
    problem["detail"] == "no such API route"
}

/// schemathesis (`st`), installed by `.ci/run` into a virtualenv it names in
/// `SCHEMATHESIS`, runs every check on every operation (tests/schemathesis.toml says
/// which answers a check expects where its defaults cannot know the API's rules).
#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_answer_off_the_document() {
    let st = std::env::var("SCHEMATHESIS").unwrap_or_else(|_| "st".into());
    if std::process::Command::new(&st)
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "schemathesis is not installed: .ci/run installs it (pip install schemathesis)"
        );
        println!("skipped: schemathesis is not installed (set SCHEMATHESIS to its `st`)");
        return;
    }
    let app = TestApp::spawn().await;
    for title in ["Documented Quest", "Schema Saga"] {
        app.create_game(&game_body(title)).await;
    }
    // An admin's token ends protected mode: every route is called with it, and checked
    // (`ignored_auth`) to refuse a call without it where the document says so.
    let token = common::admin_token(&app).await;
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schemathesis.toml");
    let run = tokio::process::Command::new(&st)
        .args(["--config-file", config, "run", &app.url("/openapi.json")])
        // Every check runs (schemathesis's default): `--checks all` here would also
        // override what tests/schemathesis.toml turns off for one operation.
        .args([
            "--exclude-path",
            "/api/stream",
            "--no-color",
            "--header",
            &format!("Authorization: Bearer {token}"),
        ])
        // Fixed, so that a run is repeatable; vary it to explore further.
        .args([
            "--seed",
            &std::env::var("SCHEMATHESIS_SEED").unwrap_or("1".into()),
        ])
        // Its caches (.hypothesis, .schemathesis) go under target/, not into the tree.
        .current_dir(env!("CARGO_TARGET_TMPDIR"))
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("schemathesis within 10 minutes")
        .expect("schemathesis runs");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    app.stop().await;
}
