//! The sled engine of the state store (sled 0.34). One tree, `kv`, holds the data and, under
//! a key the data never uses, the applied index, so that both change in one atomic batch.
//!
//! sled 0.34.7 can stall for good inside a write under sustained overwrites (docs/storage.md
//! records what was measured); the applier's stall watchdog reports it when it happens.

use super::state_store::{
    sync_parent, with_suffix, CorruptRecord, NextRecord, StateStore, StoreError, StoreOp, Visit,
    WriteBatch,
};
use conclave_core::raft::LogIndex;
use std::path::Path;
use std::time::{Duration, Instant};

const ENGINE: &str = "sled";
/// The applied index, big-endian. The key-value machine's keys all start with a one-letter
/// prefix other than `m` (and this layout is the one conclave used before the trait existed,
/// so existing stores open unchanged).
const APPLIED_KEY: &[u8] = b"m/applied";

/// A sled database and its `kv` tree.
pub struct SledStore {
    db: sled::Db,
    tree: sled::Tree,
}

fn err(op: &'static str) -> impl FnOnce(sled::Error) -> StoreError {
    move |e| StoreError::engine(ENGINE, op, e)
}

impl SledStore {
    /// Opens (or creates) the database in directory `dir`. sled releases its file lock from a
    /// background thread some time after the previous `Db` of the same directory is dropped,
    /// so reopening right after a close (a supervised restart of the applier) can briefly see
    /// "could not acquire lock"; that is retried for up to two seconds, then reported.
    ///
    /// A database sled refuses as corrupt is opened again once without the snapshot files
    /// whose writing a crash interrupted ([`remove_interrupted_snapshots`]).
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let db = open_db(dir)?;
        let tree = db.open_tree("kv").map_err(err("open_tree"))?;
        Ok(SledStore { db, tree })
    }

    /// A store in tree `tree` of the database `db` (a node's shared store keeps each group in
    /// a tree of its own: `shared_store.rs`).
    pub(crate) fn in_tree(db: sled::Db, tree: sled::Tree) -> SledStore {
        SledStore { db, tree }
    }

    /// A store in a temporary directory that sled removes when it is dropped.
    pub fn temporary() -> Result<SledStore, StoreError> {
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .map_err(err("open"))?;
        let tree = db.open_tree("kv").map_err(err("open_tree"))?;
        Ok(SledStore { db, tree })
    }
}

/// Opens (or creates, whole: [`ensure_created`]) the sled database in directory `dir`, as
/// [`SledStore::open`] describes.
pub(crate) fn open_db(dir: &Path) -> Result<sled::Db, StoreError> {
    ensure_created(dir)?;
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut repaired = false;
    let db = loop {
        match sled::open(dir) {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(sled::Error::Corruption { .. })
                if !repaired
                    && !remove_interrupted_snapshots(dir)
                        .map_err(|e| open_error(dir, e))?
                        .is_empty() =>
            {
                repaired = true;
            }
            Ok(db) => break db,
            Err(e) => {
                return Err(StoreError::Open {
                    engine: ENGINE,
                    path: dir.to_owned(),
                    source: Box::new(e),
                })
            }
        }
    };
    Ok(db)
}

/// Creates the database directory `dir` whole if it does not exist yet.
///
/// sled creates a database in place and not crash-safely: it writes `conf` with two writes (the
/// parameters, then their CRC) and no fsync, and a `conf` cut between them does not parse
/// (`version: 0.` — "corruption" on every later open). So a new database is created in
/// `<dir>.creating`, its `kv` tree opened, every file and directory in it fsynced (sled's own
/// flush is a `sync_file_range`), and the directory renamed into place, its parent fsynced: a
/// crash leaves either no database (what an interrupted creation left is discarded by the next
/// one) or a whole one. A directory that exists is opened as it is (stores that sled created
/// in place before keep opening unchanged; an empty one is initialised by sled as before).
fn ensure_created(dir: &Path) -> Result<(), StoreError> {
    match std::fs::symlink_metadata(dir) {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(open_error(dir, e)),
    }
    let staging = with_suffix(dir, ".creating");
    match std::fs::remove_dir_all(&staging) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(open_error(&staging, e)),
    }
    {
        let db = sled::open(&staging).map_err(|e| StoreError::Open {
            engine: ENGINE,
            path: staging.clone(),
            source: Box::new(e),
        })?;
        db.open_tree("kv").map_err(err("open_tree"))?;
        db.flush().map_err(err("flush"))?;
    }
    sync_tree(&staging).map_err(|e| open_error(&staging, e))?;
    std::fs::rename(&staging, dir).map_err(|e| open_error(dir, e))?;
    sync_parent(dir).map_err(|e| open_error(dir, e))
}

/// Removes the `snap.*.generating` files of `dir`: snapshots sled began to write and never
/// renamed into place. Returns what was removed.
///
/// sled 0.34.7 writes its page-table snapshot to `snap.{lsn}.generating`, fsyncs it and renames
/// it to `snap.{lsn}`, at every open and later every million operations; but when it opens a
/// database it reads the last of *all* `snap.*` names, `.generating` ones included — and
/// `snap.{lsn}.generating` sorts after `snap.{lsn}`. A process killed while one was being
/// written left a file that sled refuses (`empty/corrupt snapshot file found`, then `Read
/// corrupted data`) on every later open: seen once in 200 kills of a fresh node 100 ms after its
/// start (`tests/first_start.rs`), reported upstream as spacejam/sled#1527 and #1533 (open;
/// deleting the file is what works there). Without the file the directory is as a crash just
/// before sled created it leaves it: the previous snapshot, or none, and the log sled replays
/// from there.
fn remove_interrupted_snapshots(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            std::fs::remove_file(entry.path())?;
            tracing::warn!(
                path = %entry.path().display(),
                "sled refused its database; removed a snapshot whose writing was interrupted (spacejam/sled#1527)"
            );
            removed.push(entry.path());
        }
    }
    if !removed.is_empty() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(removed)
}

/// fsyncs every file and directory under `dir`, and `dir` itself.
pub(crate) fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        } else {
            std::fs::File::open(entry.path())?.sync_all()?;
        }
    }
    std::fs::File::open(dir)?.sync_all()
}

fn open_error(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Open {
        engine: ENGINE,
        path: path.to_owned(),
        source: Box::new(e),
    }
}

impl StateStore for SledStore {
    fn engine(&self) -> &'static str {
        ENGINE
    }

    fn commit(&mut self, batch: WriteBatch, applied: LogIndex) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        for op in batch.into_ops() {
            match op {
                StoreOp::Put(k, v) => b.insert(k, v),
                StoreOp::Delete(k) => b.remove(k),
            }
        }
        b.insert(APPLIED_KEY, &applied.to_be_bytes());
        self.tree.apply_batch(b).map_err(err("commit"))
    }

    fn finish(&mut self) -> Result<(), StoreError> {
        // Each commit was one `apply_batch`, already atomic.
        Ok(())
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree.get(key).map_err(err("get"))?.map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        let iter = match end {
            Some(end) => self.tree.range(start..end),
            None => self.tree.range(start..),
        };
        for item in iter {
            let (k, v) = item.map_err(err("scan"))?;
            if k.as_ref() == APPLIED_KEY {
                continue;
            }
            if !visit(&k, &v)? {
                break;
            }
        }
        Ok(())
    }

    fn applied_index(&self) -> Result<LogIndex, StoreError> {
        match self.tree.get(APPLIED_KEY).map_err(err("get"))? {
            None => Ok(0),
            Some(v) => {
                let bytes: [u8; 8] = v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    engine: ENGINE,
                    record: CorruptRecord::AppliedIndexLength { len: v.len() },
                })?;
                Ok(u64::from_be_bytes(bytes))
            }
        }
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(err("sync"))
    }

    /// sled has no multi-key transaction that spills to disk: the replacement is gathered in
    /// one `sled::Batch` (in memory, as large as the state) and applied atomically only after
    /// `next` has yielded everything, so a failed source changes nothing.
    fn replace_all(
        &mut self,
        applied: LogIndex,
        next: &mut NextRecord<'_>,
    ) -> Result<(), StoreError> {
        let mut incoming = std::collections::BTreeMap::new();
        while let Some((k, v)) =
            next().map_err(|()| StoreError::ReplaceAborted { engine: ENGINE })?
        {
            incoming.insert(k, v);
        }
        let mut b = sled::Batch::default();
        for item in self.tree.iter() {
            let (k, _) = item.map_err(err("scan"))?;
            if !incoming.contains_key(k.as_ref()) {
                b.remove(k);
            }
        }
        for (k, v) in incoming {
            b.insert(k, v);
        }
        b.insert(APPLIED_KEY, &applied.to_be_bytes());
        self.tree.apply_batch(b).map_err(err("commit"))?;
        self.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sled's `conf` as a process killed between sled's two writes of it leaves it (the
    /// parameters without their CRC).
    fn torn_conf(dir: &Path) {
        let conf = std::fs::read(dir.join("conf")).unwrap();
        std::fs::write(dir.join("conf"), &conf[..conf.len() - 4]).unwrap();
    }

    #[test]
    fn a_conf_cut_before_its_crc_is_refused_by_sled_for_good() {
        // Why a new database is created under another name: sled cannot open what its own
        // interrupted creation leaves.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sm");
        drop(sled::open(&path).unwrap());
        torn_conf(&path);
        for _ in 0..2 {
            assert!(sled::open(&path).is_err());
        }
    }

    /// `sled::open` once the previous handle of this process has let go of the database's
    /// lock: sled's flusher thread can hold it a little after the `Db` is dropped (sled says as
    /// much of its own tests), which a loaded test run sees as "could not acquire lock". Other
    /// outcomes are returned at once; the wait is bounded (10 s).
    fn open_once_unlocked(path: &std::path::Path) -> sled::Result<sled::Db> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match sled::open(path) {
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    #[test]
    fn a_snapshot_whose_writing_was_interrupted_is_removed_and_the_store_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sm");
        {
            let mut s = SledStore::open(&path).unwrap();
            let mut b = WriteBatch::default();
            b.put(b"k".to_vec(), b"v".to_vec());
            s.commit(b, 5).unwrap();
            s.sync().unwrap();
        }
        // What a kill while sled writes its next snapshot leaves: the file, not yet renamed,
        // with what was written of it so far (here: nothing).
        let snap = std::fs::read_dir(&path)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n.starts_with("snap.") && !n.ends_with(".generating"))
            .expect("sled wrote a snapshot");
        let torn = path.join(format!("{snap}.generating"));
        std::fs::write(&torn, b"").unwrap();
        let opened = open_once_unlocked(&path);
        assert!(
            matches!(opened, Err(sled::Error::Corruption { .. })),
            "sled 0.34.7 reads the interrupted snapshot and refuses the database; got {:?}",
            opened.as_ref().err()
        );
        drop(opened);
        let s = SledStore::open(&path).unwrap();
        assert!(!torn.exists());
        assert_eq!(s.applied_index().unwrap(), 5);
        assert_eq!(s.get(b"k").unwrap(), Some(b"v".to_vec()));
    }

    #[test]
    fn a_new_store_appears_whole_and_an_interrupted_creation_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sm");
        // What a creation killed half way left: the name itself does not exist yet.
        let staging = dir.path().join("sm.creating");
        drop(sled::open(&staging).unwrap());
        torn_conf(&staging);
        {
            let mut s = SledStore::open(&path).unwrap();
            let mut b = WriteBatch::default();
            b.put(b"k".to_vec(), b"v".to_vec());
            s.commit(b, 3).unwrap();
            s.sync().unwrap();
        }
        assert!(!staging.exists());
        let s = SledStore::open(&path).unwrap();
        assert_eq!(s.applied_index().unwrap(), 3);
        assert_eq!(s.get(b"k").unwrap(), Some(b"v".to_vec()));
    }
}
