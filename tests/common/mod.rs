//! `TestApp`: the real application on a random port, with a fresh database (SQLite, or
//! one created on the PostgreSQL or MySQL server of `TEST_POSTGRES_URL` /
//! `TEST_MYSQL_URL`) and an embedded broker in a temporary directory, plus typed helpers
//! that read like the API.
#![allow(dead_code)] // each test binary uses a different subset of the helpers

/// The system on either broker, with message keys, and the broker unsealed beside it.
pub mod brokers;
/// The 3-node RabbitMQ cluster of `scripts/rabbitmq-cluster`, and a node killed.
pub mod cluster;
/// The binary as separate OS processes, and what they did to the database.
pub mod processes;
/// A vhost per test on the machine's RabbitMQ, and a plain AMQP client.
pub mod rabbitmq;

use clap::Parser;
use retrocat::broker::Broker;
use retrocat::cli::ServeArgs;
use retrocat::config::{BrokerArgs, DatabaseArgs};
use retrocat::processing::thumbnail::DecodeBudget;
use retrocat::shutdown::Shutdown;
use retrocat::startup::{Components, run_api, run_serve};
use retrocat::storage::Store;
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, Connection, Executor, MySqlConnection, PgConnection};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// The database server's database of this test, dropped with the app.
    _database: Option<TestDatabase>,
}

/// The catalog database a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    /// A fresh database on the server of `TEST_POSTGRES_URL`.
    Postgres,
    /// A fresh database on the MySQL or MariaDB server of `TEST_MYSQL_URL`.
    Mysql,
}

impl Backend {
    /// PostgreSQL when `TEST_POSTGRES_URL` is set; otherwise the test is skipped.
    pub fn postgres() -> Option<Self> {
        Self::Postgres.if_configured()
    }

    /// MySQL/MariaDB when `TEST_MYSQL_URL` is set; otherwise the test is skipped.
    pub fn mysql() -> Option<Self> {
        Self::Mysql.if_configured()
    }

    /// The variable naming this backend's server; SQLite needs none.
    fn server_variable(self) -> Option<&'static str> {
        match self {
            Self::Sqlite => None,
            Self::Postgres => Some("TEST_POSTGRES_URL"),
            Self::Mysql => Some("TEST_MYSQL_URL"),
        }
    }

    /// The URL of this backend's server; panics for SQLite or when it is not set.
    fn server_url(self) -> String {
        let variable = self.server_variable().expect("a database server");
        std::env::var(variable).unwrap_or_else(|_| panic!("{variable} is not set"))
    }

    /// `self` when its server is configured; otherwise says the test is skipped.
    fn if_configured(self) -> Option<Self> {
        match self.server_variable() {
            Some(variable) if std::env::var_os(variable).is_none() => {
                println!("skipped: {variable} is not set");
                None
            }
            _ => Some(self),
        }
    }

    /// A fresh catalog database on this backend and its URL for `DATABASE_URL`: a file
    /// in `dir`, or a database of its own on the server, dropped with the returned
    /// [`TestDatabase`]. One place per backend, for in-process apps and for processes.
    pub async fn fresh_database(self, dir: &std::path::Path) -> (String, Option<TestDatabase>) {
        match self {
            Backend::Sqlite => (
                format!("sqlite://{}", dir.join("retrocat.db").display()),
                None,
            ),
            Backend::Postgres | Backend::Mysql => {
                let database = TestDatabase::create(self).await;
                (database.url.clone(), Some(database))
            }
        }
    }
}

/// Runs each named test body (`async fn name(backend: Backend)`) on every catalog
/// database: `sqlite::name` always, `postgres::name` and `mysql::name` when
/// `TEST_POSTGRES_URL` and `TEST_MYSQL_URL` are set. The bodies listed after
/// `; servers:` run on the database servers only.
#[allow(unused_macros)] // test binaries that run on SQLite only don't use it
macro_rules! on_every_backend {
    ($($test:ident),* $(,)? $(; servers: $($server_test:ident),* $(,)?)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(crate::common::Backend::Sqlite).await
                }
            )*
        }

        mod postgres {
            crate::common::on_server!(postgres: $($test,)* $($($server_test,)*)?);
        }

        mod mysql {
            crate::common::on_server!(mysql: $($test,)* $($($server_test,)*)?);
        }
    };
}
#[allow(unused_imports)]
pub(crate) use on_every_backend;

/// The tests of [`on_every_backend`] on one database server, skipped when its URL is
/// not set.
#[allow(unused_macros)]
macro_rules! on_server {
    ($server:ident: $($test:ident,)*) => {
        $(
            #[tokio::test]
            async fn $test() {
                if let Some(backend) = crate::common::Backend::$server() {
                    super::$test(backend).await
                }
            }
        )*
    };
}
#[allow(unused_imports)]
pub(crate) use on_server;

/// A database of its own on the server of `TEST_POSTGRES_URL` or `TEST_MYSQL_URL`,
/// dropped when the test ends, also when it panics.
pub struct TestDatabase {
    backend: Backend,
    server_url: String,
    name: String,
    /// The URL of the new database, for `DATABASE_URL`.
    pub url: String,
}

impl TestDatabase {
    pub async fn create(backend: Backend) -> Self {
        let server_url = backend.server_url();
        let name = format!("retrocat_test_{}", uuid::Uuid::now_v7().simple());
        let create = AssertSqlSafe(format!("CREATE DATABASE {name}"));
        let created = match backend {
            Backend::Postgres => execute_once::<PgConnection>(&server_url, create).await,
            Backend::Mysql => execute_once::<MySqlConnection>(&server_url, create).await,
            Backend::Sqlite => unreachable!("SQLite needs no server"),
        };
        created.unwrap_or_else(|e| panic!("CREATE DATABASE on {server_url}: {e}"));
        let mut url = url::Url::parse(&server_url).expect("the server URL is a URL");
        url.set_path(&name);
        Self {
            backend,
            server_url,
            name,
            url: url.to_string(),
        }
    }

    /// Runs one statement on the database, outside the app.
    pub async fn execute(&self, statement: &str) {
        let statement = AssertSqlSafe(statement.to_owned());
        let executed = match self.backend {
            Backend::Postgres => execute_once::<PgConnection>(&self.url, statement).await,
            Backend::Mysql => execute_once::<MySqlConnection>(&self.url, statement).await,
            Backend::Sqlite => unreachable!("SQLite needs no server"),
        };
        executed.unwrap_or_else(|e| panic!("on {}: {e}", self.url));
    }

    /// Drops the database even though the app may still hold connections to it.
    async fn drop_database(backend: Backend, server_url: &str, name: &str) -> sqlx::Result<()> {
        match backend {
            Backend::Postgres => {
                let drop = AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
                execute_once::<PgConnection>(server_url, drop).await
            }
            // MySQL has no FORCE: end the connections first, or DROP waits for a
            // transaction one of them holds open (a relay's turn at the outbox).
            Backend::Mysql => {
                let mut server = MySqlConnection::connect(server_url).await?;
                // ID is signed on MariaDB, unsigned on MySQL.
                let ids: Vec<i64> = sqlx::query_scalar(
                    "SELECT CAST(ID AS SIGNED) FROM information_schema.PROCESSLIST WHERE DB = ?",
                )
                .bind(name)
                .fetch_all(&mut server)
                .await?;
                for id in ids {
                    // It may have ended meanwhile.
                    let _ = server.execute(AssertSqlSafe(format!("KILL {id}"))).await;
                }
                server
                    .execute(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}")))
                    .await?;
                server.close().await
            }
            Backend::Sqlite => unreachable!("SQLite needs no server"),
        }
    }
}

/// Runs one statement on a connection of its own to `url`.
async fn execute_once<C>(url: &str, statement: AssertSqlSafe<String>) -> sqlx::Result<()>
where
    C: Connection,
    for<'c> &'c mut C: Executor<'c>,
{
    let mut conn = C::connect(url).await?;
    conn.execute(statement).await?;
    conn.close().await
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs outside async code (and maybe while a panic unwinds): a thread of
        // its own with a small runtime does the async work.
        let (backend, server_url, name) =
            (self.backend, self.server_url.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(Self::drop_database(backend, &server_url, &name))
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!(
                "could not drop the test database {}: {dropped:?}",
                self.name
            );
        }
    }
}

/// Which roles the test app runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Roles {
    /// API, relay and workers: the whole system (`retrocat serve`).
    Serve,
    /// API and relay only: the test drives processing itself.
    ApiOnly,
}

/// Database settings for a test: the catalog at `url`.
pub fn database_at(url: String) -> DatabaseArgs {
    DatabaseArgs {
        database_url: url,
        db_max_connections: None,
        db_acquire_timeout: None,
    }
}

/// Broker settings for a test: RabbitMQ at `rabbitmq_url`, or the embedded broker in
/// `dir`.
pub fn broker_in(dir: &std::path::Path, rabbitmq_url: Option<&str>) -> BrokerArgs {
    BrokerArgs {
        rabbitmq_url: rabbitmq_url.map(|url| url.parse().expect("a RabbitMQ URL")),
        rabbitmq_ca: None,
        rabbitmq_client_cert: None,
        rabbitmq_client_key: None,
        rabbitmq_management_url: None,
        broker_path: dir.join("broker.db"),
        queue_type: Default::default(),
        message_keys: None,
        require_sealed: false,
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
    /// The whole system on SQLite.
    pub async fn spawn() -> Self {
        Self::spawn_on(Backend::Sqlite).await
    }

    /// `roles` on SQLite, with `extra` serve arguments.
    pub async fn spawn_with(roles: Roles, extra: &[&str]) -> Self {
        Self::spawn_on_with(Backend::Sqlite, roles, extra).await
    }

    /// The whole system on `backend`.
    pub async fn spawn_on(backend: Backend) -> Self {
        Self::spawn_on_with(backend, Roles::Serve, &[]).await
    }

    pub async fn spawn_on_with(backend: Backend, roles: Roles, extra: &[&str]) -> Self {
        Self::spawn_on_broker(backend, None, roles, extra).await
    }

    /// `roles` on `backend` and the RabbitMQ at `rabbitmq_url` (a test's
    /// [`rabbitmq::Vhost`]), or the embedded broker for `None`.
    pub async fn spawn_on_broker(
        backend: Backend,
        rabbitmq_url: Option<&str>,
        roles: Roles,
        extra: &[&str],
    ) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = TempDir::new().expect("temp dir");
        let (database_url, database) = backend.fresh_database(dir.path()).await;
        let parts = Components::connect(
            &database_at(database_url),
            &broker_in(dir.path(), rabbitmq_url),
            DecodeBudget::default(),
        )
        .await
        .expect("database and broker");
        Self::spawn_parts(parts, dir, database, roles, extra).await
    }

    /// `roles` on `parts`, connected and declared by the test (a broker set up its own
    /// way), with `extra` serve arguments; `dir` and `database` last as long as the app.
    pub async fn spawn_parts(
        parts: Components,
        dir: TempDir,
        database: Option<TestDatabase>,
        roles: Roles,
        extra: &[&str],
    ) -> Self {
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
            _database: database,
        }
    }

    /// The URL of this test's database on a database server (not for SQLite).
    pub fn server_database_url(&self) -> &str {
        &self._database.as_ref().expect("a database server").url
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

    /// Waits until every event was relayed and consumed: the outbox and `game_events`
    /// are empty, and the last delivery had time to be settled.
    pub async fn wait_until_idle(&self) {
        for _ in 0..500 {
            let outbox = self
                .store()
                .outbox_backlog()
                .await
                .expect("outbox backlog")
                .pending;
            let queued = self
                .broker()
                .queue_depth(retrocat::broker::topology::GAME_EVENTS_QUEUE)
                .await
                .expect("queue depth");
            if outbox == 0 && queued == 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the events were never all relayed and consumed");
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

/// A cover server on 127.0.0.1 that answers 503 until `healthy` is set, then a PNG:
/// a cover whose fetch fails until the test says otherwise. Returns the cover's URL.
pub async fn flaky_cover_server(healthy: Arc<AtomicBool>) -> String {
    let addr = counting_cover_server(healthy, Arc::default()).await;
    format!("http://{addr}/cover.png")
}

/// [`flaky_cover_server`], counting in `asked` the requests it gets; returns its
/// address (the cover is `/cover.png`).
pub async fn counting_cover_server(
    healthy: Arc<AtomicBool>,
    asked: Arc<std::sync::atomic::AtomicUsize>,
) -> std::net::SocketAddr {
    use axum::{Router, http::StatusCode, response::IntoResponse, routing::get};
    let cover = png(64, 64);
    let app = Router::new().route(
        "/cover.png",
        get(move || {
            let (cover, healthy, asked) = (cover.clone(), healthy.clone(), asked.clone());
            async move {
                asked.fetch_add(1, Ordering::SeqCst);
                if healthy.load(Ordering::SeqCst) {
                    ([("content-type", "image/png")], cover).into_response()
                } else {
                    StatusCode::SERVICE_UNAVAILABLE.into_response()
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A machine token of `role` named `name` in `app`'s database, expiring at
/// `expires_at` (never for `None`).
pub async fn add_token(
    app: &TestApp,
    name: &str,
    role: retrocat::auth::Role,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
) -> String {
    use retrocat::auth::token;
    use retrocat::storage::accounts::{TokenKind, TokenRecord};
    let secret = token::generate();
    let record = TokenRecord {
        kind: TokenKind::Token,
        name: name.into(),
        role,
        username: None,
        created_at: chrono::Utc::now(),
        expires_at,
    };
    let digest = token::digest(&secret);
    app.store()
        .add_token(&digest, &record)
        .await
        .expect("token");
    secret
}

/// An admin's token, once the server has seen that it exists: protected mode has ended
/// (its answer is reused for a second).
pub async fn admin_token(app: &TestApp) -> String {
    let token = add_token(app, "test-admin", retrocat::auth::Role::Admin, None).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    token
}

/// Polls `check` every 200 ms until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
