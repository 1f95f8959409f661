//! The local durable spool: a callback RabbitMQ cannot confirm in time is committed
//! (fsync'd) to an embedded redb file before it is answered, and stays there until the
//! drain task has published it with confirms. The file survives crashes and restarts.

use lastseen::contract::metric;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lastseen::CheckMessage;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{Notify, mpsc, oneshot};

/// Spooled callbacks by key; keys grow, so the first entry is the oldest.
const CALLBACKS: TableDefinition<u64, &[u8]> = TableDefinition::new("callbacks");

/// Appends that arrive while a commit runs are committed together, with one fsync, up to
/// this many: an outage turns a flood of callbacks into a few disk syncs.
const GROUP_COMMIT_MAX: usize = 512;

/// Appends waiting for the writer; beyond this, callbacks wait for a slot.
const APPEND_QUEUE: usize = 4096;

/// Why the spool could not take or give back a callback.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("cannot open the spool file SPOOL_PATH={path:?}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("the spool is full: {pending} ids waiting, SPOOL_MAX_IDS is {max}")]
    Full { pending: u64, max: u64 },
    #[error("the spool file could not be written or read: {0}")]
    Storage(String),
    #[error("a spooled entry is unreadable: {0}")]
    Corrupt(String),
    #[error("the spool is shutting down")]
    Stopped,
}

impl SpoolError {
    fn storage(err: impl Into<redb::Error>) -> Self {
        Self::Storage(err.into().to_string())
    }
}

/// One spooled callback: its key (spool order) and its check messages.
#[derive(Debug)]
pub struct SpooledCallback {
    pub key: u64,
    pub messages: Vec<CheckMessage>,
}

/// A callback on its way to the writer thread, with the channel for the commit's result.
struct Append {
    payload: Vec<u8>,
    ids: u64,
    done: oneshot::Sender<Result<(), SpoolError>>,
}

/// Counters the writer thread and the drain share with the handlers.
#[derive(Default)]
struct Pending {
    callbacks: AtomicU64,
    ids: AtomicU64,
}

/// The spool: append (durably) from handlers, read the oldest and remove from the drain.
pub struct Spool {
    db: Arc<Database>,
    /// To the writer thread; taken (closed) by [`Spool::close`].
    appends: Mutex<Option<mpsc::Sender<Append>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    pending: Arc<Pending>,
    max_ids: u64,
    /// Set when the last append failed (or found the spool full), cleared by the next
    /// that succeeds.
    failing: AtomicBool,
    /// Wakes the drain when a callback was spooled.
    pub appended: Notify,
}

impl Spool {
    /// Opens (or creates) the spool file, counts what an earlier run left in it, and starts
    /// the writer thread.
    pub fn open(path: &Path, max_ids: u64) -> Result<Self, SpoolError> {
        let open_error = |reason: String| SpoolError::Open {
            path: path.to_owned(),
            reason,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| open_error(e.to_string()))?;
        }
        let db = Database::create(path).map_err(|e| open_error(e.to_string()))?;
        let pending = Arc::new(Pending::default());
        let mut next_key = 0;
        {
            let txn = db.begin_write().map_err(|e| open_error(e.to_string()))?;
            {
                let table = txn
                    .open_table(CALLBACKS)
                    .map_err(|e| open_error(e.to_string()))?;
                for entry in table.iter().map_err(|e| open_error(e.to_string()))? {
                    let (key, value) = entry.map_err(|e| open_error(e.to_string()))?;
                    let messages = decode(value.value())?;
                    next_key = key.value() + 1;
                    pending.callbacks.fetch_add(1, Ordering::Relaxed);
                    pending
                        .ids
                        .fetch_add(count_ids(&messages), Ordering::Relaxed);
                }
            }
            txn.commit().map_err(|e| open_error(e.to_string()))?;
        }
        let db = Arc::new(db);
        let (appends, rx) = mpsc::channel(APPEND_QUEUE);
        let writer_db = db.clone();
        let writer_pending = pending.clone();
        let writer = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || write_appends(&writer_db, rx, next_key, &writer_pending))
            .map_err(|e| open_error(e.to_string()))?;
        let spool = Self {
            db,
            appends: Mutex::new(Some(appends)),
            writer: Mutex::new(Some(writer)),
            pending,
            max_ids,
            failing: AtomicBool::new(false),
            appended: Notify::new(),
        };
        spool.report_depth();
        Ok(spool)
    }

    /// Commits the callback's messages to disk (fsync'd) and returns once they are durable.
    pub async fn append(&self, messages: &[CheckMessage]) -> Result<(), SpoolError> {
        let ids = count_ids(messages);
        let pending = self.pending.ids.load(Ordering::Relaxed);
        if pending + ids > self.max_ids {
            self.failing.store(true, Ordering::Relaxed);
            return Err(SpoolError::Full {
                pending,
                max: self.max_ids,
            });
        }
        let payload = serde_json::to_vec(messages).expect("check messages always serialize");
        let (done, result) = oneshot::channel();
        let appends = self
            .appends
            .lock()
            .expect("the spool's sender lock is never poisoned")
            .clone()
            .ok_or(SpoolError::Stopped)?;
        appends
            .send(Append { payload, ids, done })
            .await
            .map_err(|_| SpoolError::Stopped)?;
        let result = result.await.unwrap_or(Err(SpoolError::Stopped));
        self.failing.store(result.is_err(), Ordering::Relaxed);
        self.report_depth();
        if result.is_ok() {
            self.appended.notify_one();
        }
        result
    }

    /// The oldest spooled callbacks, up to about `max_messages` messages in all.
    pub async fn oldest(&self, max_messages: usize) -> Result<Vec<SpooledCallback>, SpoolError> {
        let db = self.db.clone();
        run_blocking(move || {
            let txn = db.begin_read().map_err(SpoolError::storage)?;
            let table = txn.open_table(CALLBACKS).map_err(SpoolError::storage)?;
            let mut batch = Vec::new();
            let mut messages_in_batch = 0;
            for entry in table.iter().map_err(SpoolError::storage)? {
                let (key, value) = entry.map_err(SpoolError::storage)?;
                let messages = decode(value.value())?;
                messages_in_batch += messages.len();
                batch.push(SpooledCallback {
                    key: key.value(),
                    messages,
                });
                if messages_in_batch >= max_messages {
                    break;
                }
            }
            Ok(batch)
        })
        .await
    }

    /// Removes callbacks whose messages RabbitMQ has confirmed. The removal is not
    /// fsync'd on its own: if a crash undoes it, the callbacks are published again
    /// (a duplicate check, never a loss), and the next durable commit persists it.
    pub async fn remove(&self, published: &[SpooledCallback]) -> Result<(), SpoolError> {
        let keys: Vec<(u64, u64)> = published
            .iter()
            .map(|c| (c.key, count_ids(&c.messages)))
            .collect();
        let db = self.db.clone();
        let (removed, ids) = run_blocking(move || {
            let mut txn = db.begin_write().map_err(SpoolError::storage)?;
            txn.set_durability(Durability::None)
                .map_err(|e| SpoolError::Storage(e.to_string()))?;
            let (mut removed, mut removed_ids) = (0u64, 0u64);
            {
                let mut table = txn.open_table(CALLBACKS).map_err(SpoolError::storage)?;
                for (key, ids) in keys {
                    if table.remove(key).map_err(SpoolError::storage)?.is_some() {
                        removed += 1;
                        removed_ids += ids;
                    }
                }
            }
            txn.commit().map_err(SpoolError::storage)?;
            Ok((removed, removed_ids))
        })
        .await?;
        self.pending.callbacks.fetch_sub(removed, Ordering::Relaxed);
        self.pending.ids.fetch_sub(ids, Ordering::Relaxed);
        self.report_depth();
        Ok(())
    }

    /// Stops taking appends and waits for the writer to commit what it has; the file is
    /// released when the spool is dropped.
    pub async fn close(&self) {
        self.appends
            .lock()
            .expect("the spool's sender lock is never poisoned")
            .take();
        let writer = self
            .writer
            .lock()
            .expect("the spool's writer lock is never poisoned")
            .take();
        if let Some(writer) = writer {
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
    }

    fn report_depth(&self) {
        metrics::gauge!(metric::SPOOL_PENDING_IDS).set(self.pending_ids() as f64);
        metrics::gauge!(metric::SPOOL_PENDING_CALLBACKS).set(self.pending_callbacks() as f64);
    }

    /// Callbacks waiting in the spool.
    pub fn pending_callbacks(&self) -> u64 {
        self.pending.callbacks.load(Ordering::Relaxed)
    }

    /// Ids waiting in the spool.
    pub fn pending_ids(&self) -> u64 {
        self.pending.ids.load(Ordering::Relaxed)
    }

    /// False when the last append failed or found the spool full.
    pub fn is_writable(&self) -> bool {
        !self.failing.load(Ordering::Relaxed)
    }
}

/// The writer thread: commits waiting appends in groups, one fsync per group, and
/// answers each append once its group is durable.
fn write_appends(
    db: &Database,
    mut rx: mpsc::Receiver<Append>,
    mut next_key: u64,
    pending: &Pending,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < GROUP_COMMIT_MAX {
            match rx.try_recv() {
                Ok(append) => group.push(append),
                Err(_) => break,
            }
        }
        let result = commit_group(db, &group, next_key);
        match result {
            Ok(()) => {
                next_key += group.len() as u64;
                let ids: u64 = group.iter().map(|a| a.ids).sum();
                pending
                    .callbacks
                    .fetch_add(group.len() as u64, Ordering::Relaxed);
                pending.ids.fetch_add(ids, Ordering::Relaxed);
                for append in group {
                    let _ = append.done.send(Ok(()));
                }
            }
            Err(err) => {
                tracing::error!(error = %err, callbacks = group.len(), "spool write failed");
                let reason = err.to_string();
                for append in group {
                    let _ = append.done.send(Err(SpoolError::Storage(reason.clone())));
                }
            }
        }
    }
}

fn commit_group(db: &Database, group: &[Append], first_key: u64) -> Result<(), SpoolError> {
    let txn = db.begin_write().map_err(SpoolError::storage)?;
    {
        let mut table = txn.open_table(CALLBACKS).map_err(SpoolError::storage)?;
        for (key, append) in (first_key..).zip(group) {
            table
                .insert(key, append.payload.as_slice())
                .map_err(SpoolError::storage)?;
        }
    }
    // Durability::Immediate is redb's default: commit returns after fsync.
    txn.commit().map_err(SpoolError::storage)
}

async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, SpoolError> + Send + 'static,
) -> Result<T, SpoolError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|join| Err(SpoolError::Storage(join.to_string())))
}

fn decode(payload: &[u8]) -> Result<Vec<CheckMessage>, SpoolError> {
    serde_json::from_slice(payload).map_err(|e| SpoolError::Corrupt(e.to_string()))
}

fn count_ids(messages: &[CheckMessage]) -> u64 {
    messages.iter().map(|m| m.object_ids.len() as u64).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callback::check_messages;
    use chrono::Utc;
    use lastseen::ObjectId;

    fn messages(ids: std::ops::Range<i64>) -> Vec<CheckMessage> {
        let ids: Vec<ObjectId> = ids.filter_map(ObjectId::new).collect();
        check_messages(&ids, 10, Utc::now())
    }

    #[tokio::test]
    async fn spooled_callbacks_survive_reopening_and_come_back_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.redb");
        let first = messages(0..25);
        {
            let spool = Spool::open(&path, 1_000).unwrap();
            spool.append(&first).await.unwrap();
            spool.append(&messages(100..105)).await.unwrap();
            assert_eq!(spool.pending_callbacks(), 2);
            assert_eq!(spool.pending_ids(), 30);
            spool.close().await;
        }
        let spool = Spool::open(&path, 1_000).unwrap();
        assert_eq!(spool.pending_callbacks(), 2);
        assert_eq!(spool.pending_ids(), 30);
        let oldest = spool.oldest(1_000).await.unwrap();
        assert_eq!(oldest.len(), 2);
        assert_eq!(oldest[0].messages, first);
        assert_eq!(oldest[1].messages[0].object_ids[0].get(), 100);
    }

    #[tokio::test]
    async fn removed_callbacks_are_gone_and_the_rest_stay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.redb");
        let spool = Spool::open(&path, 1_000).unwrap();
        for start in [0, 10, 20] {
            spool.append(&messages(start..start + 10)).await.unwrap();
        }
        let first_two = spool.oldest(2).await.unwrap();
        assert_eq!(first_two.len(), 2);
        spool.remove(&first_two).await.unwrap();
        assert_eq!(spool.pending_callbacks(), 1);
        assert_eq!(spool.pending_ids(), 10);
        let rest = spool.oldest(100).await.unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].messages[0].object_ids[0].get(), 20);
    }

    #[tokio::test]
    async fn a_full_spool_refuses_the_callback_and_keeps_what_it_has() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool.redb"), 15).unwrap();
        spool.append(&messages(0..10)).await.unwrap();
        let err = spool.append(&messages(10..20)).await.unwrap_err();
        assert!(
            matches!(
                err,
                SpoolError::Full {
                    pending: 10,
                    max: 15
                }
            ),
            "{err}"
        );
        assert_eq!(spool.pending_ids(), 10);
    }

    #[tokio::test]
    async fn concurrent_appends_all_land_with_distinct_keys() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(&dir.path().join("spool.redb"), 1_000_000).unwrap());
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let spool = spool.clone();
                tokio::spawn(async move { spool.append(&messages(i * 5..i * 5 + 5)).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let all = spool.oldest(usize::MAX).await.unwrap();
        assert_eq!(all.len(), 200);
        let mut ids: Vec<i64> = all
            .iter()
            .flat_map(|c| {
                c.messages
                    .iter()
                    .flat_map(|m| m.object_ids.iter().map(|id| id.get()))
            })
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn an_unwritable_path_is_a_clear_error_naming_the_setting() {
        let Err(err) = Spool::open(Path::new("/proc/no-such-dir/spool.redb"), 10) else {
            panic!("a spool under /proc must not open");
        };
        assert!(err.to_string().contains("SPOOL_PATH"), "{err}");
    }
}
