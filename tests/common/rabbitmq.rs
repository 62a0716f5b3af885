//! The machine's RabbitMQ, for tests that run the system on it: a fresh vhost per test
//! (so tests never see each other's queues), and the broker application stopped for a
//! while. Both undo themselves on drop, also when the test panics. [`Amqp`] is a plain
//! AMQP client, as the original system's Python and Node clients were.

use lapin::message::BasicGetMessage;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, BasicRejectOptions, ConfirmSelectOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use retrocat::broker::QueueType;
use retrocat::broker::rabbitmq::RabbitMqBroker;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;
use tokio::time::Instant;

/// Runs `rabbitmqctl ARGS` against the machine's node; its output, or why it failed.
pub fn rabbitmqctl(args: &[&str]) -> Result<String, String> {
    rabbitmqctl_on(None, args)
}

/// Runs `rabbitmqctl ARGS` against `node` (`NAME@localhost`), or the machine's node.
pub fn rabbitmqctl_on(node: Option<&str>, args: &[&str]) -> Result<String, String> {
    let mut command = Command::new("rabbitmqctl");
    if let Some(node) = node {
        command.args(["-n", node]);
    }
    let output = command
        .args(args)
        .output()
        .map_err(|e| format!("cannot run rabbitmqctl: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    if output.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "rabbitmqctl {} exited with {}: {text}",
            args.join(" "),
            output.status
        ))
    }
}

/// A vhost of its own on a test RabbitMQ, deleted on drop.
pub struct Vhost {
    pub name: String,
    /// The node's AMQP URL with this vhost.
    pub url: String,
    /// The node, when not the machine's own.
    node: Option<String>,
}

impl Vhost {
    /// A fresh vhost on the RabbitMQ of `TEST_RABBITMQ_URL`, or `None` after saying why
    /// the test is skipped: without `TEST_RABBITMQ_URL`, or without `rabbitmqctl` to
    /// make the vhost with.
    pub fn create() -> Option<Self> {
        let base = configured("TEST_RABBITMQ_URL")?;
        Self::create_on(&base, None)
    }

    /// A fresh vhost on the node that runs RabbitMQ's management plugin (`.ci/run`
    /// starts it with `scripts/rabbitmq-node`), and the URL of its management API; or
    /// `None` after saying why the test is skipped. `TEST_RABBITMQ_MANAGEMENT_URL`
    /// names the API, `TEST_RABBITMQ_MANAGEMENT_AMQP_URL` the node's AMQP listener,
    /// and `TEST_RABBITMQ_MANAGEMENT_NODE` the node.
    pub fn on_management_node() -> Option<(Self, String)> {
        let api = configured("TEST_RABBITMQ_MANAGEMENT_URL")?;
        let amqp = configured("TEST_RABBITMQ_MANAGEMENT_AMQP_URL")?;
        let node = configured("TEST_RABBITMQ_MANAGEMENT_NODE")?;
        Some((Self::create_on(&amqp, Some(node))?, api))
    }

    fn create_on(base: &str, node: Option<String>) -> Option<Self> {
        if Command::new("rabbitmqctl").arg("version").output().is_err() {
            eprintln!(
                "skipped: rabbitmqctl is not on PATH (needed to give this test a vhost of its own)"
            );
            return None;
        }
        let name = format!("retrocat-test-{}", uuid::Uuid::now_v7().simple());
        let mut url = url::Url::parse(base).expect("a RabbitMQ URL");
        url.set_path(&format!("/{name}"));
        let vhost = Self {
            name,
            url: url.to_string(),
            node,
        };
        vhost.add();
        Some(vhost)
    }

    /// A broker connected to this vhost, declaring durable queues of `queue_type`.
    pub async fn connect(&self, queue_type: QueueType) -> RabbitMqBroker {
        let nodes = self.url.parse().expect("a RabbitMQ URL");
        RabbitMqBroker::connect(nodes, queue_type)
            .await
            .expect("connect to the test vhost")
    }

    /// Deletes the vhost, as if RabbitMQ went away for every client of it, until
    /// [`Vhost::add`] (or the drop) makes it again.
    pub fn delete(&self) {
        self.rabbitmqctl(&["delete_vhost", &self.name])
            .expect("delete the vhost");
    }

    /// Makes the vhost, empty, and lets the URL's user (guest by default) use it.
    pub fn add(&self) {
        self.rabbitmqctl(&["add_vhost", &self.name])
            .expect("add a vhost");
        let url = url::Url::parse(&self.url).expect("a RabbitMQ URL");
        let user = match url.username() {
            "" => "guest",
            user => user,
        };
        self.rabbitmqctl(&["set_permissions", "-p", &self.name, user, ".*", ".*", ".*"])
            .expect("grant the test user the vhost");
    }

    fn rabbitmqctl(&self, args: &[&str]) -> Result<String, String> {
        rabbitmqctl_on(self.node.as_deref(), args)
    }
}

/// The value of the environment variable `name`, or `None` after saying that the test
/// is skipped without it.
fn configured(name: &str) -> Option<String> {
    let value = std::env::var(name).ok();
    if value.is_none() {
        eprintln!("skipped: {name} is not set");
    }
    value
}

impl Drop for Vhost {
    fn drop(&mut self) {
        if let Err(error) = self.rabbitmqctl(&["delete_vhost", &self.name]) {
            eprintln!("could not delete vhost {}: {error}", self.name);
        }
    }
}

/// The RabbitMQ application stopped (`rabbitmqctl stop_app`): every connection drops
/// and none is accepted until [`StoppedBroker::start`], or the drop of this guard,
/// starts it again, so a failing test never leaves the broker down.
pub struct StoppedBroker {
    running: bool,
}

impl StoppedBroker {
    pub fn stop() -> Self {
        rabbitmqctl(&["stop_app"]).expect("stop the RabbitMQ application");
        Self { running: false }
    }

    pub fn start(mut self) {
        self.start_app()
            .expect("start the RabbitMQ application again");
    }

    fn start_app(&mut self) -> Result<(), String> {
        rabbitmqctl(&["start_app"])?;
        rabbitmqctl(&["await_startup"])?;
        self.running = true;
        Ok(())
    }
}

impl Drop for StoppedBroker {
    fn drop(&mut self) {
        if !self.running
            && let Err(error) = self.start_app()
        {
            eprintln!("RabbitMQ could not be started again, start it by hand: {error}");
        }
    }
}

/// A plain AMQP client on one channel in confirm mode.
pub struct Amqp {
    _connection: Connection,
    channel: Channel,
}

impl Amqp {
    pub async fn connect(url: &str) -> Self {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ");
        let channel = connection.create_channel().await.expect("open a channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        Self {
            _connection: connection,
            channel,
        }
    }

    /// Messages ready in `queue` (not counting those delivered and unacknowledged), and
    /// its consumers.
    pub async fn queue_state(&self, queue: &str) -> (u32, u32) {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let queue = self
            .channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
            .unwrap_or_else(|e| panic!("queue {queue:?}: {e}"));
        (queue.message_count(), queue.consumer_count())
    }

    /// Waits until `queue` has `consumers` consumers.
    pub async fn wait_for_consumers(&self, queue: &str, consumers: u32) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, now) = self.queue_state(queue).await;
            if now == consumers {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{queue} has {now} consumers, not {consumers}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Publishes as the original producers did: default exchange, the queue's name as
    /// routing key, persistent (delivery mode 2), no message id; waits for the confirm.
    pub async fn publish_original(&self, queue: &str, body: &[u8], headers: FieldTable) {
        self.publish_originals(queue, [(body, headers)]).await;
    }

    /// Publishes several messages as [`Amqp::publish_original`] does, then waits for
    /// all their confirms.
    pub async fn publish_originals<'a>(
        &self,
        queue: &str,
        messages: impl IntoIterator<Item = (&'a [u8], FieldTable)>,
    ) {
        let mut confirms = Vec::new();
        for (body, headers) in messages {
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_headers(headers);
            let confirm = self
                .channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    body,
                    properties,
                )
                .await
                .expect("publish");
            confirms.push(confirm);
        }
        for confirm in confirms {
            confirm.await.expect("publisher confirm");
        }
    }

    /// Takes the next message ready in `queue` and rejects it without requeueing, as a
    /// consumer that cannot handle it would; false when the queue was empty.
    pub async fn reject_next(&self, queue: &str) -> bool {
        self.take_and_reject(queue, false).await
    }

    /// Takes the next message ready in `queue` and hands it back (reject, requeue), as a
    /// consumer that gives up on it would; false when the queue was empty.
    pub async fn requeue_next(&self, queue: &str) -> bool {
        self.take_and_reject(queue, true).await
    }

    async fn take_and_reject(&self, queue: &str, requeue: bool) -> bool {
        let Some(message) = self.take_next(queue).await else {
            return false;
        };
        self.channel
            .basic_reject(message.delivery_tag, BasicRejectOptions { requeue })
            .await
            .expect("basic.reject");
        true
    }

    /// Takes the next message ready in `queue` and keeps it unacknowledged while this
    /// client lives; false when the queue was empty.
    pub async fn hold_next(&self, queue: &str) -> bool {
        self.take_next(queue).await.is_some()
    }

    /// The next message ready in `queue`, delivered and not yet acknowledged.
    async fn take_next(&self, queue: &str) -> Option<BasicGetMessage> {
        self.channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
            .expect("basic.get")
    }

    /// Declares `queue` (test-owned, gone with the vhost) and binds it to `exchange`
    /// with `binding_key`: from then on it holds a copy of everything published there
    /// with a matching routing key, to see what the system published and in which order.
    pub async fn tap(&self, queue: &str, exchange: &str, binding_key: &str) {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("declare {queue}: {e}"));
        self.channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                binding_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("bind {queue} to {exchange} with {binding_key}: {e}"));
    }

    /// Takes every message now ready in `queue`, in queue order.
    pub async fn take(&self, queue: &str) -> Vec<Taken> {
        let mut messages = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            let headers = message
                .properties
                .headers()
                .as_ref()
                .map(|table| {
                    table
                        .inner()
                        .iter()
                        .map(|(name, value)| (name.as_str().to_owned(), header_text(value)))
                        .collect()
                })
                .unwrap_or_default();
            messages.push(Taken {
                routing_key: message.routing_key.as_str().to_owned(),
                message_id: message
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|id| id.as_str().to_owned()),
                body: String::from_utf8_lossy(&message.data).into_owned(),
                headers,
            });
        }
        messages
    }

    /// Takes every message now ready in `queue`: its body, and its headers as text.
    pub async fn take_all(&self, queue: &str) -> Vec<(String, BTreeMap<String, String>)> {
        let taken = self.take(queue).await;
        taken
            .into_iter()
            .map(|message| (message.body, message.headers))
            .collect()
    }
}

/// A message taken from a queue.
#[derive(Clone, Debug)]
pub struct Taken {
    pub routing_key: String,
    pub message_id: Option<String>,
    pub body: String,
    /// Header values as text.
    pub headers: BTreeMap<String, String>,
}

fn header_text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        other => format!("{other:?}"),
    }
}
