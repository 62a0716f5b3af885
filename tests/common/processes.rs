//! The `retrocat` binary as separate OS processes, the way it is deployed.
//!
//! A [`Deployment`] is a catalog database on any [`Backend`] (SQLite in a temporary
//! directory, or a fresh database on a server), that directory with one log file per
//! process, plus the environment its processes share. A [`Process`] is one running
//! `retrocat <command>`: killed (SIGKILL), terminated (SIGTERM), waited for. When a
//! test panics, each of its processes prints the end of its log, and the deployment
//! keeps its directory (the path is printed) for a closer look. [`Effects`] reads what
//! processing did straight from the database, and checks the exactly-once guarantee.

use super::rabbitmq::Amqp;
use super::{Backend, TestDatabase};
use futures::StreamExt;
use retrocat::storage::{self, PoolConfig, Store};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tempfile::TempDir;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// How long a process may take to answer `/readyz`, and to exit after SIGTERM.
const START_LIMIT: Duration = Duration::from_secs(30);
const EXIT_LIMIT: Duration = Duration::from_secs(30);

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// An HTTP client (rustls with the ring provider, as the application uses).
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// A catalog database (a file in a fresh directory, or a database of its own on a
/// server), the embedded-broker file in that directory, and the environment every
/// process of the deployment gets.
pub struct Deployment {
    dir: Option<TempDir>,
    env: Vec<(String, String)>,
    backend: Backend,
    rabbitmq_url: Option<String>,
    /// The server database, dropped with the deployment (after its processes).
    _database: Option<TestDatabase>,
}

impl Deployment {
    /// A fresh database on `backend` and the embedded broker (`RABBITMQ_URL` unset).
    pub async fn on(backend: Backend) -> Self {
        let dir = TempDir::new().expect("temp dir");
        let (database_url, database) = backend.fresh_database(dir.path()).await;
        let env = vec![
            ("DATABASE_URL".into(), database_url),
            (
                "RETROCAT_BROKER_PATH".into(),
                dir.path().join("broker.db").display().to_string(),
            ),
            // Plain log files.
            ("NO_COLOR".into(), "1".into()),
        ];
        Self {
            dir: Some(dir),
            env,
            backend,
            rabbitmq_url: None,
            _database: database,
        }
    }

    /// The same deployment on RabbitMQ at `url` instead of the embedded broker.
    pub fn with_rabbitmq(mut self, url: &str) -> Self {
        self.rabbitmq_url = Some(url.into());
        self.with_env("RABBITMQ_URL", url)
    }

    /// Every process of the deployment also gets `name=value` (e.g. `RUST_LOG`).
    pub fn with_env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    pub fn path(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("the directory is kept until drop")
            .path()
    }

    pub fn database_url(&self) -> &str {
        &self.env[0].1
    }

    /// `retrocat COMMAND ARGS` with the deployment's environment (and no other
    /// `RABBITMQ_URL`), reading nothing from standard input.
    fn command(&self, command: &str, args: &[&str]) -> Command {
        let mut process = Command::new(env!("CARGO_BIN_EXE_retrocat"));
        process
            .arg(command)
            .args(args)
            .env_remove("RABBITMQ_URL")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        process
    }

    /// Starts `retrocat COMMAND ARGS`, its output appended to `NAME.log`.
    pub fn spawn(&self, name: &str, command: &str, args: &[&str]) -> Process {
        let log = self.path().join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open the log file");
        let child = self
            .command(command, args)
            .stdout(file.try_clone().expect("log file handle"))
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start retrocat {command}: {e}"));
        Process {
            name: name.into(),
            pid: child.id().expect("a started child has a pid"),
            child,
            log,
            base: None,
        }
    }

    /// Runs `retrocat COMMAND ARGS` to the end (`migrate`); panics unless it succeeded.
    pub async fn run(&self, command: &str, args: &[&str]) {
        let mut process = self.spawn(command, command, args);
        let status = process.wait(START_LIMIT).await;
        assert!(status.success(), "retrocat {command} exited with {status}");
    }

    /// Runs `retrocat COMMAND ARGS` to the end and returns what it printed; panics
    /// unless it succeeded.
    pub async fn output(&self, command: &str, args: &[&str]) -> String {
        let output = self
            .command(command, args)
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run retrocat {command}: {e}"));
        assert!(
            output.status.success(),
            "retrocat {command} {args:?} exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("UTF-8 output")
    }

    /// Runs `retrocat COMMAND ARGS` to the end with `input` on standard input, and
    /// returns how it ended and what it printed.
    pub async fn run_with_input(&self, command: &str, args: &[&str], input: &str) -> Output {
        use tokio::io::AsyncWriteExt;
        let mut child = self
            .command(command, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run retrocat {command}: {e}"));
        let mut stdin = child.stdin.take().expect("piped");
        stdin.write_all(input.as_bytes()).await.expect("stdin");
        drop(stdin);
        child.wait_with_output().await.expect("output")
    }

    /// Starts `retrocat COMMAND --listen 127.0.0.1:PORT ARGS` and waits until its
    /// `/readyz` answers 200.
    pub async fn start_http(&self, name: &str, command: &str, port: u16, args: &[&str]) -> Process {
        let listen = format!("127.0.0.1:{port}");
        let mut all = vec!["--listen", listen.as_str()];
        all.extend_from_slice(args);
        let mut process = self.spawn(name, command, &all);
        process.base = Some(format!("http://{listen}"));
        process.wait_ready().await;
        process
    }

    /// The usual deployment on RabbitMQ: migrates the database, starts `retrocat api`
    /// (named `api`) and one `retrocat worker --worker-id ID ARGS` per id, and waits
    /// until each worker consumes `game_events`. Returns them and a plain AMQP client,
    /// of the first node where `RABBITMQ_URL` lists a cluster's.
    pub async fn start_api_and_workers(
        &self,
        workers: &[&str],
        args: &[&str],
    ) -> (Process, Vec<Process>, Amqp) {
        let url = self
            .rabbitmq_url
            .as_deref()
            .expect("a deployment on RabbitMQ (with_rabbitmq)");
        self.run("migrate", &[]).await;
        let api = self.start_http("api", "api", free_port(), &[]).await;
        let workers = self.start_workers(workers, args);
        let first_node = url.split(',').next().unwrap_or(url);
        let amqp = Amqp::connect(first_node).await;
        amqp.wait_for_consumers("game_events", workers.len() as u32)
            .await;
        (api, workers, amqp)
    }

    /// Starts one `retrocat worker --worker-id ID ARGS` per id.
    pub fn start_workers(&self, ids: &[&str], args: &[&str]) -> Vec<Process> {
        ids.iter()
            .map(|id| {
                let mut all = vec!["--worker-id", id];
                all.extend_from_slice(args);
                self.spawn(id, "worker", &all)
            })
            .collect()
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            eprintln!(
                "the deployment's database and logs are kept in {}",
                dir.keep().display()
            );
        }
    }
}

/// One running `retrocat` process; killed when dropped.
pub struct Process {
    pub name: String,
    pid: u32,
    child: Child,
    log: PathBuf,
    base: Option<String>,
}

impl Process {
    /// The most resident memory the process has held so far (`VmHWM`), in bytes.
    pub fn peak_resident_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("the process's status");
        let kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().strip_suffix("kB"))
            .and_then(|value| value.trim().parse::<u64>().ok())
            .expect("VmHWM in /proc/PID/status");
        kib * 1024
    }

    /// Creates a game through this process's API and returns its JSON; panics unless
    /// the API answered 201.
    pub async fn create_game(&self, body: &Value) -> Value {
        let response = http_client()
            .post(self.url("/api/games"))
            .json(body)
            .send()
            .await
            .expect("POST /api/games");
        assert_eq!(
            response.status(),
            201,
            "create: {}",
            response.text().await.unwrap()
        );
        response.json().await.expect("the game")
    }

    /// `http://127.0.0.1:PORT` of a process started with [`Deployment::start_http`].
    pub fn base(&self) -> &str {
        self.base.as_deref().expect("an HTTP process")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    /// `GET path` on the process; panics unless it answered 200 with JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        let response = http_client().get(self.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.unwrap()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("child status").is_none()
    }

    /// Everything the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of the process's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    async fn wait_ready(&mut self) {
        let client = http_client();
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Ok(response) = client.get(self.url("/readyz")).send().await
                && response.status().is_success()
            {
                return;
            }
            if let Some(status) = self.child.try_wait().expect("child status") {
                panic!("{} exited with {status} before it was ready", self.name);
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready after {START_LIMIT:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the process to exit on its own.
    pub async fn wait(&mut self, limit: Duration) -> ExitStatus {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.expect("wait for the child"),
            Err(_) => panic!("{} still running after {limit:?}", self.name),
        }
    }

    /// SIGKILL: the process gets no chance to finish anything.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("SIGKILL");
        self.wait(EXIT_LIMIT).await;
    }

    /// SIGTERM, then waits for the exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {} failed", self.pid);
        self.wait(EXIT_LIMIT).await
    }

    /// SIGTERM; panics unless the process exits with status 0.
    pub async fn stop(mut self) {
        let status = self.terminate().await;
        assert!(
            status.success(),
            "{} exited with {status} after SIGTERM",
            self.name
        );
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- last lines of {} ({}) -----\n{}\n----- end of {} -----",
                self.name,
                self.log.display(),
                self.log_tail(40),
                self.name
            );
        }
    }
}

/// Stops every process with SIGTERM at once; panics unless each was still running and
/// exits with status 0.
pub async fn stop_all(mut processes: Vec<Process>) {
    for process in &mut processes {
        assert!(
            process.is_running(),
            "{} died before it was stopped",
            process.name
        );
    }
    futures::future::join_all(processes.into_iter().map(Process::stop)).await;
}

/// Creates `count` games titled `TITLE NNNN` through `base`'s API, `in_flight` requests
/// at a time, and returns their ids. Every create must answer 201. `created` counts the
/// answered creates, for a test that acts midway.
pub async fn create_games(
    base: &str,
    title: &str,
    count: usize,
    in_flight: usize,
    created: &AtomicUsize,
) -> Vec<i64> {
    create_games_until(base, title, in_flight, created, |n| n >= count).await
}

/// As [`create_games`], starting creates until `done` says so of the number started:
/// for a test whose creates must go on until it has acted, however fast they are.
pub async fn create_games_until(
    base: &str,
    title: &str,
    in_flight: usize,
    created: &AtomicUsize,
    done: impl Fn(usize) -> bool,
) -> Vec<i64> {
    let client = http_client();
    futures::stream::iter(0..)
        .take_while(|&n| std::future::ready(!done(n)))
        .map(|n| {
            let client = client.clone();
            let url = format!("{base}/api/games");
            let body = super::game_body(&format!("{title} {n:04}"));
            async move {
                let response = client.post(url).json(&body).send().await.expect("POST");
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                assert_eq!(status, 201, "create {n} answered {status}: {text}");
                let answered = created.fetch_add(1, Ordering::Relaxed) + 1;
                if answered.is_multiple_of(1000) {
                    eprintln!("created {answered}");
                }
                let game: Value = serde_json::from_str(&text).expect("game JSON");
                game["id"].as_i64().expect("game id")
            }
        })
        .buffer_unordered(in_flight)
        .collect()
        .await
}

/// What processing did, read from the deployment's database.
pub struct Effects {
    database: Database,
    store: Arc<dyn Store>,
}

/// Per game, the worker of each of its completed attempts.
pub type Completions = HashMap<i64, Vec<String>>;

/// A processing attempt that settled its event (any outcome but `retry`): `completed`,
/// `skipped` (a newer version superseded it), `failed`.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Settled {
    pub game_id: i64,
    pub version: i64,
    pub outcome: String,
    pub worker: String,
}

/// A game as the database holds it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct StoredGame {
    pub id: i64,
    pub title: String,
    pub processing_status: String,
    pub version: i64,
}

/// The deployment's database for the test's own queries. The SQL is portable; only the
/// pool type differs per backend, so a backend is one variant and one arm in each match.
enum Database {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
    Mysql(sqlx::MySqlPool),
}

impl Database {
    async fn connect(backend: Backend, url: &str) -> Self {
        let connected = match backend {
            Backend::Sqlite => sqlx::SqlitePool::connect(url).await.map(Self::Sqlite),
            Backend::Postgres => sqlx::PgPool::connect(url).await.map(Self::Postgres),
            Backend::Mysql => sqlx::MySqlPool::connect(url).await.map(Self::Mysql),
        };
        connected.unwrap_or_else(|e| panic!("open the database {url}: {e}"))
    }

    async fn rows<T>(&self, sql: &'static str) -> Vec<T>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
            + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
            + for<'r> sqlx::FromRow<'r, sqlx::mysql::MySqlRow>
            + Send
            + Unpin,
    {
        let rows = match self {
            Self::Sqlite(pool) => sqlx::query_as(sql).fetch_all(pool).await,
            Self::Postgres(pool) => sqlx::query_as(sql).fetch_all(pool).await,
            Self::Mysql(pool) => sqlx::query_as(sql).fetch_all(pool).await,
        };
        rows.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

impl Effects {
    pub async fn open(deployment: &Deployment) -> Self {
        let url = deployment.database_url();
        let store = storage::connect(url, PoolConfig::default())
            .await
            .expect("open the database");
        let database = Database::connect(deployment.backend, url).await;
        Self { database, store }
    }

    /// Events in the outbox not yet confirmed by the broker.
    pub async fn outbox_depth(&self) -> u64 {
        self.store
            .outbox_backlog()
            .await
            .expect("outbox backlog")
            .pending
    }

    /// Every attempt that settled its event.
    pub async fn settled(&self) -> Vec<Settled> {
        self.database
            .rows(
                "SELECT game_id, version, outcome, COALESCE(worker, '') AS worker \
                 FROM processing_attempts WHERE outcome <> 'retry'",
            )
            .await
    }

    /// Every game, by id.
    pub async fn games(&self) -> HashMap<i64, StoredGame> {
        let games: Vec<StoredGame> = self
            .database
            .rows("SELECT id, title, processing_status, version FROM games")
            .await;
        games.into_iter().map(|game| (game.id, game)).collect()
    }

    /// Completed attempts of every game.
    pub async fn completions(&self) -> Completions {
        let mut completions = Completions::new();
        for attempt in self.settled().await {
            if attempt.outcome == "completed" {
                completions
                    .entry(attempt.game_id)
                    .or_default()
                    .push(attempt.worker);
            }
        }
        completions
    }

    /// How many events `worker` completed.
    pub async fn completed_by(&self, worker: &str) -> usize {
        let completions = self.completions().await;
        completions
            .values()
            .flatten()
            .filter(|w| *w == worker)
            .count()
    }

    /// The games of `ids` whose status is not `completed`, or that have no completed
    /// attempt.
    pub async fn unfinished(&self, ids: &[i64]) -> Vec<i64> {
        let completions = self.completions().await;
        let games = self.games().await;
        ids.iter()
            .copied()
            .filter(|id| {
                games.get(id).map(|game| game.processing_status.as_str()) != Some("completed")
                    || !completions.contains_key(id)
            })
            .collect()
    }

    /// Waits until every game of `ids` is completed; panics after `limit`.
    pub async fn wait_until_completed(&self, ids: &[i64], limit: Duration) {
        let started = Instant::now();
        let (mut reported, mut last) = (started, usize::MAX);
        loop {
            let unfinished = self.unfinished(ids).await;
            if unfinished.is_empty() {
                eprintln!(
                    "all {} games completed after {:.1?}",
                    ids.len(),
                    started.elapsed()
                );
                return;
            }
            if started.elapsed() >= limit {
                panic!(
                    "{} of {} games still not completed after {limit:?} (e.g. {:?}); {} events \
                     still in the outbox",
                    unfinished.len(),
                    ids.len(),
                    &unfinished[..unfinished.len().min(10)],
                    self.outbox_depth().await
                );
            }
            // Progress every 5 s, while there is some.
            if reported.elapsed() >= Duration::from_secs(5) && unfinished.len() != last {
                (reported, last) = (Instant::now(), unfinished.len());
                eprintln!("completed {}/{}", ids.len() - last, ids.len());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until every game of `ids` is completed, then asserts the guarantees: one
    /// completed attempt per game, and the outbox drained. Returns (and prints)
    /// how many each worker completed.
    pub async fn assert_processed_exactly_once(
        &self,
        ids: &[i64],
        limit: Duration,
    ) -> BTreeMap<String, usize> {
        self.wait_until_completed(ids, limit).await;
        let split = self.assert_each_completed_once(ids).await;
        eprintln!("completed per worker: {split:?}");
        self.wait_until_outbox_empty().await;
        split
    }

    /// Waits until the relay has published every outbox row. Processing adds rows
    /// (`game.processed`), so the last ones may still be on their way.
    pub async fn wait_until_outbox_empty(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let depth = self.outbox_depth().await;
            if depth == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{depth} events still in the outbox"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Asserts that each game of `ids` has exactly one completed attempt and returns
    /// how many each worker completed.
    pub async fn assert_each_completed_once(&self, ids: &[i64]) -> BTreeMap<String, usize> {
        let completions = self.completions().await;
        let wrong: Vec<(i64, &[String])> = ids
            .iter()
            .map(|id| {
                let workers = completions.get(id).map(Vec::as_slice).unwrap_or_default();
                (*id, workers)
            })
            .filter(|(_, workers)| workers.len() != 1)
            .collect();
        assert!(
            wrong.is_empty(),
            "{} games do not have exactly one completed attempt (game, workers): {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(10)]
        );
        let mut split = BTreeMap::new();
        for id in ids {
            *split.entry(completions[id][0].clone()).or_default() += 1;
        }
        split
    }
}
