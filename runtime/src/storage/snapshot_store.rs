//! Snapshot files of one Raft group: the state machine's image at an index, written so that a
//! crash at any point leaves either the previous snapshot or the new one, whole.
//!
//! Layout, in the group's directory: `snap-{index}-{term}.snap` (the image, exactly as
//! [`crate::state_machine::StateMachine::snapshot_to`] wrote it) and `snap-{index}-{term}.meta`
//! (its sidecar: the [`SnapshotMeta`] with the membership, the image's length and the xxh3-64
//! of the whole image). Writing goes to `snap-{index}-{term}.tmp`, is fsynced, renamed, then the
//! sidecar is written the same way and the directory fsynced: a snapshot exists once its
//! sidecar does. [`SnapshotStore::open`] removes what a crash left half done (`*.tmp`, an image
//! without a sidecar).
//!
//! The newest snapshot is kept, and the one before it until the runtime says the new one is in
//! use ([`SnapshotStore::retain_from`]): a crash between taking a snapshot and compacting the
//! log then still finds a base the log reaches.

use crate::storage::background_io::{PacedFile, WritePacing};
use conclave_core::raft::LogIndex;
use conclave_core::raft::{SnapshotMeta, Term};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Sidecar format version.
const SIDECAR_VERSION: u8 = 1;

/// Why a snapshot file operation failed; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotStoreError {
    /// A file system call failed.
    #[error("snapshot store: {op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A sidecar cannot be decoded, or names another snapshot than its file name.
    #[error("snapshot store: corrupt sidecar {path}: {what}")]
    Sidecar {
        /// The sidecar.
        path: PathBuf,
        /// What is wrong.
        what: SidecarProblem,
    },
    /// The sidecar could not be encoded.
    #[error("snapshot store: cannot encode the sidecar {path}")]
    Encode {
        /// The sidecar.
        path: PathBuf,
        /// The encoder's error.
        #[source]
        source: rmp_serde::encode::Error,
    },
    /// The image's length is not the sidecar's.
    #[error("snapshot store: {path} is {found} bytes, its sidecar says {expected}")]
    Length {
        /// The image.
        path: PathBuf,
        /// The sidecar's length.
        expected: u64,
        /// The file's.
        found: u64,
    },
    /// The image's digest is not the sidecar's.
    #[error("snapshot store: {path} digest {actual:#018x}, its sidecar says {expected:#018x}")]
    Digest {
        /// The image.
        path: PathBuf,
        /// The sidecar's digest.
        expected: u64,
        /// The content's.
        actual: u64,
    },
}

/// What is wrong with a sidecar.
#[derive(Debug, thiserror::Error)]
pub enum SidecarProblem {
    /// Not a sidecar of this format.
    #[error("cannot decode: {0}")]
    Decode(#[source] rmp_serde::decode::Error),
    /// An unknown format version.
    #[error("format version {0}")]
    Version(u8),
    /// The sidecar's index or term differs from its file name's.
    #[error("it describes snapshot {index}-{term}")]
    Name {
        /// The sidecar's index.
        index: LogIndex,
        /// The sidecar's term.
        term: Term,
    },
}

/// What a sidecar records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Sidecar {
    version: u8,
    meta: SnapshotMeta,
    len: u64,
    digest: u64,
}

/// A snapshot on disk, as its sidecar describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSnapshot {
    /// Index, term and membership.
    pub meta: SnapshotMeta,
    /// The image's length in bytes.
    pub len: u64,
    /// xxh3-64 of the whole image.
    pub digest: u64,
    /// The image file.
    pub path: PathBuf,
}

/// The snapshot directory of one group.
#[derive(Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
    /// How images are written ([`SnapshotStore::with_pacing`]).
    pacing: WritePacing,
}

fn io<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> SnapshotStoreError + 'a {
    move |source| SnapshotStoreError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn sync_dir(dir: &Path) -> Result<(), SnapshotStoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync directory", dir))
}

/// `snap-{index}-{term}.{ext}` → `(index, term)`.
fn parse_name(name: &str, ext: &str) -> Option<(LogIndex, Term)> {
    let rest = name.strip_prefix("snap-")?.strip_suffix(ext)?;
    let (index, term) = rest.split_once('-')?;
    Some((index.parse().ok()?, term.parse().ok()?))
}

impl SnapshotStore {
    /// Opens (creating it if needed) the snapshot directory `dir`, removing what an
    /// interrupted write left: `*.tmp` files and images without a sidecar.
    pub fn open(dir: &Path) -> Result<SnapshotStore, SnapshotStoreError> {
        std::fs::create_dir_all(dir).map_err(io("create directory", dir))?;
        let store = SnapshotStore {
            dir: dir.to_owned(),
            pacing: WritePacing::UNPACED,
        };
        let mut removed = false;
        for entry in std::fs::read_dir(dir).map_err(io("list", dir))? {
            let entry = entry.map_err(io("list", dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let orphan = match parse_name(&name, ".snap") {
                Some((index, term)) => !store.sidecar_path(index, term).exists(),
                None => name.ends_with(".tmp"),
            };
            if orphan {
                let path = entry.path();
                tracing::warn!(path = %path.display(), "removing an unfinished snapshot file");
                std::fs::remove_file(&path).map_err(io("remove", &path))?;
                removed = true;
            }
        }
        if removed {
            sync_dir(dir)?;
        }
        Ok(store)
    }

    /// How this store's images are written.
    pub fn pacing(&self) -> WritePacing {
        self.pacing
    }

    /// Images written by this store go out at `pacing`'s rate, written back step by step
    /// (`[snapshot] write_rate_mb_s`; see `storage::background_io`). Unpaced by default.
    pub fn with_pacing(mut self, pacing: WritePacing) -> SnapshotStore {
        self.pacing = pacing;
        self
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn image_path(&self, index: LogIndex, term: Term) -> PathBuf {
        self.dir.join(format!("snap-{index}-{term}.snap"))
    }

    fn sidecar_path(&self, index: LogIndex, term: Term) -> PathBuf {
        self.dir.join(format!("snap-{index}-{term}.meta"))
    }

    /// Starts writing the snapshot `meta` describes (to `snap-{index}-{term}.tmp`).
    pub fn create(&self, meta: SnapshotMeta) -> Result<SnapshotWriter, SnapshotStoreError> {
        let tmp = self
            .dir
            .join(format!("snap-{}-{}.tmp", meta.index, meta.term));
        let file = File::create(&tmp).map_err(io("create", &tmp))?;
        Ok(SnapshotWriter {
            out: BufWriter::with_capacity(256 * 1024, PacedFile::new(file, self.pacing)),
            hash: xxhash_rust::xxh3::Xxh3Default::new(),
            len: 0,
            meta,
            tmp,
            #[cfg(test)]
            crash_before_rename: false,
        })
    }

    /// Starts writing an image whose index is not known yet (to `snap-pending.tmp`): a
    /// machine without an isolated view writes its image on the applier and only then says
    /// which index it is at; [`SnapshotWriter::finish_as`] names it. One at a time per store.
    pub fn create_pending(&self) -> Result<SnapshotWriter, SnapshotStoreError> {
        let mut writer = self.create(SnapshotMeta::default())?;
        let pending = self.dir.join("snap-pending.tmp");
        std::fs::rename(&writer.tmp, &pending).map_err(io("rename", &writer.tmp))?;
        writer.tmp = pending;
        Ok(writer)
    }

    /// Every snapshot with a readable sidecar, newest first, and the errors of those whose
    /// sidecar is unreadable (their images are not verified here; see [`Self::verify`]).
    pub fn list(
        &self,
    ) -> Result<(Vec<StoredSnapshot>, Vec<SnapshotStoreError>), SnapshotStoreError> {
        let mut found = Vec::new();
        let mut bad = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io("list", &self.dir))? {
            let entry = entry.map_err(io("list", &self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((index, term)) = parse_name(&name, ".meta") else {
                continue;
            };
            match self.read_sidecar(index, term) {
                Ok(s) => found.push(s),
                Err(e) => bad.push(e),
            }
        }
        found.sort_by_key(|s| std::cmp::Reverse((s.meta.index, s.meta.term)));
        Ok((found, bad))
    }

    fn read_sidecar(
        &self,
        index: LogIndex,
        term: Term,
    ) -> Result<StoredSnapshot, SnapshotStoreError> {
        let path = self.sidecar_path(index, term);
        let bytes = std::fs::read(&path).map_err(io("read", &path))?;
        let bad = |what| SnapshotStoreError::Sidecar {
            path: path.clone(),
            what,
        };
        let s: Sidecar =
            rmp_serde::from_slice(&bytes).map_err(|e| bad(SidecarProblem::Decode(e)))?;
        if s.version != SIDECAR_VERSION {
            return Err(bad(SidecarProblem::Version(s.version)));
        }
        if (s.meta.index, s.meta.term) != (index, term) {
            return Err(bad(SidecarProblem::Name {
                index: s.meta.index,
                term: s.meta.term,
            }));
        }
        Ok(StoredSnapshot {
            meta: s.meta,
            len: s.len,
            digest: s.digest,
            path: self.image_path(index, term),
        })
    }

    /// Reads the whole image and checks its length and digest against the sidecar.
    pub fn verify(&self, snapshot: &StoredSnapshot) -> Result<(), SnapshotStoreError> {
        let mut r = self.reader(snapshot)?;
        std::io::copy(&mut r, &mut std::io::sink()).map_err(|e| match r.take_error() {
            Some(typed) => typed,
            None => io("read", &snapshot.path)(e),
        })?;
        Ok(())
    }

    /// The newest snapshot that verifies, if any; the newer ones that do not are reported in
    /// the log (and left on disk for inspection; the next snapshot prunes them).
    pub fn newest_valid(&self) -> Result<Option<StoredSnapshot>, SnapshotStoreError> {
        let (found, bad) = self.list()?;
        for e in bad {
            tracing::error!(error = %e, "ignoring an unreadable snapshot sidecar");
        }
        for s in found {
            match self.verify(&s) {
                Ok(()) => return Ok(Some(s)),
                Err(e) => tracing::error!(error = %e, "ignoring a snapshot that does not verify"),
            }
        }
        Ok(None)
    }

    /// A reader of the image that checks, at its end, the length and digest against the
    /// sidecar: a mismatch is an `InvalidData` error instead of the end of the stream, so a
    /// consumer never takes a damaged image as whole.
    pub fn reader(&self, snapshot: &StoredSnapshot) -> Result<VerifyingReader, SnapshotStoreError> {
        let file = File::open(&snapshot.path).map_err(io("open", &snapshot.path))?;
        Ok(VerifyingReader {
            file: std::io::BufReader::with_capacity(256 * 1024, file),
            hash: xxhash_rust::xxh3::Xxh3Default::new(),
            read: 0,
            expected_len: snapshot.len,
            expected_digest: snapshot.digest,
            path: snapshot.path.clone(),
            error: None,
        })
    }

    /// Deletes every snapshot below `index` (the snapshot at `index` is now in use: the state
    /// machine and the log rely on it).
    pub fn retain_from(&self, index: LogIndex) -> Result<(), SnapshotStoreError> {
        let (found, _) = self.list()?;
        let mut removed = false;
        for s in found.iter().filter(|s| s.meta.index < index) {
            let started = std::time::Instant::now();
            self.remove(s.meta.index, s.meta.term)?;
            tracing::info!(
                index = s.meta.index,
                bytes = s.len,
                ms = started.elapsed().as_millis() as u64,
                "old snapshot removed"
            );
            removed = true;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    fn remove(&self, index: LogIndex, term: Term) -> Result<(), SnapshotStoreError> {
        // The sidecar first: without it the image is an orphan that `open` removes.
        for path in [self.sidecar_path(index, term), self.image_path(index, term)] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("remove", &path)(e)),
            }
        }
        Ok(())
    }

    /// Keeps the newest snapshot and the one before it; deletes older ones.
    fn prune(&self) -> Result<(), SnapshotStoreError> {
        let (found, _) = self.list()?;
        if let Some(previous) = found.get(1) {
            self.retain_from(previous.meta.index)?;
        }
        Ok(())
    }
}

/// Snapshots received from a leader (`node::transfer`): the image arrives elsewhere in the
/// directory and is moved in whole.
impl SnapshotStore {
    /// The store at `dir`, without the clean-up [`SnapshotStore::open`] does: for readers (a
    /// snapshot transfer) that must not remove the `.tmp` file of a snapshot being written.
    pub fn existing(dir: &Path) -> SnapshotStore {
        SnapshotStore {
            dir: dir.to_owned(),
            pacing: WritePacing::UNPACED,
        }
    }

    /// Makes the complete, fsynced image `file` (in this store's directory, so the rename is
    /// atomic) the snapshot `meta`, of `len` bytes with xxh3-64 `digest`: renames it, writes
    /// its sidecar, fsyncs the directory and prunes all but
    /// this snapshot and the one before it. The caller has verified length and digest.
    pub fn adopt(
        &self,
        meta: SnapshotMeta,
        file: &Path,
        len: u64,
        digest: u64,
    ) -> Result<StoredSnapshot, SnapshotStoreError> {
        let (index, term) = (meta.index, meta.term);
        let image_path = self.image_path(index, term);
        std::fs::rename(file, &image_path).map_err(io("rename", file))?;
        let sidecar = Sidecar {
            version: SIDECAR_VERSION,
            meta: meta.clone(),
            len,
            digest,
        };
        let meta_path = self.sidecar_path(index, term);
        let meta_tmp = self.dir.join(format!("snap-{index}-{term}.meta.tmp"));
        let bytes = rmp_serde::to_vec(&sidecar).map_err(|source| SnapshotStoreError::Encode {
            path: meta_path.clone(),
            source,
        })?;
        {
            let mut f = File::create(&meta_tmp).map_err(io("create", &meta_tmp))?;
            f.write_all(&bytes).map_err(io("write", &meta_tmp))?;
            f.sync_all().map_err(io("fsync", &meta_tmp))?;
        }
        std::fs::rename(&meta_tmp, &meta_path).map_err(io("rename", &meta_tmp))?;
        sync_dir(&self.dir)?;
        self.prune()?;
        Ok(StoredSnapshot {
            meta,
            len,
            digest,
            path: image_path,
        })
    }
}

/// An image being written; [`SnapshotWriter::finish`] makes it a snapshot. Dropped without
/// `finish`, it leaves a `.tmp` file that the next [`SnapshotStore::open`] removes.
pub struct SnapshotWriter {
    out: BufWriter<PacedFile>,
    hash: xxhash_rust::xxh3::Xxh3Default,
    len: u64,
    meta: SnapshotMeta,
    tmp: PathBuf,
    /// Set by a test to stop between the image's fsync and its rename (a crash there).
    #[cfg(test)]
    crash_before_rename: bool,
}

impl Write for SnapshotWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

impl SnapshotWriter {
    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// [`SnapshotWriter::finish`] under `meta` (for a writer from
    /// [`SnapshotStore::create_pending`]).
    pub fn finish_as(
        mut self,
        meta: SnapshotMeta,
        store: &SnapshotStore,
    ) -> Result<StoredSnapshot, SnapshotStoreError> {
        self.meta = meta;
        self.finish(store)
    }

    /// fsyncs the image, renames it, writes and fsyncs the sidecar, renames it, fsyncs the
    /// directory, and prunes all but this snapshot and the one before it.
    pub fn finish(self, store: &SnapshotStore) -> Result<StoredSnapshot, SnapshotStoreError> {
        let SnapshotWriter {
            out,
            hash,
            len,
            meta,
            tmp,
            #[cfg(test)]
            crash_before_rename,
        } = self;
        let file = out
            .into_inner()
            .map_err(|e| io("write", &tmp)(e.into_error()))?
            .into_file();
        file.sync_all().map_err(io("fsync", &tmp))?;
        drop(file);
        #[cfg(test)]
        if crash_before_rename {
            // The test's crash point: the image is durable but was never renamed.
            return Err(io("rename", &tmp)(std::io::Error::other("simulated crash")));
        }
        // The rename, the sidecar, the directory fsync and the pruning are the same as for a
        // received image.
        store.adopt(meta, &tmp, len, hash.digest())
    }
}

/// Reads an image and checks its length and digest at the end (see
/// [`SnapshotStore::reader`]).
pub struct VerifyingReader {
    file: std::io::BufReader<File>,
    hash: xxhash_rust::xxh3::Xxh3Default,
    read: u64,
    expected_len: u64,
    expected_digest: u64,
    path: PathBuf,
    error: Option<SnapshotStoreError>,
}

impl VerifyingReader {
    /// The typed reason of the last `InvalidData` error, if any.
    pub fn take_error(&mut self) -> Option<SnapshotStoreError> {
        self.error.take()
    }
}

impl Read for VerifyingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        self.hash.update(&buf[..n]);
        self.read += n as u64;
        let failure = if self.read > self.expected_len || (n == 0 && self.read < self.expected_len)
        {
            Some(SnapshotStoreError::Length {
                path: self.path.clone(),
                expected: self.expected_len,
                found: self.read,
            })
        } else if n == 0 && self.hash.digest() != self.expected_digest {
            Some(SnapshotStoreError::Digest {
                path: self.path.clone(),
                expected: self.expected_digest,
                actual: self.hash.digest(),
            })
        } else {
            None
        };
        match failure {
            Some(e) => {
                let text = e.to_string();
                self.error = Some(e);
                Err(std::io::Error::new(std::io::ErrorKind::InvalidData, text))
            }
            None => Ok(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conclave_core::raft::Membership;

    fn meta(index: LogIndex, term: Term) -> SnapshotMeta {
        SnapshotMeta {
            index,
            term,
            membership: Membership::default(),
        }
    }

    fn write(store: &SnapshotStore, index: LogIndex, body: &[u8]) -> StoredSnapshot {
        let mut w = store.create(meta(index, 2)).unwrap();
        w.write_all(body).unwrap();
        w.finish(store).unwrap()
    }

    fn read_all(store: &SnapshotStore, s: &StoredSnapshot) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        store.reader(s).unwrap().read_to_end(&mut out).map(|_| out)
    }

    #[test]
    fn written_snapshots_reopen_verify_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let s = write(&store, 10, &body);
        assert_eq!(s.len, body.len() as u64);
        assert_eq!(s.digest, xxhash_rust::xxh3::xxh3_64(&body));
        let store = SnapshotStore::open(dir.path()).unwrap();
        let newest = store.newest_valid().unwrap().unwrap();
        assert_eq!(newest, s);
        assert_eq!(read_all(&store, &newest).unwrap(), body);
    }

    #[test]
    fn keeps_the_newest_and_one_previous_until_told_the_new_one_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        for index in [10, 20, 30] {
            write(&store, index, format!("state at {index}").as_bytes());
        }
        let indexes = |store: &SnapshotStore| -> Vec<LogIndex> {
            store
                .list()
                .unwrap()
                .0
                .iter()
                .map(|s| s.meta.index)
                .collect()
        };
        assert_eq!(indexes(&store), vec![30, 20]);
        store.retain_from(30).unwrap();
        assert_eq!(indexes(&store), vec![30]);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    /// An image whose index is known only once written (a machine without a view): named
    /// at finish; one left unfinished is removed at the next open.
    #[test]
    fn a_pending_image_is_named_when_finished() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        let mut w = store.create_pending().unwrap();
        w.write_all(b"image of unknown index").unwrap();
        let s = w.finish_as(meta(42, 5), &store).unwrap();
        assert_eq!((s.meta.index, s.meta.term), (42, 5));
        assert_eq!(store.newest_valid().unwrap(), Some(s));
        assert!(!dir.path().join("snap-pending.tmp").exists());
        let mut w = store.create_pending().unwrap();
        w.write_all(b"abandoned").unwrap();
        drop(w);
        assert!(dir.path().join("snap-pending.tmp").exists());
        SnapshotStore::open(dir.path()).unwrap();
        assert!(!dir.path().join("snap-pending.tmp").exists());
    }

    /// A crash after the image was written and fsynced but before its rename: the next open
    /// removes the `.tmp` and the previous snapshot is the newest.
    #[test]
    fn a_crash_between_write_and_rename_leaves_the_previous_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        let first = write(&store, 10, b"first");
        let mut w = store.create(meta(20, 3)).unwrap();
        w.write_all(b"second, never renamed").unwrap();
        w.crash_before_rename = true;
        assert!(w.finish(&store).is_err());
        assert!(dir.path().join("snap-20-3.tmp").exists());
        // And an image renamed without its sidecar (a crash one step later).
        std::fs::write(dir.path().join("snap-25-3.snap"), b"no sidecar").unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        assert!(!dir.path().join("snap-20-3.tmp").exists());
        assert!(!dir.path().join("snap-25-3.snap").exists());
        assert_eq!(store.newest_valid().unwrap(), Some(first));
    }

    /// One flipped byte anywhere in the image: refused by the digest, with the file named;
    /// the older intact snapshot is the newest valid one.
    #[test]
    fn a_flipped_byte_is_refused_by_the_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        let old = write(&store, 10, &[5u8; 4096]);
        let new = write(&store, 20, &[7u8; 100_000]);
        let mut bytes = std::fs::read(&new.path).unwrap();
        bytes[54_321] ^= 0x01;
        std::fs::write(&new.path, &bytes).unwrap();
        match store.verify(&new) {
            Err(SnapshotStoreError::Digest { path, .. }) => assert_eq!(path, new.path),
            other => panic!("a flipped byte was not refused by the digest: {other:?}"),
        }
        let err = read_all(&store, &new).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        // Truncated: refused by the length.
        std::fs::write(&new.path, &bytes[..1000]).unwrap();
        assert!(matches!(
            store.verify(&new),
            Err(SnapshotStoreError::Length { found: 1000, .. })
        ));
        assert_eq!(store.newest_valid().unwrap(), Some(old));
    }

    #[test]
    fn a_corrupt_or_misnamed_sidecar_is_reported_with_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        write(&store, 10, b"ten");
        std::fs::write(dir.path().join("snap-30-2.meta"), b"\xc1 not a sidecar").unwrap();
        std::fs::copy(
            dir.path().join("snap-10-2.meta"),
            dir.path().join("snap-40-2.meta"),
        )
        .unwrap();
        let (found, bad) = store.list().unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(bad.len(), 2);
        for e in &bad {
            let SnapshotStoreError::Sidecar { path, .. } = e else {
                panic!("{e:?}");
            };
            assert!(path.ends_with("snap-30-2.meta") || path.ends_with("snap-40-2.meta"));
        }
        assert_eq!(store.newest_valid().unwrap().unwrap().meta.index, 10);
    }
}

/// Throughput of a key-value machine's snapshot written into a snapshot file and restored from
/// it, as a ratio against writing and reading back the same number of bytes as a plain file
/// (the baseline, measured in the same run). Size: `CONCLAVE_SNAPSHOT_BENCH_MB` (default 4).
#[cfg(test)]
mod bench {
    use super::*;
    use crate::config::StorageEngine;
    use crate::state_machine::{KvCommand, KvMachine, KvRequest, StateMachine};
    use std::time::Instant;

    #[test]
    fn snapshot_file_round_trip_throughput_against_a_plain_file() {
        let mb: usize = std::env::var("CONCLAVE_SNAPSHOT_BENCH_MB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4);
        for engine in [StorageEngine::Redb, StorageEngine::Sled] {
            let dir = tempfile::tempdir().unwrap();
            let mut m = KvMachine::open_engine(engine, &dir.path().join("a")).unwrap();
            for i in 0..(mb * 1024) as u64 {
                let op = KvCommand::Put {
                    key: format!("key{i:08}").into_bytes(),
                    value: vec![(i % 251) as u8; 1024],
                };
                m.apply(i + 1, KvRequest { id: None, op }).unwrap();
            }
            let store = SnapshotStore::open(&dir.path().join("snaps")).unwrap();
            m.end_batch().unwrap();
            let index = m.applied_index();
            let t = Instant::now();
            let mut w = store
                .create(SnapshotMeta {
                    index,
                    term: 1,
                    ..SnapshotMeta::default()
                })
                .unwrap();
            assert_eq!(m.snapshot_to(&mut w).unwrap(), index);
            let snap = w.finish(&store).unwrap();
            let take = t.elapsed();
            let mut b = KvMachine::open_engine(engine, &dir.path().join("b")).unwrap();
            let t = Instant::now();
            b.restore_from(index, &mut store.reader(&snap).unwrap())
                .unwrap();
            let restore = t.elapsed();
            assert_eq!(b.applied_index(), index);
            // Baseline: the same bytes as one plain file, fsynced, then read back.
            let bytes = std::fs::read(&snap.path).unwrap();
            let plain = dir.path().join("plain");
            let t = Instant::now();
            {
                let mut f = File::create(&plain).unwrap();
                f.write_all(&bytes).unwrap();
                f.sync_all().unwrap();
            }
            let _ = std::fs::read(&plain).unwrap();
            let base = t.elapsed();
            let mbs = |d: std::time::Duration| snap.len as f64 / 1e6 / d.as_secs_f64();
            eprintln!(
                "{engine:?}: {} B image; take {:.3}s ({:.0} MB/s, {:.1}x plain), restore {:.3}s ({:.0} MB/s, {:.1}x plain), plain write+fsync+read {:.3}s",
                snap.len,
                take.as_secs_f64(),
                mbs(take),
                take.as_secs_f64() / base.as_secs_f64(),
                restore.as_secs_f64(),
                mbs(restore),
                restore.as_secs_f64() / base.as_secs_f64(),
                base.as_secs_f64()
            );
        }
    }
}
