//! PostgreSQL stopped and started again while clients write through the API: while it
//! is down, requests fail fast with 503 (no hang, no 500); afterwards every write a
//! client was told succeeded is in the database, and every event was processed exactly
//! once with nothing left in the outbox.
//!
//! A test binary of its own because it stops the whole PostgreSQL server (every test
//! database on it), and cargo runs test binaries one after another. Skipped without
//! `TEST_POSTGRES_URL` and `TEST_RABBITMQ_URL`, and unless the server of
//! `TEST_POSTGRES_URL` is a local cluster that `pg_ctlcluster` can stop and start.

mod common;

use common::processes::{Deployment, Effects, http_client, stop_all};
use common::rabbitmq::Vhost;
use common::{Backend, game_body};
use serde_json::Value;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::block_in_place;
use tokio::time::Instant;

/// Clients writing at a time.
const WRITERS: usize = 16;
/// Creates acknowledged before PostgreSQL is stopped, and again after it started.
const BEFORE_STOP: usize = 500;
const AFTER_START: usize = 500;
const DOWN_FOR: Duration = Duration::from_secs(3);
/// A request not answered in this time hangs. The pool gives up on the database
/// after 5 s (`acquire_timeout`); the margin is for a busy machine, and the bound stays
/// below the API's 30-s request timeout, which would turn a hang into a 503.
const HANG: Duration = Duration::from_secs(15);
const TITLE: &str = "Database restart";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_under_load_loses_no_acknowledged_write_and_no_event() {
    let Some(backend) = Backend::postgres() else {
        return;
    };
    let Some(cluster) = Cluster::of_test_server() else {
        return;
    };
    let Some(vhost) = Vhost::create() else { return };
    let deployment = Deployment::on(backend).await.with_rabbitmq(&vhost.url);
    let (api, workers, _amqp) = deployment
        .start_api_and_workers(&["w1", "w2"], &["--simulate-work", "2ms"])
        .await;
    let effects = Effects::open(&deployment).await;

    let writes = Arc::new(Writes::default());
    let writing = tokio::spawn(write_until_stopped(api.base().to_owned(), writes.clone()));
    writes.wait_for_acknowledged(BEFORE_STOP).await;

    // Blocking calls on this thread; the writers go on on the runtime's other thread.
    let stopped = block_in_place(|| cluster.stop());
    let down_since = Instant::now();
    eprintln!(
        "PostgreSQL stopped after {} acknowledged creates",
        writes.acknowledged()
    );
    let client = http_client();
    let readyz = api.url("/readyz");
    let deadline = Instant::now() + Duration::from_secs(20);
    while writes.refused.load(Ordering::Relaxed) == 0 || status(&client, &readyz).await != 503 {
        assert!(
            Instant::now() < deadline,
            "no create refused with 503, or /readyz not 503, with PostgreSQL down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(DOWN_FOR.saturating_sub(down_since.elapsed())).await;
    block_in_place(|| stopped.start());
    let acknowledged_at_start = writes.acknowledged();
    eprintln!(
        "PostgreSQL started again after {:.1?}; {} creates refused with 503 meanwhile",
        down_since.elapsed(),
        writes.refused.load(Ordering::Relaxed)
    );
    writes
        .wait_for_acknowledged(acknowledged_at_start + AFTER_START)
        .await;
    writes.stop.store(true, Ordering::Relaxed);
    writing.await.expect("writers");

    let unexpected = writes.unexpected.lock().unwrap().clone();
    assert!(
        unexpected.is_empty(),
        "{} requests got neither a 2xx nor a 503 in time, e.g. {:?}",
        unexpected.len(),
        &unexpected[..unexpected.len().min(10)]
    );
    let acknowledged = writes.acknowledged.lock().unwrap().clone();
    let games = effects.games().await;
    let lost: Vec<&(i64, String)> = acknowledged
        .iter()
        .filter(|(id, title)| games.get(id).map(|game| &game.title) != Some(title))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged creates are not in the database, e.g. {:?}",
        lost.len(),
        acknowledged.len(),
        &lost[..lost.len().min(10)]
    );
    // Also the creates whose answer was lost while the database went away, if they
    // committed: a committed write and its event are one transaction.
    let ours: Vec<i64> = games
        .values()
        .filter(|game| game.title.starts_with(TITLE))
        .map(|game| game.id)
        .collect();
    eprintln!(
        "{} creates acknowledged, {} games in the database",
        acknowledged.len(),
        ours.len()
    );
    effects
        .assert_processed_exactly_once(&ours, Duration::from_secs(120))
        .await;
    assert_eq!(status(&client, &readyz).await, 200, "/readyz after restart");
    stop_all(workers.into_iter().chain([api]).collect()).await;
}

/// What the clients were told.
#[derive(Default)]
struct Writes {
    /// Games whose create answered 201: id and title.
    acknowledged: Mutex<Vec<(i64, String)>>,
    /// Creates answered 503.
    refused: AtomicUsize,
    /// Any other answer, or none within [`HANG`].
    unexpected: Mutex<Vec<String>>,
    stop: AtomicBool,
}

impl Writes {
    fn acknowledged(&self) -> usize {
        self.acknowledged.lock().unwrap().len()
    }

    async fn wait_for_acknowledged(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.acknowledged() < count {
            assert!(
                Instant::now() < deadline,
                "only {} of {count} creates acknowledged after 60 s; unexpected answers: {:?}",
                self.acknowledged(),
                self.unexpected.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// [`WRITERS`] clients creating games through `base` one after another until
/// `writes.stop`, each answer recorded in `writes`.
async fn write_until_stopped(base: String, writes: Arc<Writes>) {
    let client = http_client();
    let next = Arc::new(AtomicUsize::new(0));
    let writers = (0..WRITERS).map(|_| {
        let (client, writes, next) = (client.clone(), writes.clone(), next.clone());
        let url = format!("{base}/api/games");
        async move {
            while !writes.stop.load(Ordering::Relaxed) {
                let title = format!("{TITLE} {:05}", next.fetch_add(1, Ordering::Relaxed));
                let sent = client
                    .post(&url)
                    .json(&game_body(&title))
                    .timeout(HANG)
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status() == 201 => {
                        let game: Value = response.json().await.expect("game JSON");
                        let id = game["id"].as_i64().expect("game id");
                        writes.acknowledged.lock().unwrap().push((id, title));
                    }
                    Ok(response) if response.status() == 503 => {
                        writes.refused.fetch_add(1, Ordering::Relaxed);
                        // A client backs off a little before it tries again.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Ok(response) => {
                        let status = response.status();
                        let text = response.text().await.unwrap_or_default();
                        writes
                            .unexpected
                            .lock()
                            .unwrap()
                            .push(format!("{title}: {status} {text}"));
                    }
                    Err(error) => {
                        writes
                            .unexpected
                            .lock()
                            .unwrap()
                            .push(format!("{title}: {error}"));
                    }
                }
            }
        }
    });
    futures::future::join_all(writers).await;
}

/// The status `url` answers, 0 when it does not answer.
async fn status(client: &reqwest::Client, url: &str) -> u16 {
    match client.get(url).timeout(HANG).send().await {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    }
}

/// The local PostgreSQL cluster (Debian's `pg_ctlcluster`) that serves
/// `TEST_POSTGRES_URL`.
struct Cluster {
    version: String,
    name: String,
}

impl Cluster {
    /// The cluster listening on the port of `TEST_POSTGRES_URL`, or `None` after saying
    /// why the test is skipped: the server is not on this machine, or not a cluster
    /// `pg_lsclusters` lists.
    fn of_test_server() -> Option<Self> {
        let url = std::env::var("TEST_POSTGRES_URL").expect("TEST_POSTGRES_URL");
        let url = url::Url::parse(&url).expect("TEST_POSTGRES_URL is a URL");
        let local = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "::1"));
        let port = url.port().unwrap_or(5432).to_string();
        let listed = Command::new("pg_lsclusters").arg("--no-header").output();
        let clusters = match listed {
            Ok(output) if output.status.success() && local => {
                String::from_utf8_lossy(&output.stdout).into_owned()
            }
            _ => {
                eprintln!(
                    "skipped: TEST_POSTGRES_URL is not a local cluster that pg_lsclusters \
                     lists (the test stops and starts it)"
                );
                return None;
            }
        };
        // Columns: version, cluster, port, status, owner, data directory, log file.
        let cluster = clusters.lines().find_map(|line| {
            let columns: Vec<&str> = line.split_whitespace().collect();
            (columns.get(2) == Some(&port.as_str())).then(|| Self {
                version: columns[0].to_owned(),
                name: columns[1].to_owned(),
            })
        });
        if cluster.is_none() {
            eprintln!("skipped: no local PostgreSQL cluster listens on port {port}");
        }
        cluster
    }

    /// Stops the cluster (fast mode: open connections are cut, as in a crash or a
    /// failover). The returned guard starts it again, also when the test panics.
    fn stop(&self) -> StoppedCluster<'_> {
        self.ctl("stop").expect("stop PostgreSQL");
        StoppedCluster {
            cluster: self,
            running: false,
        }
    }

    /// `pg_ctlcluster VERSION NAME ACTION`, bypassing systemd (not running here).
    fn ctl(&self, action: &str) -> Result<(), String> {
        let output = Command::new("pg_ctlcluster")
            .args([
                "--skip-systemctl-redirect",
                &self.version,
                &self.name,
                action,
            ])
            .output()
            .map_err(|e| format!("cannot run pg_ctlcluster: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctlcluster {action} exited with {}: {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }
}

/// A stopped cluster, started again by [`StoppedCluster::start`] or on drop, so a
/// failing test never leaves PostgreSQL down for everything else on the machine.
struct StoppedCluster<'a> {
    cluster: &'a Cluster,
    running: bool,
}

impl StoppedCluster<'_> {
    fn start(mut self) {
        self.cluster.ctl("start").expect("start PostgreSQL again");
        self.running = true;
    }
}

impl Drop for StoppedCluster<'_> {
    fn drop(&mut self) {
        if !self.running
            && let Err(error) = self.cluster.ctl("start")
        {
            eprintln!("PostgreSQL could not be started again, start it by hand: {error}");
        }
    }
}
