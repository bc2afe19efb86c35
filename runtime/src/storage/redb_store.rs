//! The redb engine of the state store (redb 2.x, file format v3): one file, a copy-on-write
//! B-tree with ACID transactions. Each commit is one write transaction that changes the `kv`
//! table and the applied index in the `meta` table together.
//!
//! [`StateStore::commit`] stages a batch in an open write transaction (later reads of this store
//! see it); [`StateStore::finish`] commits that transaction, so a run of entries the applier
//! received together costs one redb commit, not one each (per-entry commits made followers
//! fall behind the leader under the bench load: see docs/storage.md). Commits use
//! `Durability::Eventual`: atomic and crash-consistent (after a crash the file holds some
//! earlier commit, whole), written without waiting for fsync — the Raft log is the durable
//! record, and the node replays it from the store's applied index. [`StateStore::sync`]
//! commits with `Durability::Immediate` when a caller needs the applied index durable.
//! Scans outside a batch run in a read transaction: a consistent view while writes go on.

use super::state_store::{
    NextRecord, StateStore, StoreError, StoreOp, StoreView, Visit, WriteBatch,
};
use conclave_core::raft::LogIndex;
use redb::{Database, Durability, ReadOnlyTable, ReadableTable, TableDefinition, WriteTransaction};
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
    /// The transaction batches are staged in until [`StateStore::finish`]. Declared before
    /// `db` so that it is dropped (aborted) first: `Database`'s drop begins a write
    /// transaction of its own and would wait for this one forever.
    tx: Option<WriteTransaction>,
    db: Database,
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        // Unfinished commits are abandoned, as a crash would: the node replays them.
        self.tx = None;
    }
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
        Ok(RedbStore { db, tx: None })
    }

    /// Writes `batch` (and `applied`) into `tx`.
    fn stage(
        tx: &WriteTransaction,
        batch: WriteBatch,
        applied: Option<LogIndex>,
    ) -> Result<(), StoreError> {
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
        Ok(())
    }

    /// The open batch transaction, begun if none is.
    fn batch_tx(&mut self) -> Result<&WriteTransaction, StoreError> {
        if self.tx.is_none() {
            let mut tx = self.db.begin_write().map_err(err("begin_write"))?;
            tx.set_durability(Durability::Eventual);
            self.tx = Some(tx);
        }
        self.tx.as_ref().ok_or_else(|| StoreError::Corrupt {
            engine: ENGINE,
            what: "no open write transaction".to_owned(),
        })
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
        let staged = Self::stage(self.batch_tx()?, batch, Some(applied));
        if staged.is_err() {
            // Nothing of a transaction that failed half-way is kept.
            self.tx = None;
        }
        staged
    }

    fn finish(&mut self) -> Result<(), StoreError> {
        match self.tx.take() {
            Some(tx) => tx.commit().map_err(err("commit")),
            None => Ok(()),
        }
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(tx) = &self.tx {
            let kv = tx.open_table(KV).map_err(err("open_table"))?;
            return Ok(kv.get(key).map_err(err("get"))?.map(|v| v.value().to_vec()));
        }
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
        let upper = match end {
            Some(e) => Bound::Excluded(e),
            None => Bound::Unbounded,
        };
        let bounds = (Bound::Included(start), upper);
        if let Some(tx) = &self.tx {
            let kv = tx.open_table(KV).map_err(err("open_table"))?;
            let range = kv.range::<&[u8]>(bounds).map_err(err("scan"))?;
            for item in range {
                let (k, v) = item.map_err(err("scan"))?;
                if !visit(k.value(), v.value())? {
                    break;
                }
            }
            return Ok(());
        }
        let tx = self.db.begin_read().map_err(err("begin_read"))?;
        let kv = tx.open_table(KV).map_err(err("open_table"))?;
        let range = kv.range::<&[u8]>(bounds).map_err(err("scan"))?;
        for item in range {
            let (k, v) = item.map_err(err("scan"))?;
            if !visit(k.value(), v.value())? {
                break;
            }
        }
        Ok(())
    }

    fn applied_index(&self) -> Result<LogIndex, StoreError> {
        if let Some(tx) = &self.tx {
            let meta = tx.open_table(META).map_err(err("open_table"))?;
            return Ok(meta
                .get(APPLIED)
                .map_err(err("get"))?
                .map(|v| v.value())
                .unwrap_or(0));
        }
        let tx = self.db.begin_read().map_err(err("begin_read"))?;
        let meta = tx.open_table(META).map_err(err("open_table"))?;
        Ok(meta
            .get(APPLIED)
            .map_err(err("get"))?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.finish()?;
        let mut tx = self.db.begin_write().map_err(err("begin_write"))?;
        tx.set_durability(Durability::Immediate);
        tx.commit().map_err(err("commit"))
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
        // A staged run first (redb has one write transaction at a time; beginning another
        // while this store holds one would wait for ever).
        self.finish()?;
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
