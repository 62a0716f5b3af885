//! `retrocat bench` against a running system, as a user runs it: its report must
//! match what the system actually did, and it must say so when the system did not
//! keep up or is not there.

mod common;

use common::Backend;
use common::processes::{Deployment, Effects, free_port};
use common::rabbitmq::{Vhost, rabbitmqctl};
use serde_json::Value;
use std::process::Output;

/// Runs `retrocat bench ARGS` with `env`, RABBITMQ_URL unset unless `env` sets it.
async fn bench(args: &[&str], env: &[(&str, &str)]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_retrocat"))
        .arg("bench")
        .args(args)
        .env_remove("RABBITMQ_URL")
        .envs(env.iter().copied())
        .output()
        .await
        .expect("run retrocat bench")
}

/// The JSON report of a run that must have succeeded.
fn report(output: &Output) -> Value {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed: {stderr}");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not a JSON report ({e}): {}\n{stderr}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// The ids of the games whose title starts with `prefix`.
async fn games_titled(effects: &Effects, prefix: &str) -> Vec<i64> {
    let games = effects.games().await;
    let mut ids: Vec<i64> = games
        .values()
        .filter(|game| game.title.starts_with(prefix))
        .map(|game| game.id)
        .collect();
    ids.sort_unstable();
    ids
}

fn assert_ordered(latency: &Value) {
    let at = |key: &str| {
        latency[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key}: {latency}"))
    };
    assert!(
        at("p50") <= at("p90") && at("p90") <= at("p99") && at("p99") <= at("max"),
        "percentiles out of order: {latency}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_run_reports_what_the_system_did_and_the_embedded_ceiling() {
    let deployment = Deployment::on(Backend::Sqlite).await;
    let server = deployment
        .start_http("server", "serve", free_port(), &[])
        .await;
    let output = bench(
        &[
            "--url",
            server.base(),
            "--workload",
            "create",
            "--count",
            "300",
            "--concurrency",
            "16",
            "--ceiling-messages",
            "2000",
            "--json",
        ],
        &[],
    )
    .await;
    let report = report(&output);

    assert_eq!(report["broker"], "embedded");
    assert_eq!(report["requests"]["sent"], 300);
    assert_eq!(report["requests"]["errors"], 0);
    let events = &report["events"];
    assert_eq!(events["expected"], 300, "{report}");
    assert_eq!(events["completed"], 300, "{report}");
    assert_eq!(events["unfinished"], 0, "{report}");
    assert_eq!(events["latencyErrors"], 0, "{report}");
    assert!(events["perSecond"].as_f64().unwrap() > 0.0, "{report}");
    assert_ordered(&events["latencyMs"]);
    assert_ordered(&report["requests"]["latencyMs"]);
    let ceiling = &report["ceiling"];
    assert_eq!(ceiling["broker"], "embedded");
    assert_eq!(ceiling["messages"], 2000);
    assert!(ceiling["perSecond"].as_f64().unwrap() > 0.0, "{report}");
    let share = report["shareOfCeiling"].as_f64().unwrap();
    let expected = events["perSecond"].as_f64().unwrap() / ceiling["perSecond"].as_f64().unwrap();
    assert!((share - expected).abs() < 1e-9, "{report}");

    // The report's 300 events are 300 new games, each processed exactly once.
    let effects = Effects::open(&deployment).await;
    let ids = games_titled(&effects, "Bench ").await;
    assert_eq!(ids.len(), 300);
    effects.assert_each_completed_once(&ids).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_and_mixed_runs_wait_for_the_events_of_their_writes_only() {
    let deployment = Deployment::on(Backend::Sqlite).await;
    let server = deployment
        .start_http("server", "serve", free_port(), &[])
        .await;
    let run = |workload: &'static str, count: &'static str| {
        let base = server.base().to_owned();
        async move {
            let args = [
                "--url",
                &base,
                "--workload",
                workload,
                "--count",
                count,
                "--rate",
                "400",
                "--ceiling-messages",
                "0",
                "--json",
            ];
            report(&bench(&args, &[]).await)
        }
    };

    let updates = run("update", "100").await;
    assert_eq!(updates["events"]["completed"], 100, "{updates}");
    assert!(updates["ceiling"].is_null() && updates["shareOfCeiling"].is_null());
    assert_eq!(updates["rate"], 400);
    let effects = Effects::open(&deployment).await;
    let games = effects.games().await;
    let updated: Vec<_> = games
        .values()
        .filter(|game| game.title.ends_with(" updated"))
        .collect();
    assert_eq!(updated.len(), 100, "each of the setup's games updated once");
    assert!(updated.iter().all(|game| game.version == 2));

    // Of 200 mixed requests, 20 are creates and 20 updates: 40 events.
    let mixed = run("mixed", "200").await;
    assert_eq!(mixed["requests"]["sent"], 200);
    assert_eq!(mixed["requests"]["errors"], 0, "{mixed}");
    assert_eq!(mixed["events"]["expected"], 40, "{mixed}");
    assert_eq!(mixed["events"]["completed"], 40, "{mixed}");

    // Reads cause no events.
    let reads = run("read", "200").await;
    assert_eq!(reads["requests"]["errors"], 0, "{reads}");
    assert!(reads["events"].is_null(), "{reads}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_events_are_not_processed_fails_and_says_so() {
    // The API alone on the embedded broker: nobody consumes game_events.
    let deployment = Deployment::on(Backend::Sqlite).await;
    let api = deployment.start_http("api", "api", free_port(), &[]).await;
    let args = [
        "--url",
        api.base(),
        "--count",
        "20",
        "--wait-timeout",
        "3s",
        "--ceiling-messages",
        "0",
    ];
    let output = bench(&args, &[]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stdout}");
    assert!(
        stdout.contains("0 completed, 0 failed, 20 unfinished"),
        "{stdout}"
    );
    assert!(
        stderr.contains("20 events were not processed in time"),
        "{stderr}"
    );
    api.stop().await;
}

#[tokio::test]
async fn a_bench_without_a_system_says_how_to_start_one() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let output = bench(&["--url", &url, "--count", "5"], &[]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("no retrocat answers") && stderr.contains("retrocat serve"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_rabbitmq_the_ceiling_is_measured_on_rabbitmq() {
    let Some(vhost) = Vhost::create() else { return };
    let deployment = Deployment::on(Backend::Sqlite)
        .await
        .with_rabbitmq(&vhost.url);
    let (api, workers, _amqp) = deployment.start_api_and_workers(&["w1"], &[]).await;
    let args = [
        "--url",
        api.base(),
        "--count",
        "200",
        "--ceiling-messages",
        "2000",
        "--json",
    ];

    // Without RABBITMQ_URL the bench cannot reach the system's broker, and says what
    // to do instead of measuring another one.
    let output = bench(&args, &[]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("set RABBITMQ_URL"), "{stderr}");

    let report = report(&bench(&args, &[("RABBITMQ_URL", &vhost.url)]).await);
    assert_eq!(report["broker"], "rabbitmq");
    assert_eq!(report["ceiling"]["broker"], "rabbitmq");
    assert_eq!(report["events"]["completed"], 200, "{report}");
    // The ceiling's queue is gone.
    let queues = rabbitmqctl(&["list_queues", "-q", "-p", &vhost.name, "name"]).unwrap();
    assert!(!queues.contains("bench.ceiling."), "{queues}");
    common::processes::stop_all(workers.into_iter().chain([api]).collect()).await;
}
