//! The redb engine of the state store (redb 2.x, file format v3): one file, a copy-on-write
//! B-tree with ACID transactions. Each commit is one write transaction that changes the `kv`
//! table and the applied index in the `meta` table together.
//!
//! [`StateStore::commit`] stages a batch in an open write transaction (later reads of this store
//! see it); [`StateStore::finish`] ends a run of entries. The transaction is committed, durably
//! (`Durability::Eventual`, an `fdatasync` on Linux), once per interval of
//! [`DURABLE_EVERY_MIN`] to [`DURABLE_EVERY_MAX`] (1 s unless durable commits take longer than
//! [`DURABLE_COMMIT_TARGET`], see [`DurablePolicy`]): runs that end sooner stay staged in it and
//! are committed with the next. A run after a quiet spell is committed at once. The Raft log is the durable record: the node replays it from the store's
//! applied index, and the log is compacted only up to a snapshot, taken after
//! [`StateStore::sync`] (a commit with `Durability::Immediate`).
//!
//! Why not a commit per run: each commit writes every page it changed to the file (redb's
//! `write_barrier`), a new page each time (a copy-on-write tree frees pages only at durable
//! commits), so a leaf that 50 runs change in 100 ms was written 50 times. A probe of the
//! applier's pattern (1 KiB values over 4,096 keys plus the idempotency records, runs of 5
//! entries, a durable commit every 300 entries, 256 MiB of 64 KiB values in the store) wrote
//! 24.4 KB per entry with a non-durable commit per run and 6.6 KB with the runs staged until
//! the durable commit, in half the CPU time; under membership_load every voter wrote ~110 MB/s
//! for ~3,000 writes/s of 1 KiB. Nothing is lost by staging: a non-durable commit did not
//! survive a crash either (the file holds the last durable commit), and a graceful close
//! commits what is staged (see `Drop`).
//!
//! Why not an fsync per run (what `Durability::Eventual` does on Linux: redb's "eventual"
//! differs from "immediate" only on macOS): that fsync was on every write's path, since the
//! applier answers writers after `finish`, and it was the stage that saturated while a
//! snapshot image was written (docs/performance.md "Snapshots taken under load"). etcd's
//! backend and TiKV's apply path do the same: the state store is synced in batches, the log
//! per write. Scans outside a batch run in a read transaction: a consistent view while
//! writes go on; a view ([`StateStore::view`]) sees the last commit, so a snapshot syncs first.

use super::background_io;
use super::state_store::{
    sync_parent, with_suffix, NextRecord, StateStore, StoreError, StoreOp, StoreView, Visit,
    WriteBatch,
};
use conclave_core::raft::LogIndex;
use redb::{Database, Durability, ReadOnlyTable, ReadableTable, TableDefinition, WriteTransaction};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ENGINE: &str = "redb";
const KV: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const APPLIED: &str = "applied";
/// redb's page cache. Its default (1 GiB) would let the cache alone grow past the node's
/// memory budget on a large state.
const CACHE_BYTES: usize = 64 * 1024 * 1024;
/// A snapshot is imported (`replace_all`) in non-durable commits of this many bytes
/// inserted, each written back to the device once committed
/// ([`background_io::write_back_dirty`]).
const IMPORT_STEP_BYTES: usize = 16 * 1024 * 1024;
/// The shortest interval between two durable commits of runs: where the interval starts
/// again after durable commits that took longer than [`DURABLE_COMMIT_TARGET`]. Short enough
/// that the pages freed by the commits in between are reused soon (redb frees pages only in
/// durable commits, so without them the file would only grow) and that a crash replays
/// little of the log; long enough that the fsync is a small share of the runs (several
/// hundred runs a second under load).
pub const DURABLE_EVERY_MIN: Duration = Duration::from_millis(100);
/// The longest interval between two durable commits of runs, and the one a store starts
/// with. A durable commit writes every page the runs since the last one changed, once: with a
/// small hot key space most runs change pages that earlier runs of the same interval already
/// changed, so a longer interval writes fewer pages per entry. Measured (docs/performance.md,
/// "The state store's durable commits"): 3 nodes, 64 clients writing 256 B values over 10,000
/// keys, 1 s instead of 100 ms took 4-6 µs of CPU per write off every node (the leader 38 →
/// 33 µs, followers 21 → 17 µs) and wrote 22-27% more writes/s, the longest apply run 4.5 ms.
pub const DURABLE_EVERY_MAX: Duration = Duration::from_millis(1000);
/// What one durable commit may take before the interval shrinks: the commit runs on an
/// applier (and, for the shared store, under the lock every shard's applier takes), so it
/// stalls applies for as long as it takes. With a large key space every run changes pages of
/// its own and a longer interval only makes each commit (each stall) longer, not the pages
/// fewer: commits slower than this shorten the interval (down to [`DURABLE_EVERY_MIN`]),
/// commits faster than half of it double it (up to [`DURABLE_EVERY_MAX`]).
pub const DURABLE_COMMIT_TARGET: Duration = Duration::from_millis(10);

/// Which durability the next run's commit gets: durable once the interval has passed since
/// the last durable commit, otherwise none (written, atomic, not fsynced). The interval adapts
/// to how long durable commits take (see [`DURABLE_COMMIT_TARGET`]).
#[derive(Clone, Debug)]
pub struct DurablePolicy {
    min: Duration,
    max: Duration,
    every: Duration,
    last_durable: Instant,
}

impl DurablePolicy {
    /// A policy with a fixed interval, whose last durable commit was at `now` (opening the
    /// store commits durably).
    pub fn new(every: Duration, now: Instant) -> DurablePolicy {
        DurablePolicy {
            min: every,
            max: every,
            every,
            last_durable: now,
        }
    }

    /// A policy whose interval adapts between `min` and `max` (starting at `max`) to the
    /// time durable commits take, reported by [`DurablePolicy::took`].
    pub fn adaptive(min: Duration, max: Duration, now: Instant) -> DurablePolicy {
        DurablePolicy {
            min: min.min(max),
            max,
            every: max,
            last_durable: now,
        }
    }

    /// The interval between durable commits now.
    pub fn interval(&self) -> Duration {
        self.every
    }

    /// Whether a commit made at `now` is durable; a durable one restarts the interval.
    pub fn next(&mut self, now: Instant) -> bool {
        let durable = now.saturating_duration_since(self.last_durable) >= self.every;
        if durable {
            self.last_durable = now;
        }
        durable
    }

    /// A durable commit was made at `now` by other means ([`StateStore::sync`]).
    pub fn synced(&mut self, now: Instant) {
        self.last_durable = now;
    }

    /// A durable commit took `elapsed`: over [`DURABLE_COMMIT_TARGET`], the interval shrinks in
    /// proportion (a commit `k` times the target: an interval `k` times shorter); under half
    /// of it, the interval doubles; always within the policy's bounds.
    pub fn took(&mut self, elapsed: Duration) {
        let before = self.every;
        if elapsed > DURABLE_COMMIT_TARGET {
            // In one step to where a commit of the same pages per interval would take the
            // target (the pages a commit writes grow with the interval at most linearly).
            let scaled = self
                .every
                .mul_f64(DURABLE_COMMIT_TARGET.as_secs_f64() / elapsed.as_secs_f64());
            self.every = scaled.max(self.min);
        } else if elapsed < DURABLE_COMMIT_TARGET / 2 {
            self.every = self.every.saturating_mul(2).min(self.max);
        }
        if self.every != before {
            tracing::debug!(
                took_ms = elapsed.as_secs_f64() * 1e3,
                interval_ms = self.every.as_millis() as u64,
                "state store: durable commit interval changed"
            );
        }
    }
}

/// A redb database file.
pub struct RedbStore {
    /// The transaction batches are staged in until [`StateStore::finish`]. Declared before
    /// `db` so that it is dropped (aborted) first: `Database`'s drop begins a write
    /// transaction of its own and would wait for this one forever.
    tx: Option<WriteTransaction>,
    db: Database,
    /// The database file (a second handle on it writes an import back as it goes).
    path: PathBuf,
    /// When runs are committed durably.
    durable: DurablePolicy,
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        // A graceful close keeps the staged runs: committed here without an fsync, they are
        // made durable by the `Database`'s own drop (a durable commit of redb's allocator
        // state), as a non-durable commit per run was. Every entry is staged whole with its
        // applied index (a batch whose staging failed was dropped at once), so what is staged
        // is consistent even if the last run did not end. While panicking nothing is written
        // (the `Database` writes nothing either): the node replays the log from the last
        // durable commit, as after a crash.
        if let Some(mut tx) = self.tx.take() {
            if std::thread::panicking() {
                return;
            }
            tx.set_durability(Durability::None);
            if let Err(e) = tx.commit() {
                tracing::warn!(error = %e, "the state store's staged runs could not be committed at close; the node replays them from the log");
            }
        }
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
        Self::open_policy(
            path,
            DurablePolicy::adaptive(DURABLE_EVERY_MIN, DURABLE_EVERY_MAX, Instant::now()),
        )
    }

    /// Opens the database file at `path`, committing runs durably at most every
    /// `durable_every` (zero: every run), a fixed interval.
    pub fn open_with(path: &Path, durable_every: Duration) -> Result<RedbStore, StoreError> {
        Self::open_policy(path, DurablePolicy::new(durable_every, Instant::now()))
    }

    fn open_policy(path: &Path, durable: DurablePolicy) -> Result<RedbStore, StoreError> {
        let open_err = |e: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            engine: ENGINE,
            path: path.to_owned(),
            source: e,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| open_err(Box::new(e)))?;
        }
        // A new store is created whole or not at all (see `ensure_created`).
        ensure_created(path)?;
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
        Ok(RedbStore {
            db,
            path: path.to_owned(),
            tx: None,
            durable,
        })
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

    /// Commits the staged transaction, if any, with `durability`.
    fn commit_staged(&mut self, durability: Durability) -> Result<(), StoreError> {
        match self.tx.take() {
            Some(mut tx) => {
                tx.set_durability(durability);
                tx.commit().map_err(err("commit"))
            }
            None => Ok(()),
        }
    }

    /// The open batch transaction, begun if none is.
    fn batch_tx(&mut self) -> Result<&WriteTransaction, StoreError> {
        if self.tx.is_none() {
            // The durability is chosen at `finish`; until then the run is not fsynced.
            let mut tx = self.db.begin_write().map_err(err("begin_write"))?;
            tx.set_durability(Durability::None);
            self.tx = Some(tx);
        }
        self.tx
            .as_ref()
            .ok_or(StoreError::NoWriteTransaction { engine: ENGINE })
    }
}

/// redb's magic number: the first bytes of every database file redb finished creating (redb
/// 2.x, `tree_store/page_store/header.rs`). redb writes it last when it creates a file, after
/// the rest of the header and the allocator state are fsynced, and every later header write
/// carries it.
const REDB_MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];
/// Suffix of the file a new store is created in before it is renamed into place.
const CREATING_SUFFIX: &str = ".creating";
/// Suffix a store whose creation was interrupted (by a build without staged creation) is
/// renamed to, kept for inspection instead of deleted.
const INTERRUPTED_SUFFIX: &str = ".interrupted-create";

/// What is at a store's path before it is opened, judged from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Found {
    /// No file.
    Nothing,
    /// A file that starts with redb's magic number.
    Database,
    /// An empty file, or one whose first bytes are all zero: `Database::create` was
    /// interrupted (it sizes the file, writes the header without the magic number, fsyncs,
    /// then writes the magic number). No transaction was ever committed in it.
    InterruptedCreate,
    /// Anything else: not a redb file.
    Foreign,
}

/// Looks at the first bytes of `path`.
fn inspect(path: &Path) -> std::io::Result<Found> {
    use std::io::Read;
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Nothing),
        Err(e) => return Err(e),
    };
    let mut head = [0u8; REDB_MAGIC.len()];
    let mut len = 0;
    while len < head.len() {
        match file.read(&mut head[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let head = &head[..len];
    Ok(if head == REDB_MAGIC {
        Found::Database
    } else if head.iter().all(|b| *b == 0) {
        Found::InterruptedCreate
    } else {
        Found::Foreign
    })
}

/// Makes sure `path` holds a database redb finished creating, with both tables.
///
/// redb's `Database::create` initialises a new file in place, and since redb 2.4 (PR #914) it
/// refuses a non-empty file without its magic number rather than initialise it again: a
/// process killed in the middle of creating one (between sizing the file and writing the magic
/// number, which spans an fsync) left a file no later start could open — `I/O error: invalid
/// data` on every restart (issue 13's CI run). So a new store is created under another name
/// (`<path>.creating`), its tables committed durably, fsynced, and renamed into place, the
/// directory fsynced: a crash leaves either no store (the next start creates it again) or a
/// whole one. A file an older build left half created is recognised by its zero first bytes,
/// renamed aside (`<path>.interrupted-create`) with a warning, and replaced by a new store:
/// redb writes the magic number before any transaction can commit, so it held no state. A file
/// that is neither is refused ([`StoreError::NotADatabase`]).
pub(crate) fn ensure_created(path: &Path) -> Result<(), StoreError> {
    let open_err = |e: std::io::Error| StoreError::Open {
        engine: ENGINE,
        path: path.to_owned(),
        source: Box::new(e),
    };
    match inspect(path).map_err(open_err)? {
        Found::Database => return Ok(()),
        Found::Foreign => {
            return Err(StoreError::NotADatabase {
                engine: ENGINE,
                path: path.to_owned(),
            })
        }
        Found::Nothing => {}
        Found::InterruptedCreate => {
            let aside = with_suffix(path, INTERRUPTED_SUFFIX);
            tracing::warn!(
                path = %path.display(),
                moved_to = %aside.display(),
                "the state store's creation was interrupted (no redb magic number: it never held a commit); it is moved aside and created again"
            );
            std::fs::rename(path, &aside).map_err(open_err)?;
        }
    }
    let staging = with_suffix(path, CREATING_SUFFIX);
    let staging_err = |e: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
        engine: ENGINE,
        path: staging.clone(),
        source: e,
    };
    // What an interrupted staged creation left never held anything.
    match std::fs::remove_file(&staging) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(staging_err(Box::new(e))),
    }
    {
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create_with_file_format_v3(true)
            .create(&staging)
            .map_err(|e| staging_err(Box::new(e)))?;
        let mut tx = db.begin_write().map_err(err("begin_write"))?;
        tx.set_durability(Durability::Immediate);
        tx.open_table(KV).map_err(err("open_table"))?;
        tx.open_table(META).map_err(err("open_table"))?;
        tx.commit().map_err(err("commit"))?;
    }
    // Whatever closing the database wrote is durable before the name points at it.
    std::fs::File::open(&staging)
        .and_then(|f| f.sync_all())
        .map_err(|e| staging_err(Box::new(e)))?;
    std::fs::rename(&staging, path).map_err(open_err)?;
    sync_parent(path).map_err(open_err)
}

/// A redb read transaction's key-value table (this store's `kv`, or one group's table of the
/// node's shared store) and the applied index read in the same transaction: the state as of
/// one commit, unchanged by later ones.
pub(crate) struct RedbView {
    pub(crate) kv: ReadOnlyTable<&'static [u8], &'static [u8]>,
    pub(crate) applied: LogIndex,
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
        // Runs that end within the interval of the last durable commit stay staged and go
        // with the next one (see the module docs).
        if self.tx.is_some() && self.durable.next(Instant::now()) {
            let started = Instant::now();
            let committed = self.commit_staged(Durability::Eventual);
            self.durable.took(started.elapsed());
            return committed;
        }
        Ok(())
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
        // The staged runs, or an empty transaction: either commit makes every earlier
        // commit durable too.
        if self.tx.is_none() {
            self.batch_tx()?;
        }
        let started = Instant::now();
        self.commit_staged(Durability::Immediate)?;
        self.durable.synced(Instant::now());
        self.durable.took(started.elapsed());
        Ok(())
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
        // The staged runs first (redb has one write transaction at a time; beginning another
        // while this store holds one would wait for ever).
        self.commit_staged(Durability::None)?;
        // The import runs in steps: each step is a commit without fsync (`Durability::None`),
        // and only the last one, which also records `applied`, is durable. A crash anywhere
        // before it leaves the store at its last durable commit — the state before the import
        // with its own `applied`, consistent — exactly as one large transaction would, and
        // the node restores the snapshot again. Why steps: a leaf or branch page that is still
        // being filled is rewritten by the next inserts of its transaction, so writing the
        // file back while one transaction grows wrote most pages twice (a probe of 128 MB of
        // 64 KiB values: 489 MB written for 1 transaction written back every 8 MiB, 255 MB
        // without write-back); pages a step committed are never modified again (the next
        // step copies what it changes), so each step's pages are written back once, after
        // its commit. Without the write-back, the final commit's fsync would flush the whole
        // import in front of every WAL `fdatasync` on the device.
        let writeback = std::fs::File::open(&self.path).ok();
        // The import is background work on the applier's thread (the node is catching up; the
        // group waits for it anyway): at background CPU and I/O priority until it ends, so the
        // Raft work and WAL syncs sharing the machine go first.
        let _background = background_io::PriorityGuard::background();
        // Where a failed import goes back to: the state before it, in this process as well
        // (the steps it committed are visible here; a refused snapshot must change nothing).
        let mut savepoint = None;
        let mut first = true;
        loop {
            let mut tx = self.db.begin_write().map_err(err("begin_write"))?;
            if first {
                savepoint = Some(tx.ephemeral_savepoint().map_err(err("savepoint"))?);
            }
            let outcome = (|| {
                let mut kv = tx.open_table(KV).map_err(err("open_table"))?;
                if first {
                    kv.retain(|_, _| false).map_err(err("clear"))?;
                }
                let mut step = 0usize;
                while step < IMPORT_STEP_BYTES {
                    let Some((k, v)) =
                        next().map_err(|()| StoreError::ReplaceAborted { engine: ENGINE })?
                    else {
                        return Ok(true);
                    };
                    kv.insert(k.as_slice(), v.as_slice())
                        .map_err(err("insert"))?;
                    step += k.len() + v.len();
                }
                Ok(false)
            })();
            first = false;
            match outcome {
                Ok(true) => {
                    let mut meta = tx.open_table(META).map_err(err("open_table"))?;
                    meta.insert(APPLIED, applied).map_err(err("insert"))?;
                    drop(meta);
                    tx.set_durability(Durability::Immediate);
                    return tx.commit().map_err(err("commit"));
                }
                Ok(false) => {
                    tx.set_durability(Durability::None);
                    tx.commit().map_err(err("commit"))?;
                    if let Some(f) = &writeback {
                        if let Err(e) = background_io::write_back_dirty(f) {
                            tracing::debug!(error = %e, "incremental writeback of an import refused");
                        }
                    }
                }
                Err(e) => {
                    tx.abort().map_err(err("abort"))?;
                    // The steps committed so far are not durable, so a restart would find the
                    // state before the import; this process goes back to it too.
                    if let Some(savepoint) = &savepoint {
                        let mut tx = self.db.begin_write().map_err(err("begin_write"))?;
                        tx.restore_savepoint(savepoint)
                            .map_err(err("restore_savepoint"))?;
                        tx.commit().map_err(err("commit"))?;
                    }
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_durable_once_per_interval() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = DurablePolicy::new(ms(100), t0);
        assert!(!p.next(t0 + ms(1)));
        assert!(!p.next(t0 + ms(99)));
        assert!(p.next(t0 + ms(100)));
        // The interval restarts at the durable commit.
        assert!(!p.next(t0 + ms(150)));
        assert!(p.next(t0 + ms(205)));
        // A sync is a durable commit too.
        p.synced(t0 + ms(290));
        assert!(!p.next(t0 + ms(320)));
        assert!(p.next(t0 + ms(390)));
        // Zero: every run durable.
        let mut p = DurablePolicy::new(Duration::ZERO, t0);
        assert!(p.next(t0));
        assert!(p.next(t0));
    }

    #[test]
    fn the_interval_adapts_to_how_long_durable_commits_take() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = DurablePolicy::adaptive(ms(100), ms(1000), t0);
        assert_eq!(p.interval(), ms(1000), "starts at the longest interval");
        assert!(!p.next(t0 + ms(999)));
        assert!(p.next(t0 + ms(1000)));
        // Within the target: unchanged.
        p.took(ms(7));
        assert_eq!(p.interval(), ms(1000));
        // Four times the target: an interval four times shorter, in one step.
        p.took(ms(40));
        assert_eq!(p.interval(), ms(250));
        assert!(!p.next(t0 + ms(1249)));
        assert!(p.next(t0 + ms(1250)));
        // Never below the shortest, however slow the commit.
        p.took(ms(5000));
        assert_eq!(p.interval(), ms(100));
        p.took(ms(20));
        assert_eq!(p.interval(), ms(100));
        // Fast commits double it back, up to the longest.
        p.took(ms(1));
        assert_eq!(p.interval(), ms(200));
        p.took(ms(4));
        assert_eq!(p.interval(), ms(400));
        p.took(Duration::ZERO);
        p.took(Duration::ZERO);
        assert_eq!(p.interval(), ms(1000));
        // A fixed policy stays fixed.
        let mut f = DurablePolicy::new(ms(100), t0);
        f.took(ms(500));
        f.took(Duration::ZERO);
        assert_eq!(f.interval(), ms(100));
    }

    fn overwrite_runs(s: &mut RedbStore, runs: u64, first: LogIndex) {
        for i in 0..runs {
            let mut b = WriteBatch::default();
            b.put(b"k".to_vec(), vec![i as u8; 16 * 1024]);
            s.commit(b, first + i).unwrap();
            s.finish().unwrap();
        }
    }

    type Source = Box<dyn FnMut() -> Result<Option<(Vec<u8>, Vec<u8>)>, ()>>;

    /// An import larger than several steps (`IMPORT_STEP_BYTES`): 64 KiB values.
    fn big_image(n: usize, fail_at: Option<usize>) -> Source {
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
    fn an_import_of_several_steps_replaces_the_state_and_survives_a_reopen() {
        let n = IMPORT_STEP_BYTES * 5 / 2 / (64 * 1024);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sm.redb");
        {
            let mut s = RedbStore::open(&path).unwrap();
            overwrite_runs(&mut s, 3, 1);
            s.replace_all(500, &mut *big_image(n, None)).unwrap();
            assert_eq!(s.applied_index().unwrap(), 500);
            // What the store held before is gone.
            assert_eq!(s.get(b"k").unwrap(), None);
            drop(s);
        }
        let s = RedbStore::open(&path).unwrap();
        assert_eq!(s.applied_index().unwrap(), 500);
        assert_eq!(s.get(b"k").unwrap(), None);
        for i in [1, n / 2, n] {
            let key = format!("big{i:06}");
            assert_eq!(
                s.get(key.as_bytes()).unwrap(),
                Some(vec![(i % 251) as u8; 64 * 1024]),
                "{key}"
            );
        }
        assert_eq!(s.get(format!("big{:06}", n + 1).as_bytes()).unwrap(), None);
    }

    #[test]
    fn an_import_that_fails_after_several_steps_changes_nothing() {
        let n = IMPORT_STEP_BYTES * 5 / 2 / (64 * 1024);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sm.redb");
        let mut s = RedbStore::open(&path).unwrap();
        overwrite_runs(&mut s, 3, 1);
        // The source fails after two steps were committed (not durably).
        let e = s
            .replace_all(500, &mut *big_image(n, Some(n - 3)))
            .unwrap_err();
        assert!(matches!(e, StoreError::ReplaceAborted { .. }), "{e:?}");
        assert_eq!(s.applied_index().unwrap(), 3);
        assert_eq!(s.get(b"k").unwrap(), Some(vec![2; 16 * 1024]));
        assert_eq!(s.get(b"big000001").unwrap(), None);
        // The store goes on: a later import succeeds, and what it holds after a reopen is that.
        s.replace_all(600, &mut *big_image(4, None)).unwrap();
        drop(s);
        let s = RedbStore::open(&path).unwrap();
        assert_eq!(s.applied_index().unwrap(), 600);
        assert_eq!(s.get(b"k").unwrap(), None);
        assert_eq!(s.get(b"big000005").unwrap(), None);
        assert!(s.get(b"big000004").unwrap().is_some());
    }

    #[test]
    fn runs_that_are_not_fsynced_are_read_back_and_kept_by_a_clean_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sm.redb");
        {
            // Never durable by the interval: only the close makes the runs durable.
            let mut s = RedbStore::open_with(&path, Duration::MAX).unwrap();
            overwrite_runs(&mut s, 50, 1);
            assert_eq!(s.get(b"k").unwrap(), Some(vec![49; 16 * 1024]));
            assert_eq!(s.applied_index().unwrap(), 50);
        }
        let s = RedbStore::open(&path).unwrap();
        assert_eq!(s.applied_index().unwrap(), 50);
        assert_eq!(s.get(b"k").unwrap(), Some(vec![49; 16 * 1024]));
    }

    #[test]
    fn a_store_whose_creation_was_interrupted_is_moved_aside_and_created_again() {
        // What a process killed inside `Database::create` leaves: a sized file whose header
        // lacks the magic number (here: a whole database with its magic number zeroed, which
        // is the header redb writes before the magic number), or an empty file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sm.redb");
        {
            let mut s = RedbStore::open(&path).unwrap();
            overwrite_runs(&mut s, 3, 1);
            s.sync().unwrap();
        }
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[..REDB_MAGIC.len()].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        match Database::create(&path) {
            Err(redb::DatabaseError::Storage(redb::StorageError::Io(e))) => {
                assert_eq!(e.kind(), std::io::ErrorKind::InvalidData)
            }
            Err(e) => panic!("redb refused it another way: {e}"),
            Ok(_) => panic!("redb opened a file without its magic number"),
        }
        let mut s = RedbStore::open(&path).unwrap();
        assert_eq!(s.applied_index().unwrap(), 0);
        overwrite_runs(&mut s, 1, 1);
        drop(s);
        let aside = dir.path().join("sm.redb.interrupted-create");
        assert_eq!(std::fs::read(&aside).unwrap(), bytes, "kept for inspection");
        assert_eq!(RedbStore::open(&path).unwrap().applied_index().unwrap(), 1);

        std::fs::write(&path, b"").unwrap();
        assert_eq!(RedbStore::open(&path).unwrap().applied_index().unwrap(), 0);
        assert!(!dir.path().join("sm.redb.creating").exists());
    }

    #[test]
    fn a_staged_creation_left_behind_is_discarded_and_a_foreign_file_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sm.redb");
        // A creation killed before its rename: the name does not exist yet.
        std::fs::write(dir.path().join("sm.redb.creating"), vec![0u8; 4096]).unwrap();
        let mut s = RedbStore::open(&path).unwrap();
        overwrite_runs(&mut s, 2, 1);
        drop(s);
        assert!(!dir.path().join("sm.redb.creating").exists());
        assert_eq!(RedbStore::open(&path).unwrap().applied_index().unwrap(), 2);

        let other = dir.path().join("other.redb");
        std::fs::write(&other, b"not a database at all").unwrap();
        match RedbStore::open(&other) {
            Err(e @ StoreError::NotADatabase { .. }) => {
                assert!(e.to_string().contains("other.redb"), "{e}")
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("a foreign file was opened"),
        }
        assert_eq!(std::fs::read(&other).unwrap(), b"not a database at all");
    }

    #[test]
    fn staged_runs_do_not_grow_the_file_and_are_read_back_before_they_are_written() {
        // 2,000 overwrites of one 16 KiB value. A commit per run wrote a new copy of every
        // page it changed, and redb reuses freed pages only after a durable commit: with no
        // durable commit due, that grew the file by every copy (> 32 MB). Staged in one
        // transaction until a durable commit is due, each run's pages replace the last run's
        // in memory; durable every run, redb reuses the freed pages. Both stay small.
        let dir = tempfile::tempdir().unwrap();
        let len = |name: &str| std::fs::metadata(dir.path().join(name)).unwrap().len();
        let mut never = RedbStore::open_with(&dir.path().join("never"), Duration::MAX).unwrap();
        overwrite_runs(&mut never, 2_000, 1);
        let mut often = RedbStore::open_with(&dir.path().join("often"), Duration::ZERO).unwrap();
        overwrite_runs(&mut often, 2_000, 1);
        for name in ["never", "often"] {
            assert!(len(name) < 2_000 * 16 * 1024 / 10, "{name}: {}", len(name));
        }
        // The staged runs are this store's state for reads; a view (what a snapshot writes)
        // is of what was written, and a sync writes them.
        assert_eq!(never.applied_index().unwrap(), 2_000);
        assert_eq!(
            never.get(b"k").unwrap(),
            Some(vec![(1_999 % 256) as u8; 16 * 1024])
        );
        let view = never.view().unwrap().unwrap();
        assert_eq!(view.applied_index(), 0);
        never.sync().unwrap();
        assert_eq!(never.view().unwrap().unwrap().applied_index(), 2_000);
        assert_eq!(often.view().unwrap().unwrap().applied_index(), 2_000);
    }
}
