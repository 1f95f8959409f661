//! `lastseenctl object <id>` and `lastseenctl events tail`: what PostgreSQL knows about
//! an object, and the transitions in order (the read API's queries, run directly).

use std::time::Duration;

use clap::Args;
use lastseen::config::DatabaseArgs;
use lastseen::store::reads::{self, EventSeq};
use lastseen::tls::TlsArgs;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Where PostgreSQL is.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
}

impl StoreArgs {
    fn pool(&self) -> anyhow::Result<PgPool> {
        self.tls.check()?;
        Ok(lastseen::db::read_pool(
            &self.database.database_url,
            &self.tls,
            2,
        )?)
    }
}

/// `object <id>`: its state and its stretches online, as text.
pub async fn object(id: i64, store: &StoreArgs) -> anyhow::Result<String> {
    let pool = store.pool()?;
    let Some(state) = reads::object(&pool, id).await? else {
        anyhow::bail!("object {id} was never seen, or its history is past retention");
    };
    let stretches = reads::stretches(&pool, id, None, 20).await?;
    let mut out = if state.online {
        let stale = match (state.stale_since, state.stale_at) {
            (Some(since), _) => format!(", stale since {}", stamp(Some(since))),
            (None, Some(at)) => format!(", goes stale {}", stamp(Some(at))),
            (None, None) => String::new(),
        };
        format!(
            "object {id}: {} since {}, last seen {}{stale}, expires {}\n",
            state.state,
            stamp(state.first_seen),
            stamp(Some(state.last_seen)),
            stamp(state.expires_at)
        )
    } else {
        format!(
            "object {id}: not online; last seen {}\n",
            stamp(Some(state.last_seen))
        )
    };
    out.push_str("stretches online, the latest first:\n");
    for s in &stretches {
        out.push_str(&format!(
            "  {} -> {}  (last seen {}, deadline {})\n",
            stamp(Some(s.first_seen)),
            s.expired_at
                .map_or_else(|| "now".to_owned(), |at| stamp(Some(at))),
            stamp(Some(s.last_seen)),
            stamp(Some(s.expires_at)),
        ));
    }
    Ok(out)
}

fn stamp(at: Option<chrono::DateTime<chrono::Utc>>) -> String {
    at.map_or_else(
        || "-".to_owned(),
        |at| at.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string(),
    )
}

/// Settings of `events tail`.
#[derive(Debug, Clone, Args)]
pub struct TailArgs {
    /// Start after this `seq` (`0`: from the start of the kept history); by default the
    /// latest `--last` events.
    #[arg(long)]
    pub after: Option<EventSeq>,
    /// Without `--after`: how many of the latest events to show first.
    #[arg(long, default_value_t = 10)]
    pub last: i64,
    /// Keep printing new events as they become final, until Ctrl-C.
    #[arg(long, short)]
    pub follow: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// `events tail`: prints events, one line each (`seq type object payload`), in order.
pub async fn tail(args: TailArgs, stop: CancellationToken) -> anyhow::Result<()> {
    let pool = args.store.pool()?;
    let mut at = match args.after {
        Some(after) => after,
        None if args.last <= 0 => reads::events_end(&pool).await?,
        None => reads::events_back(&pool, args.last - 1)
            .await?
            .predecessor(),
    };
    loop {
        if stop.is_cancelled() {
            return Ok(());
        }
        let events = reads::events(&pool, at, 1000).await?;
        for event in &events {
            println!(
                "{}  {}  {}  {}  {}",
                event.seq,
                event.raised_at.format("%H:%M:%S%.3f"),
                event.kind,
                event
                    .object_id
                    .map_or_else(|| "-".to_owned(), |id| id.to_string()),
                event.payload
            );
            at = event.seq;
        }
        if events.len() == 1000 {
            continue;
        }
        if !args.follow {
            return Ok(());
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            () = stop.cancelled() => return Ok(()),
        }
    }
}
