//! The spool's redb file, with what it holds counted. After a failed write or fsync redb
//! refuses every further transaction until the file is opened again, so a failure marks
//! the file for reopening, and the next operation reopens it (redb repairs it on open)
//! and counts its contents afresh: a disk that was full and is freed works again without
//! a restart.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use lastseen::CheckMessage;
use redb::{
    BackendError, Database, Durability, ReadableDatabase, ReadableTable, StorageBackend,
    TableDefinition,
};

use super::{SpoolError, SpooledCallback, accepted_at, count_ids, decode};
use chrono::{DateTime, Utc};
use lastseen::progress::Unsettled;

/// Spooled callbacks by key; keys grow, so the first entry is the oldest.
const CALLBACKS: TableDefinition<u64, &[u8]> = TableDefinition::new("callbacks");

/// Opens the storage under a spool file: the file itself, or (in tests) a backend that
/// can be made to fail.
pub type OpenBackend = Arc<dyn Fn(&Path) -> std::io::Result<Box<dyn StorageBackend>> + Send + Sync>;

/// What the file holds, counted when it is opened and kept up to date after.
#[derive(Default)]
pub struct Counts {
    pub callbacks: AtomicU64,
    pub ids: AtomicU64,
    /// The key the next appended callback gets.
    next_key: AtomicU64,
    /// The `accepted_at` of every callback in the file, for the progress reports.
    pub accepted: Unsettled,
}

/// The redb file of the spool.
pub struct SpoolFile {
    path: PathBuf,
    open_backend: Option<OpenBackend>,
    /// `None` while closed for reopening, or when a reopen failed (retried next time).
    db: RwLock<Option<Database>>,
    /// Set by a failed operation: the next one reopens the file first.
    broken: AtomicBool,
    pub counts: Counts,
}

impl SpoolFile {
    /// Opens (or creates) the file at `path` and counts what it holds.
    pub fn open(path: &Path, open_backend: Option<OpenBackend>) -> Result<Self, SpoolError> {
        let open_error = |reason: String| SpoolError::Open {
            path: path.to_owned(),
            reason,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| open_error(e.to_string()))?;
        }
        let file = Self {
            path: path.to_owned(),
            open_backend,
            db: RwLock::new(None),
            broken: AtomicBool::new(false),
            counts: Counts::default(),
        };
        let db = file
            .open_database()
            .map_err(|e| open_error(e.to_string()))?;
        file.count(&db).map_err(|e| open_error(e.to_string()))?;
        *file
            .db
            .write()
            .expect("the spool file lock is never poisoned") = Some(db);
        Ok(file)
    }

    fn open_database(&self) -> Result<Database, SpoolError> {
        match &self.open_backend {
            None => Database::create(&self.path).map_err(SpoolError::storage),
            Some(open) => {
                let backend = open(&self.path).map_err(|e| SpoolError::Storage(e.to_string()))?;
                Database::builder()
                    .create_with_backend(DynBackend(backend))
                    .map_err(SpoolError::storage)
            }
        }
    }

    /// Counts the callbacks and ids in `db` and the next key.
    fn count(&self, db: &Database) -> Result<(), SpoolError> {
        let (mut callbacks, mut ids, mut next_key) = (0, 0, 0);
        let mut accepted = Vec::new();
        let txn = db.begin_write().map_err(SpoolError::storage)?;
        {
            // Opening the table for writing creates it in a new file.
            let table = txn.open_table(CALLBACKS).map_err(SpoolError::storage)?;
            for entry in table.iter().map_err(SpoolError::storage)? {
                let (key, value) = entry.map_err(SpoolError::storage)?;
                let messages = decode(value.value())?;
                callbacks += 1;
                ids += count_ids(&messages);
                accepted.extend(accepted_at(&messages));
                next_key = key.value() + 1;
            }
        }
        txn.commit().map_err(SpoolError::storage)?;
        self.counts.accepted.reset(accepted);
        self.counts.callbacks.store(callbacks, Ordering::Relaxed);
        self.counts.ids.store(ids, Ordering::Relaxed);
        self.counts.next_key.store(next_key, Ordering::Relaxed);
        Ok(())
    }

    /// Runs `operation` on the database, reopening the file first if an earlier
    /// operation failed; a failure of this one marks the file for reopening.
    fn with_database<T>(
        &self,
        operation: impl FnOnce(&Database) -> Result<T, SpoolError>,
    ) -> Result<T, SpoolError> {
        if self.broken.load(Ordering::Acquire) {
            self.reopen()?;
        }
        let db = self
            .db
            .read()
            .expect("the spool file lock is never poisoned");
        let Some(db) = db.as_ref() else {
            self.broken.store(true, Ordering::Release);
            return Err(SpoolError::Storage("the spool file is not open".into()));
        };
        let result = operation(db);
        if matches!(result, Err(SpoolError::Storage(_))) {
            self.broken.store(true, Ordering::Release);
        }
        result
    }

    /// Closes the file and opens it again, then counts it.
    fn reopen(&self) -> Result<(), SpoolError> {
        let mut db = self
            .db
            .write()
            .expect("the spool file lock is never poisoned");
        if !self.broken.load(Ordering::Acquire) {
            return Ok(()); // Another caller reopened it meanwhile.
        }
        // The old handle must be gone before the file is opened again.
        drop(db.take());
        let reopened = self.open_database()?;
        self.count(&reopened)?;
        *db = Some(reopened);
        self.broken.store(false, Ordering::Release);
        tracing::info!(
            callbacks = self.counts.callbacks.load(Ordering::Relaxed),
            "the spool file was reopened after a failure"
        );
        Ok(())
    }

    /// Commits `payloads` as new callbacks (`ids` ids in all, accepted at `accepted`),
    /// fsync'd, in one transaction.
    pub fn append(
        &self,
        payloads: &[&[u8]],
        ids: u64,
        accepted: &[DateTime<Utc>],
    ) -> Result<(), SpoolError> {
        self.with_database(|db| {
            let first_key = self.counts.next_key.load(Ordering::Relaxed);
            let txn = db.begin_write().map_err(SpoolError::storage)?;
            {
                let mut table = txn.open_table(CALLBACKS).map_err(SpoolError::storage)?;
                for (key, payload) in (first_key..).zip(payloads) {
                    table.insert(key, *payload).map_err(SpoolError::storage)?;
                }
            }
            // Durability::Immediate is redb's default: commit returns after fsync.
            txn.commit().map_err(SpoolError::storage)?;
            let appended = payloads.len() as u64;
            self.counts
                .next_key
                .store(first_key + appended, Ordering::Relaxed);
            self.counts.callbacks.fetch_add(appended, Ordering::Relaxed);
            self.counts.ids.fetch_add(ids, Ordering::Relaxed);
            for at in accepted {
                self.counts.accepted.add(*at);
            }
            Ok(())
        })
    }

    /// The oldest callbacks not in `skip`, up to about `max_messages` messages in all.
    pub fn oldest(
        &self,
        max_messages: usize,
        skip: &dyn Fn(u64) -> bool,
    ) -> Result<Vec<SpooledCallback>, SpoolError> {
        self.with_database(|db| {
            let txn = db.begin_read().map_err(SpoolError::storage)?;
            let table = txn.open_table(CALLBACKS).map_err(SpoolError::storage)?;
            let mut batch = Vec::new();
            let mut messages_in_batch = 0;
            for entry in table.iter().map_err(SpoolError::storage)? {
                let (key, value) = entry.map_err(SpoolError::storage)?;
                if skip(key.value()) {
                    continue;
                }
                let messages: Vec<CheckMessage> = decode(value.value())?;
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
    }

    /// Removes the callbacks with `keys`, without an fsync of its own (a crash that
    /// undoes it publishes them again: a duplicate, never a loss).
    pub fn remove(&self, keys: &[u64]) -> Result<(), SpoolError> {
        self.with_database(|db| {
            let mut txn = db.begin_write().map_err(SpoolError::storage)?;
            txn.set_durability(Durability::None)
                .map_err(|e| SpoolError::Storage(e.to_string()))?;
            let (mut removed, mut removed_ids) = (0u64, 0u64);
            let mut removed_accepted = Vec::new();
            {
                let mut table = txn.open_table(CALLBACKS).map_err(SpoolError::storage)?;
                for key in keys {
                    if let Some(value) = table.remove(key).map_err(SpoolError::storage)? {
                        removed += 1;
                        if let Ok(messages) = decode(value.value()) {
                            removed_ids += count_ids(&messages);
                            removed_accepted.extend(accepted_at(&messages));
                        }
                    }
                }
            }
            txn.commit().map_err(SpoolError::storage)?;
            self.counts.callbacks.fetch_sub(removed, Ordering::Relaxed);
            self.counts.ids.fetch_sub(removed_ids, Ordering::Relaxed);
            for at in removed_accepted {
                self.counts.accepted.remove(at);
            }
            Ok(())
        })
    }
}

/// A boxed backend as redb's `create_with_backend` takes one (a sized type): every call
/// goes to the box, the locks included.
#[derive(Debug)]
struct DynBackend(Box<dyn StorageBackend>);

impl StorageBackend for DynBackend {
    fn len(&self) -> std::io::Result<u64> {
        self.0.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.0.read(offset, out)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.0.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.0.write(offset, data)
    }

    fn close(&self) -> std::io::Result<()> {
        self.0.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.0.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.query_lock_range(start, end)
    }
}
