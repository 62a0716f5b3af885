//! Crash recovery: a `retrocat serve` process killed with SIGKILL while events are in
//! flight loses nothing and applies nothing twice once restarted.

use futures::StreamExt;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

struct Server {
    child: Child,
    base: String,
}

impl Server {
    async fn start(dir: &Path, port: u16, extra: &[&str]) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_retrocat"))
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .env(
                "DATABASE_URL",
                format!("sqlite://{}", dir.join("retrocat.db").display()),
            )
            .env("RETROCAT_BROKER_PATH", dir.join("broker.db"))
            .env_remove("RABBITMQ_URL")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("start retrocat");
        let server = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        for _ in 0..300 {
            if let Ok(response) = client.get(format!("{}/readyz", server.base)).send().await
                && response.status().is_success()
            {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "retrocat did not become ready: {}",
            std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
        );
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn statuses(client: &reqwest::Client, base: &str) -> Vec<Value> {
    client
        .get(format!("{base}/api/games?search=Crash%20test"))
        .send()
        .await
        .unwrap()
        .json::<Vec<Value>>()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_completes_every_event_exactly_once_after_restart() {
    const GAMES: usize = 1000;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::TempDir::new().unwrap();
    let port = free_port();
    let client = reqwest::Client::new();
    // Slow processing so that a backlog is in flight when the process dies.
    let server = Server::start(
        dir.path(),
        port,
        &["--simulate-work", "20ms", "--concurrency", "4"],
    )
    .await;

    let creates = futures::stream::iter(0..GAMES)
        .map(|n| {
            let (client, base) = (client.clone(), server.base.clone());
            async move {
                let body = json!({"title": format!("Crash test {n:04}"), "platformId": 1, "genreId": 1,
                                  "developer": "Crash Studio", "releaseYear": 1990});
                let response = client.post(format!("{base}/api/games")).json(&body).send().await.unwrap();
                assert_eq!(response.status(), 201);
                response.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
            }
        })
        .buffer_unordered(16);
    let ids: Vec<i64> = creates.collect().await;
    assert_eq!(ids.len(), GAMES);

    let before = statuses(&client, &server.base).await;
    let completed_before = before
        .iter()
        .filter(|g| g["processingStatus"] == "completed")
        .count();
    let mut child = server.child;
    child.kill().await.unwrap(); // SIGKILL: no chance to finish anything
    assert!(
        completed_before < GAMES,
        "everything finished before the kill; the test proves nothing"
    );

    let server = Server::start(dir.path(), port, &[]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let games = statuses(&client, &server.base).await;
        let completed = games
            .iter()
            .filter(|g| g["processingStatus"] == "completed")
            .count();
        if completed == GAMES {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {completed}/{GAMES} completed after restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Count effects, not statuses: each game's history holds exactly one completion.
    for id in &ids {
        let history: Vec<Value> = client
            .get(format!("{}/api/games/{id}/history", server.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let completions = history
            .iter()
            .filter(|a| a["outcome"] == "completed")
            .count();
        assert_eq!(completions, 1, "game {id}: {history:?}");
    }
    let health: Value = client
        .get(format!("{}/health", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["outboxPending"], 0, "{health}");

    // SIGTERM: a clean exit.
    let mut child = server.child;
    let pid = child.id().unwrap().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(exit.success(), "exit status after SIGTERM: {exit}");
}
