//! Criterion benches of the paths every event takes: encoding and decoding it, the
//! embedded broker's confirmed publish and acknowledged consume, the outbox relay's
//! batch, and the API handlers behind the busiest routes. All on real parts (an SQLite
//! catalog and an embedded broker in a temporary directory), in process, so a change
//! to one of them shows here before it shows end to end (`retrocat bench`).
//!
//! `cargo bench --bench hot_paths`; `-- event` runs the benches whose name has "event".

use axum::body::Body;
use axum::http::{Request, StatusCode};
use clap::Parser;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use retrocat::api::{self, ApiContext, stream::LiveFeed};
use retrocat::broker::embedded::EmbeddedBroker;
use retrocat::broker::{Broker, Message, Properties, Publish, QueueSpec, topology};
use retrocat::cli::ServeArgs;
use retrocat::domain::{
    CatalogEvent, Developer, EventId, GameAction, GameDraft, GameEvent, GameTitle, ReleaseYear,
};
use retrocat::outbox::{Relay, RelayConfig};
use retrocat::shutdown::Shutdown;
use retrocat::storage::{self, NewGame, PoolConfig, Store};
use retrocat::telemetry::queues::QueueWatch;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tower::ServiceExt;

/// Events per batch: the relay's default batch.
const BATCH: usize = 100;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A catalog on SQLite and an embedded broker with the topology declared, in `dir`.
async fn system(dir: &std::path::Path) -> (Arc<dyn Store>, Arc<dyn Broker>) {
    let url = format!("sqlite://{}", dir.join("catalog.db").display());
    let store = storage::connect(&url, PoolConfig::default())
        .await
        .expect("catalog");
    let broker: Arc<dyn Broker> = Arc::new(
        EmbeddedBroker::open(&dir.join("broker.db"))
            .await
            .expect("broker"),
    );
    topology::declare(broker.as_ref()).await.expect("topology");
    (store, broker)
}

fn draft(n: usize) -> GameDraft {
    GameDraft {
        title: GameTitle::parse(&format!("Bench {n}")).unwrap(),
        platform_id: 1,
        genre_id: 1,
        developer: Developer::parse("criterion").unwrap(),
        release_year: ReleaseYear::parse(1990).unwrap(),
        description: "A game of the benches.".into(),
        image_url: None,
    }
}

/// The `n`th game to create, with its event's id.
fn new_game(n: usize) -> NewGame {
    NewGame {
        draft: draft(n),
        event: EventId::generate(),
        trace: None,
    }
}

fn event_codec(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (store, _broker) = rt.block_on(system(dir.path()));
    let game = rt.block_on(store.create_games(&[new_game(0)])).unwrap()[0]
        .as_ref()
        .unwrap()
        .clone();
    let body = CatalogEvent::game_changed(&game, GameAction::Create, &EventId::generate()).encode();
    let event = GameEvent::decode(&body, None).unwrap();
    let mut group = c.benchmark_group("event");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("encode", |b| b.iter(|| event.encode()));
    group.bench_function("decode", |b| {
        b.iter(|| GameEvent::decode(&body, None).unwrap())
    });
    group.finish();
}

fn embedded_broker(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let broker = rt
        .block_on(EmbeddedBroker::open(&dir.path().join("broker.db")))
        .unwrap();
    rt.block_on(broker.declare_queue(&QueueSpec::durable("bench")))
        .unwrap();
    // Each iteration's future borrows the consumer; the lock lets them take turns.
    let consumer = tokio::sync::Mutex::new(rt.block_on(broker.consume("bench", 256)).unwrap());
    let message = Message {
        body: vec![b'x'; 300].into(),
        properties: Properties::default(),
    };
    let mut group = c.benchmark_group("embedded_broker");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("publish_100_consume_ack", |b| {
        b.to_async(&rt).iter(|| {
            let batch = vec![Publish::to_queue("bench", message.clone()); BATCH];
            let (broker, consumer) = (&broker, &consumer);
            async move {
                let mut consumer = consumer.lock().await;
                broker.publish(batch).await.unwrap();
                let mut received = Vec::with_capacity(BATCH);
                while received.len() < BATCH {
                    let limit = BATCH - received.len();
                    consumer.next_batch(&mut received, limit).await;
                }
                for delivery in received {
                    delivery.ack().await.unwrap();
                }
            }
        })
    });
    group.finish();
}

fn outbox_relay(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (store, broker) = rt.block_on(system(dir.path()));
    let relay = Relay::new(store.clone(), broker, RelayConfig::default());
    let mut group = c.benchmark_group("outbox_relay");
    group.throughput(Throughput::Elements(BATCH as u64));
    // Each iteration writes 100 games (untimed), then times the relay publishing their
    // 100 outbox rows in one batch and marking them sent.
    group.bench_function("batch_of_100", |b| {
        b.to_async(&rt).iter_custom(|iterations| {
            let (store, relay) = (store.clone(), &relay);
            async move {
                let mut timed = Duration::ZERO;
                for _ in 0..iterations {
                    let games: Vec<NewGame> = (0..BATCH).map(new_game).collect();
                    store.create_games(&games).await.unwrap();
                    let start = Instant::now();
                    let pass = relay.relay_pass().await.unwrap();
                    timed += start.elapsed();
                    assert_eq!(pass.sent, BATCH);
                }
                timed
            }
        })
    });
    group.finish();
}

fn api_handlers(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (store, broker) = rt.block_on(system(dir.path()));
    let queues = QueueWatch::new(store.clone(), broker.clone(), None);
    let ctx = rt.block_on(async {
        ApiContext::new(store, broker, LiveFeed::default(), queues, Shutdown::new())
    });
    let app = api::router(ctx, &ServeArgs::parse_from(["serve"]).http.router());
    let call = |request: Request<Body>, expected: StatusCode| {
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await.unwrap();
            assert_eq!(response.status(), expected);
            axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap()
        }
    };
    let mut group = c.benchmark_group("api");
    group.bench_function("get_game", |b| {
        b.to_async(&rt).iter(|| {
            call(
                Request::get("/api/games/1").body(Body::empty()).unwrap(),
                StatusCode::OK,
            )
        })
    });
    group.bench_function("list_first_50", |b| {
        b.to_async(&rt).iter(|| {
            call(
                Request::get("/api/games?limit=50")
                    .body(Body::empty())
                    .unwrap(),
                StatusCode::OK,
            )
        })
    });
    let body = r#"{"title":"Bench","platformId":1,"genreId":1,"developer":"criterion","releaseYear":1990}"#;
    group.bench_function("create_game", |b| {
        b.to_async(&rt).iter_batched(
            || {
                Request::post("/api/games")
                    .header("content-type", "application/json")
                    .body(Body::from(body))
                    .unwrap()
            },
            |request| call(request, StatusCode::CREATED),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = event_codec, embedded_broker, outbox_relay, api_handlers
}
criterion_main!(benches);
