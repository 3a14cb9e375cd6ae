//! The package download cache every session shares: archives (wheels, sdists, npm
//! tarballs) fetched over plain HTTP through the proxy, each stored under the SHA-256 of
//! its URL once whole (its full announced length, written to a temporary name and
//! linked into place only if no copy is there yet), and answered from there to any
//! program that asks for the same URL. Only the gateway writes it, from what the index
//! sent for a canonical request (the proxy's job: no credentials, no query, a clean
//! path, none of the caller's headers): no program can put anything of its own in it.
//!
//! Bounded by `--package-cache-bytes` and [`MAX_ENTRIES`], with the least recently used
//! archives going first; an archive being answered is never removed under its reader
//! (its bytes would live on outside the budget), and an archive larger than
//! [`MAX_SHARE`] of the cache, or one arriving while [`MAX_PENDING`] are being written,
//! is not kept. The index of what is kept lives in memory (one scan of the directory at
//! start), so making room costs no directory walk. HTTPS downloads are tunnelled, so
//! not cached.

use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use tokio::io::AsyncWriteExt as _;

/// The most archives kept, whatever their sizes.
pub(crate) const MAX_ENTRIES: usize = 10_000;

/// The largest share of the cache one archive may take (1/8).
const MAX_SHARE: u64 = 8;

/// Archives being written at once; more are passed on without being kept.
const MAX_PENDING: usize = 4;

/// The package archives kept: on disk under `dir`, indexed in memory.
#[derive(Debug)]
pub(crate) struct Cache {
    dir: PathBuf,
    most: u64,
    index: Mutex<Index>,
}

/// What is kept, by key, and in the order of last use.
#[derive(Debug, Default)]
struct Index {
    /// Bytes kept and reserved by archives being written.
    used: u64,
    pending: usize,
    next_use: u64,
    entries: HashMap<String, Entry>,
    /// Last use → key, oldest first.
    by_use: BTreeMap<u64, String>,
}

#[derive(Debug)]
struct Entry {
    size: u64,
    last_use: u64,
    /// Answers reading it now: it is not removed meanwhile.
    readers: usize,
}

impl Index {
    fn touch(&mut self, key: &str) {
        let stamp = self.next_use;
        self.next_use += 1;
        if let Some(entry) = self.entries.get_mut(key) {
            self.by_use.remove(&entry.last_use);
            entry.last_use = stamp;
            self.by_use.insert(stamp, key.to_owned());
        }
    }
}

impl Cache {
    /// The cache in `dir` (made, readable by the gateway's user only; what a previous
    /// gateway left there is kept, oldest first to go), at most `most` bytes.
    pub(crate) fn open(dir: &Path, most: u64) -> io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("partial-") {
                let _ = std::fs::remove_file(entry.path());
            } else if let Ok(meta) = entry.metadata() {
                found.push((meta.modified().ok(), meta.len(), name));
            }
        }
        found.sort();
        let cache = Self {
            dir: dir.to_path_buf(),
            most,
            index: Mutex::new(Index::default()),
        };
        {
            let mut index = cache.lock();
            for (_, size, key) in found {
                let stamp = index.next_use;
                index.next_use += 1;
                index.used += size;
                index.by_use.insert(stamp, key.clone());
                let entry = Entry {
                    size,
                    last_use: stamp,
                    readers: 0,
                };
                index.entries.insert(key, entry);
            }
            let removed = cache.make_room(&mut index, 0);
            drop(index);
            remove_files(removed);
        }
        Ok(cache)
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The name an archive at `http://host:port/path` is kept under.
    pub(crate) fn key(host: &str, port: u16, path: &str) -> String {
        let digest = Sha256::digest(format!("http://{host}:{port}{path}").as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The archive kept under `key`, opened, and its length, with a guard that keeps it
    /// from being removed while it is read; marked as used now.
    pub(crate) async fn get(&self, key: &str) -> Option<(tokio::fs::File, u64, Reading<'_>)> {
        let size = {
            let mut index = self.lock();
            let entry = index.entries.get_mut(key)?;
            entry.readers += 1;
            let size = entry.size;
            index.touch(key);
            size
        };
        let reading = Reading {
            cache: self,
            key: key.to_owned(),
        };
        let file = tokio::fs::File::open(self.dir.join(key)).await.ok()?;
        Some((file, size, reading))
    }

    /// Starts keeping an archive of `len` bytes under `key`, making room if need be;
    /// `None` when it is not to be kept (too large, too many being written, no room).
    pub(crate) fn begin(&self, key: &str, len: u64) -> Option<Pending<'_>> {
        if len > self.most / MAX_SHARE {
            return None;
        }
        let removed = {
            let mut index = self.lock();
            if index.pending >= MAX_PENDING || index.entries.contains_key(key) {
                return None;
            }
            let removed = self.make_room(&mut index, len);
            let fits =
                index.used.saturating_add(len) <= self.most && index.entries.len() < MAX_ENTRIES;
            if fits {
                index.used += len;
                index.pending += 1;
            }
            (removed, fits)
        };
        let (removed, fits) = removed;
        remove_files(removed);
        if !fits {
            return None;
        }
        let salt = getrandom::u64().unwrap_or_default();
        let partial = self.dir.join(format!("partial-{key}-{salt:016x}"));
        let mut pending = Pending {
            cache: self,
            file: None,
            partial,
            key: key.to_owned(),
            len,
            written: 0,
            kept: false,
        };
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&pending.partial)
        {
            Ok(file) => {
                pending.file = Some(tokio::fs::File::from_std(file));
                Some(pending)
            }
            Err(err) => {
                tracing::warn!(%err, "the package cache could not store an archive");
                None
            }
        }
    }

    /// Takes the least recently used archives that nobody is reading out of the index
    /// until `len` more bytes and one more entry fit; returns their files to remove.
    fn make_room(&self, index: &mut Index, len: u64) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        let mut skipped = Vec::new();
        while index.used.saturating_add(len) > self.most || index.entries.len() >= MAX_ENTRIES {
            let Some((stamp, key)) = index.by_use.pop_first() else {
                break;
            };
            let busy = index.entries.get(&key).is_some_and(|e| e.readers > 0);
            if busy {
                skipped.push((stamp, key));
                continue;
            }
            if let Some(entry) = index.entries.remove(&key) {
                index.used = index.used.saturating_sub(entry.size);
                removed.push(self.dir.join(&key));
            }
        }
        index.by_use.extend(skipped);
        removed
    }
}

/// Removes evicted archives' files (a handful of unlinks: entries are few and each
/// archive at least a little large).
fn remove_files(paths: Vec<PathBuf>) {
    for path in paths {
        let _ = std::fs::remove_file(path);
    }
}

/// A cache hit being answered: its archive stays until this is dropped.
#[derive(Debug)]
pub(crate) struct Reading<'a> {
    cache: &'a Cache,
    key: String,
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        let mut index = self.cache.lock();
        if let Some(entry) = index.entries.get_mut(&self.key) {
            entry.readers = entry.readers.saturating_sub(1);
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
    kept: bool,
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

    /// Keeps the archive if it is whole and no copy was kept meanwhile (a link, which
    /// never replaces one).
    pub(crate) async fn finish(mut self) {
        let Some(mut file) = self.file.take() else {
            return;
        };
        if self.written != self.len || file.flush().await.is_err() {
            return;
        }
        drop(file);
        let kept = self.cache.dir.join(&self.key);
        if tokio::fs::hard_link(&self.partial, &kept).await.is_err() {
            return;
        }
        let mut index = self.cache.lock();
        index.pending = index.pending.saturating_sub(1);
        let stamp = index.next_use;
        index.next_use += 1;
        index.by_use.insert(stamp, self.key.clone());
        let entry = Entry {
            size: self.len,
            last_use: stamp,
            readers: 0,
        };
        if let Some(old) = index.entries.insert(self.key.clone(), entry) {
            // Not expected (the link would have failed); keep the count right anyway.
            index.by_use.remove(&old.last_use);
            index.used = index.used.saturating_sub(old.size);
        }
        self.kept = true;
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.partial);
        if !self.kept {
            let mut index = self.cache.lock();
            index.pending = index.pending.saturating_sub(1);
            index.used = index.used.saturating_sub(self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    async fn store(cache: &Cache, key: &str, bytes: &[u8]) -> bool {
        let Some(mut pending) = cache.begin(key, bytes.len() as u64) else {
            return false;
        };
        pending.write(bytes).await.expect("write");
        pending.finish().await;
        cache.get(key).await.is_some()
    }

    #[tokio::test]
    async fn whole_archives_are_kept_and_partial_ones_are_not() {
        let dir = fresh_dir("whole");
        let cache = Cache::open(&dir, 80).expect("cache");
        let key = Cache::key("h", 80, "/a.whl");
        assert!(store(&cache, &key, b"abcd").await);
        // Cut short: not kept, room given back.
        let other = Cache::key("h", 80, "/b.whl");
        let mut pending = cache.begin(&other, 6).expect("room");
        pending.write(b"abc").await.expect("write");
        pending.finish().await;
        assert!(cache.get(&other).await.is_none());
        assert_eq!(cache.lock().used, 4);
        // Larger than an eighth of the cache: not kept.
        assert!(cache.begin(&other, 11).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn the_least_recently_used_go_first_but_never_under_a_reader() {
        let dir = fresh_dir("lru");
        let cache = Cache::open(&dir, 80).expect("cache");
        let (a, b, c) = (
            Cache::key("h", 80, "/a.whl"),
            Cache::key("h", 80, "/b.whl"),
            Cache::key("h", 80, "/c.whl"),
        );
        assert!(store(&cache, &a, &[1; 10]).await);
        assert!(store(&cache, &b, &[2; 10]).await);
        // a is being read: b goes to make room for 70 more bytes, not a.
        let (_file, _, reading) = cache.get(&a).await.expect("hit");
        let mut big = cache.begin(&c, 10).expect("room");
        big.write(&[3; 10]).await.expect("write");
        big.finish().await;
        drop(reading);
        {
            let mut index = cache.lock();
            let removed = cache.make_room(&mut index, 65);
            assert_eq!(removed, vec![dir.join(&b), dir.join(&a)]);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn two_downloads_of_one_url_are_counted_once() {
        let dir = fresh_dir("twice");
        let cache = Cache::open(&dir, 80).expect("cache");
        let key = Cache::key("h", 80, "/a.whl");
        let mut first = cache.begin(&key, 4).expect("room");
        let mut second = cache.begin(&key, 4).expect("room");
        first.write(b"abcd").await.expect("write");
        second.write(b"abcd").await.expect("write");
        first.finish().await;
        second.finish().await;
        let index = cache.lock();
        assert_eq!((index.used, index.entries.len(), index.pending), (4, 1, 0));
        drop(index);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
