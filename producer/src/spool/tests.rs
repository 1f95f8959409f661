//! The spool against a real file, and against storage that fails like a full disk.
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

/// A spool file that fails every write, resize and fsync while `full` is set, as a full
/// disk does; reads still work.
#[derive(Debug)]
struct FillableDisk {
    file: redb::backends::FileBackend,
    full: Arc<AtomicBool>,
}

impl FillableDisk {
    fn check(&self) -> std::io::Result<()> {
        if self.full.load(Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
        }
        Ok(())
    }

    /// Opens spool files on a disk that is full while `full` is set.
    fn opener(full: Arc<AtomicBool>) -> OpenBackend {
        Arc::new(move |path: &Path| {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)?;
            let backend: Box<dyn redb::StorageBackend> = Box::new(FillableDisk {
                file: redb::backends::FileBackend::new(file).map_err(std::io::Error::other)?,
                full: full.clone(),
            });
            Ok(backend)
        })
    }
}

impl redb::StorageBackend for FillableDisk {
    fn len(&self) -> std::io::Result<u64> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.check()?;
        self.file.set_len(len)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.check()?;
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.check()?;
        self.file.write(offset, data)
    }

    fn close(&self) -> std::io::Result<()> {
        self.file.close()
    }
}

fn first_ids(callbacks: &[SpooledCallback]) -> Vec<i64> {
    callbacks
        .iter()
        .map(|c| c.messages[0].object_ids[0].get())
        .collect()
}

#[tokio::test]
async fn a_spool_whose_disk_filled_up_takes_callbacks_again_once_it_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool.redb");
    let full = Arc::new(AtomicBool::new(false));
    let spool = Spool::open_with(&path, 1_000, Some(FillableDisk::opener(full.clone()))).unwrap();
    spool.append(&messages(0..5)).await.unwrap();

    full.store(true, Ordering::SeqCst);
    let refused = spool.append(&messages(100..105)).await;
    assert!(
        matches!(refused, Err(SpoolError::Storage(_))),
        "{refused:?}"
    );
    assert!(!spool.is_writable());

    full.store(false, Ordering::SeqCst);
    spool
        .append(&messages(200..205))
        .await
        .expect("a freed disk takes callbacks again, without a restart");
    assert!(spool.is_writable());
    let spooled = spool.oldest(1_000).await.unwrap();
    assert_eq!(
        first_ids(&spooled),
        vec![0, 200],
        "the refused callback is not there"
    );
    assert_eq!((spool.pending_callbacks(), spool.pending_ids()), (2, 10));
    spool.close().await;
    drop(spool);

    let reopened = Spool::open(&path, 1_000).unwrap();
    assert_eq!(
        first_ids(&reopened.oldest(1_000).await.unwrap()),
        vec![0, 200]
    );
}

#[tokio::test]
async fn a_published_callback_whose_removal_failed_is_never_handed_out_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool.redb");
    let full = Arc::new(AtomicBool::new(false));
    let spool = Spool::open_with(&path, 1_000, Some(FillableDisk::opener(full.clone()))).unwrap();
    spool.append(&messages(0..5)).await.unwrap();
    spool.append(&messages(10..15)).await.unwrap();
    let published = spool.oldest(1_000).await.unwrap();
    assert_eq!(first_ids(&published), vec![0, 10]);

    // The disk fills up: an append fails, and redb refuses every transaction after it
    // until the file is reopened, so the removal of what RabbitMQ confirmed may fail too.
    full.store(true, Ordering::SeqCst);
    assert!(spool.append(&messages(100..105)).await.is_err());
    let _ = spool.remove(&published).await;
    full.store(false, Ordering::SeqCst);
    // The drain's next round must not publish them again.
    assert!(spool.oldest(1_000).await.unwrap().is_empty());
    spool.append(&messages(20..25)).await.unwrap();
    let next = spool.oldest(1_000).await.unwrap();
    assert_eq!(first_ids(&next), vec![20]);

    // The next removal takes the earlier ones with it.
    spool.remove(&next).await.unwrap();
    assert_eq!((spool.pending_callbacks(), spool.pending_ids()), (0, 0));
    spool.close().await;
    drop(spool);
    let reopened = Spool::open(&path, 1_000).unwrap();
    assert!(reopened.oldest(1_000).await.unwrap().is_empty());
}
