//! One state store per node for the groups a node creates (the shards of a sharded node):
//! every group `g ≥ 1` keeps its key-value state in the node's shared store, in a table (redb)
//! or tree (sled) of its own, with its own applied index, instead of a database of its own in
//! `data_dir/groups/<g>` (see docs/storage.md, "One store for a node's groups").
//!
//! Why: with one database per group, 64 shards on a node meant 64 page caches, 64 sets of
//! page writes per run and 64 durable-commit schedules. A group with a write every 100 ms or
//! more found its own last durable commit older than its interval (then 100 ms) at nearly every run,
//! so nearly every write paid an `fdatasync` of its group's file besides the WAL's (measured:
//! docs/performance.md, "64 shards vs 1 shard").
//!
//! **redb** (`data_dir/shards.redb`): table `kv/<g>` holds group `g`'s keys and table
//! `applied` maps `g` to its applied index. The appliers of all groups (on the node's applier
//! arbiters, never on one that carries Raft, gossip or the transport) stage their runs in ONE
//! open write transaction, behind a mutex: redb has one write transaction at a time, and
//! sharing it is what lets many groups' runs become one commit. [`StateStore::finish`] does
//! not commit each run: the transaction is committed durably (an `fdatasync`) once
//! the interval has passed since the last durable commit (1 s, shorter while durable commits
//! take longer than [`super::redb_store::DURABLE_COMMIT_TARGET`]: one adaptive
//! [`DurablePolicy`] for the node, whose commit holds every shard's applier) —
//! or without fsync once [`STAGED_LIMIT`] bytes are staged. A commit without fsync would buy
//! nothing for a crash anyway (redb recovers to its last *durable* commit); the Raft log is
//! the durable record and the node replays it from each group's applied index. Reads of a
//! group go through the open transaction, so they see every run its applier applied.
//!
//! Every commit ([`StateStore::commit`]) is staged with its group's applied index, so the
//! transaction holds whole entries of every group whenever it is committed, whichever
//! group's call commits it. A transaction that fails (an engine error while staging or
//! committing) loses what every group staged in it: the store's *epoch* then moves on and
//! every group handle opened before refuses further calls, so each applier restarts and
//! replays from what the store holds instead of carrying on past a hole.
//!
//! A snapshot's import (`replace_all`) writes group `g`'s new state into table `import/<g>`
//! in steps (each its own commit, without fsync, so other groups' runs go on between the
//! steps) and then, in one durable commit, deletes `kv/<g>`, renames `import/<g>` to `kv/<g>`
//! and records the applied index: only that group's table changes, and a crash or a failed
//! source before the last step leaves it as it was (a leftover `import/<g>` is dropped).
//!
//! **sled** (`data_dir/shards/`): one sled database, group `g` in tree `kv/<g>` (its applied
//! index under `m/applied` in the same tree, as [`SledStore`] keeps it).
//!
//! Group 0 (the cluster's first group, unsharded nodes' only one) keeps its store at
//! `data_dir/sm.redb` / `data_dir/sm/` as before. A group whose store a previous version put in
//! `data_dir/groups/<g>` is migrated into the shared store when it is first opened: its state
//! and applied index are copied into the group's table with a durable commit, then the old
//! directory is renamed to `groups/<g>.migrated` and removed. A crash before the rename
//! migrates again from the old store at the next start (the copy replaces the table); after
//! it, the shared store holds the group.

use super::background_io;
use super::redb_store::{DurablePolicy, RedbView, DURABLE_EVERY_MAX, DURABLE_EVERY_MIN};
use super::sled_store::SledStore;
use super::state_store::{
    check_engine, engine_name, open_store, store_path, sync_parent, NextRecord, StateStore,
    StorageEngine, StoreError, StoreOp, StoreView, Visit, WriteBatch,
};
use conclave_core::raft::LogIndex;
use parking_lot::Mutex;
use redb::{Database, Durability, ReadableTable, TableDefinition, TableError, WriteTransaction};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

const REDB: &str = "redb";
/// Group → applied index.
const APPLIED: TableDefinition<'_, u64, u64> = TableDefinition::new("applied");
/// The shared redb store's page cache: one for the node (a database per group had one each).
const CACHE_BYTES: usize = 64 * 1024 * 1024;
/// Staged bytes (keys and values of the batches) after which `finish` commits the shared
/// transaction without fsync even before the durable interval, so that a burst of large values
/// does not keep growing one transaction.
pub const STAGED_LIMIT: usize = 16 * 1024 * 1024;
/// A snapshot import is written in commits of this many bytes; other groups' runs are staged
/// and committed between them.
const IMPORT_STEP_BYTES: usize = 4 * 1024 * 1024;
/// Where the shared store of each engine lives in the data directory.
const REDB_FILE: &str = "shards.redb";
const SLED_DIR: &str = "shards";

type KvTable<'a> = TableDefinition<'a, &'static [u8], &'static [u8]>;

fn kv_name(group: u64) -> String {
    format!("kv/{group}")
}

fn import_name(group: u64) -> String {
    format!("import/{group}")
}

fn err<E: std::error::Error + Send + Sync + 'static>(
    op: &'static str,
) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::engine(REDB, op, e)
}

/// The shared transaction that held a group's commits was lost (an engine error in another
/// group's call, or in a commit); the group must be reopened and its log replayed.
#[derive(Debug, thiserror::Error)]
#[error(
    "group {group}: the shared state store abandoned a transaction that held its commits; \
     the group's applier must reopen it"
)]
pub struct Abandoned {
    /// The group whose handle refused the call.
    pub group: u64,
}

/// Where the shared store of `engine` lives in `data_dir`.
pub fn shared_store_path(engine: StorageEngine, data_dir: &Path) -> PathBuf {
    match engine {
        StorageEngine::Redb => data_dir.join(REDB_FILE),
        StorageEngine::Sled => data_dir.join(SLED_DIR),
    }
}

/// A node's shared state store (see the module docs). Cheap to clone: every clone is the same
/// database.
#[derive(Clone)]
pub enum SharedStore {
    /// One redb file, one table per group.
    Redb(Arc<SharedRedb>),
    /// One sled database, one tree per group.
    Sled(sled::Db),
}

impl SharedStore {
    /// Opens (or creates) the shared store of `engine` in `data_dir`. Refuses a data
    /// directory that holds the other engine's stores.
    pub fn open(engine: StorageEngine, data_dir: &Path) -> Result<SharedStore, StoreError> {
        check_engine(engine, data_dir)?;
        let path = shared_store_path(engine, data_dir);
        Ok(match engine {
            StorageEngine::Redb => SharedStore::Redb(Arc::new(SharedRedb::open(&path)?)),
            StorageEngine::Sled => SharedStore::Sled(super::sled_store::open_db(&path)?),
        })
    }

    /// Group `group`'s store in this shared store (created empty, applied index 0, if the
    /// group has none yet).
    pub fn group(&self, group: u64) -> Result<Box<dyn StateStore>, StoreError> {
        Ok(match self {
            SharedStore::Redb(shared) => Box::new(RedbGroup::open(shared.clone(), group)?),
            SharedStore::Sled(db) => {
                let tree = db
                    .open_tree(kv_name(group))
                    .map_err(|e| StoreError::engine("sled", "open_tree", e))?;
                Box::new(SledStore::in_tree(db.clone(), tree))
            }
        })
    }

    /// Makes everything committed in the shared store durable (fsync), and with sled every
    /// file of the database (sled's own flush is no fsync).
    fn sync_all(&self, data_dir: &Path) -> Result<(), StoreError> {
        match self {
            SharedStore::Redb(shared) => shared.sync(),
            SharedStore::Sled(db) => {
                db.flush()
                    .map_err(|e| StoreError::engine("sled", "flush", e))?;
                let path = shared_store_path(StorageEngine::Sled, data_dir);
                super::sled_store::sync_tree(&path).map_err(|e| StoreError::Open {
                    engine: "sled",
                    path,
                    source: Box::new(e),
                })
            }
        }
    }
}

/// The state stores of a node's groups other than group 0: the shared store, opened when the
/// first such group is, and the migration of stores that a previous version kept in
/// `data_dir/groups/<g>`. `conclave node` opens each group's machine through it.
pub struct NodeStores {
    engine: StorageEngine,
    data_dir: PathBuf,
    shared: Mutex<Option<SharedStore>>,
}

impl NodeStores {
    /// The stores of the node whose data directory is `data_dir` (nothing is opened yet).
    pub fn new(engine: StorageEngine, data_dir: &Path) -> NodeStores {
        NodeStores {
            engine,
            data_dir: data_dir.to_owned(),
            shared: Mutex::new(None),
        }
    }

    /// The shared store, opened at the first call.
    pub fn shared(&self) -> Result<SharedStore, StoreError> {
        let mut slot = self.shared.lock();
        if let Some(s) = &*slot {
            return Ok(s.clone());
        }
        let s = SharedStore::open(self.engine, &self.data_dir)?;
        *slot = Some(s.clone());
        Ok(s)
    }

    /// Group `group`'s store (`group` ≥ 1) in the shared store, after migrating the group's
    /// store from `data_dir/groups/<group>` if a previous version left one there.
    pub fn open_group(&self, group: u64) -> Result<Box<dyn StateStore>, StoreError> {
        let shared = self.shared()?;
        let groups = self.data_dir.join("groups");
        let legacy_dir = groups.join(group.to_string());
        let done_dir = groups.join(format!("{group}.migrated"));
        let io_err = |path: &Path, e: std::io::Error| StoreError::Open {
            engine: engine_name(self.engine),
            path: path.to_owned(),
            source: Box::new(e),
        };
        if legacy_dir.exists() {
            check_engine(self.engine, &legacy_dir)?;
            if store_path(self.engine, &legacy_dir).exists() {
                migrate(&shared, group, &legacy_dir, self.engine)?;
                shared.sync_all(&self.data_dir)?;
                tracing::info!(
                    group,
                    from = %legacy_dir.display(),
                    to = %shared_store_path(self.engine, &self.data_dir).display(),
                    "moved the group's state store into the node's shared store"
                );
            }
            // From here on the shared store is the group's: the old directory goes.
            std::fs::rename(&legacy_dir, &done_dir).map_err(|e| io_err(&legacy_dir, e))?;
            sync_parent(&done_dir).map_err(|e| io_err(&done_dir, e))?;
        }
        if done_dir.exists() {
            std::fs::remove_dir_all(&done_dir).map_err(|e| io_err(&done_dir, e))?;
        }
        shared.group(group)
    }
}

/// Copies the store in `legacy_dir` (its data and applied index) over group `group`'s store in
/// `shared`, durably. The old store is read on a thread of its own and streamed into
/// `replace_all`, so a large state is never held in memory whole.
fn migrate(
    shared: &SharedStore,
    group: u64,
    legacy_dir: &Path,
    engine: StorageEngine,
) -> Result<(), StoreError> {
    let legacy = open_store(engine, legacy_dir)?;
    let applied = legacy.applied_index()?;
    let mut target = shared.group(group)?;
    type Record = Result<(Vec<u8>, Vec<u8>), StoreError>;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Record>(1024);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let scanned = legacy.scan(b"", None, &mut |k, v| {
                // The receiver stopped (its replacement failed): stop reading.
                Ok(tx.send(Ok((k.to_vec(), v.to_vec()))).is_ok())
            });
            if let Err(e) = scanned {
                let _ = tx.send(Err(e));
            }
        });
        let mut failure = None;
        let replaced = target.replace_all(applied, &mut || match rx.recv() {
            Ok(Ok(record)) => Ok(Some(record)),
            Ok(Err(e)) => {
                failure = Some(e);
                Err(())
            }
            // The reader is done.
            Err(_) => Ok(None),
        });
        // Unblocks the reader if the replacement stopped early.
        drop(rx);
        match (replaced, failure) {
            (_, Some(e)) => Err(e),
            (r, None) => r,
        }
    })
}

/// The redb shared store: the database and the one write transaction its groups share.
pub struct SharedRedb {
    /// Declared before `db`: the open transaction must go before the database.
    state: Mutex<RedbState>,
    db: Database,
    path: PathBuf,
}

struct RedbState {
    /// The transaction every group stages its commits in until it is committed.
    tx: Option<WriteTransaction>,
    /// When the shared transaction is committed durably.
    durable: DurablePolicy,
    /// Bytes staged in `tx`.
    staged: usize,
    /// Moves on whenever a transaction that held commits is lost.
    epoch: u64,
}

impl RedbState {
    /// The shared transaction, begun if none is open.
    fn tx(&mut self, db: &Database) -> Result<&WriteTransaction, StoreError> {
        if self.tx.is_none() {
            let mut tx = db.begin_write().map_err(err("begin_write"))?;
            tx.set_durability(Durability::None);
            self.tx = Some(tx);
        }
        self.tx
            .as_ref()
            .ok_or(StoreError::NoWriteTransaction { engine: REDB })
    }

    /// Drops the shared transaction and what it held (after an engine error in it).
    fn abandon(&mut self) {
        if self.tx.take().is_some() {
            self.epoch += 1;
        }
        self.staged = 0;
    }

    /// Commits the shared transaction (an empty one if none is open, when `durability` is
    /// durable: what earlier commits without fsync wrote becomes durable with it).
    fn commit(&mut self, db: &Database, durability: Durability) -> Result<(), StoreError> {
        let durable = !matches!(durability, Durability::None);
        let mut tx = match self.tx.take() {
            Some(tx) => tx,
            None if durable => db.begin_write().map_err(err("begin_write"))?,
            None => return Ok(()),
        };
        self.staged = 0;
        tx.set_durability(durability);
        let started = Instant::now();
        match tx.commit() {
            Ok(()) => {
                if durable {
                    self.durable.synced(Instant::now());
                    self.durable.took(started.elapsed());
                }
                Ok(())
            }
            Err(e) => {
                // What every group staged in it is gone.
                self.epoch += 1;
                Err(StoreError::engine(REDB, "commit", e))
            }
        }
    }
}

impl Drop for SharedRedb {
    fn drop(&mut self) {
        // A clean close keeps what was applied (every staged commit is a whole entry with its
        // group's applied index).
        let state = self.state.get_mut();
        if let Err(e) = state.commit(&self.db, Durability::Immediate) {
            tracing::warn!(error = %e, "the shared state store's last commit failed; the log will be replayed");
        }
    }
}

impl SharedRedb {
    fn open(path: &Path) -> Result<SharedRedb, StoreError> {
        Self::open_policy(
            path,
            DurablePolicy::adaptive(DURABLE_EVERY_MIN, DURABLE_EVERY_MAX, Instant::now()),
        )
    }

    /// Opens the file at `path`, committing durably at most every `durable_every` (a fixed
    /// interval).
    #[cfg(test)]
    fn open_with(
        path: &Path,
        durable_every: std::time::Duration,
    ) -> Result<SharedRedb, StoreError> {
        Self::open_policy(path, DurablePolicy::new(durable_every, Instant::now()))
    }

    fn open_policy(path: &Path, durable: DurablePolicy) -> Result<SharedRedb, StoreError> {
        let open_err = |e: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            engine: REDB,
            path: path.to_owned(),
            source: e,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| open_err(Box::new(e)))?;
        }
        // Created whole or not at all, like a group's own store.
        super::redb_store::ensure_created(path)?;
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create_with_file_format_v3(true)
            .create(path)
            .map_err(|e| open_err(Box::new(e)))?;
        let tx = db.begin_write().map_err(err("begin_write"))?;
        tx.open_table(APPLIED).map_err(err("open_table"))?;
        tx.commit().map_err(err("commit"))?;
        Ok(SharedRedb {
            state: Mutex::new(RedbState {
                tx: None,
                durable,
                staged: 0,
                epoch: 0,
            }),
            db,
            path: path.to_owned(),
        })
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.state.lock().commit(&self.db, Durability::Immediate)
    }
}

/// Group `group`'s store in a [`SharedRedb`].
pub struct RedbGroup {
    shared: Arc<SharedRedb>,
    group: u64,
    kv: String,
    /// The shared store's epoch when this handle was opened.
    epoch: u64,
}

fn kv_def(name: &str) -> KvTable<'_> {
    TableDefinition::new(name)
}

impl RedbGroup {
    fn open(shared: Arc<SharedRedb>, group: u64) -> Result<RedbGroup, StoreError> {
        let kv = kv_name(group);
        let import = import_name(group);
        let epoch = {
            let mut st = shared.state.lock();
            // Staged commits first: the import table deleted below must not be one the open
            // transaction changed (an applier that stopped in the middle of an import; see
            // `replace_all` for why).
            st.commit(&shared.db, Durability::None)?;
            let made = (|| {
                let tx = st.tx(&shared.db)?;
                // An import a crash or a failure interrupted is dropped; the table and the
                // applied record exist from here on, so readers never miss them.
                tx.delete_table(kv_def(&import))
                    .map_err(err("delete_table"))?;
                tx.open_table(kv_def(&kv)).map_err(err("open_table"))?;
                Ok(())
            })();
            if let Err(e) = made {
                st.abandon();
                return Err(e);
            }
            // Committed (without fsync) so that read transactions find the table.
            st.commit(&shared.db, Durability::None)?;
            st.epoch
        };
        Ok(RedbGroup {
            shared,
            group,
            kv,
            epoch,
        })
    }

    fn check(&self, st: &RedbState) -> Result<(), StoreError> {
        if st.epoch == self.epoch {
            Ok(())
        } else {
            Err(StoreError::engine(
                REDB,
                "shared transaction",
                Abandoned { group: self.group },
            ))
        }
    }

    fn stage(
        &self,
        tx: &WriteTransaction,
        batch: &WriteBatch,
        applied: LogIndex,
    ) -> Result<(), StoreError> {
        let mut kv = tx.open_table(kv_def(&self.kv)).map_err(err("open_table"))?;
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
        let mut meta = tx.open_table(APPLIED).map_err(err("open_table"))?;
        meta.insert(self.group, applied).map_err(err("insert"))?;
        Ok(())
    }

    /// One step of an import into `import/<g>`: up to [`IMPORT_STEP_BYTES`] from `next`.
    /// `Ok(true)`: `next` is exhausted.
    fn import_step(
        &self,
        tx: &WriteTransaction,
        first: bool,
        next: &mut NextRecord<'_>,
    ) -> Result<bool, StoreError> {
        let import = import_name(self.group);
        if first {
            tx.delete_table(kv_def(&import))
                .map_err(err("delete_table"))?;
        }
        let mut table = tx.open_table(kv_def(&import)).map_err(err("open_table"))?;
        let mut step = 0usize;
        while step < IMPORT_STEP_BYTES {
            let Some((k, v)) = next().map_err(|()| StoreError::ReplaceAborted { engine: REDB })?
            else {
                return Ok(true);
            };
            table
                .insert(k.as_slice(), v.as_slice())
                .map_err(err("insert"))?;
            step += k.len() + v.len();
        }
        Ok(false)
    }

    /// Makes `import/<g>` the group's table with applied index `applied`.
    fn switch_to_import(&self, tx: &WriteTransaction, applied: LogIndex) -> Result<(), StoreError> {
        let import = import_name(self.group);
        tx.delete_table(kv_def(&self.kv))
            .map_err(err("delete_table"))?;
        tx.rename_table(kv_def(&import), kv_def(&self.kv))
            .map_err(err("rename_table"))?;
        let mut meta = tx.open_table(APPLIED).map_err(err("open_table"))?;
        meta.insert(self.group, applied).map_err(err("insert"))?;
        Ok(())
    }
}

fn batch_bytes(batch: &WriteBatch) -> usize {
    batch
        .ops()
        .iter()
        .map(|op| match op {
            StoreOp::Put(k, v) => k.len() + v.len(),
            StoreOp::Delete(k) => k.len(),
        })
        .sum()
}

/// Visits `[start, end)` of a table.
fn scan_table<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    start: &[u8],
    end: Option<&[u8]>,
    visit: &mut Visit<'_>,
) -> Result<(), StoreError> {
    let bounds = (
        Bound::Included(start),
        match end {
            Some(e) => Bound::Excluded(e),
            None => Bound::Unbounded,
        },
    );
    for item in table.range::<&[u8]>(bounds).map_err(err("scan"))? {
        let (k, v) = item.map_err(err("scan"))?;
        if !visit(k.value(), v.value())? {
            break;
        }
    }
    Ok(())
}

/// Reads group `group`'s applied index from `meta`.
fn read_applied<T: ReadableTable<u64, u64>>(meta: &T, group: u64) -> Result<LogIndex, StoreError> {
    Ok(meta
        .get(group)
        .map_err(err("get"))?
        .map(|v| v.value())
        .unwrap_or(0))
}

impl RedbGroup {
    /// A read transaction of what was committed, for reads while no transaction is open.
    fn read_tx(&self) -> Result<redb::ReadTransaction, StoreError> {
        self.shared.db.begin_read().map_err(err("begin_read"))
    }
}

/// A table that does not exist reads as empty (a group opened by an older store, never
/// written).
fn missing_is_empty<T>(r: Result<T, TableError>) -> Result<Option<T>, StoreError> {
    match r {
        Ok(t) => Ok(Some(t)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(StoreError::engine(REDB, "open_table", e)),
    }
}

impl StateStore for RedbGroup {
    fn engine(&self) -> &'static str {
        REDB
    }

    fn commit(&mut self, batch: WriteBatch, applied: LogIndex) -> Result<(), StoreError> {
        let mut st = self.shared.state.lock();
        self.check(&st)?;
        let staged = match st.tx(&self.shared.db) {
            Ok(tx) => self.stage(tx, &batch, applied),
            Err(e) => Err(e),
        };
        match staged {
            Ok(()) => {
                st.staged += batch_bytes(&batch);
                Ok(())
            }
            Err(e) => {
                // Nothing of a transaction that failed half-way is kept; every group that
                // staged in it must replay.
                st.abandon();
                Err(e)
            }
        }
    }

    fn finish(&mut self) -> Result<(), StoreError> {
        let mut st = self.shared.state.lock();
        self.check(&st)?;
        if st.tx.is_none() {
            return Ok(());
        }
        if st.durable.next(Instant::now()) {
            st.commit(&self.shared.db, Durability::Eventual)
        } else if st.staged >= STAGED_LIMIT {
            st.commit(&self.shared.db, Durability::None)
        } else {
            // Left open: the next runs (of any group) join it.
            Ok(())
        }
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let st = self.shared.state.lock();
        self.check(&st)?;
        if let Some(tx) = &st.tx {
            let kv = tx.open_table(kv_def(&self.kv)).map_err(err("open_table"))?;
            return Ok(kv.get(key).map_err(err("get"))?.map(|v| v.value().to_vec()));
        }
        drop(st);
        let tx = self.read_tx()?;
        let Some(kv) = missing_is_empty(tx.open_table(kv_def(&self.kv)))? else {
            return Ok(None);
        };
        Ok(kv.get(key).map_err(err("get"))?.map(|v| v.value().to_vec()))
    }

    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        let st = self.shared.state.lock();
        self.check(&st)?;
        if let Some(tx) = &st.tx {
            let kv = tx.open_table(kv_def(&self.kv)).map_err(err("open_table"))?;
            return scan_table(&kv, start, end, visit);
        }
        drop(st);
        let tx = self.read_tx()?;
        match missing_is_empty(tx.open_table(kv_def(&self.kv)))? {
            Some(kv) => scan_table(&kv, start, end, visit),
            None => Ok(()),
        }
    }

    fn applied_index(&self) -> Result<LogIndex, StoreError> {
        let st = self.shared.state.lock();
        self.check(&st)?;
        if let Some(tx) = &st.tx {
            let meta = tx.open_table(APPLIED).map_err(err("open_table"))?;
            return read_applied(&meta, self.group);
        }
        drop(st);
        let tx = self.read_tx()?;
        match missing_is_empty(tx.open_table(APPLIED))? {
            Some(meta) => read_applied(&meta, self.group),
            None => Ok(0),
        }
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        let mut st = self.shared.state.lock();
        self.check(&st)?;
        st.commit(&self.shared.db, Durability::Immediate)
    }

    fn view(&self) -> Result<Option<Box<dyn StoreView>>, StoreError> {
        {
            // What this group staged becomes visible to read transactions.
            let mut st = self.shared.state.lock();
            self.check(&st)?;
            st.commit(&self.shared.db, Durability::None)?;
        }
        // One read transaction for both tables: the index and the data of the same commit.
        let tx = self.read_tx()?;
        let meta = tx.open_table(APPLIED).map_err(err("open_table"))?;
        let applied = read_applied(&meta, self.group)?;
        let kv = tx.open_table(kv_def(&self.kv)).map_err(err("open_table"))?;
        Ok(Some(Box::new(RedbView { kv, applied })))
    }

    fn replace_all(
        &mut self,
        applied: LogIndex,
        next: &mut NextRecord<'_>,
    ) -> Result<(), StoreError> {
        // Each step is a commit without fsync of the shared transaction (with whatever other
        // groups staged in it); between steps the lock is free, so their runs go on. The
        // group's own table is untouched until the last step switches it, durably.
        let writeback = std::fs::File::open(&self.shared.path).ok();
        // What is staged (this group's last runs among them) is committed first, and every
        // delete or rename below runs in a transaction that did not change that table: redb
        // 2.6 mishandles a table deleted in the transaction that allocated some of its pages
        // (its debug build asserts "Page is uncommitted" when that transaction commits).
        {
            let mut st = self.shared.state.lock();
            self.check(&st)?;
            st.commit(&self.shared.db, Durability::None)?;
        }
        let mut first = true;
        loop {
            let mut st = self.shared.state.lock();
            self.check(&st)?;
            let outcome = match st.tx(&self.shared.db) {
                Ok(tx) => self.import_step(tx, first, next),
                Err(e) => Err(e),
            };
            first = false;
            match outcome {
                Ok(true) => {
                    st.commit(&self.shared.db, Durability::None)?;
                    let switched = match st.tx(&self.shared.db) {
                        Ok(tx) => self.switch_to_import(tx, applied),
                        Err(e) => Err(e),
                    };
                    if let Err(e) = switched {
                        st.abandon();
                        return Err(e);
                    }
                    return st.commit(&self.shared.db, Durability::Immediate);
                }
                Ok(false) => {
                    st.commit(&self.shared.db, Durability::None)?;
                    drop(st);
                    if let Some(f) = &writeback {
                        // Written back at background priority, outside the lock.
                        let _background = background_io::PriorityGuard::background();
                        if let Err(e) = background_io::write_back_dirty(f) {
                            tracing::debug!(error = %e, "incremental writeback of an import refused");
                        }
                    }
                }
                Err(e @ StoreError::ReplaceAborted { .. }) => {
                    // The source failed: drop what was imported (in the next transaction,
                    // see above), keep the other groups' runs.
                    st.commit(&self.shared.db, Durability::None)?;
                    let dropped = match st.tx(&self.shared.db) {
                        Ok(tx) => tx
                            .delete_table(kv_def(&import_name(self.group)))
                            .map(|_| ())
                            .map_err(err("delete_table")),
                        Err(e) => Err(e),
                    };
                    if let Err(e) = dropped {
                        st.abandon();
                        return Err(e);
                    }
                    return Err(e);
                }
                Err(e) => {
                    st.abandon();
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::redb_store::RedbStore;

    fn put(store: &mut dyn StateStore, key: &str, value: &str, applied: LogIndex) {
        let mut b = WriteBatch::default();
        b.put(key.as_bytes().to_vec(), value.as_bytes().to_vec());
        store.commit(b, applied).unwrap();
        store.finish().unwrap();
    }

    fn dump(store: &dyn StateStore) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        store
            .scan(b"", None, &mut |k, v| {
                out.push((k.to_vec(), v.to_vec()));
                Ok(true)
            })
            .unwrap();
        out
    }

    fn kv(pairs: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    fn each_engine(check: impl Fn(StorageEngine, &Path)) {
        for engine in [StorageEngine::Redb, StorageEngine::Sled] {
            let dir = tempfile::tempdir().unwrap();
            check(engine, dir.path());
        }
    }

    #[test]
    fn groups_keep_their_keys_and_applied_indexes_apart_and_across_a_reopen() {
        each_engine(|engine, dir| {
            {
                let shared = SharedStore::open(engine, dir).unwrap();
                let mut a = shared.group(1).unwrap();
                let mut b = shared.group(2).unwrap();
                put(&mut *a, "k", "a1", 5);
                put(&mut *b, "k", "b1", 9);
                put(&mut *a, "x", "a2", 6);
                assert_eq!(a.get(b"k").unwrap(), Some(b"a1".to_vec()), "{engine:?}");
                assert_eq!(b.get(b"k").unwrap(), Some(b"b1".to_vec()));
                assert_eq!(b.get(b"x").unwrap(), None);
                assert_eq!(a.applied_index().unwrap(), 6);
                assert_eq!(b.applied_index().unwrap(), 9);
                assert_eq!(dump(&*a), kv(&[("k", "a1"), ("x", "a2")]));
                assert_eq!(dump(&*b), kv(&[("k", "b1")]));
                a.sync().unwrap();
            }
            let shared = SharedStore::open(engine, dir).unwrap();
            let a = shared.group(1).unwrap();
            let b = shared.group(2).unwrap();
            let c = shared.group(3).unwrap();
            assert_eq!(a.applied_index().unwrap(), 6, "{engine:?}");
            assert_eq!(b.applied_index().unwrap(), 9);
            assert_eq!(c.applied_index().unwrap(), 0);
            assert_eq!(dump(&*a), kv(&[("k", "a1"), ("x", "a2")]));
            assert_eq!(dump(&*b), kv(&[("k", "b1")]));
            assert!(dump(&*c).is_empty());
        });
    }

    #[test]
    fn groups_share_one_durable_commit_schedule() {
        // A copy of the file is what a crash leaves: the last durable commit. Runs of several
        // groups made within one interval are all in it after one durable commit, none before.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shards.redb");
        let shared =
            Arc::new(SharedRedb::open_with(&path, std::time::Duration::from_secs(3600)).unwrap());
        let mut groups: Vec<RedbGroup> = (1..=8)
            .map(|g| RedbGroup::open(shared.clone(), g).unwrap())
            .collect();
        for (i, g) in groups.iter_mut().enumerate() {
            put(g, "k", "v", 10 + i as u64);
        }
        let crashed = |name: &str| {
            let copy = dir.path().join(name);
            std::fs::copy(&path, &copy).unwrap();
            let db = Arc::new(SharedRedb::open(&copy).unwrap());
            (1..=8)
                .map(|g| {
                    RedbGroup::open(db.clone(), g)
                        .unwrap()
                        .applied_index()
                        .unwrap()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(crashed("before"), vec![0; 8], "nothing durable yet");
        // Visible to the groups themselves all along.
        assert_eq!(groups[3].get(b"k").unwrap(), Some(b"v".to_vec()));
        groups[0].sync().unwrap();
        assert_eq!(crashed("after"), (10..18).collect::<Vec<_>>());
    }

    #[test]
    fn runs_are_committed_durably_once_per_interval_for_the_whole_node() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shards.redb");
        let shared = Arc::new(SharedRedb::open_with(&path, std::time::Duration::ZERO).unwrap());
        let mut a = RedbGroup::open(shared.clone(), 1).unwrap();
        let mut b = RedbGroup::open(shared.clone(), 2).unwrap();
        put(&mut a, "k", "1", 1);
        let mut batch = WriteBatch::default();
        batch.put(b"k".to_vec(), b"2".to_vec());
        b.commit(batch, 4).unwrap();
        // `a`'s finish commits `b`'s staged entry too (interval zero: every finish is durable).
        a.finish().unwrap();
        assert!(shared.state.lock().tx.is_none());
        let copy = dir.path().join("copy");
        std::fs::copy(&path, &copy).unwrap();
        let db = Arc::new(SharedRedb::open(&copy).unwrap());
        assert_eq!(
            RedbGroup::open(db.clone(), 2)
                .unwrap()
                .applied_index()
                .unwrap(),
            4
        );
    }

    type Source = Box<dyn FnMut() -> Result<Option<(Vec<u8>, Vec<u8>)>, ()>>;

    /// An image of `n` 64 KiB records (several import steps), failing at record `fail_at`.
    fn image(n: usize, fail_at: Option<usize>) -> Source {
        let mut i = 0usize;
        Box::new(move || {
            i += 1;
            if Some(i) == fail_at {
                return Err(());
            }
            if i > n {
                return Ok(None);
            }
            Ok(Some((
                format!("big{i:06}").into_bytes(),
                vec![(i % 251) as u8; 64 * 1024],
            )))
        })
    }

    #[test]
    fn an_import_replaces_only_its_group_and_a_failed_one_changes_nothing() {
        each_engine(|engine, dir| {
            let n = IMPORT_STEP_BYTES * 5 / 2 / (64 * 1024);
            {
                let shared = SharedStore::open(engine, dir).unwrap();
                let mut a = shared.group(1).unwrap();
                let mut b = shared.group(2).unwrap();
                put(&mut *a, "k", "a", 3);
                put(&mut *b, "k", "b", 7);
                let e = a.replace_all(500, &mut *image(n, Some(n - 3))).unwrap_err();
                assert!(
                    matches!(e, StoreError::ReplaceAborted { .. }),
                    "{engine:?}: {e:?}"
                );
                assert_eq!(a.applied_index().unwrap(), 3);
                assert_eq!(dump(&*a), kv(&[("k", "a")]));
                // The other group goes on meanwhile and is untouched.
                put(&mut *b, "j", "b2", 8);
                a.replace_all(600, &mut *image(n, None)).unwrap();
                assert_eq!(a.applied_index().unwrap(), 600);
                assert_eq!(a.get(b"k").unwrap(), None);
                assert_eq!(dump(&*b), kv(&[("j", "b2"), ("k", "b")]));
                assert_eq!(b.applied_index().unwrap(), 8);
            }
            let shared = SharedStore::open(engine, dir).unwrap();
            let a = shared.group(1).unwrap();
            let b = shared.group(2).unwrap();
            assert_eq!(a.applied_index().unwrap(), 600, "{engine:?}");
            assert_eq!(dump(&*a).len(), n);
            assert_eq!(
                a.get(format!("big{n:06}").as_bytes()).unwrap(),
                Some(vec![(n % 251) as u8; 64 * 1024])
            );
            assert_eq!(b.applied_index().unwrap(), 8);
            assert_eq!(dump(&*b), kv(&[("j", "b2"), ("k", "b")]));
        });
    }

    #[test]
    fn an_interrupted_import_is_dropped_when_the_group_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shards.redb");
        {
            let shared = Arc::new(SharedRedb::open(&path).unwrap());
            let mut a = RedbGroup::open(shared.clone(), 1).unwrap();
            put(&mut a, "k", "a", 3);
            // What a crash between two import steps leaves: a committed `import/1`.
            let mut st = shared.state.lock();
            let tx = st.tx(&shared.db).unwrap();
            let name = import_name(1);
            let mut t = tx.open_table(kv_def(&name)).unwrap();
            t.insert(b"half".as_slice(), b"way".as_slice()).unwrap();
            drop(t);
            st.commit(&shared.db, Durability::Immediate).unwrap();
        }
        let shared = Arc::new(SharedRedb::open(&path).unwrap());
        let a = RedbGroup::open(shared.clone(), 1).unwrap();
        assert_eq!(dump(&a), kv(&[("k", "a")]));
        assert_eq!(a.applied_index().unwrap(), 3);
        let tx = shared.db.begin_read().unwrap();
        assert!(matches!(
            tx.open_table(kv_def(&import_name(1))),
            Err(TableError::TableDoesNotExist(_))
        ));
    }

    #[test]
    fn a_view_is_isolated_from_later_commits() {
        let dir = tempfile::tempdir().unwrap();
        let shared = SharedStore::open(StorageEngine::Redb, dir.path()).unwrap();
        let mut a = shared.group(1).unwrap();
        put(&mut *a, "k", "1", 1);
        let view = a.view().unwrap().expect("redb has views");
        put(&mut *a, "k", "2", 2);
        assert_eq!(view.applied_index(), 1);
        let mut seen = Vec::new();
        view.scan_all(&mut |k, v| {
            seen.push((k.to_vec(), v.to_vec()));
            Ok(true)
        })
        .unwrap();
        assert_eq!(seen, kv(&[("k", "1")]));
        assert_eq!(a.get(b"k").unwrap(), Some(b"2".to_vec()));
    }

    #[test]
    fn a_lost_transaction_makes_every_group_opened_before_it_refuse_calls() {
        let dir = tempfile::tempdir().unwrap();
        let shared = Arc::new(SharedRedb::open(&dir.path().join("s.redb")).unwrap());
        let mut a = RedbGroup::open(shared.clone(), 1).unwrap();
        let mut b = RedbGroup::open(shared.clone(), 2).unwrap();
        put(&mut a, "k", "1", 1);
        // What an engine error in another group's call does to the shared transaction.
        shared.state.lock().abandon();
        let e = b.commit(WriteBatch::default(), 1).unwrap_err();
        assert!(e.to_string().contains("shared transaction"), "{e}");
        assert!(a.get(b"k").is_err());
        // Reopened (what a restarted applier does): at what the store holds.
        let a = RedbGroup::open(shared.clone(), 1).unwrap();
        assert_eq!(a.applied_index().unwrap(), 0);
        assert_eq!(a.get(b"k").unwrap(), None);
    }

    #[test]
    fn a_group_store_of_a_previous_version_is_migrated_into_the_shared_store() {
        each_engine(|engine, dir| {
            let legacy = dir.join("groups").join("4");
            {
                let mut old = open_store(engine, &legacy).unwrap();
                put(&mut *old, "dk", "v", 41);
                put(&mut *old, "k/id", "rec", 42);
                old.sync().unwrap();
            }
            // A directory left by an earlier, interrupted migration's clean-up.
            std::fs::create_dir_all(dir.join("groups").join("5.migrated")).unwrap();
            {
                let stores = NodeStores::new(engine, dir);
                let g = stores.open_group(4).unwrap();
                assert_eq!(g.applied_index().unwrap(), 42, "{engine:?}");
                assert_eq!(dump(&*g), kv(&[("dk", "v"), ("k/id", "rec")]));
                assert!(!legacy.exists());
                assert!(!dir.join("groups").join("4.migrated").exists());
                let g5 = stores.open_group(5).unwrap();
                assert_eq!(g5.applied_index().unwrap(), 0);
                assert!(!dir.join("groups").join("5.migrated").exists());
            }
            let stores = NodeStores::new(engine, dir);
            let g = stores.open_group(4).unwrap();
            assert_eq!(g.applied_index().unwrap(), 42, "{engine:?}");
            assert_eq!(dump(&*g), kv(&[("dk", "v"), ("k/id", "rec")]));
        });
    }

    #[test]
    fn a_migration_cut_before_the_old_store_was_removed_runs_again() {
        // The copy is durable but the rename did not happen: the next open copies again.
        let dir = tempfile::tempdir().unwrap();
        let legacy = dir.path().join("groups").join("2");
        {
            let mut old = RedbStore::open(&legacy.join("sm.redb")).unwrap();
            put(&mut old, "a", "1", 7);
            old.sync().unwrap();
        }
        {
            let shared = SharedStore::open(StorageEngine::Redb, dir.path()).unwrap();
            migrate(&shared, 2, &legacy, StorageEngine::Redb).unwrap();
            let mut g = shared.group(2).unwrap();
            // Something the shared copy must not keep: the old store is the group's until
            // the migration finishes.
            put(&mut *g, "stray", "x", 8);
            g.sync().unwrap();
        }
        let stores = NodeStores::new(StorageEngine::Redb, dir.path());
        let g = stores.open_group(2).unwrap();
        assert_eq!(g.applied_index().unwrap(), 7);
        assert_eq!(dump(&*g), kv(&[("a", "1")]));
        assert!(!legacy.exists());
    }

    #[test]
    fn the_other_engines_shared_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(SharedStore::open(StorageEngine::Sled, dir.path()).unwrap());
        match SharedStore::open(StorageEngine::Redb, dir.path()) {
            Err(StoreError::EngineMismatch { found, .. }) => assert_eq!(found, "sled"),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("a redb store was opened beside a sled one"),
        }
    }
}
