//! The snapshotter actor: writes a group's snapshot files (Raft §7) and finds the one a
//! restart starts from.
//!
//! It runs on an arbiter of its own (one per group), never on the arbiter that carries Raft,
//! gossip and the transport: writing a snapshot is long, blocking file I/O (the image, its
//! fsync, the rename, the sidecar, the directory fsync), and so is verifying one at start. The
//! applier hands it either an isolated view of the machine (redb: a read transaction, so the
//! machine keeps applying while the image is written) or an image it already wrote itself (a
//! machine without views). Every write is timed by the node's stall watchdog (component
//! `snapshots/{group}`), chunk by chunk: only a call that makes no progress for
//! `[storage] stall_timeout_ms` is a stall, not a large snapshot that takes long.
//!
//! The group actor drives it (docs/node.md "Snapshots"): it decides when to take a snapshot,
//! asks the applier for the view, has it written here, then reports it to the Raft core, which
//! compacts its log and lets the log store purge.

use crate::state_machine::{LogIndex, SnapshotView, StateMachineError};
use crate::storage::background_io;
use crate::storage::snapshot_store::{
    SnapshotStore, SnapshotStoreError, SnapshotWriter, StoredSnapshot,
};
use crate::storage::watchdog::StallClock;
use actix::prelude::*;
use conclave_actors::supervisor::ChildGuard;
use conclave_core::ids::GroupId;
use conclave_core::raft::{self, SnapshotMeta};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a snapshot could not be taken, written, found or restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A snapshot of this group is being taken already (one at a time per group).
    #[error("group {group}: a snapshot is already being taken")]
    Busy {
        /// The group.
        group: GroupId,
    },
    /// The group is not running (starting, restarting or stopped).
    #[error("group {group} is not running")]
    NotRunning {
        /// The group.
        group: GroupId,
    },
    /// The state machine could not sync, image or restore itself.
    #[error("state machine: {0}")]
    Machine(#[from] StateMachineError),
    /// A snapshot file could not be written, read or verified.
    #[error(transparent)]
    Store(#[from] SnapshotStoreError),
    /// The Raft core refused the snapshot's index.
    #[error("raft core: {0}")]
    Core(#[from] raft::SnapshotError),
    /// An image is not at the index it was announced at.
    #[error("the image is at index {found}, expected {expected}")]
    IndexMismatch {
        /// The announced index.
        expected: LogIndex,
        /// The image's.
        found: LogIndex,
    },
    /// A restore would move the state machine's applied index backwards.
    #[error("refusing to restore a snapshot at {index} over a machine that applied {applied}")]
    Backwards {
        /// The snapshot's index.
        index: LogIndex,
        /// The machine's applied index.
        applied: LogIndex,
    },
    /// The group's log was compacted (or a snapshot installed) up to `needed`, and no valid
    /// snapshot reaches that far: the state machine cannot be rebuilt. Fatal for the group.
    #[error(
        "group {group}: the Raft log is compacted up to index {needed} but the newest valid \
         snapshot in {} is {}; the entries it would need are gone — restore the \
         snapshot files or rebuild this node's data directory from another replica",
        dir.display(),
        match newest {
            Some(index) => index as &dyn std::fmt::Display,
            None => &"none",
        }
    )]
    MissingBase {
        /// The group.
        group: GroupId,
        /// The index a base snapshot must reach.
        needed: LogIndex,
        /// The newest valid snapshot's index (`None`: there is none).
        newest: Option<LogIndex>,
        /// The snapshot directory.
        dir: PathBuf,
    },
    /// An actor of the group went away while the snapshot was in progress.
    #[error("group {group}: the {actor} stopped during the snapshot")]
    Stopped {
        /// The group.
        group: GroupId,
        /// Which actor.
        actor: &'static str,
    },
}

/// What the applier hands over for a snapshot at its applied index.
pub enum SnapshotSource {
    /// An isolated view, written here while the machine applies on.
    View(Box<dyn SnapshotView>),
    /// An image the applier already wrote (a machine without views), not yet named.
    Written {
        /// The index the image is at.
        index: LogIndex,
        /// The unfinished file.
        writer: Box<SnapshotWriter>,
    },
}

impl SnapshotSource {
    /// The applied index the image is at.
    pub fn index(&self) -> LogIndex {
        match self {
            SnapshotSource::View(v) => v.index(),
            SnapshotSource::Written { index, .. } => *index,
        }
    }
}

/// Write the snapshot `meta` describes from `source`, durably (tmp, fsync, rename, sidecar).
#[derive(Message)]
#[rtype(result = "Result<StoredSnapshot, SnapshotError>")]
pub struct WriteSnapshot {
    /// Index, term and membership (from the core's `snapshot_meta`).
    pub meta: SnapshotMeta,
    /// The image's source.
    pub source: SnapshotSource,
}

/// The newest snapshot whose image verifies (read whole: length and digest), if any.
#[derive(Message)]
#[rtype(result = "Result<Option<StoredSnapshot>, SnapshotError>")]
pub struct NewestSnapshot;

/// What a snapshotter needs, shared by its successive instances.
pub struct SnapshotterDeps {
    /// The group.
    pub group: GroupId,
    /// The group's snapshot files.
    pub store: Arc<SnapshotStore>,
    /// Times every file operation (component `snapshots/{group}`).
    pub clock: Arc<StallClock>,
}

/// The actor. See the module docs.
pub struct SnapshotterActor {
    deps: Arc<SnapshotterDeps>,
    _guard: ChildGuard,
}

impl SnapshotterActor {
    /// A snapshotter; start it on its own arbiter.
    pub fn new(deps: Arc<SnapshotterDeps>, guard: ChildGuard) -> Self {
        SnapshotterActor {
            deps,
            _guard: guard,
        }
    }
}

impl Actor for SnapshotterActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(16);
        // This arbiter's thread does nothing but snapshot files: it yields the CPU and the
        // disk to the applier, the WAL and the transport (storage::background_io).
        crate::storage::background_io::lower_thread_priority();
    }
}

/// A writer that tells the stall clock about every chunk that went through: a large image
/// is one long call, but it is a stall only when no chunk moves for the timeout.
pub struct ProgressWriter<'a, W: Write> {
    inner: W,
    clock: &'a StallClock,
    escalation: Option<Escalation>,
}

/// How long a snapshot may run past twice its pace before it stops yielding.
pub const ESCALATION_GRACE: Duration = Duration::from_secs(2);

/// A background image write that stops yielding once it is overdue
/// ([`background_io::overdue`]): its thread is raised to the normal priorities until the
/// image is written, then lowered again.
struct Escalation {
    started: Instant,
    bytes: u64,
    bytes_per_s: u64,
    grace: Duration,
    raised: Option<background_io::PriorityGuard>,
}

impl<'a, W: Write> ProgressWriter<'a, W> {
    /// Wraps `inner`; the caller holds the clock's call guard.
    pub fn new(inner: W, clock: &'a StallClock) -> Self {
        ProgressWriter {
            inner,
            clock,
            escalation: None,
        }
    }

    /// As [`ProgressWriter::new`], on a background thread: once the image is overdue at
    /// `bytes_per_s` (its pacing) plus `grace`, the thread runs at the normal priorities until
    /// this writer is done (`conclave_snapshot_escalated_total`).
    pub fn escalating(inner: W, clock: &'a StallClock, bytes_per_s: u64, grace: Duration) -> Self {
        ProgressWriter {
            inner,
            clock,
            escalation: Some(Escalation {
                started: Instant::now(),
                bytes: 0,
                bytes_per_s,
                grace,
                raised: None,
            }),
        }
    }

    /// Whether this writer's thread was raised because the image was overdue.
    pub fn escalated(&self) -> bool {
        self.escalation.as_ref().is_some_and(|e| e.raised.is_some())
    }

    /// The wrapped writer (a raised thread is lowered again).
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for ProgressWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.clock.progress();
        if let Some(e) = &mut self.escalation {
            e.bytes += n as u64;
            if e.raised.is_none()
                && background_io::overdue(e.bytes, e.started.elapsed(), e.bytes_per_s, e.grace)
            {
                tracing::warn!(
                    bytes = e.bytes,
                    elapsed_ms = e.started.elapsed().as_millis() as u64,
                    "snapshot image overdue at background priority (the machine is saturated); \
                     writing the rest at normal priority"
                );
                metrics::counter!("conclave_snapshot_escalated_total").increment(1);
                e.raised = Some(background_io::PriorityGuard::foreground());
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that tells the stall clock about every chunk read (see [`ProgressWriter`]).
pub struct ProgressReader<'a, R: Read> {
    inner: R,
    clock: &'a StallClock,
}

impl<'a, R: Read> ProgressReader<'a, R> {
    /// Wraps `inner`; the caller holds the clock's call guard.
    pub fn new(inner: R, clock: &'a StallClock) -> Self {
        ProgressReader { inner, clock }
    }

    /// The wrapped reader.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.clock.progress();
        Ok(n)
    }
}

/// Writes `meta`'s snapshot from `source` into `store`, timed by `clock` chunk by chunk.
pub fn write_snapshot(
    store: &SnapshotStore,
    clock: &StallClock,
    meta: SnapshotMeta,
    source: SnapshotSource,
) -> Result<StoredSnapshot, SnapshotError> {
    let _call = clock.begin();
    match source {
        SnapshotSource::View(view) => {
            let started = std::time::Instant::now();
            let mut out = ProgressWriter::escalating(
                store.create(meta.clone())?,
                clock,
                store.pacing().bytes_per_s,
                ESCALATION_GRACE,
            );
            let found = view.write_to(&mut out)?;
            if found != meta.index {
                // Dropping the writer leaves a `.tmp` the next open removes.
                return Err(SnapshotError::IndexMismatch {
                    expected: meta.index,
                    found,
                });
            }
            let written = started.elapsed();
            let stored = out.into_inner().finish(store)?;
            tracing::info!(
                index = stored.meta.index,
                bytes = stored.len,
                write_ms = written.as_millis() as u64,
                finish_ms = (started.elapsed() - written).as_millis() as u64,
                "snapshot image written (finish: fsync, rename, sidecar, directory fsync)"
            );
            Ok(stored)
        }
        SnapshotSource::Written { index, writer } => {
            if index != meta.index {
                return Err(SnapshotError::IndexMismatch {
                    expected: meta.index,
                    found: index,
                });
            }
            Ok(writer.finish_as(meta, store)?)
        }
    }
}

/// The newest snapshot whose image verifies (read whole, timed chunk by chunk like a write);
/// newer ones that do not are logged and skipped (`SnapshotStore::newest_valid`).
pub fn newest_valid(
    store: &SnapshotStore,
    clock: &StallClock,
) -> Result<Option<StoredSnapshot>, SnapshotError> {
    let _call = clock.begin();
    let (found, bad) = store.list()?;
    for e in bad {
        tracing::error!(error = %e, "ignoring an unreadable snapshot sidecar");
    }
    for s in found {
        let verified =
            store.reader(&s).and_then(|r| {
                let mut input = ProgressReader::new(r, clock);
                match std::io::copy(&mut input, &mut std::io::sink()) {
                    Ok(_) => Ok(()),
                    Err(e) => Err(input.into_inner().take_error().unwrap_or_else(|| {
                        SnapshotStoreError::Io {
                            op: "read",
                            path: s.path.clone(),
                            source: e,
                        }
                    })),
                }
            });
        match verified {
            Ok(()) => return Ok(Some(s)),
            Err(e) => tracing::error!(error = %e, "ignoring a snapshot that does not verify"),
        }
    }
    Ok(None)
}

impl Handler<WriteSnapshot> for SnapshotterActor {
    type Result = Result<StoredSnapshot, SnapshotError>;

    fn handle(&mut self, msg: WriteSnapshot, _: &mut Context<Self>) -> Self::Result {
        write_snapshot(&self.deps.store, &self.deps.clock, msg.meta, msg.source)
    }
}

impl Handler<NewestSnapshot> for SnapshotterActor {
    type Result = Result<Option<StoredSnapshot>, SnapshotError>;

    fn handle(&mut self, _: NewestSnapshot, _: &mut Context<Self>) -> Self::Result {
        newest_valid(&self.deps.store, &self.deps.clock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_base_names_the_newest_snapshot_or_none() {
        let e = |newest| SnapshotError::MissingBase {
            group: GroupId::new(2),
            needed: 40,
            newest,
            dir: PathBuf::from("/data/n1/snapshots"),
        };
        assert!(
            e(Some(30)).to_string().starts_with(
                "group 2: the Raft log is compacted up to index 40 but the newest valid \
                 snapshot in /data/n1/snapshots is 30;"
            ),
            "{}",
            e(Some(30))
        );
        assert!(
            e(None).to_string().contains("/data/n1/snapshots is none;"),
            "{}",
            e(None)
        );
    }
    use crate::state_machine::{KvCommand, KvMachine, KvRequest, StateMachine};
    use crate::storage::health::{StorageCondition, StorageHealth};
    use crate::storage::watchdog::Watchdog;
    use conclave_core::ids::NodeId;
    use std::time::Duration;

    fn put(m: &mut KvMachine, index: LogIndex, key: &str) {
        m.apply(
            index,
            KvRequest {
                id: None,
                op: KvCommand::Put {
                    key: key.as_bytes().to_vec(),
                    value: vec![index as u8; 100],
                },
            },
        )
        .unwrap();
    }

    fn meta(index: LogIndex) -> SnapshotMeta {
        SnapshotMeta {
            index,
            term: 1,
            membership: raft::Membership::with_voters([NodeId::new(1)]),
        }
    }

    /// A view written while the machine applies on: the file is the state at the view's
    /// index, and restoring it into an empty machine gives that state, not the later one.
    #[test]
    fn a_view_is_written_while_the_machine_applies_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(&dir.path().join("snap")).unwrap();
        let dog = Watchdog::start(Arc::new(StorageHealth::new()), Duration::from_secs(5)).unwrap();
        let clock = dog.clock(crate::storage::health::StorageComponent::Snapshots(
            conclave_core::ids::GroupId::FIRST,
        ));
        let mut m =
            KvMachine::open_engine(crate::config::StorageEngine::Redb, &dir.path().join("data"))
                .unwrap();
        for i in 1..=50 {
            put(&mut m, i, &format!("k{i}"));
        }
        m.end_batch().unwrap();
        m.sync().unwrap();
        let view = m.snapshot_view().unwrap().expect("redb has views");
        assert_eq!(view.index(), 50);
        // Applies go on after the view was taken.
        for i in 51..=60 {
            put(&mut m, i, &format!("k{i}"));
        }
        m.end_batch().unwrap();
        let stored = write_snapshot(&store, &clock, meta(50), SnapshotSource::View(view)).unwrap();
        assert_eq!(stored.meta.index, 50);
        let mut restored = KvMachine::temporary().unwrap();
        restored
            .restore_from(50, &mut store.reader(&stored).unwrap())
            .unwrap();
        assert_eq!(restored.applied_index(), 50);
        let get = |m: &KvMachine, k: &str| {
            m.query(&crate::state_machine::KvQuery::Get(k.as_bytes().to_vec()))
                .unwrap()
        };
        assert!(get(&restored, "k50").is_some());
        assert!(get(&restored, "k51").is_none());
        // A view announced at another index is refused and leaves no snapshot behind.
        m.sync().unwrap();
        let view = m.snapshot_view().unwrap().unwrap();
        let e = write_snapshot(&store, &clock, meta(59), SnapshotSource::View(view)).unwrap_err();
        assert!(
            matches!(
                e,
                SnapshotError::IndexMismatch {
                    expected: 59,
                    found: 60
                }
            ),
            "{e}"
        );
        assert_eq!(store.newest_valid().unwrap().unwrap().meta.index, 50);
    }

    /// At start the newest snapshot that verifies is the base: a damaged newer one is skipped.
    #[test]
    fn the_newest_valid_snapshot_skips_a_damaged_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        let dog = Watchdog::start(Arc::new(StorageHealth::new()), Duration::from_secs(5)).unwrap();
        let clock = dog.clock(crate::storage::health::StorageComponent::Snapshots(
            conclave_core::ids::GroupId::FIRST,
        ));
        assert_eq!(newest_valid(&store, &clock).unwrap(), None);
        let write = |index: LogIndex, body: &[u8]| {
            let mut w = store.create(meta(index)).unwrap();
            w.write_all(body).unwrap();
            w.finish(&store).unwrap()
        };
        let old = write(10, &[1u8; 5000]);
        let new = write(20, &[2u8; 5000]);
        assert_eq!(newest_valid(&store, &clock).unwrap(), Some(new.clone()));
        let mut bytes = std::fs::read(&new.path).unwrap();
        bytes[4321] ^= 0x40;
        std::fs::write(&new.path, &bytes).unwrap();
        assert_eq!(newest_valid(&store, &clock).unwrap(), Some(old));
    }

    /// A snapshot written in many chunks, each slower than nothing but all together longer
    /// than the stall timeout, is not reported as a stall; a writer that stops moving is.
    #[test]
    fn progress_keeps_a_long_write_from_counting_as_a_stall() {
        let health = Arc::new(StorageHealth::new());
        let dog = Watchdog::start(health.clone(), Duration::from_millis(60)).unwrap();
        let clock = dog.clock(crate::storage::health::StorageComponent::Snapshots(
            conclave_core::ids::GroupId::FIRST,
        ));
        {
            let _call = clock.begin();
            let mut w = ProgressWriter::new(std::io::sink(), &clock);
            for _ in 0..20 {
                std::thread::sleep(Duration::from_millis(10));
                w.write_all(b"chunk").unwrap();
            }
            assert_eq!(health.condition(), StorageCondition::Healthy);
        }
        {
            let _call = clock.begin();
            std::thread::sleep(Duration::from_millis(250));
            assert!(matches!(
                health.condition(),
                StorageCondition::Stalled { .. }
            ));
            // Progress clears it.
            clock.progress();
            assert_eq!(health.condition(), StorageCondition::Healthy);
        }
    }

    /// An image written on the snapshotter's idle-priority thread that falls behind twice its
    /// pace (plus the grace) raises the thread to the normal priorities for the rest of the
    /// image, and the thread is lowered again afterwards; one on time is left alone.
    #[cfg(target_os = "linux")]
    #[test]
    fn an_overdue_image_stops_yielding_until_it_is_written() {
        std::thread::spawn(|| {
            let health = Arc::new(StorageHealth::new());
            let dog = Watchdog::start(health, Duration::from_secs(60)).unwrap();
            let clock = dog.clock(crate::storage::health::StorageComponent::Snapshots(
                conclave_core::ids::GroupId::FIRST,
            ));
            let _background = background_io::PriorityGuard::background();
            let idle = || background_io::thread_cpu_policy() == Some(libc::SCHED_IDLE);
            assert!(idle());
            // On time: 5 bytes at 1 byte/s may take 10 s (plus 30 ms of grace).
            let mut w =
                ProgressWriter::escalating(std::io::sink(), &clock, 1, Duration::from_millis(30));
            w.write_all(b"chunk").unwrap();
            assert!(!w.escalated() && idle());
            let _sink = w.into_inner();
            // Overdue: 5 bytes at 1 GB/s may take 10 ns plus the grace; 40 ms passed.
            let mut w = ProgressWriter::escalating(
                std::io::sink(),
                &clock,
                1_000_000_000,
                Duration::from_millis(30),
            );
            std::thread::sleep(Duration::from_millis(40));
            w.write_all(b"chunk").unwrap();
            assert!(w.escalated());
            assert!(!idle(), "raised while the image is written");
            let _sink = w.into_inner();
            assert!(idle(), "lowered again once it is written");
        })
        .join()
        .unwrap();
    }
}

/// Snapshot creation time and size for a large key-value state on redb, and the p99 latency of
/// writes (one entry applied and its run ended, as the applier does) while a snapshot of that
/// state is written from a view on another thread, as a ratio against the p99 of the same
/// writes without a snapshot, measured in the same run. State size:
/// `CONCLAVE_SNAPSHOT_LATENCY_BENCH_MB` (default 8; 1 KiB values).
#[cfg(test)]
mod bench {
    use super::*;
    use crate::config::StorageEngine;
    use crate::state_machine::{KvCommand, KvMachine, KvRequest, StateMachine};
    use crate::storage::health::StorageHealth;
    use crate::storage::watchdog::Watchdog;
    use conclave_core::ids::NodeId;
    use std::time::{Duration, Instant};

    fn put(m: &mut KvMachine, index: LogIndex, key: u64) {
        let op = KvCommand::Put {
            key: format!("key{key:010}").into_bytes(),
            value: vec![(index % 251) as u8; 1024],
        };
        m.apply(index, KvRequest { id: None, op }).unwrap();
    }

    /// Latencies of `n` writes (apply + end_batch), continuing at `next`.
    fn writes(m: &mut KvMachine, next: &mut LogIndex, keys: u64, n: usize) -> Vec<Duration> {
        let mut lat = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            put(m, *next, *next % keys);
            m.end_batch().unwrap();
            lat.push(t.elapsed());
            *next += 1;
        }
        lat
    }

    /// (p50, p99).
    fn percentiles(mut lat: Vec<Duration>) -> (Duration, Duration) {
        lat.sort();
        let n = lat.len().max(1);
        (
            lat.get(n / 2).copied().unwrap_or_default(),
            lat.get(n * 99 / 100).copied().unwrap_or_default(),
        )
    }

    #[test]
    fn snapshot_creation_and_write_latency_while_a_snapshot_is_written() {
        let mb: u64 = std::env::var("CONCLAVE_SNAPSHOT_LATENCY_BENCH_MB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(8);
        let keys = mb * 1024;
        let dir = tempfile::tempdir().unwrap();
        let mut m = KvMachine::open_engine(StorageEngine::Redb, &dir.path().join("sm")).unwrap();
        let mut next = 1;
        for k in 0..keys {
            put(&mut m, next, k);
            next += 1;
            if next % 1024 == 0 {
                m.end_batch().unwrap();
            }
        }
        m.end_batch().unwrap();
        m.sync().unwrap();
        let store = Arc::new(SnapshotStore::open(&dir.path().join("snap")).unwrap());
        let dog = Watchdog::start(Arc::new(StorageHealth::new()), Duration::from_secs(60)).unwrap();
        let clock = dog.clock(crate::storage::health::StorageComponent::Snapshots(
            conclave_core::ids::GroupId::FIRST,
        ));

        // Creation time and size, nothing else running.
        let t = Instant::now();
        let view = m.snapshot_view().unwrap().unwrap();
        let index = view.index();
        let first =
            write_snapshot(&store, &clock, meta_at(index), SnapshotSource::View(view)).unwrap();
        let create = t.elapsed();

        // Writes without a snapshot, then the same number while one is written.
        let n = 2000;
        let (base50, base99) = percentiles(writes(&mut m, &mut next, keys, n));
        m.sync().unwrap();
        let view = m.snapshot_view().unwrap().unwrap();
        let index2 = view.index();
        let writer_store = store.clone();
        let writer_clock = dog.clock(crate::storage::health::StorageComponent::Snapshots(
            conclave_core::ids::GroupId::new(1),
        ));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done2 = done.clone();
        let handle = std::thread::spawn(move || {
            let t = Instant::now();
            let s = write_snapshot(
                &writer_store,
                &writer_clock,
                meta_at(index2),
                SnapshotSource::View(view),
            )
            .unwrap();
            done2.store(true, std::sync::atomic::Ordering::Release);
            (s, t.elapsed())
        });
        let mut during = Vec::new();
        while !done.load(std::sync::atomic::Ordering::Acquire) {
            during.extend(writes(&mut m, &mut next, keys, 20));
        }
        let (second, second_time) = handle.join().unwrap();
        let count = during.len();
        let (during50, during99) = percentiles(during);
        let ratio = during99.as_secs_f64() / base99.as_secs_f64().max(1e-9);
        eprintln!(
            "snapshot of {mb} MiB of KV state (redb): created in {create:?}, {} bytes \
             ({:.0} MB/s); while writing: second snapshot ({} bytes) in {second_time:?}, \
             {count} writes during it; write p99 without a snapshot {base99:?} (p50 \
             {base50:?}), while it was written {during99:?} (p50 {during50:?}); p99 ratio \
             {ratio:.2}",
            first.len,
            first.len as f64 / 1e6 / create.as_secs_f64(),
            second.len,
        );
        assert!(first.len > mb * 1024 * 1024);
        assert_eq!(second.meta.index, index2);
    }

    fn meta_at(index: LogIndex) -> SnapshotMeta {
        SnapshotMeta {
            index,
            term: 1,
            membership: raft::Membership::with_voters([NodeId::new(1)]),
        }
    }
}
