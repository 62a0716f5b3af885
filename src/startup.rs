//! Builds the roles and runs them. `serve` is literally `api` and `worker` composed.

use crate::api::server::ServerLimits;
use crate::api::{self, ApiContext, stream::LiveFeed};
use crate::bench;
use crate::broker::{self, Broker, topology};
use crate::cli::{Cli, Command, QueueCommand, ServeArgs};
use crate::config::{BrokerArgs, DatabaseArgs, HttpArgs, WorkerArgs};
use crate::outbox::Relay;
use crate::processing::fetch::CoverFetcher;
use crate::processing::pause::PauseWatch;
use crate::processing::retention::Retention;
use crate::processing::subscriber::Subscriber;
use crate::processing::thumbnail::DecodeBudget;
use crate::processing::worker::{Worker, WorkerConfig};
use crate::producer;
use crate::shutdown::Shutdown;
use crate::storage::{self, Store};
use crate::telemetry::management::Management;
use crate::telemetry::queues::{self, QueueWatch};
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Runs the command line's command until it finishes or a signal stops it.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let command = cli.command.unwrap_or_else(Command::default_serve);
    if command.serves_metrics() {
        // Installed before anything records, so no early count is lost. A process that
        // serves no /metrics records nothing: nobody would drain its histograms.
        crate::telemetry::metrics::handle();
    }
    let shutdown = Shutdown::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move { shutdown.trigger_on_signal().await }
    });
    match command {
        Command::Migrate => {
            storage::connect(&cli.database.database_url, cli.database.pool()).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Publish(args) => {
            let outgoing = args.outgoing().context("reading the message")?;
            let outgoing = args.producer.policy().admit(outgoing)?;
            let broker = connect_declared_broker(&cli.broker).await?;
            match args.wait {
                None => println!("{}", producer::send(broker.as_ref(), outgoing).await?),
                Some(wait) => {
                    let (id, reply) = producer::request(broker.as_ref(), outgoing, wait)
                        .await
                        .context("no reply: is a worker consuming the message's queue?")?;
                    println!("{id}");
                    println!("{}", String::from_utf8_lossy(&reply.body));
                }
            }
            broker.close().await?;
            Ok(())
        }
        Command::Dlq(command) => {
            let broker = connect_declared_broker(&cli.broker).await?;
            crate::cli::dlq::run(broker.as_ref(), command).await?;
            // Replay and purge acknowledge; the process exits right after.
            Ok(broker.close().await?)
        }
        Command::Bench(args) => bench::run(args, &cli.broker).await,
        Command::Queue(QueueCommand::List { url, json }) => {
            let views = queues::fetch(&url).await?;
            if json {
                for view in &views {
                    println!("{}", serde_json::to_string(view)?);
                }
            } else {
                print!("{}", queues::table(&views));
            }
            Ok(())
        }
        Command::Queue(QueueCommand::Pause { queue }) => {
            set_paused(&cli.database, &queue, true).await
        }
        Command::Queue(QueueCommand::Resume { queue }) => {
            set_paused(&cli.database, &queue, false).await
        }
        Command::User(command) => {
            let store = storage::connect(&cli.database.database_url, cli.database.pool()).await?;
            crate::cli::accounts::user(store.as_ref(), command).await
        }
        Command::Token(command) => {
            let store = storage::connect(&cli.database.database_url, cli.database.pool()).await?;
            crate::cli::accounts::token(store.as_ref(), command).await
        }
        Command::Serve(args) => {
            let parts =
                Components::connect(&cli.database, &cli.broker, cli.covers.decode_budget()).await?;
            let listener = bind(&args.http).await?;
            run_serve(&parts, &args, listener, shutdown).await
        }
        Command::Api(http) => {
            let parts =
                Components::connect(&cli.database, &cli.broker, cli.covers.decode_budget()).await?;
            let listener = bind(&http).await?;
            run_api(&parts, &http, listener, shutdown).await
        }
        Command::Worker(args) => {
            let parts =
                Components::connect(&cli.database, &cli.broker, cli.covers.decode_budget()).await?;
            let probes = match args.listen {
                Some(addr) => Some(bind_addr(addr).await?),
                None => None,
            };
            run_worker_role(&parts, &args.worker, probes, shutdown).await
        }
    }
}

/// The database and the broker, connected, migrated and declared.
#[derive(Clone)]
pub struct Components {
    pub store: Arc<dyn Store>,
    pub broker: Arc<dyn Broker>,
    /// What decoding one cover may take: checked at upload and in the worker.
    pub decode_budget: DecodeBudget,
    /// RabbitMQ's management API, for the queues' rates, where it is configured.
    pub management: Option<Management>,
}

impl Components {
    /// The database and the broker the arguments name, and what a cover may take.
    pub async fn connect(
        database: &DatabaseArgs,
        broker: &BrokerArgs,
        decode_budget: DecodeBudget,
    ) -> anyhow::Result<Self> {
        // Bad configuration fails before anything is opened or migrated.
        broker.sealing().map_err(anyhow::Error::msg)?;
        let management = broker.management().map_err(anyhow::Error::msg)?;
        let store = storage::connect(&database.database_url, database.pool()).await?;
        Ok(Self {
            store,
            broker: connect_declared_broker(broker).await?,
            decode_budget,
            management,
        })
    }
}

/// `plain` with bodies sealed and opened by `RETROCAT_MESSAGE_KEYS`, and plain messages
/// refused with `--require-sealed`; `plain` itself without keys.
pub fn sealed(args: &BrokerArgs, plain: Arc<dyn Broker>) -> anyhow::Result<Arc<dyn Broker>> {
    let keys = args.sealing().map_err(anyhow::Error::msg)?;
    Ok(broker::connect::sealed(plain, keys, args.require_sealed))
}

/// The broker `RABBITMQ_URL` names, or the embedded one, as it is: no sealing.
pub async fn connect_plain_broker(args: &BrokerArgs) -> anyhow::Result<Arc<dyn Broker>> {
    let rabbitmq = args.rabbitmq().map_err(anyhow::Error::msg)?;
    broker::connect::connect(rabbitmq.as_ref(), args.queue_type, &args.broker_path).await
}

/// The broker the arguments name, sealing bodies when `RETROCAT_MESSAGE_KEYS` is set,
/// with the topology declared.
async fn connect_declared_broker(args: &BrokerArgs) -> anyhow::Result<Arc<dyn Broker>> {
    // Checked before connecting: a configuration error says so, not a broker's.
    args.sealing().map_err(anyhow::Error::msg)?;
    let broker = sealed(args, connect_plain_broker(args).await?)?;
    topology::declare(broker.as_ref())
        .await
        .context("declaring the broker topology")?;
    Ok(broker)
}

/// `retrocat dlq …`: prints what it found or did, one JSON object a line.
/// `retrocat queue pause|resume QUEUE`: through the catalog database, which every
/// consuming process reads.
async fn set_paused(database: &DatabaseArgs, queue: &str, paused: bool) -> anyhow::Result<()> {
    let store = storage::connect(&database.database_url, database.pool()).await?;
    let changed = if paused {
        store.pause_queue(queue).await?
    } else {
        store.resume_queue(queue).await?
    };
    match (paused, changed) {
        (true, true) => {
            eprintln!("paused {queue}: every worker stops taking from it within a second")
        }
        (true, false) => eprintln!("{queue} was paused already"),
        (false, true) => {
            eprintln!("resumed {queue}: every worker takes from it again within a second")
        }
        (false, false) => eprintln!("{queue} was not paused"),
    }
    Ok(())
}

async fn bind(http: &HttpArgs) -> anyhow::Result<TcpListener> {
    bind_addr(http.listen_addr()).await
}

async fn bind_addr(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr}: is another retrocat running? (set PORT or --listen)")
    })
}

/// Every role in one process.
pub async fn run_serve(
    parts: &Components,
    args: &ServeArgs,
    listener: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    tokio::try_join!(
        run_api(parts, &args.http, listener, shutdown.clone()),
        run_worker(parts, &args.worker, shutdown),
    )?;
    Ok(())
}

/// HTTP API and web UI, outbox relay and live feed, until shutdown.
pub async fn run_api(
    parts: &Components,
    http: &HttpArgs,
    listener: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let live = LiveFeed::new(http.max_stream_subscribers);
    let instance = uuid::Uuid::now_v7().simple().to_string();
    let relay = Relay::new(parts.store.clone(), parts.broker.clone(), http.relay());
    let relay = tokio::spawn(relay.run(shutdown.clone()));
    let feed = tokio::spawn(
        live.clone()
            .run(parts.broker.clone(), instance, shutdown.clone()),
    );
    let queues = QueueWatch::new(
        parts.store.clone(),
        parts.broker.clone(),
        parts.management.clone(),
    );
    let watch = tokio::spawn(queues.clone().run(shutdown.clone()));
    let ctx = ApiContext::new(
        parts.store.clone(),
        parts.broker.clone(),
        live,
        queues,
        shutdown.clone(),
    )
    .with_publish_policy(http.producer.policy())
    .with_decode_budget(parts.decode_budget)
    .with_auth(http.auth.mode, http.auth.session_ttl)
    .with_admission(http.admission());
    let app = api::router(ctx, &http.router());
    let addr = listener.local_addr()?;
    tracing::info!("retrocat listening on http://{addr}");
    api::server::serve(listener, app, http.server_limits(), shutdown.clone()).await;
    let _ = tokio::join!(relay, feed, watch);
    Ok(())
}

/// `retrocat worker`: [`run_worker`], and with `probes` (`--listen`) an HTTP server of
/// `/metrics`, `/healthz` and `/readyz` beside it, with the queue gauges sampled.
pub async fn run_worker_role(
    parts: &Components,
    args: &WorkerArgs,
    probes: Option<TcpListener>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let Some(listener) = probes else {
        return run_worker(parts, args, shutdown).await;
    };
    let watch = QueueWatch::new(
        parts.store.clone(),
        parts.broker.clone(),
        parts.management.clone(),
    );
    let watch = tokio::spawn(watch.run(shutdown.clone()));
    tracing::info!("worker probes on http://{}/metrics", listener.local_addr()?);
    let app = api::probes(parts.store.clone(), parts.broker.clone());
    let server = api::server::serve(listener, app, ServerLimits::default(), shutdown.clone());
    let (worked, ()) = tokio::join!(run_worker(parts, args, shutdown.clone()), server);
    let _ = watch.await;
    worked
}

/// Consumers of `game_events` and of requests on `catalog.rpc`, the event subscribers
/// and the custom-message consumer, and the prune of the history they write, until
/// shutdown.
pub async fn run_worker(
    parts: &Components,
    args: &WorkerArgs,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let fetcher = CoverFetcher::new(args.fetch());
    let config = WorkerConfig {
        decode_budget: parts.decode_budget,
        ..args.worker()
    };
    let worker_id = config.worker_id.clone();
    let circuits = fetcher.report_circuits(&*parts.store, &worker_id, shutdown.clone());
    let worker = Worker::new(
        parts.store.clone(),
        parts.broker.clone(),
        fetcher.clone(),
        config,
    );
    let worker = Arc::new(worker);
    let pauses = PauseWatch::start(parts.store.clone(), shutdown.clone()).await;
    let (store, broker, prefetch) = (&parts.store, &parts.broker, args.prefetch.max(1));
    let subscribers = args
        .subscribers
        .iter()
        .map(|name| Subscriber::events(name, store.clone(), broker.clone(), prefetch))
        .chain([Subscriber::custom(store.clone(), broker.clone(), prefetch)])
        .map(|subscriber| subscriber.run(&pauses, shutdown.clone()));
    tokio::join!(
        worker
            .clone()
            .run(topology::GAME_EVENTS_QUEUE, &pauses, shutdown.clone()),
        worker.run(topology::RPC_QUEUE, &pauses, shutdown.clone()),
        futures::future::join_all(subscribers),
        Retention::new(store.clone(), args.retain).run(shutdown.clone()),
        circuits,
    );
    Ok(())
}
