//! The package download cache every session shares: archives (wheels, sdists) fetched
//! over plain HTTP through the proxy, each stored under the SHA-256 of its URL once
//! whole (its full announced length, written to a temporary name and renamed), and
//! answered from there to any program that asks for the same URL. Only the gateway
//! writes it, from what the index sent for a canonical request (the proxy's job: no
//! credentials, no query, no headers of the caller's that could change the answer): no
//! program can put anything of its own in it. Bounded by `--package-cache-bytes` in all:
//! to make room, the archives used least recently go first (an archive larger than the
//! whole cache is not kept). HTTPS downloads are tunnelled, so not cached.

use sha2::{Digest as _, Sha256};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::AsyncWriteExt as _;

/// The package archives kept, and how many bytes they (and those being written) take.
#[derive(Debug)]
pub(crate) struct Cache {
    dir: PathBuf,
    most: u64,
    used: AtomicU64,
}

impl Cache {
    /// The cache in `dir` (made, readable by the gateway's user only), at most `most`
    /// bytes.
    pub(crate) fn open(dir: &Path, most: u64) -> io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let mut used = 0;
        for entry in std::fs::read_dir(dir)?.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with("partial-") {
                let _ = std::fs::remove_file(entry.path());
            } else if let Ok(meta) = entry.metadata() {
                used += meta.len();
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            most,
            used: AtomicU64::new(used),
        })
    }

    /// The name an archive at `http://host:port/path` is kept under.
    pub(crate) fn key(host: &str, port: u16, path: &str) -> String {
        let digest = Sha256::digest(format!("http://{host}:{port}{path}").as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The archive kept under `key`, opened, and its length; marked as used now.
    pub(crate) async fn get(&self, key: &str) -> Option<(tokio::fs::File, u64)> {
        let file = tokio::fs::File::open(self.dir.join(key)).await.ok()?;
        let len = file.metadata().await.ok()?.len();
        let std_file = file.into_std().await;
        let _ = std_file.set_modified(std::time::SystemTime::now());
        Some((tokio::fs::File::from_std(std_file), len))
    }

    /// Starts keeping an archive of `len` bytes under `key`, making room if need be.
    pub(crate) fn begin(&self, key: &str, len: u64) -> Option<Pending<'_>> {
        if len > self.most {
            return None;
        }
        let reserve = || {
            self.used
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                    used.checked_add(len).filter(|total| *total <= self.most)
                })
                .is_ok()
        };
        if !reserve() {
            self.make_room(len);
            if !reserve() {
                return None;
            }
        }
        let salt = getrandom::u64().unwrap_or_default();
        let partial = self.dir.join(format!("partial-{key}-{salt:016x}"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&partial);
        match file {
            Ok(file) => Some(Pending {
                cache: self,
                file: Some(tokio::fs::File::from_std(file)),
                partial,
                key: key.to_owned(),
                len,
                written: 0,
            }),
            Err(err) => {
                tracing::warn!(%err, "the package cache could not store an archive");
                self.used.fetch_sub(len, Ordering::AcqRel);
                None
            }
        }
    }
}

impl Cache {
    /// Removes the archives used least recently until `len` more bytes fit (archives
    /// being written are not touched: their room is reserved).
    fn make_room(&self, len: u64) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut kept: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
            .flatten()
            .filter(|entry| !entry.file_name().to_string_lossy().starts_with("partial-"))
            .filter_map(|entry| {
                let meta = entry.metadata().ok()?;
                Some((meta.modified().ok()?, meta.len(), entry.path()))
            })
            .collect();
        kept.sort();
        for (_, size, path) in kept {
            if self.used.load(Ordering::Acquire).saturating_add(len) <= self.most {
                return;
            }
            if std::fs::remove_file(&path).is_ok() {
                self.used.fetch_sub(size, Ordering::AcqRel);
            }
        }
    }
}

/// An archive being stored: kept by [`Pending::finish`] when whole, else removed (and
/// its room given back) when dropped.
#[derive(Debug)]
pub(crate) struct Pending<'a> {
    cache: &'a Cache,
    file: Option<tokio::fs::File>,
    partial: PathBuf,
    key: String,
    len: u64,
    written: u64,
}

impl Pending<'_> {
    /// Appends what the index sent; more than announced is an error.
    pub(crate) async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.written += bytes.len() as u64;
        if self.written > self.len {
            return Err(io::ErrorKind::InvalidData.into());
        }
        match &mut self.file {
            Some(file) => file.write_all(bytes).await,
            None => Err(io::ErrorKind::NotFound.into()),
        }
    }

    /// Keeps the archive if it is whole.
    pub(crate) async fn finish(mut self) {
        let Some(mut file) = self.file.take() else {
            return;
        };
        if self.written != self.len || file.flush().await.is_err() {
            return;
        }
        drop(file);
        let kept = self.cache.dir.join(&self.key);
        if tokio::fs::metadata(&kept).await.is_ok() {
            // Stored meanwhile by another download of the same URL.
            return;
        }
        if tokio::fs::rename(&self.partial, &kept).await.is_ok() {
            self.len = 0; // now counted as kept: nothing to give back
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.len > 0 {
            let _ = std::fs::remove_file(&self.partial);
            self.cache.used.fetch_sub(self.len, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn whole_archives_are_kept_and_partial_ones_are_not() {
        let dir = std::env::temp_dir().join(format!("sluice-cache-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cache = Cache::open(&dir, 10).expect("cache");
        let key = Cache::key("h", 80, "/a.whl");
        let mut store = cache.begin(&key, 4).expect("room");
        store.write(b"abcd").await.expect("write");
        store.finish().await;
        let (_, len) = cache.get(&key).await.expect("kept");
        assert_eq!(len, 4);
        // Cut short: not kept, room given back.
        let other = Cache::key("h", 80, "/b.whl");
        let mut store = cache.begin(&other, 6).expect("room");
        store.write(b"abc").await.expect("write");
        store.finish().await;
        assert!(cache.get(&other).await.is_none());
        // Larger than the whole cache: not kept.
        assert!(cache.begin(&other, 11).is_none());
        // 4 kept + 7 > 10: the least recently used goes.
        let mut store = cache.begin(&other, 7).expect("room made");
        store.write(b"1234567").await.expect("write");
        store.finish().await;
        assert!(cache.get(&key).await.is_none(), "evicted");
        assert!(cache.get(&other).await.is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
