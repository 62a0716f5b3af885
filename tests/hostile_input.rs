//! What a careless client or an attacker sends gets a clear answer and changes nothing:
//! control characters in text, text longer than its column.

mod common;

use common::{Backend, Roles, TestApp, game_body, on_every_backend, with};
use serde_json::{Value, json};

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

on_every_backend!(
    control_characters_in_text_get_a_400_naming_the_field,
    a_manufacturer_longer_than_its_column_gets_a_422,
);
