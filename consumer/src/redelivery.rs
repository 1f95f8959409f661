//! Session breaks are not a message's failure: a message whose delivery count nears the
//! work queue's `delivery-limit` is re-published fresh, so only its own failures (status
//! errors past `MAX_ATTEMPTS`, a body that cannot be parsed, a panic while handling it)
//! ever dead-letter it.
//!
//! RabbitMQ's quorum queue counts every return of a message as a delivery, and a
//! consumer's connection or channel breaking (a broker restart, a network flap, a consumer
//! killed) returns everything that consumer held. With `delivery-limit` 20, a healthy
//! message held through 20 breaks would be dead-lettered and wait for a manual replay.
//! So when a delivery says it was delivered at least half the limit before, the consumer
//! re-publishes the same body and headers (confirmed) with the count carried in
//! [`header::REDELIVERIES`], then acks the old copy; the new copy starts at 0.
//!
//! The limit stays as the guard against a message that kills its consumer outright (a
//! panic is caught and dead-letters the message at once): such a message is renewed
//! too, until its deliveries summed over every renewal reach [`GIVE_UP_AFTER_LIMITS`]
//! times the limit (100 with the default 20).

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use lastseen::amqp::header_int;
use lastseen::contract::header;

/// Deliveries of one message, summed over its renewals, after which it is dead-lettered
/// as a message that keeps breaking its consumers, in multiples of the delivery limit.
/// A healthy message is hardly held through that many breaks: once renewed it waits at
/// the tail of the queue.
pub const GIVE_UP_AFTER_LIMITS: u64 = 5;

/// What to do with a delivery, judged by how often it was delivered before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redelivery {
    /// Handle it.
    Handle,
    /// Re-publish it fresh, carrying `redeliveries` (every earlier delivery), and ack it.
    Renew { redeliveries: u64 },
    /// Dead-letter it: it was delivered `redeliveries` times without being settled.
    GiveUp { redeliveries: u64 },
}

/// When to renew, from the work queue's `delivery-limit`.
#[derive(Debug, Clone, Copy)]
pub struct RenewPolicy {
    /// Renew a delivery whose `x-delivery-count` is at least this: half the limit (at
    /// least 1), so the limit is never reached by breaks alone.
    pub renew_at: u32,
    /// Dead-letter instead once the deliveries summed over its renewals reach this.
    pub give_up_at: u64,
}

impl RenewPolicy {
    pub fn new(delivery_limit: u32) -> Self {
        Self {
            renew_at: delivery_limit.div_ceil(2).max(1),
            give_up_at: GIVE_UP_AFTER_LIMITS * u64::from(delivery_limit.max(1)),
        }
    }

    /// Judges a delivery by its headers.
    pub fn judge(&self, properties: &BasicProperties) -> Redelivery {
        let count = non_negative(header_int(properties, header::DELIVERY_COUNT));
        if count < u64::from(self.renew_at) {
            return Redelivery::Handle;
        }
        let redeliveries = so_far(properties);
        if redeliveries >= self.give_up_at {
            Redelivery::GiveUp { redeliveries }
        } else {
            Redelivery::Renew { redeliveries }
        }
    }
}

/// A delivery's earlier deliveries, summed over its renewals.
pub fn so_far(properties: &BasicProperties) -> u64 {
    non_negative(header_int(properties, header::REDELIVERIES))
        + non_negative(header_int(properties, header::DELIVERY_COUNT))
}

fn non_negative(n: Option<i64>) -> u64 {
    n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0)
}

/// The properties of the renewed copy: the same, without RabbitMQ's delivery count and
/// with `redeliveries` in [`header::REDELIVERIES`].
pub fn renewed(properties: &BasicProperties, redeliveries: u64) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(old) = properties.headers() {
        for (key, value) in old.inner() {
            if key.as_str() != header::DELIVERY_COUNT && key.as_str() != header::REDELIVERIES {
                headers.insert(key.clone(), value.clone());
            }
        }
    }
    headers.insert(
        header::REDELIVERIES.into(),
        AMQPValue::LongLongInt(i64::try_from(redeliveries).unwrap_or(i64::MAX)),
    );
    properties.clone().with_headers(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::LongString;

    fn delivered(count: Option<i64>, before: Option<i64>) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(header::ATTEMPT.into(), AMQPValue::LongLongInt(3));
        headers.insert(
            header::REQUEST_ID.into(),
            AMQPValue::LongString(LongString::from("req-1")),
        );
        if let Some(n) = count {
            headers.insert(header::DELIVERY_COUNT.into(), AMQPValue::LongInt(n as i32));
        }
        if let Some(n) = before {
            headers.insert(header::REDELIVERIES.into(), AMQPValue::LongLongInt(n));
        }
        lastseen::amqp::persistent_json().with_headers(headers)
    }

    #[test]
    fn renews_from_half_the_limit_and_gives_up_only_after_many_renewals() {
        let policy = RenewPolicy::new(20);
        assert_eq!(policy.judge(&delivered(None, None)), Redelivery::Handle);
        assert_eq!(policy.judge(&delivered(Some(9), None)), Redelivery::Handle);
        assert_eq!(
            policy.judge(&delivered(Some(10), None)),
            Redelivery::Renew { redeliveries: 10 }
        );
        assert_eq!(
            policy.judge(&delivered(Some(10), Some(80))),
            Redelivery::Renew { redeliveries: 90 }
        );
        assert_eq!(
            policy.judge(&delivered(Some(10), Some(90))),
            Redelivery::GiveUp { redeliveries: 100 }
        );
        assert_eq!(RenewPolicy::new(1).renew_at, 1);
        assert_eq!(RenewPolicy::new(5).renew_at, 3);
    }

    #[test]
    fn the_renewed_copy_keeps_its_headers_but_not_the_delivery_count() {
        let renewed = renewed(&delivered(Some(12), Some(7)), 19);
        let headers = renewed.headers().as_ref().expect("headers").inner();
        assert!(!headers.contains_key(header::DELIVERY_COUNT));
        assert_eq!(header_int(&renewed, header::REDELIVERIES), Some(19));
        assert_eq!(header_int(&renewed, header::ATTEMPT), Some(3));
        assert!(headers.contains_key(header::REQUEST_ID));
        assert_eq!(renewed.delivery_mode(), &Some(lastseen::amqp::PERSISTENT));
    }
}
