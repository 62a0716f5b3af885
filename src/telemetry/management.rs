//! RabbitMQ's management API, where `RABBITMQ_MANAGEMENT_URL` names it: what a passive
//! declare over AMQP cannot tell, as RabbitMQ itself measures it across every client:
//! unacknowledged messages, and publishes, deliveries and acknowledgements per second.
//!
//! One `GET /api/queues/{vhost}` a sample, with only the columns read. RabbitMQ
//! refreshes these figures every few seconds (`collect_statistics_interval`, 5 s by
//! default), so ready messages and consumers still come from AMQP, which is current.

use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use url::Url;

/// How long one request to the management API may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// The columns asked for: a queue's name, unacknowledged count and rates.
const COLUMNS: &str = "name,messages_unacknowledged,message_stats.publish_details.rate,\
                       message_stats.deliver_get_details.rate,message_stats.ack_details.rate";

/// The management API of the RabbitMQ that `RABBITMQ_URL` names.
#[derive(Clone, Debug)]
pub struct Management {
    client: reqwest::Client,
    /// `…/api/queues/{vhost}?columns=…`, without credentials.
    queues: Url,
    user: String,
    password: String,
    /// Whether the last request failed: a failure is logged when it begins and ends,
    /// not every second.
    failing: Arc<AtomicBool>,
}

/// What the management API says of one queue.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ManagedQueue {
    pub unacked: u64,
    /// Messages in, deliveries and acknowledgements per second, across every client.
    /// A queue that has seen no message yet has no rates: 0.
    pub publish_rate: f64,
    pub deliver_rate: f64,
    pub ack_rate: f64,
}

#[derive(Debug, thiserror::Error)]
#[error("RabbitMQ's management API at {url}: {reason}")]
pub struct ManagementError {
    url: String,
    reason: String,
}

impl Management {
    /// The API at `management_url` (`http://[USER:PASSWORD@]HOST:PORT[/PATH]`), for the
    /// virtual host of `amqp_url`, whose user and password it takes unless
    /// `management_url` gives its own.
    pub fn new(management_url: &str, amqp_url: &str) -> Result<Self, String> {
        let base = Url::parse(management_url)
            .map_err(|error| format!("RABBITMQ_MANAGEMENT_URL: {error}"))?;
        if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
            return Err(format!(
                "RABBITMQ_MANAGEMENT_URL: expected http://HOST:15672 (or https://), got {}",
                redacted(&base)
            ));
        }
        let amqp = Url::parse(amqp_url).map_err(|error| format!("RABBITMQ_URL: {error}"))?;
        let decode = |text: &str| {
            percent_decode(text).map_err(|()| "RABBITMQ_URL: a part is not UTF-8".to_owned())
        };
        // As the AMQP URI spec reads it: no path is the default vhost `/`; a path of
        // one segment names the vhost, percent-encoded (`%2f` for `/`).
        let vhost = match amqp.path().strip_prefix('/').unwrap_or("") {
            "" => "/".to_owned(),
            path => decode(path)?,
        };
        let (user, password) = if base.username().is_empty() {
            (
                decode(amqp.username())?,
                decode(amqp.password().unwrap_or(""))?,
            )
        } else {
            (
                decode(base.username())?,
                decode(base.password().unwrap_or(""))?,
            )
        };
        let (user, password) = match user.as_str() {
            "" => ("guest".to_owned(), "guest".to_owned()),
            _ => (user, password),
        };
        let mut queues = base.clone();
        let _ = queues.set_username("");
        let _ = queues.set_password(None);
        queues
            .path_segments_mut()
            .map_err(|()| "RABBITMQ_MANAGEMENT_URL: not a base URL".to_owned())?
            .pop_if_empty()
            .extend(["api", "queues", &vhost]);
        queues.query_pairs_mut().append_pair("columns", COLUMNS);
        crate::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|error| format!("RABBITMQ_MANAGEMENT_URL: {error}"))?;
        Ok(Self {
            client,
            queues,
            user,
            password,
            failing: Arc::default(),
        })
    }

    /// [`Self::queues`] for the sampler: `None` when the API did not answer, which is
    /// logged once until it answers again.
    pub async fn sample(&self) -> Option<HashMap<String, ManagedQueue>> {
        let queues = self.queues().await;
        let failed = queues.is_err();
        if self.failing.swap(failed, Ordering::Relaxed) != failed {
            match &queues {
                Err(error) => tracing::warn!(%error, "queue rates fall back to this process's own"),
                Ok(_) => {
                    tracing::info!(url = %self.queues, "RabbitMQ's management API answers again")
                }
            }
        }
        queues.ok()
    }

    /// Every queue of the vhost, by name.
    pub async fn queues(&self) -> Result<HashMap<String, ManagedQueue>, ManagementError> {
        let fail = |reason: String| ManagementError {
            url: self.queues.to_string(),
            reason,
        };
        let response = self
            .client
            .get(self.queues.clone())
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .map_err(|error| fail(error.to_string()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(fail(format!("answered {status}")));
        }
        let queues: Vec<QueueInfo> = response
            .json()
            .await
            .map_err(|error| fail(error.to_string()))?;
        Ok(queues
            .into_iter()
            .map(|queue| (queue.name.clone(), queue.into()))
            .collect())
    }
}

/// A queue as `/api/queues` gives it, with the columns asked for.
#[derive(Deserialize)]
struct QueueInfo {
    name: String,
    #[serde(default)]
    messages_unacknowledged: u64,
    #[serde(default)]
    message_stats: MessageStats,
}

#[derive(Default, Deserialize)]
struct MessageStats {
    #[serde(default)]
    publish_details: Details,
    #[serde(default)]
    deliver_get_details: Details,
    #[serde(default)]
    ack_details: Details,
}

#[derive(Default, Deserialize)]
struct Details {
    #[serde(default)]
    rate: f64,
}

impl From<QueueInfo> for ManagedQueue {
    fn from(queue: QueueInfo) -> Self {
        let stats = queue.message_stats;
        Self {
            unacked: queue.messages_unacknowledged,
            publish_rate: stats.publish_details.rate,
            deliver_rate: stats.deliver_get_details.rate,
            ack_rate: stats.ack_details.rate,
        }
    }
}

fn percent_decode(text: &str) -> Result<String, ()> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| ())
}

/// `url` without its password, for messages.
fn redacted(url: &Url) -> String {
    let mut url = url.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vhost_and_credentials_come_from_the_amqp_url_unless_given() {
        let management =
            Management::new("http://127.0.0.1:15672", "amqp://app:s%40cret@rabbit/%2f").unwrap();
        assert_eq!(
            management.queues.as_str(),
            format!("http://127.0.0.1:15672/api/queues/%2F?columns={}", {
                form_urlencoded::byte_serialize(COLUMNS.as_bytes()).collect::<String>()
            })
        );
        assert_eq!(
            (management.user.as_str(), management.password.as_str()),
            ("app", "s@cret")
        );

        let own = Management::new("http://ops:pw@mq:15672/rabbit/", "amqp://mq/catalog").unwrap();
        assert!(
            own.queues
                .as_str()
                .starts_with("http://mq:15672/rabbit/api/queues/catalog?")
        );
        assert_eq!((own.user.as_str(), own.password.as_str()), ("ops", "pw"));

        let default = Management::new("http://mq:15672", "amqp://mq").unwrap();
        assert!(default.queues.path().ends_with("/api/queues/%2F"));
        assert_eq!(default.user, "guest");
    }

    #[test]
    fn a_management_url_that_is_not_http_is_refused_without_its_password() {
        for url in ["amqp://u:topsecret@mq:5672", "mq:15672", "not a url"] {
            let error = Management::new(url, "amqp://mq").unwrap_err();
            assert!(error.starts_with("RABBITMQ_MANAGEMENT_URL"), "{error}");
            assert!(!error.contains("topsecret"), "{error}");
        }
    }

    #[test]
    fn a_queue_without_traffic_has_zero_rates() {
        let info: QueueInfo = serde_json::from_str(r#"{"name": "q"}"#).unwrap();
        assert_eq!(ManagedQueue::from(info), ManagedQueue::default());
        let info: QueueInfo = serde_json::from_str(
            r#"{"name": "q", "messages_unacknowledged": 3,
                "message_stats": {"publish_details": {"rate": 1.5},
                                  "ack_details": {"rate": 0.5}}}"#,
        )
        .unwrap();
        let queue = ManagedQueue::from(info);
        assert_eq!(
            (queue.unacked, queue.publish_rate, queue.deliver_rate),
            (3, 1.5, 0.0)
        );
    }
}
