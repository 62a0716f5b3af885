//! Message properties and headers between retrocat's [`Properties`] and AMQP's.

use crate::broker::{HeaderValue, Headers, Message, Properties};
use bytes::Bytes;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

pub(super) fn to_amqp(properties: &Properties) -> BasicProperties {
    let mut amqp = BasicProperties::default()
        .with_delivery_mode(if properties.persistent { 2 } else { 1 })
        .with_priority(properties.priority);
    if let Some(id) = &properties.message_id {
        amqp = amqp.with_message_id(id.as_str().into());
    }
    if let Some(content_type) = &properties.content_type {
        amqp = amqp.with_content_type(content_type.as_str().into());
    }
    if let Some(id) = &properties.correlation_id {
        amqp = amqp.with_correlation_id(id.as_str().into());
    }
    if let Some(reply_to) = &properties.reply_to {
        amqp = amqp.with_reply_to(reply_to.as_str().into());
    }
    if !properties.headers.is_empty() {
        let mut table = FieldTable::default();
        for (name, value) in &properties.headers {
            let value = match value {
                HeaderValue::Int(n) => AMQPValue::LongLongInt(*n),
                HeaderValue::Bool(b) => AMQPValue::Boolean(*b),
                HeaderValue::Str(s) => AMQPValue::LongString(LongString::from(s.as_str())),
            };
            table.insert(name.as_str().into(), value);
        }
        amqp = amqp.with_headers(table);
    }
    amqp
}

pub(super) fn message_of(delivery: &lapin::message::Delivery) -> Message {
    Message {
        body: Bytes::from(delivery.data.clone()),
        properties: from_amqp(&delivery.properties),
    }
}

fn from_amqp(amqp: &BasicProperties) -> Properties {
    let text = |value: &Option<ShortString>| value.as_ref().map(|s| s.as_str().to_owned());
    let mut headers = Headers::new();
    if let Some(table) = amqp.headers() {
        for (name, value) in table.inner() {
            let value = match value {
                AMQPValue::Boolean(b) => HeaderValue::Bool(*b),
                AMQPValue::ShortShortInt(n) => HeaderValue::Int(i64::from(*n)),
                AMQPValue::ShortShortUInt(n) => HeaderValue::Int(i64::from(*n)),
                AMQPValue::ShortInt(n) => HeaderValue::Int(i64::from(*n)),
                AMQPValue::ShortUInt(n) => HeaderValue::Int(i64::from(*n)),
                AMQPValue::LongInt(n) => HeaderValue::Int(i64::from(*n)),
                AMQPValue::LongUInt(n) => HeaderValue::Int(i64::from(*n)),
                AMQPValue::LongLongInt(n) => HeaderValue::Int(*n),
                AMQPValue::ShortString(s) => HeaderValue::Str(s.as_str().to_owned()),
                AMQPValue::LongString(s) => {
                    HeaderValue::Str(String::from_utf8_lossy(s.as_bytes()).into_owned())
                }
                // Headers of other types (x-death tables, floats) are not ours to read.
                _ => continue,
            };
            headers.insert(name.as_str().to_owned(), value);
        }
    }
    Properties {
        message_id: text(amqp.message_id()),
        content_type: text(amqp.content_type()),
        correlation_id: text(amqp.correlation_id()),
        reply_to: text(amqp.reply_to()),
        priority: amqp.priority().unwrap_or(0),
        persistent: *amqp.delivery_mode() == Some(2),
        headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_survive_the_amqp_mapping() {
        let properties = Properties {
            message_id: Some("event-1".into()),
            content_type: Some("application/json".into()),
            correlation_id: Some("c".into()),
            reply_to: Some("r".into()),
            priority: 4,
            persistent: true,
            headers: [
                ("x-retry-count".to_owned(), HeaderValue::Int(3)),
                ("x-flag".to_owned(), HeaderValue::Bool(false)),
                ("traceparent".to_owned(), HeaderValue::from("00-abc-01")),
            ]
            .into(),
        };
        assert_eq!(from_amqp(&to_amqp(&properties)), properties);
    }
}
