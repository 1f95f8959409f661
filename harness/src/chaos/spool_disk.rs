//! The producer's spool on a small disk of its own (a tmpfs the suite mounts), which a
//! fault fills up and frees again: the spool must refuse callbacks (503) while the disk is
//! full and take them again, without a restart, once it has room.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use super::tools;

/// The disk's size: room for the spool of a run, and little enough to fill at once.
const SIZE: &str = "64m";

/// The mounted disk.
pub struct SpoolDisk {
    dir: PathBuf,
}

impl SpoolDisk {
    /// Mounts a fresh tmpfs at `dir` (unmounting one a killed run left there).
    pub async fn mount(dir: &Path) -> anyhow::Result<Self> {
        let _ = tools::run(
            "umount",
            &[&dir.display().to_string()],
            &[],
            Duration::from_secs(10),
        )
        .await;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        tools::run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={SIZE}"),
                "tmpfs",
                &dir.display().to_string(),
            ],
            &[],
            Duration::from_secs(10),
        )
        .await
        .with_context(|| format!("cannot mount a tmpfs for the spool at {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// Where the producer keeps its spool file.
    pub fn spool_path(&self) -> PathBuf {
        self.dir.join("producer.redb")
    }

    fn filler(&self) -> PathBuf {
        self.dir.join("filler")
    }

    /// Fills the disk to the last byte.
    pub fn fill(&self) -> anyhow::Result<()> {
        let mut file = std::fs::File::create(self.filler())
            .with_context(|| format!("cannot create {}", self.filler().display()))?;
        let block = vec![0u8; 1 << 20];
        // Whole blocks, then single bytes: the disk is full when not one more fits.
        while file.write_all(&block).is_ok() {}
        while file.write_all(&[0]).is_ok() {}
        Ok(())
    }

    /// Frees what [`Self::fill`] took.
    pub fn free(&self) -> anyhow::Result<()> {
        std::fs::remove_file(self.filler())
            .with_context(|| format!("cannot remove {}", self.filler().display()))
    }

    /// Unmounts the disk (its spool with it).
    pub async fn unmount(&self) -> anyhow::Result<()> {
        tools::run(
            "umount",
            &[&self.dir.display().to_string()],
            &[],
            Duration::from_secs(10),
        )
        .await
        .with_context(|| format!("cannot unmount the spool disk at {}", self.dir.display()))?;
        Ok(())
    }
}
