//! What an operator watches: `/metrics` (parsed by a Prometheus parser, and linted by
//! `promtool` where it is installed), `/api/queues` and `retrocat queue list`, on the
//! embedded broker and on RabbitMQ, against what the database and the broker hold.

mod common;

use common::processes::{Deployment, Process, free_port, http_client};
use common::rabbitmq::{Amqp, Vhost};
use common::{Backend, TestApp, eventually, game_body, on_every_backend, with};
use openmetrics_parser::prometheus::parse_prometheus;
use openmetrics_parser::{MetricsExposition, PrometheusType, PrometheusValue};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// Scrapes `/metrics` of `process`, checks the exposition with `promtool` when it is
/// installed, and parses it.
async fn scrape_metrics(process: &Process) -> Scrape {
    let response = http_client()
        .get(process.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.unwrap();
    promtool_check(&text);
    parse_prometheus(&text).unwrap_or_else(|e| panic!("Prometheus text format: {e:?}\n{text}"))
}

type Scrape = MetricsExposition<PrometheusType, PrometheusValue>;

/// `promtool check metrics` (Debian's `prometheus` package) lints the exposition the
/// way Prometheus reads it; `.ci/run` installs it.
fn promtool_check(text: &str) {
    use std::io::Write;
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is not installed: .ci/run installs it (apt-get install prometheus)"
        );
        println!("skipped: promtool is not installed (apt-get install prometheus)");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The value of the one sample of `name` whose labels include `labels` (a histogram's
/// count); 0 when there is none (a counter that never moved is not exported yet).
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let Some(family) = scrape.families.get(name) else {
        return 0.0;
    };
    let matching: Vec<f64> = family
        .iter_samples()
        .filter(|sample| {
            let set = sample.get_labelset().expect("labels");
            labels
                .iter()
                .all(|(key, value)| set.get_label_value(key) == Some(value))
        })
        .map(|sample| match &sample.value {
            PrometheusValue::Unknown(n) | PrometheusValue::Gauge(n) => n.as_f64(),
            PrometheusValue::Counter(counter) => counter.value.as_f64(),
            PrometheusValue::Histogram(histogram) => histogram.count.unwrap_or(0) as f64,
            PrometheusValue::Summary(_) => panic!("{name} is a summary, not a histogram"),
        })
        .collect();
    assert!(matching.len() <= 1, "{name} {labels:?}: {matching:?}");
    matching.first().copied().unwrap_or(0.0)
}

/// Creates `count` games through `api`, the first with `first_cover` as its cover URL,
/// and returns their ids.
async fn create(api: &Process, title: &str, count: usize, first_cover: Option<&str>) -> Vec<i64> {
    let client = http_client();
    let mut ids = Vec::new();
    for n in 0..count {
        let body = json!({
            "title": format!("{title} {n:03}"),
            "platformId": 1,
            "genreId": 3,
            "developer": "Observers Inc.",
            "releaseYear": 1991,
            "imageUrl": if n == 0 { first_cover } else { None },
        });
        let response = client
            .post(api.url("/api/games"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        ids.push(
            response.json::<Value>().await.unwrap()["id"]
                .as_i64()
                .unwrap(),
        );
    }
    ids
}

/// Waits until every game has its final status, `completed` or `failed`.
async fn wait_final(api: &Process, ids: &[i64]) {
    for id in ids {
        eventually(
            &format!("game {id} processed"),
            Duration::from_secs(60),
            || async {
                let game = api.get_json(&format!("/api/games/{id}")).await;
                matches!(
                    game["processingStatus"].as_str(),
                    Some("completed" | "failed")
                )
                .then_some(())
            },
        )
        .await;
    }
}

/// The row of `name` in `GET /api/queues`.
async fn queue_row(api: &Process, name: &str) -> Value {
    let rows = api.get_json("/api/queues").await;
    rows.as_array()
        .unwrap()
        .iter()
        .find(|row| row["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no {name} in {rows}"))
}

/// Waits until the row of `queue` has `field` equal to `expected`.
async fn wait_row(api: &Process, queue: &str, field: &str, expected: Value) -> Value {
    eventually(
        &format!("{queue}.{field} = {expected}"),
        Duration::from_secs(30),
        || async {
            let row = queue_row(api, queue).await;
            (row[field] == expected).then_some(row)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_after_100_creates_matches_the_database() {
    let deployment = Deployment::on(Backend::Sqlite).await;
    let serve = deployment
        .start_http(
            "serve",
            "serve",
            free_port(),
            &[
                "--allow-private-fetch",
                "--max-attempts",
                "3",
                "--retry-base-delay",
                "20ms",
                "--retry-max-delay",
                "40ms",
            ],
        )
        .await;
    // Nothing listens there: each fetch fails, is retried, and the last dead-letters.
    let broken_cover = format!("http://127.0.0.1:{}/cover.png", free_port());
    let ids = create(&serve, "Scraped", 100, Some(&broken_cover)).await;
    wait_final(&serve, &ids).await;

    // The database's account of every attempt, from each game's history.
    let mut attempts: BTreeMap<String, f64> = BTreeMap::new();
    for id in &ids {
        for attempt in serve
            .get_json(&format!("/api/games/{id}/history"))
            .await
            .as_array()
            .unwrap()
        {
            *attempts
                .entry(attempt["outcome"].as_str().unwrap().to_owned())
                .or_default() += 1.0;
        }
    }
    assert_eq!(attempts.get("completed"), Some(&99.0), "{attempts:?}");
    assert_eq!(attempts.get("retry"), Some(&2.0), "{attempts:?}");
    assert_eq!(attempts.get("failed"), Some(&1.0), "{attempts:?}");
    let dead_letters = serve.get_json("/api/dlq").await;
    assert_eq!(dead_letters.as_array().unwrap().len(), 1, "{dead_letters}");

    // The gauges are sampled once a second: wait for a sample after the last event.
    let scrape = eventually("the gauges sampled", Duration::from_secs(10), || async {
        let scrape = scrape_metrics(&serve).await;
        let dead = value(
            &scrape,
            "retrocat_dead_letters",
            &[("queue", "game_events")],
        );
        let pending = value(&scrape, "retrocat_outbox_pending", &[]);
        (dead == 1.0 && pending == 0.0).then_some(scrape)
    })
    .await;
    let processed = |outcome| {
        value(
            &scrape,
            "retrocat_events_processed_total",
            &[("queue", "game_events"), ("outcome", outcome)],
        )
    };
    assert_eq!(processed("completed"), attempts["completed"]);
    assert_eq!(processed("retried"), attempts["retry"]);
    assert_eq!(processed("failed"), attempts["failed"]);
    assert_eq!(processed("dead_lettered"), 0.0);
    assert_eq!(
        value(&scrape, "retrocat_event_end_to_end_seconds", &[]),
        100.0,
        "one end-to-end sample per game, at its final status"
    );
    assert_eq!(
        value(
            &scrape,
            "retrocat_event_processing_duration_seconds",
            &[("queue", "game_events")]
        ),
        attempts.values().sum::<f64>(),
        "one processing sample per delivery"
    );
    assert_eq!(
        value(
            &scrape,
            "retrocat_http_requests_total",
            &[
                ("method", "POST"),
                ("route", "/api/games"),
                ("status", "201")
            ]
        ),
        100.0
    );
    assert_eq!(
        value(
            &scrape,
            "retrocat_http_requests_total",
            &[("method", "GET"), ("route", "/api/games/{id}/history")]
        ),
        100.0,
        "requests are labelled by their route, not their path"
    );
    assert!(value(&scrape, "retrocat_outbox_published_total", &[]) >= 100.0);
    assert_eq!(
        value(&scrape, "retrocat_outbox_oldest_pending_age_seconds", &[]),
        0.0
    );
    let game_events = [("queue", "game_events")];
    assert_eq!(
        value(
            &scrape,
            "retrocat_queue_messages",
            &[("queue", "game_events"), ("state", "ready")]
        ),
        0.0
    );
    assert_eq!(
        value(&scrape, "retrocat_queue_consumers", &game_events),
        1.0
    );
    assert_eq!(value(&scrape, "retrocat_broker_connected", &[]), 1.0);
    assert_history_charted(&serve, 100.0).await;
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        value(&scrape, "retrocat_build_info", &[("version", version)]),
        1.0
    );
    serve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_on_the_embedded_broker_show_a_backlog_its_consumers_and_its_draining() {
    let deployment = Deployment::on(Backend::Sqlite).await;
    // The API alone: events reach game_events, and nobody consumes them.
    let api = deployment.start_http("api", "api", free_port(), &[]).await;
    create(&api, "Queued", 50, None).await;
    let row = wait_row(&api, "game_events", "ready", json!(50)).await;
    assert_eq!(row["consumers"], 0, "{row}");
    assert_eq!(row["unacked"], 0, "{row}");
    assert_eq!(row["source"], "embedded", "{row}");
    let outbox = wait_row(&api, "outbox", "ready", json!(0)).await;
    assert_eq!(outbox["source"], "database", "{outbox}");
    assert_queue_list_shows(&deployment, &api, "game_events", "50").await;
    // The outbox's rates are read from the outbox: rows written, and rows sent.
    create(&api, "Measured", 5, None).await;
    let outbox = eventually("the outbox's rates", Duration::from_secs(30), || async {
        let row = queue_row(&api, "outbox").await;
        (row["ready"] == 0 && row["ackRate"].as_f64()? > 0.0).then_some(row)
    })
    .await;
    assert!(outbox["publishRate"].as_f64().unwrap() > 0.0, "{outbox}");
    api.stop().await;

    // The whole system on the same files: its worker consumes the backlog.
    let serve = deployment
        .start_http("serve", "serve", free_port(), &[])
        .await;
    let row = wait_row(&serve, "game_events", "ready", json!(0)).await;
    assert_eq!(row["consumers"], 1, "{row}");
    let row = wait_row(&serve, "game_events", "unacked", json!(0)).await;
    assert!(row["ackRate"].as_f64().unwrap() > 0.0, "{row}");
    serve.stop().await;
}

/// `GET /api/queues/history` has drawn `games` games finishing: settled per second by
/// outcome adds up to the completed and failed, with latencies, and every queue's
/// depth is in each sample.
async fn assert_history_charted(api: &Process, games: f64) {
    let history = api.get_json("/api/queues/history").await;
    assert_eq!(history["intervalSeconds"], 1);
    let samples = history["samples"].as_array().unwrap();
    assert!(!samples.is_empty(), "{history}");
    let finished: f64 = samples
        .iter()
        .map(|sample| {
            let processed = &sample["processed"];
            processed["completed"].as_f64().unwrap() + processed["failed"].as_f64().unwrap()
        })
        .sum();
    // Per-second rates over intervals of about a second (the first sample is taken as
    // the process starts, before any event): their sum is about the count.
    assert!(
        (finished - games).abs() < games * 0.05 + 2.0,
        "{finished} of {games}: {history}"
    );
    assert!(
        samples
            .iter()
            .any(|s| s["latency"]["p99"].as_f64().is_some()),
        "no latency charted: {history}"
    );
    for sample in samples {
        assert!(sample["depths"]["game_events"].is_u64(), "{sample}");
        assert!(sample["depths"]["outbox"].is_u64(), "{sample}");
    }
}

/// Waits until `worker`'s metrics count `count` completed deliveries of
/// `game_events`, and returns that scrape.
async fn wait_completed(worker: &Process, count: f64) -> Scrape {
    eventually("the worker's count", Duration::from_secs(60), || async {
        let scrape = scrape_metrics(worker).await;
        let completed = value(
            &scrape,
            "retrocat_events_processed_total",
            &[("queue", "game_events"), ("outcome", "completed")],
        );
        (completed == count).then_some(scrape)
    })
    .await
}

/// `retrocat queue list` prints `queue`'s row with `ready`, and `--json` the same rows
/// as `GET /api/queues`.
async fn assert_queue_list_shows(deployment: &Deployment, api: &Process, queue: &str, ready: &str) {
    let list = deployment
        .output("queue", &["list", "--url", api.base()])
        .await;
    let line = list
        .lines()
        .find(|line| line.starts_with(&format!("{queue} ")))
        .unwrap_or_else(|| panic!("no {queue} in\n{list}"));
    let columns: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(columns[1], ready, "{list}");
    let json = deployment
        .output("queue", &["list", "--url", api.base(), "--json"])
        .await;
    let names: Vec<String> = json
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap()["name"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let rows = api.get_json("/api/queues").await;
    let expected: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_on_rabbitmq_show_a_backlog_consumers_and_the_outbox_while_it_is_away() {
    let Some(vhost) = Vhost::create() else { return };
    let deployment = Deployment::on(Backend::Sqlite)
        .await
        .with_rabbitmq(&vhost.url);
    deployment.run("migrate", &[]).await;
    let api = deployment.start_http("api", "api", free_port(), &[]).await;
    create(&api, "Queued", 50, None).await;
    let row = wait_row(&api, "game_events", "ready", json!(50)).await;
    assert_eq!(row["consumers"], 0, "{row}");
    assert_eq!(row["source"], "amqp", "{row}");
    assert_queue_list_shows(&deployment, &api, "game_events", "50").await;

    // A worker with its probes on --listen: it drains the queue and says so.
    let worker = deployment
        .start_http("worker", "worker", free_port(), &["--worker-id", "w1"])
        .await;
    wait_row(&api, "game_events", "consumers", json!(1)).await;
    wait_row(&api, "game_events", "ready", json!(0)).await;
    let scrape = wait_completed(&worker, 50.0).await;
    assert_eq!(value(&scrape, "retrocat_broker_connected", &[]), 1.0);
    let healthz = http_client()
        .get(worker.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200);

    // The vhost gone, RabbitMQ is away for every process: writes still succeed, and
    // their events wait in the outbox, where /api/queues shows them.
    vhost.delete();
    create(&api, "Waiting", 5, None).await;
    wait_row(&api, "outbox", "ready", json!(5)).await;
    // The oldest of them ages while nothing can publish it.
    eventually(
        "the outbox's oldest age",
        Duration::from_secs(10),
        || async {
            let outbox = queue_row(&api, "outbox").await;
            (outbox["oldestAgeSeconds"].as_f64()? >= 1.0).then_some(())
        },
    )
    .await;
    let row = wait_row(&api, "game_events", "ready", Value::Null).await;
    assert_eq!(row["consumers"], Value::Null, "{row}");
    let scrape = eventually("broker disconnected", Duration::from_secs(10), || async {
        let scrape = scrape_metrics(&api).await;
        (value(&scrape, "retrocat_broker_connected", &[]) == 0.0).then_some(scrape)
    })
    .await;
    assert_eq!(value(&scrape, "retrocat_outbox_pending", &[]), 5.0);

    // Back: the relay publishes them, the worker processes them.
    vhost.add();
    wait_row(&api, "outbox", "ready", json!(0)).await;
    let scrape = wait_completed(&worker, 55.0).await;
    assert_eq!(value(&scrape, "retrocat_broker_connected", &[]), 1.0);
    worker.stop().await;
    api.stop().await;
}

/// With `RABBITMQ_MANAGEMENT_URL`, unacknowledged messages and rates come from RabbitMQ's
/// management API: a plain AMQP client that holds 5 events unacknowledged is seen, and
/// the publishes of creates that go on are measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_take_unacked_counts_and_rates_from_the_management_api() {
    let Some((vhost, management)) = Vhost::on_management_node() else {
        return;
    };
    let deployment = Deployment::on(Backend::Sqlite)
        .await
        .with_rabbitmq(&vhost.url)
        .with_env("RABBITMQ_MANAGEMENT_URL", &management);
    deployment.run("migrate", &[]).await;
    let api = deployment.start_http("api", "api", free_port(), &[]).await;
    create(&api, "Held", 5, None).await;
    wait_row(&api, "game_events", "ready", json!(5)).await;
    let client = Amqp::connect(&vhost.url).await;
    for _ in 0..5 {
        assert!(client.hold_next("game_events").await);
    }
    let row = wait_row(&api, "game_events", "unacked", json!(5)).await;
    assert_eq!(row["source"], "management", "{row}");
    assert_eq!(row["ready"], 0, "{row}");

    // RabbitMQ measures rates over a few seconds: creates go on until it shows them.
    let row = eventually(
        "a publish rate from the management API",
        Duration::from_secs(60),
        || async {
            create(&api, "Measured", 1, None).await;
            let row = queue_row(&api, "game_events").await;
            (row["publishRate"].as_f64()? > 0.0).then_some(row)
        },
    )
    .await;
    assert_eq!(row["unacked"], 5, "{row}");
    assert_eq!(row["source"], "management", "{row}");
    drop(client);
    api.stop().await;
}

on_every_backend!(the_processing_counters_count_the_whole_catalog);

/// `GET /api/tasks/counts` counts every game by status, not a page of them.
async fn the_processing_counters_count_the_whole_catalog(backend: Backend) {
    let app = TestApp::spawn_on(backend).await;
    let completed = app.create_game(&game_body("Counted")).await;
    // A loopback cover is refused for good by the fetch guard: the game fails.
    let refused = with(
        game_body("Refused"),
        "imageUrl",
        json!("http://127.0.0.1/cover.png"),
    );
    let failed = app.create_game(&refused).await;
    app.wait_for_status(completed["id"].as_i64().unwrap(), "completed", 1)
        .await;
    app.wait_for_status(failed["id"].as_i64().unwrap(), "failed", 1)
        .await;

    let counts = app.get_json("/api/tasks/counts").await;
    let mut total = 0;
    for status in ["pending", "processing", "completed", "failed"] {
        let games = app.get_json(&format!("/api/games?status={status}")).await;
        let games = games.as_array().unwrap().len();
        assert_eq!(counts[status], games, "{status}: {counts}");
        total += games;
    }
    assert_eq!(
        total,
        app.get_json("/api/games").await.as_array().unwrap().len()
    );
    assert!(counts["failed"].as_u64() >= Some(1), "{counts}");
    app.stop().await;
}
