//! The HTTP API against a real server on a random port with a fresh database.

mod common;

use common::{Backend, Roles, TestApp, game_body, on_every_backend, with, without};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, Connection, Executor, MySqlConnection, PgConnection};
use std::time::Duration;
use tokio::sync::oneshot;

async fn a_fresh_install_serves_the_seed_catalog(backend: Backend) {
    let app = TestApp::spawn_on_with(backend, Roles::ApiOnly, &[]).await;
    let games = app.get_json("/api/games").await;
    let games = games
        .as_array()
        .expect("without paging, a plain array as the original");
    assert!(games.len() >= 24, "{} seed games", games.len());
    let titles: Vec<&str> = games.iter().filter_map(|g| g["title"].as_str()).collect();
    for title in [
        "Super Mario Bros.",
        "Chrono Trigger",
        "Tetris",
        "Donkey Kong Country",
    ] {
        assert!(titles.contains(&title), "{title} missing from {titles:?}");
    }
    let mut sorted = titles.clone();
    sorted.sort();
    assert_eq!(titles, sorted, "sorted by title, as the original");
    assert!(
        app.get_json("/api/platforms")
            .await
            .as_array()
            .unwrap()
            .len()
            >= 8
    );
    assert!(app.get_json("/api/genres").await.as_array().unwrap().len() >= 8);
    app.stop().await;
}

async fn creating_a_game_answers_201_pending_with_a_derived_decade(backend: Backend) {
    let app = TestApp::spawn_on_with(backend, Roles::ApiOnly, &[]).await;
    let body = with(game_body("Gunstar Heroes"), "yearCategory", json!("1970s"));
    let body = with(body, "genreId", json!(2));
    let response = app.post_json("/api/games", &body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let game: Value = response.json().await.unwrap();
    assert_eq!(location, format!("/api/games/{}", game["id"]));
    assert_eq!(game["title"], "Gunstar Heroes");
    assert_eq!(game["processingStatus"], "pending");
    assert_eq!(game["version"], 1);
    assert_eq!(
        game["yearCategory"], "1990s",
        "the client's yearCategory is ignored"
    );
    assert_eq!(game["platformName"], "NES", "joined from platform 1");
    let fetched = app.get_json(&location).await;
    assert_eq!(
        fetched, game,
        "the answer is the game as stored, every field"
    );
    app.stop().await;
}

async fn the_original_pages_form_body_is_accepted(backend: Backend) {
    let app = TestApp::spawn_on_with(backend, Roles::ApiOnly, &[]).await;
    // The original page sent select values as strings and an empty image URL.
    let body = json!({
        "title": "Streets of Rage 2", "platformId": "3", "releaseYear": 1992,
        "yearCategory": "1990s", "genreId": "3", "developer": "Sega",
        "description": "Beat 'em up.", "imageUrl": ""
    });
    let game = app.create_game(&body).await;
    assert_eq!(game["platformId"], 3);
    assert_eq!(game["imageUrl"], Value::Null);
    app.stop().await;
}

async fn updating_a_game_bumps_its_version_and_deleting_removes_it(backend: Backend) {
    let app = TestApp::spawn_on_with(backend, Roles::ApiOnly, &[]).await;
    let game = app.create_game(&game_body("Draft Title")).await;
    let path = format!("/api/games/{}", game["id"]);
    let response = app.put_json(&path, &game_body("Final Title")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let updated: Value = response.json().await.unwrap();
    assert_eq!(updated["title"], "Final Title");
    assert_eq!(updated["version"], 2);
    assert_eq!(updated["processingStatus"], "pending");

    let response = app.client.delete(app.url(&path)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.get(&path).await.status(), StatusCode::NOT_FOUND);
    let response = app.client.delete(app.url(&path)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    app.stop().await;
}

async fn filters_search_and_pagination_walk_the_catalog_once(backend: Backend) {
    let app = TestApp::spawn_on_with(backend, Roles::ApiOnly, &[]).await;
    let all = app.get_json("/api/games").await.as_array().unwrap().clone();

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/api/games?limit=5".to_owned();
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let page = app.get_json(&path).await;
        let items = page["items"]
            .as_array()
            .expect("with paging, a page object");
        assert!(items.len() <= 5);
        seen.extend(items.iter().map(|g| g["id"].as_i64().unwrap()));
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let ids: Vec<i64> = all.iter().map(|g| g["id"].as_i64().unwrap()).collect();
    assert_eq!(seen, ids, "pages in order, each game once");

    let marios = app.get_json("/api/games?search=mario").await;
    assert!(marios.as_array().unwrap().len() >= 2);
    for game in marios.as_array().unwrap() {
        let haystack = format!("{} {}", game["title"], game["developer"]).to_lowercase();
        assert!(haystack.contains("mario"), "{game}");
    }
    let eighties = app
        .get_json("/api/games?yearCategory=1980s&platformId=1")
        .await;
    for game in eighties.as_array().unwrap() {
        assert_eq!(game["yearCategory"], "1980s");
        assert_eq!(game["platformId"], 1);
    }
    let newest = app.get_json("/api/games?sort=-releaseYear").await;
    let years: Vec<i64> = newest
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["releaseYear"].as_i64().unwrap())
        .collect();
    assert!(years.windows(2).all(|w| w[0] >= w[1]), "{years:?}");
    app.stop().await;
}

/// The titles of a list's games, in its order.
fn titles(games: Value) -> Vec<String> {
    let games = games.as_array().unwrap().iter();
    games
        .map(|g| g["title"].as_str().unwrap().to_owned())
        .collect()
}

/// Search ignores case and takes `%`, `_`, `!` and `"` literally; titles sort in byte order
/// (capitals first), the same on every database.
async fn search_is_literal_and_case_insensitive_and_titles_sort_by_bytes(backend: Backend) {
    let app = TestApp::spawn_on_with(backend, Roles::ApiOnly, &[]).await;
    for title in [
        "100% Pure",
        "1000 Pure",
        "snake_case",
        "snakeXcase",
        "zz top",
        "ZZ Bottom",
        "Say \"Hi\" Now",
    ] {
        app.create_game(&game_body(title)).await;
    }
    for (search, expected) in [
        ("100%25", vec!["100% Pure"]),
        ("E_C", vec!["snake_case"]),
        ("PITFALL!", vec!["Pitfall!"]),
        ("%22hi%22", vec!["Say \"Hi\" Now"]),
        ("zz", vec!["ZZ Bottom", "zz top"]),
    ] {
        let found = titles(app.get_json(&format!("/api/games?search={search}")).await);
        assert_eq!(found, expected, "?search={search}");
    }
    let all = titles(app.get_json("/api/games").await);
    let position = |title: &str| all.iter().position(|t| t == title).unwrap();
    assert!(position("ZZ Bottom") < position("snake_case"), "{all:?}");
    app.stop().await;
}

/// A term of several words is found anywhere, its first and last words inside longer
/// ones too, and only where the whole term is (SQLite first looks its inner words up
/// in an index of words, then checks the term).
async fn search_of_several_words_finds_the_whole_term_anywhere(backend: Backend) {
    let app = TestApp::spawn_on_with(backend, Roles::ApiOnly, &[]).await;
    for title in [
        "Crimson Dragon Saga II",
        "XCrimson Dragon Sagas",
        "crimson DRAGON saga",
        "Dragon Saga Crimson",
        "Crimson Dragon Tales",
    ] {
        app.create_game(&game_body(title)).await;
    }
    app.create_game(&with(
        game_body("Unrelated"),
        "developer",
        json!("Big Crimson Dragon Saga Studio"),
    ))
    .await;
    let everywhere = vec![
        "Crimson Dragon Saga II",
        "Unrelated",
        "XCrimson Dragon Sagas",
        "crimson DRAGON saga",
    ];
    for (search, expected) in [
        // One inner word and a long last one: the words' index, then the term.
        ("Crimson Dragon Saga", everywhere.clone()),
        // Two inner words.
        ("n Dragon Saga I", vec!["Crimson Dragon Saga II"]),
        ("big crimson dragon saga studio", vec!["Unrelated"]),
        // Too few whole words for the words' index: the trigrams.
        ("mson Dragon Sa", everywhere),
        ("Saga Crimson", vec!["Dragon Saga Crimson"]),
    ] {
        let query = search.replace(' ', "%20");
        let found = titles(app.get_json(&format!("/api/games?search={query}")).await);
        assert_eq!(found, expected, "?search={search}");
    }
    app.stop().await;
}

/// Search finds a game by its current title and developer only: after a rename the
/// old title finds nothing, after a delete nothing at all (SQLite answers terms of
/// three characters or more from a trigram index, which must follow every write).
async fn search_follows_renames_and_deletes(backend: Backend) {
    let app = TestApp::spawn_on_with(backend, Roles::ApiOnly, &[]).await;
    let game = app
        .create_game(&game_body("The Quuxbert Returns Home"))
        .await;
    let path = format!("/api/games/{}", game["id"]);
    let found = |search: &'static str| {
        let app = &app;
        async move {
            let games = app.get_json(&format!("/api/games?search={search}")).await;
            games.as_array().unwrap().len()
        }
    };
    assert_eq!(found("quuxbert").await, 1);
    assert_eq!(
        found("he%20Quuxbert%20Returns%20Ho").await,
        1,
        "by its words"
    );
    assert_eq!(found("TEST STUDIO").await, 1, "by developer");

    let mut renamed = game_body("Xyzzy Forever And Ever");
    renamed["developer"] = json!("Plugh Works");
    let response = app.put_json(&path, &renamed).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(found("quuxbert").await, 0, "the old title");
    assert_eq!(
        found("he%20Quuxbert%20Returns%20Ho").await,
        0,
        "the old words"
    );
    assert_eq!(found("xyzzy").await, 1, "the new title");
    assert_eq!(found("y%20Forever%20And%20E").await, 1, "the new words");
    assert_eq!(found("plugh").await, 1, "the new developer");

    let response = app.client.delete(app.url(&path)).send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(found("xyzzy").await, 0, "deleted");
    assert_eq!(
        found("y%20Forever%20And%20E").await,
        0,
        "deleted, by its words"
    );
    app.stop().await;
}

/// Concurrent creates share transactions; one naming a missing genre is refused with
/// its field, and only it: the others are created, each once.
async fn a_refused_create_among_concurrent_ones_refuses_only_itself(backend: Backend) {
    let app = TestApp::spawn_on_with(backend, Roles::ApiOnly, &[]).await;
    let answers = futures::future::join_all((0..24).map(|n| {
        let mut body = game_body(&format!("Crowd {n:02}"));
        if n % 8 == 3 {
            body["genreId"] = json!(9999);
        }
        let app = &app;
        async move {
            let response = app.post_json("/api/games", &body).await;
            (
                n,
                response.status(),
                response.json::<Value>().await.unwrap(),
            )
        }
    }))
    .await;
    for (n, status, body) in &answers {
        if n % 8 == 3 {
            assert_eq!(*status, StatusCode::UNPROCESSABLE_ENTITY, "{n}: {body}");
            assert_eq!(body["errors"][0]["field"], "genreId", "{n}: {body}");
        } else {
            assert_eq!(*status, StatusCode::CREATED, "{n}: {body}");
        }
    }
    let crowd = titles(app.get_json("/api/games?search=Crowd").await);
    let expected: Vec<String> = (0..24)
        .filter(|n| n % 8 != 3)
        .map(|n| format!("Crowd {n:02}"))
        .collect();
    assert_eq!(crowd, expected);
    app.stop().await;
}

/// Concurrent creates share one INSERT: each is answered with its own game, under the
/// id that reads it back.
async fn concurrent_creates_each_get_their_own_game(backend: Backend) {
    let app = TestApp::spawn_on_with(backend, Roles::ApiOnly, &[]).await;
    let answers = futures::future::join_all((0..32).map(|n| {
        let mut body = game_body(&format!("Throng {n:02}"));
        body["developer"] = json!(format!("Studio {n}"));
        body["releaseYear"] = json!(1970 + n);
        let app = &app;
        async move { (n, app.create_game(&body).await) }
    }))
    .await;
    let mut ids = std::collections::HashSet::new();
    for (n, created) in &answers {
        assert_eq!(created["title"], format!("Throng {n:02}"), "{created}");
        assert_eq!(created["developer"], format!("Studio {n}"), "{created}");
        assert_eq!(created["releaseYear"], 1970 + n, "{created}");
        assert!(ids.insert(created["id"].as_i64().unwrap()), "{created}");
        let read = app.get_json(&format!("/api/games/{}", created["id"])).await;
        assert_eq!(read["title"], created["title"], "{read}");
        assert_eq!(read["developer"], created["developer"], "{read}");
    }
    app.stop().await;
}

/// Concurrent updates share a transaction: one naming a missing genre, and one of a
/// game that does not exist, are refused alone; two of the same game are both
/// applied, one version after the other.
async fn concurrent_updates_are_refused_or_applied_each_alone(backend: Backend) {
    let app = TestApp::spawn_on_with(backend, Roles::ApiOnly, &[]).await;
    let mut ids = Vec::new();
    for n in 0..12 {
        ids.push(app.create_game(&game_body(&format!("Mob {n:02}"))).await["id"].clone());
    }
    let twice = ids[0].clone();
    let answers = futures::future::join_all((0..16).map(|n| {
        let id = match n {
            5 => json!(999_999),
            12.. => twice.clone(),
            _ => ids[n].clone(),
        };
        let mut body = game_body(&format!("Mob {n:02} renamed"));
        if n == 7 {
            body["genreId"] = json!(9999);
        }
        let app = &app;
        async move {
            let response = app.put_json(&format!("/api/games/{id}"), &body).await;
            (
                n,
                response.status(),
                response.json::<Value>().await.unwrap(),
            )
        }
    }))
    .await;
    let mut versions = Vec::new();
    for (n, status, body) in &answers {
        match n {
            5 => assert_eq!(*status, StatusCode::NOT_FOUND, "{n}: {body}"),
            7 => {
                assert_eq!(*status, StatusCode::UNPROCESSABLE_ENTITY, "{n}: {body}");
                assert_eq!(body["errors"][0]["field"], "genreId", "{n}: {body}");
            }
            _ => {
                assert_eq!(*status, StatusCode::OK, "{n}: {body}");
                assert_eq!(body["title"], format!("Mob {n:02} renamed"), "{body}");
                if *n == 0 || *n >= 12 {
                    versions.push(body["version"].as_i64().unwrap());
                }
            }
        }
    }
    versions.sort_unstable();
    assert_eq!(
        versions,
        vec![2, 3, 4, 5, 6],
        "each update of one game is a version"
    );
    let refused = app.get_json(&format!("/api/games/{}", ids[7])).await;
    assert_eq!(refused["title"], "Mob 07", "{refused}");
    assert_eq!(refused["version"], 1, "{refused}");
    app.stop().await;
}

/// Writing the values a row already has still finds the row (MySQL counts only changed
/// rows unless told otherwise).
async fn rewriting_unchanged_values_is_not_a_404(backend: Backend) {
    let app = TestApp::spawn_on_with(backend, Roles::ApiOnly, &[]).await;
    // Platform 1 as seeded.
    let platform = json!({"name": "NES", "manufacturer": "Nintendo", "releaseYear": 1983});
    for _ in 0..2 {
        let response = app.put_json("/api/platforms/1", &platform).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let game = app.create_game(&game_body("Twice Completed")).await;
    let path = format!("/api/games/{}/process-complete", game["id"]);
    for _ in 0..2 {
        let response = app.put_json(&path, &json!({"status": "completed"})).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    app.stop().await;
}

async fn the_original_consumers_callback_sets_the_status(backend: Backend) {
    let app = TestApp::spawn_on_with(backend, Roles::ApiOnly, &[]).await;
    let game = app.create_game(&game_body("Callback")).await;
    let pending = app.get_json("/api/processing").await;
    assert_eq!(
        pending[0],
        json!({"id": game["id"], "title": "Callback", "processing_status": "pending"}),
        "the original's shape, newest first"
    );
    let path = format!("/api/games/{}/process-complete", game["id"]);
    let response = app.put_json(&path, &json!({"status": "completed"})).await;
    assert_eq!(response.status(), StatusCode::OK);
    let game = app.get_json(&format!("/api/games/{}", game["id"])).await;
    assert_eq!(game["processingStatus"], "completed");
    assert!(
        app.get_json("/api/processing")
            .await
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["id"] != game["id"])
    );
    app.stop().await;
}

async fn health_endpoints_report_the_database_and_broker(backend: Backend) {
    let app = TestApp::spawn_on_with(backend, Roles::ApiOnly, &[]).await;
    let health = app.get_json("/health").await;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["database"], "connected");
    assert_eq!(health["rabbitmq"], "connected");
    assert!(health["timestamp"].is_string());
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);
    app.stop().await;
}

async fn cors_allows_the_configured_origin_only(backend: Backend) {
    let app = TestApp::spawn_on_with(
        backend,
        Roles::ApiOnly,
        &["--cors-origins", "http://localhost"],
    )
    .await;
    let allowed = app
        .client
        .get(app.url("/api/genres"))
        .header("origin", "http://localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "http://localhost"
    );
    let other = app
        .client
        .get(app.url("/api/genres"))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    app.stop().await;
}

/// Everything a bad request could change, to compare before and after.
async fn snapshot(app: &TestApp) -> (Value, Value, Value, u64) {
    (
        app.get_json("/api/games").await,
        app.get_json("/api/platforms").await,
        app.get_json("/api/genres").await,
        app.store().outbox_backlog().await.unwrap().pending,
    )
}

/// (method, path, content type, body, expected status, field named in the problem)
type BadRequest = (
    &'static str,
    &'static str,
    &'static str,
    Vec<u8>,
    u16,
    Option<&'static str>,
);

async fn malformed_requests_get_a_problem_and_change_nothing(backend: Backend) {
    let app = TestApp::spawn_on_with(backend, Roles::ApiOnly, &[]).await;
    let valid = game_body("Valid");
    let long = "x".repeat(101);
    let cases: Vec<BadRequest> = vec![
        (
            "POST",
            "/api/games",
            "application/json",
            b"{}".to_vec(),
            400,
            Some("title"),
        ),
        (
            "POST",
            "/api/games",
            "application/json",
            json_bytes(with(valid.clone(), "title", json!(""))),
            422,
            Some("title"),
        ),
        (
            "POST",
            "/api/games",
            "application/json",
            json_bytes(with(valid.clone(), "title", json!("   "))),
            422,
            Some("title"),
        ),
        (
            "POST",
            "/api/games",
            "application/json",
            json_bytes(with(valid.clone(), "title", json!(long))),
            422,
            Some("title"),
        ),
        (
            "POST",
            "/api/games",
            "application/json",
            json_bytes(with(valid.clone(), "title", json!(42))),
            400,
            Some("title"),
        ),
        (
            "POST",
            "/api/games",
            "application/json",
            json_bytes(without(valid.clone(), "developer")),
            400,
            Some("developer"),
        ),
        (
            "POST",
            "/api/games",
            "application/json",
            json_bytes(with(valid.clone(), "developer", json!(long))),
            422,
            Some("developer"),
        ),
        (
            "POST",
            "/api/games",
            "application/json",
            json_bytes(with(valid.clone(), "releaseYear", json!(1949))),
            422,
            Some("releaseYear"),
        ),
        (
            "POST",
            "/api/games",
            "application/json",
            json_bytes(with(valid.clone(), "releaseYear", json!(2999))),
            422,
            Some("releaseYear"),
        ),
        (
            "POST",
            "/api/games",
            "application/json",
            json_bytes(with(valid.clone(), "releaseYear", json!("nineteen"))),
            400,
            Some("releaseYear"),
        ),
        (
            "POST",
            "/api/games",
            "application/json",
            json_bytes(with(valid.clone(), "releaseYear", json!(1991.5))),
            400,
            Some("releaseYear"),
        ),
        (
            "POST",
            "/api/games",
            "application/json",
            json_bytes(with(valid.clone(), "platformId", json!(9999))),
            422,
            Some("platformId"),
        ),
        (
            "POST",
            "/api/games",
            "application/json",
            json_bytes(with(valid.clone(), "platformId", json!(-1))),
            422,
            Some("platformId"),
        ),
        (
            "POST",
            "/api/games",
            "application/json",
            json_bytes(with(valid.clone(), "platformId", json!("abc"))),
            400,
            Some("platformId"),
        ),
        (
            "POST",
            "/api/games",
            "application/json",
            json_bytes(with(valid.clone(), "genreId", json!(9999))),
            422,
            Some("genreId"),
        ),
        (
            "PUT",
            "/api/games/1",
            "application/json",
            json_bytes(with(valid.clone(), "genreId", json!(9999))),
            422,
            Some("genreId"),
        ),
        (
            "POST",
            "/api/games",
            "application/json",
            json_bytes(with(valid.clone(), "genreId", json!({"id": 1}))),
            400,
            Some("genreId"),
        ),
        (
            "POST",
            "/api/games",
            "application/json",
            json_bytes(with(
                valid.clone(),
                "imageUrl",
                json!("javascript:alert(1)"),
            )),
            422,
            Some("imageUrl"),
        ),
        (
            "POST",
            "/api/games",
            "application/json",
            json_bytes(with(
                valid.clone(),
                "imageUrl",
                json!(format!("https://e.com/{}", "a".repeat(300))),
            )),
            422,
            Some("imageUrl"),
        ),
        (
            "POST",
            "/api/games",
            "application/json",
            json_bytes(with(valid.clone(), "rating", json!(5))),
            400,
            Some("rating"),
        ),
        (
            "POST",
            "/api/games",
            "application/json",
            b"{\"title\": oops".to_vec(),
            400,
            None,
        ),
        (
            "POST",
            "/api/games",
            "application/json",
            b"[]".to_vec(),
            400,
            None,
        ),
        (
            "POST",
            "/api/games",
            "text/plain",
            json_bytes(valid.clone()),
            415,
            None,
        ),
        (
            "POST",
            "/api/games",
            "application/json",
            vec![b' '; 6 * 1024 * 1024],
            413,
            None,
        ),
        (
            "PUT",
            "/api/games/abc",
            "application/json",
            json_bytes(valid.clone()),
            400,
            Some("id"),
        ),
        (
            "PUT",
            "/api/games/0",
            "application/json",
            json_bytes(valid.clone()),
            400,
            Some("id"),
        ),
        (
            "PUT",
            "/api/games/1",
            "application/json",
            json_bytes(with(valid.clone(), "title", json!(""))),
            422,
            Some("title"),
        ),
        (
            "PUT",
            "/api/games/99999",
            "application/json",
            json_bytes(valid.clone()),
            404,
            None,
        ),
        (
            "PUT",
            "/api/games/1/process-complete",
            "application/json",
            br#"{"status":"done"}"#.to_vec(),
            422,
            Some("status"),
        ),
        (
            "PUT",
            "/api/games/1/cover",
            "text/plain",
            b"hello".to_vec(),
            415,
            None,
        ),
        (
            "PUT",
            "/api/games/1/cover",
            "image/png",
            b"not an image at all".to_vec(),
            415,
            None,
        ),
        (
            "GET",
            "/api/games?limit=0",
            "",
            Vec::new(),
            400,
            Some("limit"),
        ),
        (
            "GET",
            "/api/games?status=done",
            "",
            Vec::new(),
            400,
            Some("status"),
        ),
        (
            "GET",
            "/api/games?limit=5&cursor=garbage",
            "",
            Vec::new(),
            400,
            Some("cursor"),
        ),
        (
            "POST",
            "/api/platforms",
            "application/json",
            br#"{"name":""}"#.to_vec(),
            422,
            Some("name"),
        ),
        (
            "POST",
            "/api/platforms",
            "application/json",
            br#"{"name":"NES"}"#.to_vec(),
            409,
            None,
        ),
        (
            "PUT",
            "/api/genres/2",
            "application/json",
            br#"{"name":"Platformer"}"#.to_vec(),
            409,
            None,
        ),
        ("DELETE", "/api/platforms/1", "", Vec::new(), 409, None),
        ("DELETE", "/api/genres/1", "", Vec::new(), 409, None),
        ("GET", "/api/nothing-here", "", Vec::new(), 404, None),
    ];
    assert!(cases.len() >= 20);
    let before = snapshot(&app).await;
    for (method, path, content_type, body, status, field) in cases {
        let mut request = app
            .client
            .request(method.parse().unwrap(), app.url(path))
            .body(body);
        if !content_type.is_empty() {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.unwrap();
        let case = format!("{method} {path} ({content_type})");
        assert_eq!(response.status().as_u16(), status, "{case}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{case}"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["status"], status, "{case}: {problem}");
        assert!(
            problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{case}: {problem}"
        );
        assert_eq!(
            problem["message"], problem["detail"],
            "{case}: the original's field"
        );
        if let Some(field) = field {
            let fields: Vec<&str> = problem["errors"]
                .as_array()
                .map(|errors| errors.iter().filter_map(|e| e["field"].as_str()).collect())
                .unwrap_or_default();
            assert!(
                fields.contains(&field),
                "{case}: expected {field} in {problem}"
            );
        }
        assert_eq!(snapshot(&app).await, before, "{case} changed the database");
    }
    app.stop().await;
}

fn json_bytes(value: Value) -> Vec<u8> {
    serde_json::to_vec(&value).unwrap()
}

async fn every_invalid_field_is_reported_at_once(backend: Backend) {
    let app = TestApp::spawn_on_with(backend, Roles::ApiOnly, &[]).await;
    let body =
        json!({"title": "", "platformId": 1, "genreId": 1, "developer": "", "releaseYear": 1900});
    let response = app.post_json("/api/games", &body).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = response.json().await.unwrap();
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["title", "developer", "releaseYear"]);
    app.stop().await;
}

async fn markup_in_a_title_is_stored_and_returned_as_text(backend: Backend) {
    let app = TestApp::spawn_on_with(backend, Roles::ApiOnly, &[]).await;
    let title = "<img src=x onerror=alert(1)>";
    let game = app.create_game(&game_body(title)).await;
    let fetched = app.get_json(&format!("/api/games/{}", game["id"])).await;
    assert_eq!(fetched["title"], title);
    app.stop().await;
}

/// Another client deletes a genre while a game naming it is written: the check before
/// the insert still saw the genre, so the foreign key refuses the insert, and the 422
/// names `genreId` (MySQL names the constraint only in its message).
async fn a_genre_deleted_during_the_write_is_named_in_the_422(backend: Backend) {
    let app = TestApp::spawn_on_with(backend, Roles::ApiOnly, &[]).await;
    let response = app
        .post_json("/api/genres", &json!({"name": "Doomed"}))
        .await;
    let genre: Value = response.json().await.unwrap();
    let (url, id) = (app.server_database_url(), genre["id"].as_i64().unwrap());
    let (deleted, is_deleted) = oneshot::channel();
    let write = async {
        is_deleted.await.unwrap();
        let body = with(game_body("Orphan"), "genreId", json!(id));
        app.post_json("/api/games", &body).await
    };
    let (committed, response) = match backend {
        Backend::Postgres => tokio::join!(
            delete_while_a_write_waits::<PgConnection>(
                url,
                id,
                "SELECT 1 FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                deleted,
            ),
            write
        ),
        Backend::Mysql => tokio::join!(
            delete_while_a_write_waits::<MySqlConnection>(
                url,
                id,
                "SELECT 1 FROM information_schema.PROCESSLIST \
                 WHERE DB = DATABASE() AND INFO LIKE 'INSERT INTO games %'",
                deleted,
            ),
            write
        ),
        Backend::Sqlite => unreachable!("SQLite has one writer at a time"),
    };
    committed.expect("the delete commits");
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "genreId", "{problem}");
    app.stop().await;
}

/// Deletes genre `id` in an open transaction, says so on `deleted`, and commits once
/// `waiting` finds the write that the delete blocks (on MySQL: an insert into `games`
/// still running, which takes microseconds unless it waits for a lock).
async fn delete_while_a_write_waits<C>(
    url: &str,
    id: i64,
    waiting: &'static str,
    deleted: oneshot::Sender<()>,
) -> sqlx::Result<()>
where
    C: Connection,
    for<'c> &'c mut C: Executor<'c>,
{
    let mut deleter = C::connect(url).await?;
    deleter.execute("BEGIN").await?;
    let delete = format!("DELETE FROM genres WHERE id = {id}");
    deleter.execute(AssertSqlSafe(delete)).await?;
    let _ = deleted.send(());
    let mut monitor = C::connect(url).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while monitor.fetch_optional(waiting).await?.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the write never waited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    deleter.execute("COMMIT").await?;
    deleter.close().await
}

on_every_backend!(
    a_fresh_install_serves_the_seed_catalog,
    creating_a_game_answers_201_pending_with_a_derived_decade,
    the_original_pages_form_body_is_accepted,
    updating_a_game_bumps_its_version_and_deleting_removes_it,
    filters_search_and_pagination_walk_the_catalog_once,
    the_original_consumers_callback_sets_the_status,
    health_endpoints_report_the_database_and_broker,
    cors_allows_the_configured_origin_only,
    malformed_requests_get_a_problem_and_change_nothing,
    every_invalid_field_is_reported_at_once,
    markup_in_a_title_is_stored_and_returned_as_text,
    search_is_literal_and_case_insensitive_and_titles_sort_by_bytes,
    search_of_several_words_finds_the_whole_term_anywhere,
    search_follows_renames_and_deletes,
    a_refused_create_among_concurrent_ones_refuses_only_itself,
    concurrent_creates_each_get_their_own_game,
    concurrent_updates_are_refused_or_applied_each_alone,
    rewriting_unchanged_values_is_not_a_404;
    servers:
    a_genre_deleted_during_the_write_is_named_in_the_422,
);
