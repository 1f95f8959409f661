//! The local durable spool: a callback RabbitMQ cannot confirm in time is committed
//! (fsync'd) to an embedded redb file before it is answered, and stays there until the
//! drain task has published it with confirms. The file survives crashes and restarts, and
//! a failing disk: after a failed write the file is reopened ([`file`]).

mod file;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use lastseen::CheckMessage;
use lastseen::contract::metric;
use lastseen::progress::Unsettled;
use tokio::sync::{Notify, mpsc, oneshot};

pub use file::OpenBackend;
use file::SpoolFile;

/// Appends that arrive while a commit runs are committed together, with one fsync, up to
/// this many: an outage turns a flood of callbacks into a few disk syncs.
const GROUP_COMMIT_MAX: usize = 512;

/// Appends waiting for the writer; beyond this, callbacks wait for a slot.
const APPEND_QUEUE: usize = 4096;

/// Why the spool could not take or give back a callback.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("cannot open the spool file SPOOL_PATH={path:?}: {reason}")]
    Open {
        path: std::path::PathBuf,
        reason: String,
    },
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
    accepted: Option<DateTime<Utc>>,
    done: oneshot::Sender<Result<(), SpoolError>>,
}

/// The spool: append (durably) from handlers, read the oldest and remove from the drain.
pub struct Spool {
    file: Arc<SpoolFile>,
    /// To the writer thread; taken (closed) by [`Spool::close`].
    appends: Mutex<Option<mpsc::Sender<Append>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    max_ids: u64,
    /// Callbacks RabbitMQ confirmed whose removal from the file failed: never handed out
    /// again, and removed with the next removal.
    published: Arc<Mutex<BTreeSet<u64>>>,
    /// Set when the last append failed (or found the spool full), cleared by the next
    /// that succeeds.
    failing: AtomicBool,
    /// Wakes the drain when a callback was spooled.
    pub appended: Notify,
    /// Held while the depth gauges are read and set: an append's report and a removal's
    /// could otherwise interleave and leave the older count on the gauge.
    reporting: Mutex<()>,
}

impl Spool {
    /// Opens (or creates) the spool file, counts what an earlier run left in it, and starts
    /// the writer thread.
    pub fn open(path: &Path, max_ids: u64) -> Result<Self, SpoolError> {
        Self::open_with(path, max_ids, None)
    }

    /// [`Self::open`] over the storage `open_backend` gives (tests make it fail).
    pub fn open_with(
        path: &Path,
        max_ids: u64,
        open_backend: Option<OpenBackend>,
    ) -> Result<Self, SpoolError> {
        let file = Arc::new(SpoolFile::open(path, open_backend)?);
        let (appends, rx) = mpsc::channel(APPEND_QUEUE);
        let writer_file = file.clone();
        let writer = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || write_appends(&writer_file, rx))
            .map_err(|e| SpoolError::Open {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        let spool = Self {
            file,
            appends: Mutex::new(Some(appends)),
            writer: Mutex::new(Some(writer)),
            max_ids,
            published: Arc::default(),
            failing: AtomicBool::new(false),
            appended: Notify::new(),
            reporting: Mutex::new(()),
        };
        spool.report_depth();
        Ok(spool)
    }

    /// Commits the callback's messages to disk (fsync'd) and returns once they are durable.
    pub async fn append(&self, messages: &[CheckMessage]) -> Result<(), SpoolError> {
        let ids = count_ids(messages);
        let pending = self.pending_ids();
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
            .send(Append {
                payload,
                ids,
                accepted: accepted_at(messages),
                done,
            })
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

    /// The oldest spooled callbacks not yet published, up to about `max_messages`
    /// messages in all.
    pub async fn oldest(&self, max_messages: usize) -> Result<Vec<SpooledCallback>, SpoolError> {
        let (file, published) = (self.file.clone(), self.published.clone());
        run_blocking(move || {
            let published = published
                .lock()
                .expect("the published set is never poisoned");
            file.oldest(max_messages, &|key| published.contains(&key))
        })
        .await
    }

    /// Removes callbacks whose messages RabbitMQ has confirmed, and any whose removal
    /// failed before. If this removal fails too they are still never handed out again
    /// (the drain does not publish them twice); a restart before they are removed
    /// publishes them again: a duplicate check, never a loss.
    pub async fn remove(&self, published: &[SpooledCallback]) -> Result<(), SpoolError> {
        let keys: Vec<u64> = {
            let mut set = self
                .published
                .lock()
                .expect("the published set is never poisoned");
            set.extend(published.iter().map(|c| c.key));
            set.iter().copied().collect()
        };
        if keys.is_empty() {
            return Ok(());
        }
        let file = self.file.clone();
        let removal = run_blocking({
            let keys = keys.clone();
            move || file.remove(&keys)
        })
        .await;
        if removal.is_ok() {
            let mut set = self
                .published
                .lock()
                .expect("the published set is never poisoned");
            for key in &keys {
                set.remove(key);
            }
        }
        self.report_depth();
        removal
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

    /// Sets the depth gauges from the counts. Under `reporting`, so that whichever report
    /// runs last reads the counts after every change that came before it.
    fn report_depth(&self) {
        let _reporting = self
            .reporting
            .lock()
            .expect("the spool's reporting lock is never poisoned");
        metrics::gauge!(metric::SPOOL_PENDING_IDS).set(self.pending_ids() as f64);
        metrics::gauge!(metric::SPOOL_PENDING_CALLBACKS).set(self.pending_callbacks() as f64);
    }

    /// Callbacks waiting in the spool (published ones whose removal failed included).
    pub fn pending_callbacks(&self) -> u64 {
        self.file.counts.callbacks.load(Ordering::Relaxed)
    }

    /// Ids waiting in the spool.
    pub fn pending_ids(&self) -> u64 {
        self.file.counts.ids.load(Ordering::Relaxed)
    }

    /// The `accepted_at` of every spooled callback (for the progress reports).
    pub fn accepted(&self) -> Unsettled {
        self.file.counts.accepted.clone()
    }

    /// False when the last append failed or found the spool full.
    pub fn is_writable(&self) -> bool {
        !self.failing.load(Ordering::Relaxed)
    }
}

/// The writer thread: commits waiting appends in groups, one fsync per group, and
/// answers each append once its group is durable.
fn write_appends(file: &SpoolFile, mut rx: mpsc::Receiver<Append>) {
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < GROUP_COMMIT_MAX {
            match rx.try_recv() {
                Ok(append) => group.push(append),
                Err(_) => break,
            }
        }
        let payloads: Vec<&[u8]> = group.iter().map(|a| a.payload.as_slice()).collect();
        let ids = group.iter().map(|a| a.ids).sum();
        let accepted: Vec<DateTime<Utc>> = group.iter().filter_map(|a| a.accepted).collect();
        match file.append(&payloads, ids, &accepted) {
            Ok(()) => {
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

/// When a spooled callback was accepted: the oldest of its messages' times (they share one).
fn accepted_at(messages: &[CheckMessage]) -> Option<DateTime<Utc>> {
    messages.iter().map(|m| m.accepted_at).min()
}

fn count_ids(messages: &[CheckMessage]) -> u64 {
    messages.iter().map(|m| m.object_ids.len() as u64).sum()
}

#[cfg(test)]
mod tests;
