//! The tasks view (`GET /api/tasks`) searched and filtered, on every database: by
//! title, status, worker, error text and time; sorted, and paged by cursor.

mod common;

use common::{Backend, Roles, TestApp, flaky_cover_server, game_body, on_every_backend, with};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// The titles `GET /api/tasks?QUERY` lists, sorted (the games are processed at once,
/// so the order they changed in is not the test's to choose).
async fn titles(app: &TestApp, query: &str) -> Vec<String> {
    let mut titles = listed(&app.get_json(&format!("/api/tasks?{query}")).await);
    titles.sort();
    titles
}

/// The titles of an answer of `GET /api/tasks`, an array or a page, in its order.
fn listed(answer: &Value) -> Vec<String> {
    let tasks = answer.get("items").unwrap_or(answer);
    tasks
        .as_array()
        .unwrap()
        .iter()
        .map(|task| task["title"].as_str().unwrap().to_owned())
        .collect()
}

on_every_backend!(the_tasks_view_is_searched_and_filtered);

async fn the_tasks_view_is_searched_and_filtered(backend: Backend) {
    let app = TestApp::spawn_on_with(
        backend,
        Roles::Serve,
        &["--max-attempts", "1", "--worker-id", "tasker"],
    )
    .await;
    let before = chrono::Utc::now();
    let down = flaky_cover_server(Arc::new(AtomicBool::new(false))).await;
    let mut ids = Vec::new();
    for (title, cover) in [
        ("Tasked Zelda 100%", None),
        ("Tasked zelda Fails", Some(down.as_str())),
        ("Tasked Metroid", None),
    ] {
        let game = app
            .create_game(&with(game_body(title), "imageUrl", json!(cover)))
            .await;
        ids.push(game["id"].as_i64().unwrap());
    }
    app.wait_for_status(ids[0], "completed", 1).await;
    app.wait_for_status(ids[1], "failed", 1).await;
    app.wait_for_status(ids[2], "completed", 1).await;
    let after = chrono::Utc::now() + chrono::TimeDelta::seconds(1);
    let time = |at: chrono::DateTime<chrono::Utc>| {
        url::form_urlencoded::byte_serialize(at.to_rfc3339().as_bytes()).collect::<String>()
    };

    // The title in any case, `%` taken literally.
    assert_eq!(
        titles(&app, "search=TASKED%20ZELDA").await,
        ["Tasked Zelda 100%", "Tasked zelda Fails"]
    );
    assert_eq!(titles(&app, "search=100%25").await, ["Tasked Zelda 100%"]);
    assert_eq!(titles(&app, "search=0%25").await, ["Tasked Zelda 100%"]);
    assert_eq!(
        titles(&app, "search=Tasked&status=failed").await,
        ["Tasked zelda Fails"]
    );
    assert_eq!(
        titles(&app, "error=HTTP%20503").await,
        ["Tasked zelda Fails"]
    );
    assert_eq!(
        titles(&app, "error=http%20503").await,
        ["Tasked zelda Fails"]
    );
    assert_eq!(titles(&app, "worker=tasker&search=Tasked").await.len(), 3);
    assert_eq!(titles(&app, "search=Tasked&limit=2").await.len(), 2);
    assert!(titles(&app, "worker=nobody").await.is_empty());
    let since = format!("search=Tasked&since={}", time(before));
    assert_eq!(titles(&app, &since).await.len(), 3);
    assert!(
        titles(&app, &format!("since={}", time(after)))
            .await
            .is_empty()
    );
    let until = format!("search=Tasked&until={}", time(before));
    assert!(titles(&app, &until).await.is_empty());
    // Blank filters are as if absent.
    assert_eq!(titles(&app, "search=Tasked&status=&error=").await.len(), 3);

    // Sorted by title, a page at a time: the cursor takes up where the page ended.
    let first = app
        .get_json("/api/tasks?search=Tasked&sort=title&limit=2")
        .await;
    assert_eq!(listed(&first), ["Tasked Metroid", "Tasked Zelda 100%"]);
    let cursor = first["nextCursor"].as_str().expect("a next page");
    let second = app
        .get_json(&format!(
            "/api/tasks?search=Tasked&sort=title&limit=2&cursor={cursor}"
        ))
        .await;
    assert_eq!(listed(&second), ["Tasked zelda Fails"]);
    assert_eq!(second["nextCursor"], Value::Null, "the last page");
    assert_eq!(
        listed(&app.get_json("/api/tasks?search=Tasked&sort=-title").await),
        ["Tasked zelda Fails", "Tasked Zelda 100%", "Tasked Metroid"]
    );
    // In the default order (latest change first), one at a time: each game once.
    let (mut seen, mut query) = (Vec::new(), "search=Tasked&limit=1".to_owned());
    loop {
        let page = app.get_json(&format!("/api/tasks?{query}")).await;
        seen.extend(listed(&page));
        let Some(next) = page["nextCursor"].as_str() else {
            break;
        };
        query = format!("search=Tasked&limit=1&cursor={next}");
    }
    seen.sort();
    assert_eq!(
        seen,
        ["Tasked Metroid", "Tasked Zelda 100%", "Tasked zelda Fails"]
    );
    // A cursor of another order, or none of ours, is refused.
    let other_order = format!("sort=-title&cursor={cursor}");
    for refused in [
        "status=done",
        "since=yesterday",
        "worker=a%00b",
        "sort=attempts",
        &other_order,
        "cursor=not-a-cursor",
    ] {
        let response = app.get(&format!("/api/tasks?{refused}")).await;
        assert_eq!(response.status(), 400, "{refused}");
    }
    app.stop().await;
}
