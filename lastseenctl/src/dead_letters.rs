//! `lastseenctl dead-letters`: what waits in the dead-letter queue and why (`list`,
//! `peek`), moving it back to work once the cause is fixed (`replay`, in `replay`), and
//! dropping it (`purge`, after a confirmation).

use std::io::{BufRead, IsTerminal, Write};

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Subcommand;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueuePurgeOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};
use lastseen::CheckMessage;
use lastseen::amqp;
use lastseen::contract::header;
use lastseen::topology::Topology;

use crate::broker::{QueueArgs, connect};
use crate::replay::{self, ReplayArgs};

/// What to do with the dead letters.
#[derive(Debug, Subcommand)]
pub enum DeadLetters {
    /// One line per dead letter, oldest first: its ids, attempts and `x-reason`. Nothing
    /// is lost or reordered (each is copied back, confirmed, before it is acked).
    List {
        /// Most dead letters to show.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        queue: QueueArgs,
    },
    /// One dead letter in full: every header and the body. Nothing is lost or reordered.
    Peek {
        /// Its position in `list` (1 is the oldest).
        position: u32,
        #[command(flatten)]
        queue: QueueArgs,
    },
    /// Move dead letters back to the work queue (after their cause is fixed), each acked
    /// off the dead-letter queue only once its copy is confirmed.
    Replay(ReplayArgs),
    /// Drop every dead letter, after a confirmation (`--yes` to skip it).
    Purge {
        /// Purge without asking.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        queue: QueueArgs,
    },
}

/// Runs one `dead-letters` command; returns what to print.
pub async fn run(command: DeadLetters) -> anyhow::Result<String> {
    match command {
        DeadLetters::List { limit, queue } => {
            let letters = browse(&queue, limit).await?;
            Ok(list(&letters.letters, letters.waiting))
        }
        DeadLetters::Peek { position, queue } => {
            anyhow::ensure!(position >= 1, "the position starts at 1 (the oldest)");
            let letters = browse(&queue, position).await?;
            let letter = letters
                .letters
                .get(position as usize - 1)
                .with_context(|| format!("the queue holds {} dead letters", letters.waiting))?;
            Ok(peek(letter))
        }
        DeadLetters::Replay(args) => Ok(replay::run(args).await?.to_string()),
        DeadLetters::Purge { yes, queue } => purge(&queue, yes).await,
    }
}

/// One dead letter as browsed.
#[derive(Debug, Clone)]
pub struct Letter {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Letter {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

struct Browsed {
    letters: Vec<Letter>,
    waiting: u32,
}

/// Reads the dead letters without losing or reordering any: each of the letters waiting
/// when it starts is taken, copied back to the queue's tail (confirmed), and only then
/// acked, so after one pass the queue holds the same letters in the same order (letters
/// dead-lettered meanwhile fall in between). Returning them unacked instead would count a
/// delivery each time, and RabbitMQ 4 gives quorum queues a default delivery limit past
/// which it drops them. Keeps the first `limit` for showing.
async fn browse(queue: &QueueArgs, limit: u32) -> anyhow::Result<Browsed> {
    let (connection, topology) = connect(queue, "lastseenctl").await?;
    let channel = amqp::confirm_channel(&connection).await?;
    let waiting = amqp::queue_counts(&channel, &topology.dead_letter_queue)
        .await?
        .ready;
    let mut letters = Vec::new();
    for _ in 0..waiting {
        let Some(got) = channel
            .basic_get(
                topology.dead_letter_queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await?
        else {
            break;
        };
        let delivery = got.delivery;
        amqp::publish_mandatory(
            &channel,
            "",
            &topology.dead_letter_queue,
            &delivery.data,
            delivery.properties.clone(),
        )
        .await?
        .await
        .context("RabbitMQ did not confirm a dead letter's copy; the letter stays where it was")?;
        delivery.acker.ack(BasicAckOptions::default()).await?;
        if letters.len() < limit as usize {
            letters.push(Letter {
                headers: delivery
                    .properties
                    .headers()
                    .as_ref()
                    .map(headers_of)
                    .unwrap_or_default(),
                body: delivery.data,
            });
        }
    }
    let _ = channel.close(200, "browsed".into()).await;
    let _ = connection.close(200, "browsed".into()).await;
    Ok(Browsed { letters, waiting })
}

async fn open(queue: &QueueArgs) -> anyhow::Result<(Connection, Channel, Topology)> {
    let (connection, topology) = connect(queue, "lastseenctl").await?;
    let channel = connection.create_channel().await?;
    Ok((connection, channel, topology))
}

fn headers_of(table: &FieldTable) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = table
        .inner()
        .iter()
        .map(|(key, value)| (key.to_string(), shown(value)))
        .collect();
    headers.sort();
    headers
}

fn shown(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => s.to_string(),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::Timestamp(t) => DateTime::<Utc>::from_timestamp(*t as i64, 0)
            .map_or_else(|| t.to_string(), |at| at.to_rfc3339()),
        other => format!("{other:?}"),
    }
}

/// The `list` table.
pub fn list(letters: &[Letter], waiting: u32) -> String {
    let mut out = format!(
        "{waiting} dead letters{}\n",
        if letters.len() < waiting as usize {
            format!(", the oldest {} shown", letters.len())
        } else {
            String::new()
        }
    );
    if letters.is_empty() {
        return out;
    }
    out.push_str(&format!(
        "{:>4}  {:>5}  {:>8}  {:<36}  {:<20}  reason\n",
        "#", "ids", "attempts", "request id", "first ids"
    ));
    for (i, letter) in letters.iter().enumerate() {
        let ids = serde_json::from_slice::<CheckMessage>(&letter.body)
            .map(|m| m.object_ids.iter().map(|id| id.get()).collect::<Vec<_>>());
        let (count, first) = match &ids {
            Ok(ids) => (
                ids.len().to_string(),
                ids.iter()
                    .take(4)
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            Err(_) => ("?".to_owned(), "(not a check message)".to_owned()),
        };
        out.push_str(&format!(
            "{:>4}  {:>5}  {:>8}  {:<36}  {:<20}  {}\n",
            i + 1,
            count,
            letter.header(header::ATTEMPT).unwrap_or("-"),
            letter.header(header::REQUEST_ID).unwrap_or("-"),
            first,
            letter
                .header(header::REASON)
                .unwrap_or("(none: dead-lettered by RabbitMQ, see x-death)"),
        ));
    }
    out
}

/// The `peek` text.
pub fn peek(letter: &Letter) -> String {
    let mut out = String::from("headers:\n");
    for (key, value) in &letter.headers {
        out.push_str(&format!("  {key}: {value}\n"));
    }
    let body = match serde_json::from_slice::<serde_json::Value>(&letter.body) {
        Ok(json) => serde_json::to_string_pretty(&json).unwrap_or_default(),
        Err(_) => String::from_utf8_lossy(&letter.body).into_owned(),
    };
    out.push_str(&format!("body:\n{body}\n"));
    out
}

async fn purge(queue: &QueueArgs, yes: bool) -> anyhow::Result<String> {
    let (connection, channel, topology) = open(queue).await?;
    let waiting = amqp::queue_counts(&channel, &topology.dead_letter_queue)
        .await?
        .ready;
    if waiting == 0 {
        return Ok(format!("{} is empty", topology.dead_letter_queue));
    }
    if !yes {
        anyhow::ensure!(
            std::io::stdin().is_terminal(),
            "purging {waiting} dead letters needs a confirmation: run it in a terminal, or pass --yes"
        );
        print!(
            "purge {waiting} dead letters from {}? their ids are not checked again; type 'purge' to confirm: ",
            topology.dead_letter_queue
        );
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if answer.trim() != "purge" {
            return Ok("nothing purged".to_owned());
        }
    }
    let purged = channel
        .queue_purge(
            topology.dead_letter_queue.as_str().into(),
            QueuePurgeOptions::default(),
        )
        .await?;
    let _ = channel.close(200, "purged".into()).await;
    let _ = connection.close(200, "purged".into()).await;
    Ok(format!(
        "purged {purged} dead letters from {}",
        topology.dead_letter_queue
    ))
}
