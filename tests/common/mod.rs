//! `TestApp`: the real application on a random port, with a fresh database and broker
//! in a temporary directory, plus typed helpers that read like the API.
#![allow(dead_code)] // each test binary uses a different subset of the helpers

/// The binary as separate OS processes, and what they did to the database.
pub mod processes;
/// A vhost per test on the machine's RabbitMQ, and a plain AMQP client.
pub mod rabbitmq;

use clap::Parser;
use retrocat::broker::Broker;
use retrocat::cli::ServeArgs;
use retrocat::config::StorageArgs;
use retrocat::shutdown::Shutdown;
use retrocat::startup::{Components, run_api, run_serve};
use retrocat::storage::Store;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use tempfile::TempDir;
use tokio::task::JoinHandle;

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub parts: Components,
    shutdown: Shutdown,
    task: JoinHandle<anyhow::Result<()>>,
    pub dir: TempDir,
}

/// Which roles the test app runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Roles {
    /// API, relay and workers: the whole system (`retrocat serve`).
    Serve,
    /// API and relay only: the test drives processing itself.
    ApiOnly,
}

pub fn storage_in(dir: &std::path::Path) -> StorageArgs {
    StorageArgs {
        database_url: format!("sqlite://{}", dir.join("retrocat.db").display()),
        rabbitmq_url: None,
        broker_path: dir.join("broker.db"),
        queue_type: Default::default(),
        message_keys: None,
    }
}

/// Serve arguments for tests: fast retries, loopback covers allowed.
pub fn test_args(extra: &[&str]) -> ServeArgs {
    let mut args = vec![
        "serve",
        "--retry-base-delay",
        "50ms",
        "--retry-max-delay",
        "400ms",
        "--allow-private-fetch",
        "--fetch-timeout",
        "2s",
    ];
    args.extend_from_slice(extra);
    ServeArgs::parse_from(args)
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(Roles::Serve, &[]).await
    }

    pub async fn spawn_with(roles: Roles, extra: &[&str]) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = TempDir::new().expect("temp dir");
        let parts = Components::connect(&storage_in(dir.path()))
            .await
            .expect("database and broker");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let args = test_args(extra);
        let task = tokio::spawn({
            let (parts, shutdown) = (parts.clone(), shutdown.clone());
            async move {
                match roles {
                    Roles::Serve => run_serve(&parts, &args, listener, shutdown).await,
                    Roles::ApiOnly => run_api(&parts, &args.http, listener, shutdown).await,
                }
            }
        });
        Self {
            addr,
            client: reqwest::Client::new(),
            parts,
            shutdown,
            task,
            dir,
        }
    }

    pub fn store(&self) -> &dyn Store {
        self.parts.store.as_ref()
    }

    pub fn broker(&self) -> &dyn Broker {
        self.parts.broker.as_ref()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("GET")
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.get(path).await;
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().await.expect("JSON body")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("POST")
    }

    pub async fn put_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .put(self.url(path))
            .json(body)
            .send()
            .await
            .expect("PUT")
    }

    /// Creates a game and returns its JSON; panics unless the API answered 201.
    pub async fn create_game(&self, body: &Value) -> Value {
        let response = self.post_json("/api/games", body).await;
        assert_eq!(
            response.status(),
            201,
            "create failed: {}",
            response.text().await.unwrap()
        );
        response.json().await.unwrap()
    }

    /// Polls the game until its status is `status` and its version at least `version`.
    pub async fn wait_for_status(&self, id: i64, status: &str, version: i64) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let game = self.get_json(&format!("/api/games/{id}")).await;
            if game["processingStatus"] == status && game["version"].as_i64() >= Some(version) {
                return game;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "game {id} never reached {status} v{version}: {game}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(self) {
        self.shutdown.trigger();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.task).await;
    }
}

/// A valid game body; override fields with `merge`.
pub fn game_body(title: &str) -> Value {
    json!({
        "title": title,
        "platformId": 1,
        "genreId": 1,
        "developer": "Test Studio",
        "releaseYear": 1991,
        "description": "A game made by a test.",
    })
}

pub fn with(mut body: Value, field: &str, value: Value) -> Value {
    body[field] = value;
    body
}

pub fn without(mut body: Value, field: &str) -> Value {
    body.as_object_mut().unwrap().remove(field);
    body
}

/// A small PNG, for covers.
pub fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    let mut bytes = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut bytes, image::ImageFormat::Png)
        .expect("encode PNG");
    bytes.into_inner()
}
