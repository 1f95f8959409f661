//! Raw capacity of each part on this machine, for the pipeline's message sizes:
//! RabbitMQ publish-with-confirm and consume-with-ack, PostgreSQL's batched upsert, and
//! the status simulator's request rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use futures::future::try_join_all;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lastseen::amqp;
use lastseen::store::objects::{self, Sighting};
use lastseen::{CheckMessage, ObjectId};
use rand::Rng;
use sqlx::PgPool;

/// Raw rates, each in its own unit (messages/s, rows/s, requests/s).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RawRates {
    pub rabbitmq_publish_confirm_msgs_per_sec: f64,
    pub rabbitmq_consume_ack_msgs_per_sec: f64,
    pub postgresql_upsert_rows_per_sec: f64,
    pub status_simulator_requests_per_sec: f64,
    /// Bytes of one check message, as measured.
    pub message_bytes: usize,
}

/// RabbitMQ: publish `count` messages like the producer's (persistent, confirmed,
/// to a quorum queue), then consume and ack them like a consumer.
pub async fn rabbitmq(
    amqp_url: &str,
    queue: &str,
    ids_per_message: usize,
    count: u64,
) -> anyhow::Result<(f64, f64, usize)> {
    let conn = amqp::connect(&amqp_url.into(), "bench-raw").await?;
    let channel = amqp::confirm_channel(&conn).await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel.queue_declare(queue.into(), options, args).await?;
    let body = serde_json::to_vec(&CheckMessage {
        object_ids: (0..ids_per_message as i64)
            .filter_map(|i| ObjectId::new(123_456 + i))
            .collect(),
        accepted_at: chrono::Utc::now(),
        request_id: None,
        ttl_secs: None,
        stale_after_secs: None,
    })?;

    // Publish in windows, as concurrent callbacks do.
    const WINDOW: u64 = 500;
    let started = Instant::now();
    let mut sent = 0;
    while sent < count {
        let mut confirms = Vec::new();
        for _ in 0..WINDOW.min(count - sent) {
            confirms.push(
                amqp::publish_mandatory(&channel, "", queue, &body, amqp::persistent_json())
                    .await?,
            );
            sent += 1;
        }
        try_join_all(confirms).await?;
    }
    let publish_rate = count as f64 / started.elapsed().as_secs_f64();

    let consume_channel = conn.create_channel().await?;
    consume_channel
        .basic_qos(2000, BasicQosOptions::default())
        .await?;
    let mut consumer = consume_channel
        .basic_consume(
            queue.into(),
            "bench-raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let started = Instant::now();
    let mut received = 0;
    while received < count {
        let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .context("raw consume stalled")?
            .context("raw consumer closed")??;
        delivery.acker.ack(BasicAckOptions::default()).await?;
        received += 1;
    }
    let consume_rate = count as f64 / started.elapsed().as_secs_f64();
    let _ = channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    let _ = conn.close(200, "done".into()).await;
    Ok((publish_rate, consume_rate, body.len()))
}

/// PostgreSQL: the consumer's upsert statement, in batches of `batch` random ids, for
/// `duration`. Leaves the table empty.
pub async fn postgresql(
    pool: &PgPool,
    batch: usize,
    id_space: u64,
    duration: Duration,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut rows = 0u64;
    while started.elapsed() < duration {
        let sightings: Vec<Sighting> = {
            let mut rng = rand::rng();
            let now = chrono::Utc::now();
            (0..batch)
                .filter_map(|_| ObjectId::new(rng.random_range(0..id_space as i64)))
                .map(|id| Sighting {
                    id,
                    seen_at: now,
                    expires_at: now + chrono::Duration::seconds(30),
                    stale_at: None,
                })
                .collect()
        };
        let mut tx = pool.begin().await?;
        objects::upsert_sightings(&mut tx, &sightings).await?;
        tx.commit().await?;
        rows += sightings.len() as u64;
    }
    let rate = rows as f64 / started.elapsed().as_secs_f64();
    sqlx::query("TRUNCATE objects, notifications")
        .execute(pool)
        .await?;
    Ok(rate)
}

/// Status calls answered per second by the simulators at `urls` to `concurrency`
/// callers (caller i asks `urls[i % n]`, as consumer i does), counted from `warmup` for
/// `duration`. Each caller keeps one call in flight on its own connection, so this is
/// how many status calls of the simulators' delays the machine holds at that
/// concurrency; failed calls are counted apart.
pub async fn status_calls(
    urls: &[String],
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<StatusCalls> {
    anyhow::ensure!(!urls.is_empty(), "no status simulator to call");
    // The consumer's own client, with its settings: the calls cost what they cost there.
    let clients = urls
        .iter()
        .map(|url| {
            consumer::StatusClient::new(
                url.parse()?,
                Duration::from_secs(10),
                &lastseen::tls::TlsArgs::default(),
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let end = warmup + duration;
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let client = clients[worker % clients.len()].clone();
        let (done, failed) = (done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut id = worker as i64;
            while started.elapsed() < end {
                let answered = match ObjectId::new(id) {
                    Some(id) => client.is_online(id).await.is_ok(),
                    None => false,
                };
                if (warmup..end).contains(&started.elapsed()) {
                    let counter = if answered { &done } else { &failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                if !answered {
                    // A refused connection must not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                id += concurrency as i64;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let counted = (started.elapsed().min(end) - warmup)
        .as_secs_f64()
        .max(1e-3);
    Ok(StatusCalls {
        per_sec: done.load(Ordering::Relaxed) as f64 / counted,
        failed: failed.load(Ordering::Relaxed),
    })
}

/// What [`status_calls`] measured.
pub struct StatusCalls {
    /// Calls answered per second.
    pub per_sec: f64,
    /// Calls that failed (no connection, no answer) in the counted window.
    pub failed: u64,
}
