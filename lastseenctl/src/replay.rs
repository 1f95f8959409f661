//! `lastseenctl replay-dead-letters`: once the cause of dead letters is fixed (the status
//! service is back, a bug is deployed away), moves them back to the work queue with a
//! fresh attempt count. Each is acked off the dead-letter queue only after RabbitMQ
//! confirmed its copy on the work queue, so a crash midway duplicates, never loses.

use anyhow::Context;
use clap::Args;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::AMQPValue;
use lastseen::CheckMessage;
use lastseen::amqp;
use lastseen::topology::CHECK_ROUTING_KEY;

use crate::broker::{QueueArgs, connect};

/// Settings of `lastseenctl replay-dead-letters`.
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// Most dead letters to replay; by default every one the queue holds when it starts
    /// (letters that arrive meanwhile wait for the next run).
    #[arg(long)]
    pub limit: Option<u64>,

    #[command(flatten)]
    pub queue: QueueArgs,
}

/// What a replay moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    pub messages: u64,
    /// Ids in the replayed messages that parsed as check messages.
    pub ids: u64,
    /// Messages whose body is not a check message: replayed as they are, and the
    /// consumer will dead-letter them again.
    pub unreadable: u64,
}

impl std::fmt::Display for Replayed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "replayed {} dead letters ({} ids) to the work queue",
            self.messages, self.ids
        )?;
        if self.unreadable > 0 {
            write!(
                f,
                "; {} were not check messages and will be dead-lettered again",
                self.unreadable
            )?;
        }
        Ok(())
    }
}

/// Moves dead letters back to work; returns what it moved.
pub async fn run(args: ReplayArgs) -> anyhow::Result<Replayed> {
    let (connection, topology) = connect(&args.queue, "replay-dead-letters").await?;
    let channel = amqp::confirm_channel(&connection).await?;
    topology.declare(&channel).await?;
    let waiting = amqp::queue_counts(&channel, &topology.dead_letter_queue)
        .await?
        .ready;
    let limit = args.limit.unwrap_or(u64::from(waiting));
    let mut replayed = Replayed {
        messages: 0,
        ids: 0,
        unreadable: 0,
    };
    while replayed.messages < limit {
        let Some(letter) = channel
            .basic_get(
                topology.dead_letter_queue.as_str().into(),
                BasicGetOptions::default(),
            )
            .await?
        else {
            break;
        };
        let delivery = letter.delivery;
        let request_id = match delivery.properties.headers().as_ref().and_then(|h| {
            h.inner()
                .get(lastseen::contract::header::REQUEST_ID)
                .cloned()
        }) {
            Some(AMQPValue::LongString(id)) => Some(id.to_string()),
            _ => None,
        };
        // A fresh start: no attempt count, no old reason; the request id stays.
        let properties = amqp::with_request_id(amqp::persistent_json(), request_id.as_deref());
        amqp::publish_mandatory(
            &channel,
            &topology.callbacks_exchange,
            CHECK_ROUTING_KEY,
            &delivery.data,
            properties,
        )
        .await?
        .await
        .context("RabbitMQ did not confirm a replayed message; its dead letter is kept")?;
        delivery.acker.ack(BasicAckOptions::default()).await?;
        replayed.messages += 1;
        match serde_json::from_slice::<CheckMessage>(&delivery.data) {
            Ok(message) => replayed.ids += message.object_ids.len() as u64,
            Err(_) => replayed.unreadable += 1,
        }
    }
    let _ = channel.close(200, "replay done".into()).await;
    let _ = connection.close(200, "replay done".into()).await;
    Ok(replayed)
}
