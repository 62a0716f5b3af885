//! `GET /api/games` without pagination: the original's plain array of every game,
//! streamed from the database batch by batch.

mod common;

use common::processes::{Deployment, free_port, http_client};
use common::{Backend, Roles, TestApp, on_every_backend};
use retrocat::domain::{Developer, EventId, GameDraft, GameTitle, ReleaseYear};
use retrocat::storage::NewGame;
use serde_json::Value;
use sqlx::{Connection, SqliteConnection};

/// More games than several of the stream's batches.
const GAMES: usize = 700;

async fn create_games(app: &TestApp) {
    let drafts: Vec<NewGame> = (0..GAMES)
        .map(|n| NewGame {
            draft: GameDraft {
                title: GameTitle::parse(&format!("Batch Game {:04}", (n * 7919) % GAMES)).unwrap(),
                platform_id: 1 + (n % 3) as i64,
                genre_id: 1 + (n % 2) as i64,
                developer: Developer::parse("Batch Studio").unwrap(),
                release_year: ReleaseYear::parse(1980 + (n % 20) as i64).unwrap(),
                description: format!("Game number {n}."),
                image_url: None,
            },
            event: EventId::generate(),
            trace: None,
        })
        .collect();
    for batch in drafts.chunks(100) {
        let created = app.parts.store.create_games(batch).await.unwrap();
        assert!(created.iter().all(Result::is_ok), "{created:?}");
    }
}

/// Every game of `filter`, one page of 500 after the other.
async fn paged_walk(app: &TestApp, filter: &str) -> Vec<Value> {
    let mut games = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/api/games?limit=500&{filter}");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let page = app.get_json(&path).await;
        games.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return games,
        }
    }
}

async fn an_unpaged_list_of_many_batches_is_the_paged_walk(backend: Backend) {
    let app = TestApp::spawn_on_with(backend, Roles::ApiOnly, &[]).await;
    create_games(&app).await;
    for filter in [
        "",
        "platformId=2",
        "search=batch%20game",
        "sort=-releaseYear",
        "genreId=1&sort=createdAt",
    ] {
        let response = app.get(&format!("/api/games?{filter}")).await;
        assert_eq!(response.status(), 200, "{filter}");
        assert_eq!(response.headers()["content-type"], "application/json");
        let listed: Vec<Value> = response.json().await.unwrap();
        let walked = paged_walk(&app, filter).await;
        assert!(walked.len() > 200, "{filter}: {} games", walked.len());
        assert_eq!(listed.len(), walked.len(), "{filter}");
        assert!(
            listed == walked,
            "{filter}: the same games in the same order"
        );
    }
    let all = app.get_json("/api/games").await;
    assert!(all.as_array().unwrap().len() >= GAMES + 24);
    let none = app.get_json("/api/games?platformId=999999").await;
    assert_eq!(none, Value::Array(Vec::new()));
    app.stop().await;
}

on_every_backend!(an_unpaged_list_of_many_batches_is_the_paged_walk);

/// Games in the large catalog; with their descriptions, about 45 MB of JSON.
const LARGE: i64 = 50_000;

/// The server's peak resident memory grows by a batch or two while it sends a list of
/// 45 MB, not by the list (the whole list in memory took about twice its JSON).
#[tokio::test]
async fn an_unpaged_list_of_a_large_catalog_is_not_held_in_memory() {
    let deployment = Deployment::on(Backend::Sqlite).await;
    deployment.run("migrate", &[]).await;
    let mut db = SqliteConnection::connect(deployment.database_url())
        .await
        .unwrap();
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1) \
         INSERT INTO games (title, platform_id, genre_id, developer, release_year, \
           year_category, description, created_at, updated_at) \
         SELECT printf('Large Game %06d', i), 1 + i % 3, 1 + i % 2, 'Bulk Studio', \
           1990, '1990s', printf('%.500c', 'x'), i, i FROM n",
    )
    .bind(LARGE)
    .execute(&mut db)
    .await
    .unwrap();
    db.close().await.unwrap();

    let server = deployment
        .start_http("serve", "serve", free_port(), &[])
        .await;
    let client = http_client();
    // The paths of a list, warmed: pages, and an unpaged list of nothing.
    for path in ["/api/games?limit=500", "/api/games?platformId=999999"] {
        let response = client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
    }
    let before = server.peak_resident_bytes();

    let response = client.get(server.url("/api/games")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.bytes().await.unwrap();
    let after = server.peak_resident_bytes();
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    let grown = after.saturating_sub(before);
    assert!(
        grown < 16 << 20,
        "sending {:.1} MiB of games grew the server's peak memory by {:.1} MiB \
         ({:.1} → {:.1} MiB)",
        mib(body.len() as u64),
        mib(grown),
        mib(before),
        mib(after)
    );

    let games: Vec<Value> = serde_json::from_slice(&body).unwrap();
    assert!(games.len() as i64 >= LARGE, "{} games", games.len());
    let titles: Vec<&str> = games.iter().map(|g| g["title"].as_str().unwrap()).collect();
    assert!(titles.is_sorted(), "sorted by title");
    server.stop().await;
}
