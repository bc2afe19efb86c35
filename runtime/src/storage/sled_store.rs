//! The sled engine of the state store (sled 0.34). One tree, `kv`, holds the data and, under
//! a key the data never uses, the applied index, so that both change in one atomic batch.
//!
//! sled 0.34.7 can stall for good inside a write under sustained overwrites (docs/storage.md
//! records what was measured); the applier's stall watchdog reports it when it happens.

use super::state_store::{NextRecord, StateStore, StoreError, StoreOp, Visit, WriteBatch};
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
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let deadline = Instant::now() + Duration::from_secs(2);
        let db = loop {
            match sled::open(dir) {
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
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
        let tree = db.open_tree("kv").map_err(err("open_tree"))?;
        Ok(SledStore { db, tree })
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
                    what: format!("applied index record is {} bytes, not 8", v.len()),
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
