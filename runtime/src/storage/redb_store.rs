//! The redb engine of the state store (redb 2.x, file format v3): one file, a copy-on-write
//! B-tree with ACID transactions. Each commit is one write transaction that changes the `kv`
//! table and the applied index in the `meta` table together.
//!
//! Commits use `Durability::Eventual`: atomic and crash-consistent (after a crash the file
//! holds some earlier commit, whole), written without waiting for fsync — the Raft log is the
//! durable record, and the node replays it from the store's applied index. [`StateStore::sync`]
//! commits with `Durability::Immediate` when a caller needs the applied index durable.
//! Scans run in a read transaction: a consistent view while writes go on.

use super::state_store::{
    NextRecord, StateStore, StoreError, StoreOp, StoreView, Visit, WriteBatch,
};
use crate::state_machine::LogIndex;
use redb::{Database, Durability, ReadOnlyTable, ReadableTable, TableDefinition};
use std::ops::Bound;
use std::path::Path;

const ENGINE: &str = "redb";
const KV: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const APPLIED: &str = "applied";
/// redb's page cache. Its default (1 GiB) would let the cache alone grow past the node's
/// memory budget on a large state.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// A redb database file.
pub struct RedbStore {
    db: Database,
}

fn err<E: std::error::Error + Send + Sync + 'static>(
    op: &'static str,
) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::engine(ENGINE, op, e)
}

impl RedbStore {
    /// Opens (or creates) the database file at `path` (its directory must exist or be
    /// creatable).
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        let open_err = |e: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            engine: ENGINE,
            path: path.to_owned(),
            source: e,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| open_err(Box::new(e)))?;
        }
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create_with_file_format_v3(true)
            .create(path)
            .map_err(|e| open_err(Box::new(e)))?;
        // Create both tables up front, so reads never meet a missing table.
        let tx = db.begin_write().map_err(err("begin_write"))?;
        tx.open_table(KV).map_err(err("open_table"))?;
        tx.open_table(META).map_err(err("open_table"))?;
        tx.commit().map_err(err("commit"))?;
        Ok(RedbStore { db })
    }

    fn write(
        &mut self,
        durability: Durability,
        batch: WriteBatch,
        applied: Option<LogIndex>,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().map_err(err("begin_write"))?;
        tx.set_durability(durability);
        {
            let mut kv = tx.open_table(KV).map_err(err("open_table"))?;
            for op in batch.ops() {
                match op {
                    StoreOp::Put(k, v) => {
                        kv.insert(k.as_slice(), v.as_slice())
                            .map_err(err("insert"))?;
                    }
                    StoreOp::Delete(k) => {
                        kv.remove(k.as_slice()).map_err(err("remove"))?;
                    }
                }
            }
            if let Some(applied) = applied {
                let mut meta = tx.open_table(META).map_err(err("open_table"))?;
                meta.insert(APPLIED, applied).map_err(err("insert"))?;
            }
        }
        tx.commit().map_err(err("commit"))
    }
}

/// A redb read transaction's `kv` table: the state as of one commit, unchanged by later ones.
struct RedbView {
    kv: ReadOnlyTable<&'static [u8], &'static [u8]>,
    applied: LogIndex,
}

impl StoreView for RedbView {
    fn applied_index(&self) -> LogIndex {
        self.applied
    }

    fn scan_all(&self, visit: &mut Visit<'_>) -> Result<(), StoreError> {
        for item in self.kv.iter().map_err(err("scan"))? {
            let (k, v) = item.map_err(err("scan"))?;
            if !visit(k.value(), v.value())? {
                break;
            }
        }
        Ok(())
    }
}

impl StateStore for RedbStore {
    fn engine(&self) -> &'static str {
        ENGINE
    }

    fn commit(&mut self, batch: WriteBatch, applied: LogIndex) -> Result<(), StoreError> {
        self.write(Durability::Eventual, batch, Some(applied))
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(err("begin_read"))?;
        let kv = tx.open_table(KV).map_err(err("open_table"))?;
        Ok(kv.get(key).map_err(err("get"))?.map(|v| v.value().to_vec()))
    }

    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_read().map_err(err("begin_read"))?;
        let kv = tx.open_table(KV).map_err(err("open_table"))?;
        let upper = match end {
            Some(e) => Bound::Excluded(e),
            None => Bound::Unbounded,
        };
        let range = kv
            .range::<&[u8]>((Bound::Included(start), upper))
            .map_err(err("scan"))?;
        for item in range {
            let (k, v) = item.map_err(err("scan"))?;
            if !visit(k.value(), v.value())? {
                break;
            }
        }
        Ok(())
    }

    fn applied_index(&self) -> Result<LogIndex, StoreError> {
        let tx = self.db.begin_read().map_err(err("begin_read"))?;
        let meta = tx.open_table(META).map_err(err("open_table"))?;
        Ok(meta
            .get(APPLIED)
            .map_err(err("get"))?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.write(Durability::Immediate, WriteBatch::default(), None)
    }

    fn view(&self) -> Result<Option<Box<dyn StoreView>>, StoreError> {
        // One read transaction for both tables: the index and the data of the same commit.
        let tx = self.db.begin_read().map_err(err("begin_read"))?;
        let meta = tx.open_table(META).map_err(err("open_table"))?;
        let applied = meta
            .get(APPLIED)
            .map_err(err("get"))?
            .map(|v| v.value())
            .unwrap_or(0);
        let kv = tx.open_table(KV).map_err(err("open_table"))?;
        Ok(Some(Box::new(RedbView { kv, applied })))
    }

    fn replace_all(
        &mut self,
        applied: LogIndex,
        next: &mut NextRecord<'_>,
    ) -> Result<(), StoreError> {
        // One write transaction: redb spills its dirty pages to the file, so a large state is
        // not held in memory, and an abort leaves the previous commit in place.
        let mut tx = self.db.begin_write().map_err(err("begin_write"))?;
        tx.set_durability(Durability::Immediate);
        let outcome = (|| {
            let mut kv = tx.open_table(KV).map_err(err("open_table"))?;
            kv.retain(|_, _| false).map_err(err("clear"))?;
            while let Some((k, v)) =
                next().map_err(|()| StoreError::ReplaceAborted { engine: ENGINE })?
            {
                kv.insert(k.as_slice(), v.as_slice())
                    .map_err(err("insert"))?;
            }
            let mut meta = tx.open_table(META).map_err(err("open_table"))?;
            meta.insert(APPLIED, applied).map_err(err("insert"))?;
            Ok(())
        })();
        match outcome {
            Ok(()) => tx.commit().map_err(err("commit")),
            Err(e) => {
                tx.abort().map_err(err("abort"))?;
                Err(e)
            }
        }
    }
}
