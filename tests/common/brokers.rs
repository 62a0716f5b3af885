//! The system on either broker: the embedded one always, RabbitMQ (a vhost of its own)
//! when `TEST_RABBITMQ_URL` is set. Optionally with message keys, and always with the
//! same broker unsealed beside it, to send what a client without the keys would.

use super::rabbitmq::Vhost;
use super::{Backend, Roles, TestApp, broker_in};
use retrocat::broker::sealed::MessageKeys;
use retrocat::broker::{Broker, topology};
use retrocat::config::BrokerArgs;
use retrocat::processing::thumbnail::DecodeBudget;
use retrocat::startup::{Components, connect_plain_broker, sealed};
use retrocat::storage::{self, PoolConfig};
use std::sync::Arc;
use tempfile::TempDir;

/// The broker a test runs on. The vhost, when there is one, is deleted with it: a test
/// body takes it as its argument, so it outlives the test's app.
pub enum TestBroker {
    Embedded,
    RabbitMq(Vhost),
}

/// Message keys for [`TestBroker::spawn`], and whether plain messages are refused.
#[derive(Clone, Copy, Default)]
pub struct Sealing<'a> {
    /// `RETROCAT_MESSAGE_KEYS`.
    pub keys: Option<&'a str>,
    /// `--require-sealed`.
    pub require_sealed: bool,
}

impl TestBroker {
    /// RabbitMQ on a fresh vhost; `None` (the test is skipped) without it.
    pub fn rabbitmq() -> Option<Self> {
        Vhost::create().map(Self::RabbitMq)
    }

    /// The whole system on this broker and SQLite, sealed as `sealing` says, with
    /// `extra` serve arguments; and the broker unsealed.
    pub async fn spawn(&self, sealing: Sealing<'_>, extra: &[&str]) -> (TestApp, Arc<dyn Broker>) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = TempDir::new().expect("temp dir");
        let (database_url, database) = Backend::Sqlite.fresh_database(dir.path()).await;
        let rabbitmq_url = match self {
            Self::RabbitMq(vhost) => Some(vhost.url.as_str()),
            Self::Embedded => None,
        };
        let args = BrokerArgs {
            message_keys: sealing
                .keys
                .map(|keys| Arc::new(MessageKeys::parse(keys).expect("message keys"))),
            require_sealed: sealing.require_sealed,
            ..broker_in(dir.path(), rabbitmq_url)
        };
        let plain = connect_plain_broker(&args).await.expect("broker");
        let broker = sealed(&args, plain.clone()).expect("sealing");
        let store = storage::connect(&database_url, PoolConfig::default())
            .await
            .expect("database");
        topology::declare(broker.as_ref()).await.expect("topology");
        let parts = Components {
            store,
            broker,
            decode_budget: DecodeBudget::default(),
            management: None,
        };
        let app = TestApp::spawn_parts(parts, dir, database, Roles::Serve, extra).await;
        (app, plain)
    }
}

/// Runs each named test body (`async fn name(broker: TestBroker)`) on every broker:
/// `embedded::name` always, `rabbitmq::name` when `TEST_RABBITMQ_URL` is set.
#[allow(unused_macros)] // test binaries that run on the embedded broker only don't use it
macro_rules! on_every_broker {
    ($($test:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(crate::common::brokers::TestBroker::Embedded).await
                }
            )*
        }

        mod rabbitmq {
            $(
                #[tokio::test]
                async fn $test() {
                    if let Some(broker) = crate::common::brokers::TestBroker::rabbitmq() {
                        super::$test(broker).await
                    }
                }
            )*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use on_every_broker;
