//! Where the pipeline's queues are, and connecting to RabbitMQ for a command.

use clap::Args;
use lapin::Connection;
use lastseen::amqp;
use lastseen::config::AmqpArgs;
use lastseen::tls::TlsArgs;
use lastseen::topology::{Topology, TopologyArgs};

/// RabbitMQ and the pipeline's queue names.
#[derive(Debug, Clone, Args)]
pub struct QueueArgs {
    #[command(flatten)]
    pub amqp: AmqpArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub topology: TopologyArgs,
}

/// A connection named `name` to a node that answers, and the queue names.
pub async fn connect(queue: &QueueArgs, name: &str) -> anyhow::Result<(Connection, Topology)> {
    queue.tls.check()?;
    let topology = Topology::new(&queue.topology);
    let connection =
        amqp::connect(&amqp::Broker::new(&queue.amqp.amqp_url, &queue.tls), name).await?;
    Ok((connection, topology))
}
