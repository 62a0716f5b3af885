//! One trace from an HTTP request to the final status of its event, on real processes:
//! the trace id of a create's request is its worker attempt's, in the game's history
//! and in both processes' JSON logs, on the embedded broker and on RabbitMQ; a message
//! without `traceparent` starts a trace of its own; and with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` set, an OTLP receiver the test runs gets the request's
//! span and the worker's, its child.

mod common;

use common::processes::{Deployment, Process, free_port, http_client};
use common::rabbitmq::Vhost;
use common::{Backend, eventually, png};
use lapin::types::FieldTable;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// JSON logs, with the request's and the delivery's debug lines.
fn traced(deployment: Deployment) -> Deployment {
    deployment
        .with_env("RETROCAT_LOG_FORMAT", "json")
        .with_env("RUST_LOG", "warn,retrocat=debug,tower_http=debug")
}

/// Creates a game through `api` and returns its id.
async fn create(api: &Process, title: &str) -> i64 {
    let body = json!({"title": title, "platformId": 2, "genreId": 1,
                      "developer": "Tracers", "releaseYear": 1993});
    let response = http_client()
        .post(api.url("/api/games"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    response.json::<Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap()
}

/// The attempts of game `id` once there are `count`, oldest first.
async fn attempts(api: &Process, id: i64, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let history: Value = http_client()
            .get(api.url(&format!("/api/games/{id}/history")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let history = history.as_array().unwrap().clone();
        if history.len() >= count {
            return history;
        }
        assert!(Instant::now() < deadline, "game {id}: {history:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A trace id as W3C writes them: 32 lowercase hex digits, not all zero.
fn assert_trace_id(id: &str) {
    assert_eq!(id.len(), 32, "{id}");
    assert!(
        id.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')),
        "{id}"
    );
    assert_ne!(id, "0".repeat(32));
}

/// The JSON log lines of `process` inside a span named `span` whose fields include
/// `fields`, with the span's trace id.
fn span_lines(process: &Process, span: &str, fields: &[(&str, &str)]) -> Vec<String> {
    process
        .log()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| {
            let current = &line["span"];
            current["name"] == span
                && fields
                    .iter()
                    .all(|(name, value)| current[*name].as_str() == Some(*value))
        })
        .map(|line| line["span"]["trace_id"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// The create's trace id is on its request's log lines, on the worker's lines for its
/// delivery, and in the game's history. The worker logs the delivery's end after the
/// attempt the history shows is committed, so its line is waited for.
async fn assert_one_trace(api: &Process, worker: &Process, history: &[Value]) -> String {
    let trace_id = history[0]["traceId"]
        .as_str()
        .expect("a trace id")
        .to_owned();
    assert_trace_id(&trace_id);
    let requests = span_lines(api, "request", &[("method", "POST"), ("uri", "/api/games")]);
    assert!(
        !requests.is_empty(),
        "no log line of the request:\n{}",
        api.log()
    );
    assert!(
        requests.iter().all(|id| *id == trace_id),
        "{requests:?} ≠ {trace_id}"
    );
    let logged = eventually(
        "a log line of the worker in the create's trace",
        Duration::from_secs(10),
        || async {
            span_lines(worker, "process_event", &[])
                .contains(&trace_id)
                .then_some(())
        },
    );
    logged.await;
    trace_id
}

/// The second attempt of game `id`, from a message without `traceparent`, is in a
/// trace of its own, not the create's `trace_id`.
async fn assert_second_attempt_in_a_new_trace(api: &Process, id: i64, trace_id: &str) {
    let history = attempts(api, id, 2).await;
    let own = history[1]["traceId"].as_str().expect("a trace id");
    assert_trace_id(own);
    assert_ne!(
        own, trace_id,
        "a message without traceparent starts a new trace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_is_one_trace_from_its_request_to_its_attempt_on_the_embedded_broker() {
    let deployment = traced(Deployment::on(Backend::Sqlite).await);
    let serve = deployment
        .start_http("serve", "serve", free_port(), &[])
        .await;
    let id = create(&serve, "Traced Embedded").await;
    let history = attempts(&serve, id, 1).await;
    let trace_id = assert_one_trace(&serve, &serve, &history).await;

    // The original producer's route sends the original's message, no traceparent:
    // its processing is a trace of its own.
    let response = http_client()
        .post(serve.url("/api/messages/game-event"))
        .json(&json!({"gameId": id, "action": "process", "gameData": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_second_attempt_in_a_new_trace(&serve, id, &trace_id).await;
    serve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_is_one_trace_across_the_api_and_a_worker_on_rabbitmq() {
    let Some(vhost) = Vhost::create() else { return };
    let deployment = traced(
        Deployment::on(Backend::Sqlite)
            .await
            .with_rabbitmq(&vhost.url),
    );
    let (api, mut workers, amqp) = deployment.start_api_and_workers(&["w1"], &[]).await;
    let worker = workers.remove(0);
    let id = create(&api, "Traced RabbitMQ").await;
    let history = attempts(&api, id, 1).await;
    let trace_id = assert_one_trace(&api, &worker, &history).await;

    // A seed-format message straight to game_events, as the original producer sent
    // them: no traceparent, so a new trace.
    let original = json!({"gameId": id, "action": "process", "gameData": {},
                          "timestamp": "2024-05-01T10:00:00.000Z"});
    amqp.publish_original(
        "game_events",
        original.to_string().as_bytes(),
        FieldTable::default(),
    )
    .await;
    assert_second_attempt_in_a_new_trace(&api, id, &trace_id).await;
    worker.stop().await;
    api.stop().await;
}

/// The trace id of `api`'s one request `method uri`, from its log lines.
fn request_trace_id(api: &Process, method: &str, uri: &str) -> String {
    let ids = span_lines(api, "request", &[("method", method), ("uri", uri)]);
    let Some(first) = ids.first().cloned() else {
        panic!("no log line of {method} {uri}:\n{}", api.log());
    };
    assert!(ids.iter().all(|id| *id == first), "{ids:?}");
    assert_trace_id(&first);
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cover_upload_and_a_delete_are_each_one_trace_to_the_worker() {
    let deployment = traced(Deployment::on(Backend::Sqlite).await);
    let serve = deployment
        .start_http("serve", "serve", free_port(), &[])
        .await;
    let id = create(&serve, "Traced Cover").await;
    attempts(&serve, id, 1).await;

    let cover = format!("/api/games/{id}/cover");
    let response = http_client()
        .put(serve.url(&cover))
        .header("content-type", "image/png")
        .body(png(40, 20))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let history = attempts(&serve, id, 2).await;
    let upload = request_trace_id(&serve, "PUT", &cover);
    assert_eq!(history[1]["traceId"], upload.as_str(), "{history:?}");

    let game = format!("/api/games/{id}");
    let response = http_client().delete(serve.url(&game)).send().await.unwrap();
    assert_eq!(response.status(), 204);
    let delete = request_trace_id(&serve, "DELETE", &game);
    assert_ne!(delete, upload, "each request is a trace of its own");
    eventually(
        "a log line of the worker in the delete's trace",
        Duration::from_secs(10),
        || async {
            span_lines(&serve, "process_event", &[])
                .contains(&delete)
                .then_some(())
        },
    )
    .await;
    serve.stop().await;
}

/// An OTLP/HTTP receiver on 127.0.0.1: every span of every export it gets.
async fn otlp_receiver() -> (String, Arc<Mutex<Vec<Span>>>) {
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post({
            let spans = spans.clone();
            move |body: axum::body::Bytes| async move {
                let export = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                let mut spans = spans.lock().unwrap();
                for resource in export.resource_spans {
                    for scope in resource.scope_spans {
                        spans.extend(scope.spans);
                    }
                }
                // An empty ExportTraceServiceResponse.
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, spans)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_by_otlp_with_the_worker_a_child_of_the_request() {
    let (endpoint, spans) = otlp_receiver().await;
    let deployment = Deployment::on(Backend::Sqlite)
        .await
        .with_env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .with_env("OTEL_BSP_SCHEDULE_DELAY", "100");
    let serve = deployment
        .start_http("serve", "serve", free_port(), &[])
        .await;
    let id = create(&serve, "Exported").await;
    let trace_id = attempts(&serve, id, 1).await[0]["traceId"]
        .as_str()
        .unwrap()
        .to_owned();
    // SIGTERM: the process exports what it holds before it exits.
    serve.stop().await;

    let spans = spans.lock().unwrap();
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let in_trace: Vec<&Span> = spans
        .iter()
        .filter(|span| hex(&span.trace_id) == trace_id)
        .collect();
    let request = in_trace
        .iter()
        .find(|span| span.name == "request")
        .unwrap_or_else(|| panic!("no request span in {trace_id}: {in_trace:?}"));
    let delivery = in_trace
        .iter()
        .find(|span| span.name == "process_event")
        .unwrap_or_else(|| panic!("no worker span in {trace_id}: {in_trace:?}"));
    assert_eq!(
        delivery.parent_span_id, request.span_id,
        "the worker's span is the request's child"
    );
    assert!(
        request.parent_span_id.is_empty(),
        "the request starts the trace"
    );
}
