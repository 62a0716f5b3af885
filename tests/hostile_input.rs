//! What a careless client or an attacker sends gets a clear answer and changes nothing:
//! control characters in text, text longer than its column, credentials in a URL, huge
//! covers.

mod common;

use common::processes::{Deployment, free_port, http_client};
use common::{Backend, Roles, TestApp, eventually, game_body, on_every_backend, with};
use serde_json::{Value, json};
use sqlx::Connection;
use std::time::Duration;

/// The catalog as a client sees it, to compare before and after refused requests.
async fn catalog(app: &TestApp) -> (Value, Value, Value) {
    (
        app.get_json("/api/games").await,
        app.get_json("/api/platforms").await,
        app.get_json("/api/genres").await,
    )
}

async fn assert_refused(response: reqwest::Response, field: &str, what: &str) {
    assert_eq!(response.status(), 400, "{what}");
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], field, "{what}: {problem}");
    assert!(
        problem["errors"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("control characters"),
        "{what}: {problem}"
    );
}

/// A NUL (which PostgreSQL refuses outright), a terminal escape, a C1 control, a tab in
/// a URL: each text field a client writes refuses them with a 400 naming the field,
/// and so does `search`. A description keeps its line breaks and tabs.
async fn control_characters_in_text_get_a_400_naming_the_field(backend: Backend) {
    let app = TestApp::spawn_on_with(backend, Roles::ApiOnly, &[]).await;
    let game = app.create_game(&game_body("Clean")).await;
    let game_path = format!("/api/games/{}", game["id"]);
    let before = catalog(&app).await;

    let games = [
        ("title", json!("Mario\u{0}")),
        ("developer", json!("\u{1b}[2JStudio")),
        ("description", json!("line\u{0}")),
        ("imageUrl", json!("http://example.com/\ta.png")),
    ];
    for (field, value) in games {
        let body = with(game_body("Hostile"), field, value);
        let what = format!("{field} on create");
        assert_refused(app.post_json("/api/games", &body).await, field, &what).await;
        let what = format!("{field} on update");
        assert_refused(app.put_json(&game_path, &body).await, field, &what).await;
    }
    let reference = [
        ("/api/platforms", json!({"name": "NES\u{85}"}), "name"),
        (
            "/api/platforms",
            json!({"name": "NES", "manufacturer": "Nin\u{7f}tendo"}),
            "manufacturer",
        ),
        ("/api/genres", json!({"name": "Shoot\u{8}"}), "name"),
        (
            "/api/genres",
            json!({"name": "Shooter", "description": "a\u{0}b"}),
            "description",
        ),
    ];
    for (path, body, field) in reference {
        let response = app.post_json(path, &body).await;
        assert_refused(response, field, &format!("{field} on {path}")).await;
    }
    for search in ["mario%00", "%1B%5B2J"] {
        let response = app.get(&format!("/api/games?search={search}")).await;
        assert_refused(response, "search", search).await;
    }
    assert_eq!(
        catalog(&app).await,
        before,
        "a refused request changed nothing"
    );

    let lines = "First line.\r\nSecond,\tindented.";
    let kept = app
        .create_game(&with(game_body("Lines"), "description", json!(lines)))
        .await;
    assert_eq!(kept["description"], lines);
    app.stop().await;
}

/// A manufacturer longer than the original's VARCHAR(50) is refused by name, on every
/// backend alike, before a database could truncate it or fail.
async fn a_manufacturer_longer_than_its_column_gets_a_422(backend: Backend) {
    let app = TestApp::spawn_on_with(backend, Roles::ApiOnly, &[]).await;
    let before = catalog(&app).await;
    let body = json!({"name": "Long", "manufacturer": "m".repeat(51)});
    let response = app.post_json("/api/platforms", &body).await;
    assert_eq!(response.status(), 422);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "manufacturer", "{problem}");
    assert_eq!(catalog(&app).await, before);
    app.stop().await;
}

/// A password in a cover URL is refused at write and never repeated: not in the 422,
/// not in the logs. A row that holds one anyway (written before the rule) fails its
/// fetch for good, and neither its history, its dead letter nor the logs show it (the
/// game itself still reads as it was written).
#[tokio::test]
async fn credentials_in_a_cover_url_never_appear_in_answers_or_logs() {
    const PASSWORD: &str = "s3cret-pw";
    let deployment = Deployment::on(Backend::Sqlite)
        .await
        .with_env("RUST_LOG", "debug")
        .with_env("RETROCAT_ALLOW_PRIVATE_FETCH", "true")
        .with_env("RETROCAT_RETRY_BASE_DELAY", "2s")
        .with_env("RETROCAT_MAX_ATTEMPTS", "2");
    let serve = deployment
        .start_http("serve", "serve", free_port(), &[])
        .await;
    let client = http_client();
    let with_password = format!("http://user:{PASSWORD}@127.0.0.1:9/cover.png");

    let body = with(game_body("Locked"), "imageUrl", json!(with_password));
    let refused = client
        .post(serve.url("/api/games"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    let problem = refused.text().await.unwrap();
    assert!(
        problem.contains("imageUrl") && !problem.contains(PASSWORD),
        "{problem}"
    );

    // A port where nothing listens: the first fetch fails for a while, and the row
    // takes a password before the retry, as a row written before the rule would.
    let body = with(
        game_body("Legacy"),
        "imageUrl",
        json!("http://127.0.0.1:9/c.png"),
    );
    let id = serve.create_game(&body).await["id"].as_i64().unwrap();
    let history = format!("/api/games/{id}/history");
    eventually("the first attempt", Duration::from_secs(30), || async {
        let attempts = serve.get_json(&history).await;
        (!attempts.as_array()?.is_empty()).then_some(())
    })
    .await;
    let mut db = sqlx::SqliteConnection::connect(deployment.database_url())
        .await
        .unwrap();
    sqlx::query("UPDATE games SET image_url = ? WHERE id = ?")
        .bind(&with_password)
        .bind(id)
        .execute(&mut db)
        .await
        .unwrap();
    eventually("the game failed", Duration::from_secs(30), || async {
        let game = serve.get_json(&format!("/api/games/{id}")).await;
        (game["processingStatus"] == "failed").then_some(())
    })
    .await;
    let shown = [
        serve.get_json(&history).await.to_string(),
        serve.get_json("/api/dlq").await.to_string(),
    ];
    assert!(
        shown[0].contains("credentials"),
        "the refusal says why: {}",
        shown[0]
    );
    for answer in shown {
        assert!(!answer.contains(PASSWORD), "{answer}");
    }
    let log = serve.log();
    assert!(log.contains("127.0.0.1:9"), "the log shows the fetches");
    assert!(!log.contains(PASSWORD), "the password is in the log");
    serve.stop().await;
}

/// 20 uploads at once of an 8000×2000 cover (a small file, 46 MiB decoded) are each
/// refused from the image's header, and 20 at once of a 4000×2000 one (23 MiB decoded,
/// within the budget) are all made into thumbnails, decoded one per core at a time:
/// the process's peak resident memory stays under 200 MB throughout.
#[tokio::test]
async fn concurrent_large_covers_keep_the_process_under_200_mb() {
    let deployment = Deployment::on(Backend::Sqlite).await;
    let serve = deployment
        .start_http("serve", "serve", free_port(), &[])
        .await;
    let client = http_client();
    let mut ids = Vec::new();
    for n in 0..40 {
        let game = serve.create_game(&game_body(&format!("Large {n}"))).await;
        ids.push(game["id"].as_i64().unwrap());
    }
    let upload = |id: i64, cover: Vec<u8>| {
        let request = client
            .put(serve.url(&format!("/api/games/{id}/cover")))
            .header("content-type", "image/png")
            .body(cover);
        async move { request.send().await.unwrap() }
    };

    let huge = common::png(8000, 2000);
    let refused =
        futures::future::join_all(ids[..20].iter().map(|&id| upload(id, huge.clone()))).await;
    for response in refused {
        assert_eq!(response.status(), 422);
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["errors"][0]["field"], "cover", "{problem}");
    }

    let large = common::png(4000, 2000);
    let taken =
        futures::future::join_all(ids[20..].iter().map(|&id| upload(id, large.clone()))).await;
    assert!(taken.iter().all(|response| response.status() == 200));
    for &id in &ids[20..] {
        eventually("a thumbnail of each", Duration::from_secs(120), || async {
            let game = serve.get_json(&format!("/api/games/{id}")).await;
            (game["processingStatus"] == "completed").then_some(())
        })
        .await;
    }
    let peak = serve.peak_resident_bytes();
    assert!(
        peak < 200_000_000,
        "peak resident memory {} MB",
        peak / 1_000_000
    );
    serve.stop().await;
}

/// A page on another site that rebinds its own name to 127.0.0.1 calls the API with its
/// name in Host: a 421, with nothing written. Addresses, localhost and the names given
/// by --public-url are served.
#[tokio::test]
async fn a_rebinding_host_gets_a_421_and_changes_nothing() {
    let app = TestApp::spawn_with(
        Roles::ApiOnly,
        &["--public-url", "https://catalog.example.com"],
    )
    .await;
    let before = catalog(&app).await;
    let client = reqwest::Client::new();
    let send = |host: &'static str| {
        client
            .post(app.url("/api/games"))
            .header("host", host)
            .json(&game_body("Rebound"))
            .send()
    };
    for host in [
        "rebind.attacker.example",
        "rebind.attacker.example:8080",
        "localhost.attacker.example",
    ] {
        let response = send(host).await.unwrap();
        assert_eq!(response.status(), 421, "{host}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{host}"
        );
    }
    assert_eq!(
        catalog(&app).await,
        before,
        "a refused request changed nothing"
    );
    for host in ["localhost:8080", "catalog.example.com", "127.0.0.1"] {
        assert_eq!(send(host).await.unwrap().status(), 201, "{host}");
    }
    app.stop().await;
}

/// A page of another site that posts or deletes here gets a 403, with nothing changed;
/// the server's own pages, the origins of --cors-origins and clients that are not
/// browsers (no Origin) are served. Reads are not concerned.
#[tokio::test]
async fn a_cross_site_write_gets_a_403_and_changes_nothing() {
    let app = TestApp::spawn_with(Roles::ApiOnly, &["--cors-origins", "http://localhost"]).await;
    let game = app.create_game(&game_body("Target")).await;
    let before = catalog(&app).await;
    let client = reqwest::Client::new();
    let game_path = format!("/api/games/{}", game["id"]);
    let evil = "http://evil.example";
    let created = client
        .post(app.url("/api/games"))
        .header("origin", evil)
        .json(&game_body("Forged"))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 403);
    let problem: Value = created.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("--cors-origins"),
        "{problem}"
    );
    let deleted = client
        .delete(app.url(&game_path))
        .header("origin", evil)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 403);
    assert_eq!(
        catalog(&app).await,
        before,
        "a refused request changed nothing"
    );
    let read = client
        .get(app.url(&game_path))
        .header("origin", evil)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200, "a read is not a forgery");

    let own = app.url("");
    for origin in [own.as_str(), "http://localhost"] {
        let response = client
            .post(app.url("/api/games"))
            .header("origin", origin)
            .json(&game_body("Allowed"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{origin}");
    }
    app.stop().await;
}

on_every_backend!(
    control_characters_in_text_get_a_400_naming_the_field,
    a_manufacturer_longer_than_its_column_gets_a_422,
);
