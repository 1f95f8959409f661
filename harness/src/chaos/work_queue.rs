//! The fault "work queue deleted": under a RabbitMQ memory alarm (so no publisher adds to
//! it meanwhile) the work queue is unbound, what is ready in it is taken off and
//! recorded, and the queue is deleted; then the alarm is cleared. Nothing re-declares it
//! but the pipeline itself: the consumers, whose subscription RabbitMQ cancels, and the
//! producer, whose next publish is unroutable.
//!
//! Messages a queue held when an admin deleted it are gone by the admin's hand, not the
//! pipeline's: the ids taken off here are accounted for like dead letters, with their
//! own reason. Messages the consumers held unacked must still be stored, and a retry
//! dead-lettered while the queue was unbound waits in its retry queue (RabbitMQ's
//! at-least-once dead-lettering) until the queue is bound again.

use std::time::Duration;

use lapin::options::QueueDeleteOptions;
use lastseen::amqp::no_args;
use lastseen::topology::{CHECK_ROUTING_KEY, Topology};

use super::broker::BrokerNode;
use super::dead_letters::{self, DeadLetter};

/// Why the ids taken off the deleted queue are not stored.
pub const DELETED_REASON: &str = "deleted with the work queue (chaos fault)";

/// How long the alarm holds publishers before the queue is touched: publishes already on
/// the wire are confirmed or blocked by then.
const ALARM_LEAD: Duration = Duration::from_secs(1);

/// What the deletion removed.
pub struct Deleted {
    /// The messages taken off before the deletion, read and recorded.
    pub recorded: Vec<DeadLetter>,
    /// Messages the deletion itself removed (ready between the taking and the deletion,
    /// e.g. requeued by a consumer): their ids will show as lost.
    pub unrecorded: u32,
}

/// Deletes the work queue of `topology` on `broker`.
pub async fn delete(broker: &BrokerNode, topology: &Topology) -> anyhow::Result<Deleted> {
    broker.memory_alarm(true).await?;
    let deleted = async {
        tokio::time::sleep(ALARM_LEAD).await;
        let connection =
            lastseen::amqp::connect(&broker.amqp_url().as_str().into(), "chaos-fault").await?;
        let channel = connection.create_channel().await?;
        channel
            .queue_unbind(
                topology.checks_queue.as_str().into(),
                topology.callbacks_exchange.as_str().into(),
                CHECK_ROUTING_KEY.into(),
                no_args(),
            )
            .await?;
        let mut recorded = dead_letters::take_from(&channel, &topology.checks_queue).await?;
        let unrecorded = channel
            .queue_delete(
                topology.checks_queue.as_str().into(),
                QueueDeleteOptions::default(),
            )
            .await?;
        let _ = connection.close(200, "work queue deleted".into()).await;
        for letter in &mut recorded {
            DELETED_REASON.clone_into(&mut letter.reason);
        }
        anyhow::Ok(Deleted {
            recorded,
            unrecorded,
        })
    }
    .await;
    // Cleared whatever happened, so a failed fault does not hold the run.
    broker.memory_alarm(false).await?;
    deleted
}
