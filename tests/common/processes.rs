//! The `retrocat` binary as separate OS processes, the way it is deployed.
//!
//! A [`Deployment`] is a temporary directory with the SQLite database and one log file
//! per process, plus the environment its processes share. A [`Process`] is one running
//! `retrocat <command>`: killed (SIGKILL), terminated (SIGTERM), waited for. When a
//! test panics, each of its processes prints the end of its log, and the deployment
//! keeps its directory (the path is printed) for a closer look. [`Effects`] reads what
//! processing did straight from the database, and checks the exactly-once guarantee.

use futures::StreamExt;
use retrocat::storage::Store;
use retrocat::storage::sqlite::SqliteStore;
use serde_json::Value;
use sqlx::Row;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
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

/// A database (and embedded-broker file) in a fresh directory, and the environment every
/// process of the deployment gets.
pub struct Deployment {
    dir: Option<TempDir>,
    env: Vec<(String, String)>,
}

impl Default for Deployment {
    fn default() -> Self {
        Self::new()
    }
}

impl Deployment {
    /// A fresh SQLite database and the embedded broker (`RABBITMQ_URL` unset).
    pub fn new() -> Self {
        let dir = TempDir::new().expect("temp dir");
        let env = vec![
            (
                "DATABASE_URL".into(),
                format!("sqlite://{}", dir.path().join("retrocat.db").display()),
            ),
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
        }
    }

    /// The same on RabbitMQ at `url`.
    pub fn on_rabbitmq(url: &str) -> Self {
        let mut deployment = Self::new();
        deployment.env.push(("RABBITMQ_URL".into(), url.into()));
        deployment
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

    /// Starts `retrocat COMMAND ARGS`, its output appended to `NAME.log`.
    pub fn spawn(&self, name: &str, command: &str, args: &[&str]) -> Process {
        let log = self.path().join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open the log file");
        let child = Command::new(env!("CARGO_BIN_EXE_retrocat"))
            .arg(command)
            .args(args)
            .env_remove("RABBITMQ_URL")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
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
    /// `http://127.0.0.1:PORT` of a process started with [`Deployment::start_http`].
    pub fn base(&self) -> &str {
        self.base.as_deref().expect("an HTTP process")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("child status").is_none()
    }

    /// The last `lines` lines of the process's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
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
    let client = http_client();
    futures::stream::iter(0..count)
        .map(|n| {
            let client = client.clone();
            let url = format!("{base}/api/games");
            let body = super::game_body(&format!("{title} {n:04}"));
            async move {
                let response = client.post(url).json(&body).send().await.expect("POST");
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                assert_eq!(status, 201, "create {n} answered {status}: {text}");
                let done = created.fetch_add(1, Ordering::Relaxed) + 1;
                if done.is_multiple_of(1000) || done == count {
                    eprintln!("created {done}/{count}");
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
    pool: sqlx::SqlitePool,
    store: SqliteStore,
}

/// Per game, the worker of each of its completed attempts.
pub type Completions = HashMap<i64, Vec<String>>;

impl Effects {
    pub async fn open(deployment: &Deployment) -> Self {
        let url = deployment.database_url();
        let store = SqliteStore::connect(url).await.expect("open the database");
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect(url)
            .await
            .expect("open the database");
        Self { pool, store }
    }

    /// Events in the outbox not yet confirmed by the broker.
    pub async fn outbox_depth(&self) -> u64 {
        self.store.outbox_depth().await.expect("outbox depth")
    }

    /// Completed attempts of every game.
    pub async fn completions(&self) -> Completions {
        let rows = sqlx::query(
            "SELECT game_id, COALESCE(worker, '') AS worker FROM processing_attempts \
             WHERE outcome = 'completed'",
        )
        .fetch_all(&self.pool)
        .await
        .expect("read processing attempts");
        let mut completions = Completions::new();
        for row in rows {
            completions
                .entry(row.get("game_id"))
                .or_default()
                .push(row.get("worker"));
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
        let statuses: HashMap<i64, String> = sqlx::query("SELECT id, processing_status FROM games")
            .fetch_all(&self.pool)
            .await
            .expect("read games")
            .into_iter()
            .map(|row| (row.get("id"), row.get("processing_status")))
            .collect();
        ids.iter()
            .copied()
            .filter(|id| {
                statuses.get(id).map(String::as_str) != Some("completed")
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
