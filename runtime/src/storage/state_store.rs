//! The state store: the small interface the key-value machine is written against, so that its
//! storage engine is a configuration choice (`[storage] engine = "redb" | "sled"`, see
//! docs/storage.md).
//!
//! A store holds ordered byte keys and values plus the index of the last applied log entry.
//! Every write is a [`WriteBatch`] committed *together with* that index, atomically: after a
//! crash the store holds the effects of exactly the entries up to its applied index, and the
//! node replays the log from the next one. Commits need not be durable one by one (the Raft log
//! is); [`StateStore::sync`] makes everything committed so far durable, for callers that must
//! rely on the applied index surviving a crash (log compaction).

use conclave_core::raft::LogIndex;
use std::path::{Path, PathBuf};

pub use crate::config::StorageEngine;

/// One change of a [`WriteBatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreOp {
    /// Set a key.
    Put(Vec<u8>, Vec<u8>),
    /// Remove a key (absent: nothing happens).
    Delete(Vec<u8>),
}

/// Changes applied atomically, in order, with an applied index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<StoreOp>,
}

impl WriteBatch {
    /// Sets `key` to `value`.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(StoreOp::Put(key.into(), value.into()));
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        self.ops.push(StoreOp::Delete(key.into()));
    }

    /// The changes, in order.
    pub fn ops(&self) -> &[StoreOp] {
        &self.ops
    }

    /// Takes the changes out.
    pub fn into_ops(self) -> Vec<StoreOp> {
        self.ops
    }

    /// Whether the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Why a store call failed. The engine's own error is kept as the source.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be opened.
    #[error("{engine}: cannot open the state store at {path}")]
    Open {
        /// `redb` or `sled`.
        engine: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The engine's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The store's file exists but is not a database of this engine (redb: it does not start
    /// with redb's magic number, and is not a creation that was interrupted either).
    #[error(
        "{engine}: {path} is not a {engine} database; move it away to start this replica from \
         its log and snapshots"
    )]
    NotADatabase {
        /// `redb`.
        engine: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// A read, write or sync failed.
    #[error("{engine}: {op} failed")]
    Engine {
        /// `redb` or `sled`.
        engine: &'static str,
        /// What was being done (`commit`, `get`, `scan`, `sync`, …).
        op: &'static str,
        /// The engine's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A record the store wrote cannot be read back as written (corruption, wrong version).
    #[error("{engine}: corrupt record: {record}")]
    Corrupt {
        /// `redb` or `sled`.
        engine: &'static str,
        /// Which record and what is wrong with it.
        #[source]
        record: CorruptRecord,
    },
    /// A write was staged with no write transaction open (a bug in the store: staging opens
    /// one first).
    #[error("{engine}: no open write transaction")]
    NoWriteTransaction {
        /// `redb`.
        engine: &'static str,
    },
    /// The data directory holds another engine's store than the configured one.
    #[error(
        "the data directory holds a {found} state store at {path}, but [storage] engine = \"{configured}\"; \
         set engine = \"{found}\" (or move that store away to start this replica from the log)"
    )]
    EngineMismatch {
        /// The configured engine.
        configured: &'static str,
        /// The engine whose files were found.
        found: &'static str,
        /// Where.
        path: PathBuf,
    },
    /// [`StateStore::replace_all`]'s source of records failed; the store was left unchanged.
    #[error("{engine}: replacing the state was abandoned, nothing changed")]
    ReplaceAborted {
        /// `redb` or `sled`.
        engine: &'static str,
    },
}

/// Which record of the state store is damaged, and how ([`StoreError::Corrupt`]).
#[derive(Debug, thiserror::Error)]
pub enum CorruptRecord {
    /// The applied index record does not hold a `u64`.
    #[error("applied index record is {len} bytes, not 8")]
    AppliedIndexLength {
        /// Its length.
        len: usize,
    },
    /// An idempotency record cannot be decoded.
    #[error("idempotency record of key {key:?}: {source}")]
    Idempotency {
        /// The client's idempotency key (its `Idempotency-Key` header, echoed).
        key: String,
        /// The decoder's error.
        source: rmp_serde::decode::Error,
    },
    /// The idempotency record of a CAS matched a command of another kind (its fingerprint
    /// says they are the same command).
    #[error("an idempotency record of a CAS matched another command")]
    IdempotencyKind,
}

impl StoreError {
    /// An engine error of operation `op`.
    pub fn engine(
        engine: &'static str,
        op: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError::Engine {
            engine,
            op,
            source: Box::new(source),
        }
    }
}

/// Visits one key and value of a scan; returns `false` to stop.
pub type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool, StoreError> + 'a;

/// Yields the next record of a whole-state replacement (`None`: no more). An `Err` makes
/// [`StateStore::replace_all`] abandon the replacement; the caller keeps its own reason.
pub type NextRecord<'a> = dyn FnMut() -> Result<Option<(Vec<u8>, Vec<u8>)>, ()> + 'a;

/// A read-only view of a whole store as of one commit, that stays the same while commits go
/// on and can be read on another thread (a snapshot is written from it while the applier
/// keeps applying).
pub trait StoreView: Send + 'static {
    /// The applied index of the commit this view shows.
    fn applied_index(&self) -> LogIndex;

    /// Visits every key of the view in ascending order until `visit` returns `false`.
    fn scan_all(&self, visit: &mut Visit<'_>) -> Result<(), StoreError>;
}

/// An ordered key-value store that commits each batch atomically with an applied index.
pub trait StateStore: Send + 'static {
    /// The engine's name (`redb`, `sled`, or a test store's).
    fn engine(&self) -> &'static str;

    /// Applies `batch` and records `applied` as the applied index, atomically. Later reads of
    /// this store see it at once; an engine may defer making it crash-consistent on disk to
    /// [`StateStore::finish`] (several commits then become one atomic unit: after a crash all
    /// or none of them are there, and the node replays the log from the applied index).
    fn commit(&mut self, batch: WriteBatch, applied: LogIndex) -> Result<(), StoreError>;

    /// Ends a run of commits. The applier calls it after each run of entries, before it
    /// answers their writers. An engine writes the runs ended so far as one atomic unit (not
    /// necessarily fsynced), now or with a later run: redb keeps runs staged for up to
    /// [`super::redb_store::DURABLE_EVERY_MAX`] and writes them with one durable commit (a
    /// graceful close or [`StateStore::sync`] writes what is staged). Reads of this store see
    /// staged runs; a crash loses them, and the node replays the log from the applied index.
    /// Engines that write each commit at once do nothing.
    fn finish(&mut self) -> Result<(), StoreError>;

    /// The value of `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Visits the keys in `[start, end)` (`end` `None`: to the last key) in ascending order,
    /// from one consistent view of the store, until `visit` returns `false`.
    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError>;

    /// The applied index recorded by the last commit (0 for a new store).
    fn applied_index(&self) -> Result<LogIndex, StoreError>;

    /// Makes every commit so far durable.
    fn sync(&mut self) -> Result<(), StoreError>;

    /// A view of the store as of the last commit it wrote (runs still staged by
    /// [`StateStore::finish`] are not in it: [`StateStore::sync`] first for the current
    /// state), that later commits do not change, if the engine has one (redb: a read
    /// transaction). `None`: the engine cannot isolate a reader
    /// from writers (sled), and a consistent scan needs the store's owner to stop committing
    /// while it runs.
    fn view(&self) -> Result<Option<Box<dyn StoreView>>, StoreError> {
        Ok(None)
    }

    /// Replaces every key with the records `next` yields (in any order) and sets the applied
    /// index to `applied`, atomically: if `next` fails, or the engine does, the store keeps
    /// its previous state ([`StoreError::ReplaceAborted`] when `next` failed).
    fn replace_all(
        &mut self,
        applied: LogIndex,
        next: &mut NextRecord<'_>,
    ) -> Result<(), StoreError>;
}

/// `path` with `suffix` appended to its last component (`sm.redb` → `sm.redb.creating`).
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Makes a change of `path`'s directory entry (a create, a rename) durable: fsyncs the
/// directory that holds it.
pub(crate) fn sync_parent(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

/// Where an engine keeps its files inside a node's data directory.
pub fn store_path(engine: StorageEngine, data_dir: &Path) -> PathBuf {
    match engine {
        StorageEngine::Sled => data_dir.join("sm"),
        StorageEngine::Redb => data_dir.join("sm.redb"),
    }
}

/// The name of an engine.
pub fn engine_name(engine: StorageEngine) -> &'static str {
    match engine {
        StorageEngine::Sled => "sled",
        StorageEngine::Redb => "redb",
    }
}

/// Refuses a data directory that holds another engine's store than `engine` (group 0's or the
/// shared store of the other groups, `shared_store.rs`; checked again by
/// [`open_store`]; `conclave node` checks it before anything starts, for a clean exit).
pub fn check_engine(engine: StorageEngine, data_dir: &Path) -> Result<(), StoreError> {
    for other in [StorageEngine::Sled, StorageEngine::Redb] {
        if other == engine {
            continue;
        }
        // Group 0's store and the store shared by the node's other groups.
        for path in [
            store_path(other, data_dir),
            super::shared_store::shared_store_path(other, data_dir),
        ] {
            if path.exists() {
                return Err(StoreError::EngineMismatch {
                    configured: engine_name(engine),
                    found: engine_name(other),
                    path,
                });
            }
        }
    }
    Ok(())
}

/// Opens (or creates) the configured engine's store in a node's data directory. Refuses to
/// start when the directory holds the *other* engine's store: silently starting empty would
/// throw that state away.
pub fn open_store(
    engine: StorageEngine,
    data_dir: &Path,
) -> Result<Box<dyn StateStore>, StoreError> {
    check_engine(engine, data_dir)?;
    let path = store_path(engine, data_dir);
    Ok(match engine {
        StorageEngine::Sled => Box::new(super::sled_store::SledStore::open(&path)?),
        StorageEngine::Redb => Box::new(super::redb_store::RedbStore::open(&path)?),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Runs `check` against a fresh store of every engine.
    pub(crate) fn each_engine(check: impl Fn(&dyn Fn() -> Box<dyn StateStore>, &Path)) {
        for engine in [StorageEngine::Sled, StorageEngine::Redb] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().to_owned();
            let open = move || open_store(engine, &path).unwrap();
            check(&open, dir.path());
        }
    }

    fn collect(s: &dyn StateStore, start: &[u8], end: Option<&[u8]>) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        s.scan(start, end, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(true)
        })
        .unwrap();
        out
    }

    #[test]
    fn batches_commit_atomically_with_the_applied_index_and_survive_reopen() {
        each_engine(|open, _| {
            {
                let mut s = open();
                assert_eq!(s.applied_index().unwrap(), 0);
                let mut b = WriteBatch::default();
                b.put(b"a".to_vec(), b"1".to_vec());
                b.put(b"b".to_vec(), b"2".to_vec());
                b.put(b"c".to_vec(), b"3".to_vec());
                s.commit(b, 7).unwrap();
                let mut b = WriteBatch::default();
                b.delete(b"b".to_vec());
                b.put(b"a".to_vec(), b"9".to_vec());
                s.commit(b, 8).unwrap();
                // Visible before `finish`.
                assert_eq!(s.get(b"a").unwrap(), Some(b"9".to_vec()));
                assert_eq!(s.get(b"b").unwrap(), None);
                assert_eq!(s.applied_index().unwrap(), 8);
                s.finish().unwrap();
                s.sync().unwrap();
            }
            let s = open();
            assert_eq!(s.applied_index().unwrap(), 8, "{}", s.engine());
            assert_eq!(
                collect(&*s, b"", None),
                vec![
                    (b"a".to_vec(), b"9".to_vec()),
                    (b"c".to_vec(), b"3".to_vec())
                ]
            );
        });
    }

    #[test]
    fn scans_are_ordered_bounded_and_stoppable() {
        each_engine(|open, _| {
            let mut s = open();
            let mut b = WriteBatch::default();
            for k in ["d/3", "d/1", "e/1", "d/2", "c"] {
                b.put(k.as_bytes().to_vec(), k.as_bytes().to_vec());
            }
            s.commit(b, 1).unwrap();
            s.finish().unwrap();
            let keys: Vec<Vec<u8>> = collect(&*s, b"d/", Some(b"d0"))
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            assert_eq!(
                keys,
                vec![b"d/1".to_vec(), b"d/2".to_vec(), b"d/3".to_vec()]
            );
            let mut first = Vec::new();
            s.scan(b"", None, &mut |k, _| {
                first.push(k.to_vec());
                Ok(first.len() < 2)
            })
            .unwrap();
            assert_eq!(first, vec![b"c".to_vec(), b"d/1".to_vec()]);
        });
    }

    #[test]
    fn commits_not_finished_are_lost_together_and_finished_ones_survive() {
        each_engine(|open, _| {
            {
                let mut s = open();
                let mut b = WriteBatch::default();
                b.put(b"a".to_vec(), b"1".to_vec());
                s.commit(b, 1).unwrap();
                s.finish().unwrap();
                s.sync().unwrap();
                let mut b = WriteBatch::default();
                b.put(b"b".to_vec(), b"2".to_vec());
                s.commit(b, 2).unwrap();
                // Dropped without `finish`: a crash in the middle of a run.
            }
            let s = open();
            match s.applied_index().unwrap() {
                // Deferred: the unfinished commit is gone, data and index together.
                1 => assert_eq!(s.get(b"b").unwrap(), None, "{}", s.engine()),
                // Written at once (sled): both are there.
                2 => assert_eq!(s.get(b"b").unwrap(), Some(b"2".to_vec()), "{}", s.engine()),
                other => panic!("{}: applied index {other}", s.engine()),
            }
            assert_eq!(s.get(b"a").unwrap(), Some(b"1".to_vec()));
        });
    }

    #[test]
    fn another_engines_store_in_the_data_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(open_store(StorageEngine::Sled, dir.path()).unwrap());
        match open_store(StorageEngine::Redb, dir.path()) {
            Err(StoreError::EngineMismatch { found, .. }) => assert_eq!(found, "sled"),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("a redb store was opened over a sled one"),
        }
    }
}
