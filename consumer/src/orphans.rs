//! Deliveries orphaned by their work queue's deletion. RabbitMQ drops a deleted queue's
//! messages, those a consumer holds unacked too: the consumer's copy is then the only
//! one, and a consumer killed before it finished them lost their ids (`make chaos` lost
//! 19 accepted ids so). So every delivery in hand is kept here, and when RabbitMQ
//! cancels the subscription the consumer re-publishes each to the queue declared again
//! (confirmed, one at a time, ~10 ms each) before anything else. The originals still
//! finish, their acks going nowhere, and the copies are checked once more (a sighting is
//! idempotent). Until its copy is confirmed, an orphan exists only in this process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use lapin::BasicProperties;
use lapin::message::Delivery;
use lastseen::amqp::AmqpError;
use lastseen::contract::metric;

use crate::redelivery;
use crate::retry::Retrier;

/// The body and properties of a delivery, as they came.
#[derive(Clone)]
struct DeliveryCopy {
    body: Vec<u8>,
    properties: BasicProperties,
}

/// The deliveries of one channel in hand, by delivery tag.
#[derive(Clone, Default)]
pub struct InHand(Arc<Mutex<HashMap<u64, DeliveryCopy>>>);

impl InHand {
    /// Keeps a copy of `delivery` until the returned guard is dropped (its handling
    /// ended) or the copy is re-published.
    pub fn keep(&self, delivery: &Delivery) -> Kept {
        let copy = DeliveryCopy {
            body: delivery.data.clone(),
            properties: delivery.properties.clone(),
        };
        self.lock().insert(delivery.delivery_tag, copy);
        Kept {
            in_hand: self.clone(),
            tag: delivery.delivery_tag,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, DeliveryCopy>> {
        // Nothing panics while holding it; a poisoned map is still whole.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A delivery in hand; dropping it forgets the copy.
pub struct Kept {
    in_hand: InHand,
    tag: u64,
}

impl Drop for Kept {
    fn drop(&mut self) {
        self.in_hand.lock().remove(&self.tag);
    }
}

/// Re-publishes every delivery still in hand (their queue is gone) to the work queue,
/// which must be declared again first, each confirmed and carrying its deliveries so
/// far, and forgets each copy once confirmed; one that finished meanwhile is skipped.
/// On an error the copies not yet confirmed stay, for the next cancellation on this
/// channel; returns how many were re-published.
pub async fn rehome(in_hand: &InHand, retrier: &Retrier) -> Result<usize, AmqpError> {
    let tags: Vec<u64> = in_hand.lock().keys().copied().collect();
    let mut rehomed = 0;
    for tag in tags {
        let Some(copy) = in_hand.lock().get(&tag).cloned() else {
            continue;
        };
        let redeliveries = redelivery::so_far(&copy.properties);
        let properties = redelivery::renewed(&copy.properties, redeliveries);
        retrier.renew(&copy.body, properties).await?;
        in_hand.lock().remove(&tag);
        metrics::counter!(metric::DELIVERIES_RENEWED_TOTAL).increment(1);
        rehomed += 1;
    }
    if rehomed > 0 {
        tracing::warn!(
            deliveries = rehomed,
            "re-published the deliveries in hand to the work queue declared again"
        );
    }
    Ok(rehomed)
}
