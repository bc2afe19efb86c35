//! The user's replicated state machine, and the built-in key-value machine on the state store
//! (redb or sled, see [`crate::storage::state_store`]).
//!
//! A state machine is deterministic: every replica applies the same committed commands in the
//! same order and must reach the same state and produce the same outputs. Commands and outputs
//! are serde types (they travel in log entries and HTTP responses); queries run against the
//! local state once the read path says it may (linearizable, lease or stale).

use crate::config::StorageEngine;
use crate::storage::sled_store::SledStore;
use crate::storage::state_store::{
    open_store, CorruptRecord, StateStore, StoreError, StoreView, WriteBatch,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

/// Position of an entry in the Raft log (the Raft core's type).
pub use conclave_core::raft::LogIndex;

/// Errors a state machine reports to the runtime (storage failures, bad snapshots). A failure
/// to apply a committed command is fatal for the replica: it stops rather than diverge.
#[derive(Debug, thiserror::Error)]
pub enum StateMachineError {
    /// The machine's storage failed (a machine of the application's own: its error is the
    /// source). Reported as a storage failure: the node is unhealthy until restarted.
    #[error("state machine storage error: {0}")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A snapshot could not be decoded or installed (a machine of the application's own).
    #[error("invalid snapshot: {0}")]
    Snapshot(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A record could not be encoded (a bug, not a disk fault).
    #[error("cannot encode {what}: {source}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The encoder's error.
        #[source]
        source: rmp_serde::encode::Error,
    },
    /// The state store failed (the engine's error is the source).
    #[error("state store error")]
    Store(#[from] StoreError),
    /// A snapshot stream was refused (nothing was changed) or could not be written.
    #[error("snapshot stream")]
    SnapshotStream(#[from] SnapshotStreamError),
}

/// Why a snapshot stream could not be written or was refused on restore. A refused stream
/// changes nothing.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotStreamError {
    /// Reading or writing the stream failed (a short stream is [`Self::Truncated`]).
    #[error("snapshot stream I/O")]
    Io(#[source] std::io::Error),
    /// The stream ended before its digest.
    #[error("the snapshot stream ends early (truncated)")]
    Truncated,
    /// The stream does not start with this format's magic bytes.
    #[error("not a snapshot of this state machine (bad magic bytes)")]
    BadMagic,
    /// A format version this build cannot read.
    #[error("snapshot format version {found} is not {supported}")]
    Version {
        /// The stream's version.
        found: u8,
        /// The one this build reads.
        supported: u8,
    },
    /// A record tag other than "record" or "end".
    #[error("bad record tag {0:#x} in the snapshot stream")]
    BadTag(u8),
    /// A key or value larger than any the machine can hold.
    #[error("a snapshot record of {0} bytes exceeds the limit")]
    RecordTooLarge(u64),
    /// The number of records does not match the stream's trailer.
    #[error("the snapshot holds {found} records, its trailer says {expected}")]
    Count {
        /// What the trailer says.
        expected: u64,
        /// What was read.
        found: u64,
    },
    /// The xxh3-64 digest of the stream does not match its trailer.
    #[error("snapshot digest mismatch: trailer {expected:#018x}, content {actual:#018x}")]
    Digest {
        /// The trailer's digest.
        expected: u64,
        /// The content's digest.
        actual: u64,
    },
    /// Bytes after the trailer.
    #[error("bytes after the end of the snapshot stream")]
    TrailingBytes,
    /// The stream was taken at another index than the one it is restored as.
    #[error("the snapshot was taken at index {found}, not {expected}")]
    Index {
        /// The index the caller restores it as.
        expected: LogIndex,
        /// The index in the stream.
        found: LogIndex,
    },
    /// The state could not be encoded or decoded (user machines' own formats).
    #[error("snapshot encoding")]
    Encoding(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<std::io::Error> for SnapshotStreamError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            SnapshotStreamError::Truncated
        } else {
            SnapshotStreamError::Io(e)
        }
    }
}

/// A consistent image of a machine's state at one applied index, taken on the applier's
/// thread and written out elsewhere while the machine goes on applying.
pub trait SnapshotView: Send + 'static {
    /// The applied index the view is at.
    fn index(&self) -> LogIndex;

    /// Writes the image (the same bytes [`StateMachine::snapshot_to`] would have written at
    /// that index) and returns its index.
    fn write_to(self: Box<Self>, out: &mut dyn Write) -> Result<LogIndex, StateMachineError>;
}

/// A replicated state machine, implemented by users (see `examples/`) and by [`KvMachine`].
pub trait StateMachine: Send + Unpin + 'static {
    /// A write, replicated through the log.
    type Command: Serialize + DeserializeOwned + Send + 'static;
    /// What applying a command returns to the client that proposed it.
    type Output: Serialize + DeserializeOwned + Clone + Send + 'static;
    /// A read, served locally once the read path allows it.
    type Query: Send + Unpin + 'static;
    /// What a query returns.
    type QueryOutput: Send + 'static;

    /// Applies the committed command at `index`. Must be deterministic. A durable machine
    /// records `index` atomically with the command's effect (see [`StateMachine::applied_index`]).
    fn apply(
        &mut self,
        index: LogIndex,
        command: Self::Command,
    ) -> Result<Self::Output, StateMachineError>;

    /// Records that the non-command entry at `index` (a leader's no-op, a membership change)
    /// was applied. In-memory machines ignore it; durable ones store the index.
    fn skip(&mut self, index: LogIndex) -> Result<(), StateMachineError> {
        let _ = index;
        Ok(())
    }

    /// Called after the runtime applied a run of consecutive entries, before it answers their
    /// writers or serves reads: a durable machine may defer writing what `apply` and `skip`
    /// did to this point (one storage commit per run instead of one per entry), as long as a
    /// crash keeps its state and [`StateMachine::applied_index`] consistent with each other.
    fn end_batch(&mut self) -> Result<(), StateMachineError> {
        Ok(())
    }

    /// Answers a query from the current state.
    fn query(&self, query: &Self::Query) -> Self::QueryOutput;

    /// The index up to which this machine's state is durable on its own (0 for an in-memory
    /// machine). At restart the runtime replays the log from the entry after it.
    fn applied_index(&self) -> LogIndex {
        0
    }

    /// Writes an image of the whole state to `out`, streaming (a large state is never held in
    /// memory whole), and returns the applied index the image is exactly the state at. A
    /// machine that defers writes until [`StateMachine::end_batch`] images its state as of the
    /// last ended run (the runtime asks between runs).
    fn snapshot_to(&self, out: &mut dyn Write) -> Result<LogIndex, StateMachineError>;

    /// Replaces the whole state with an image written by [`StateMachine::snapshot_to`] at
    /// `index`, read from `input`. An image that is corrupt, truncated or of another index is
    /// refused with an error and the state is left as it was.
    fn restore_from(
        &mut self,
        index: LogIndex,
        input: &mut dyn Read,
    ) -> Result<(), StateMachineError>;

    /// Makes everything applied so far durable on the machine's own storage (after
    /// [`StateMachine::end_batch`]), so that [`StateMachine::applied_index`] after a crash is
    /// at least today's. The runtime calls it before a snapshot lets the Raft log drop the
    /// entries it covers. The default does nothing (an in-memory machine is restored from the
    /// snapshot at restart anyway).
    fn sync(&mut self) -> Result<(), StateMachineError> {
        Ok(())
    }

    /// A view of the state that [`SnapshotView::write_to`] can write on another thread while
    /// this machine applies on. The runtime asks right after [`StateMachine::sync`], and the
    /// view is at least at the index synced ([`SnapshotView::index`] says which: the built-in
    /// machine's redb store keeps runs staged between syncs, and its view is of what it wrote).
    /// `None` (the default): the image must be written by [`StateMachine::snapshot_to`] on the
    /// applier, which applies nothing meanwhile.
    fn snapshot_view(&self) -> Result<Option<Box<dyn SnapshotView>>, StateMachineError> {
        Ok(None)
    }
}

/// A command of the built-in key-value machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvCommand {
    /// Set `key` to `value`.
    Put {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Set `key` to `new` (or remove it when `new` is `None`) if its current value is
    /// `expected` (`None`: absent).
    Cas {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The value the key must hold (`None`: must be absent).
        expected: Option<serde_bytes::ByteBuf>,
        /// The value to store (`None`: remove).
        new: Option<serde_bytes::ByteBuf>,
    },
    /// Set the node's own metadata record to `new` if it holds `expected` now (`None`: no
    /// record); answers [`KvOutput::Cas`]. On a sharded node it is group 0's copy of the
    /// shard map ([`ShardedMachine::metadata_command`]). Kept apart from the data: no key
    /// names the record, so no `Put`, `Delete`, `Cas` or `Get` reaches it; the node proposes
    /// it to group 0 only, which serves no keys on a sharded node.
    SetMetadata {
        /// The record the machine must hold (`None`: none).
        expected: Option<serde_bytes::ByteBuf>,
        /// The record to store.
        new: serde_bytes::ByteBuf,
    },
}

/// What the key-value machine's log entries carry: a command and, when the client sent an
/// `Idempotency-Key`, that key. A request whose key was already applied within the last
/// [`IDEMPOTENCY_WINDOW`] entries is not applied again: the same request (same fingerprint)
/// returns the first outcome; a different request is refused with
/// [`KvOutput::IdempotencyKeyReused`]. The table of keys is replicated state (written in the
/// same batch as the effect and evicted by log index), so every replica makes the same
/// decision, across restarts too.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvRequest {
    /// The client's idempotency key, if any.
    pub id: Option<String>,
    /// The command.
    pub op: KvCommand,
}

/// How many log entries an idempotency key is remembered for.
pub const IDEMPOTENCY_WINDOW: u64 = 100_000;

/// What a [`KvCommand`] returned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOutput {
    /// A put was applied.
    Put,
    /// A delete was applied; whether the key existed.
    Delete {
        /// Whether the key existed before.
        existed: bool,
    },
    /// A compare-and-set was applied.
    Cas {
        /// Whether the expected value matched (and the new one was stored).
        ok: bool,
        /// The value the key held before the command. For a retry (same idempotency key, same
        /// request) of a CAS that failed: the key's value as of the retry.
        current: Option<serde_bytes::ByteBuf>,
    },
    /// The request's idempotency key was already used, within the window, by a *different*
    /// request: nothing was applied (HTTP 422 `idempotency_key_reused`).
    IdempotencyKeyReused,
}

/// A read of the key-value machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvQuery {
    /// The value of a key.
    Get(Vec<u8>),
    /// The node's metadata record ([`KvCommand::SetMetadata`]); never routed to a shard.
    Metadata,
}

/// The built-in key-value machine, written once against the [`StateStore`] interface (redb or
/// sled, `[storage] engine`). The applied index is committed in the same atomic batch as each
/// command's effect, so that restart resumes exactly after the last applied entry.
pub struct KvMachine {
    store: Box<dyn StateStore>,
    applied: LogIndex,
}

/// Data keys are prefixed so that the idempotency table can live in the same store (one atomic
/// batch with the data).
const DATA: u8 = b'd';
/// `k/{id}` -> an [`IdemRecord`]: the request's fingerprint and compact first outcome.
const IDEM: &[u8] = b"k/";
/// `i/{id}`: the records of releases before fingerprints (the whole outcome, no fingerprint).
/// Never read again (a retry across that upgrade applies anew); removed by eviction.
const IDEM_LEGACY: &[u8] = b"i/";
/// `e/{index, big-endian}` -> the idempotency key recorded at that index (for eviction).
const IDEM_BY_INDEX: &[u8] = b"e/";
/// The node's metadata record ([`KvCommand::SetMetadata`]); no data key (`d…`) can be it.
/// (`m/` is taken: the sled store keeps its applied index at `m/applied`.)
const METADATA: &[u8] = b"n/metadata";
/// The first bytes of a key-value machine's snapshot stream.
const SNAPSHOT_MAGIC: &[u8; 8] = b"CLVKVSNP";
/// Snapshot stream format version (see [`write_kv_snapshot`]).
const SNAPSHOT_VERSION: u8 = 2;
/// Record tags of the snapshot stream.
const TAG_RECORD: u8 = 1;
const TAG_END: u8 = 0;
/// The largest key or value a snapshot record may claim (a hostile length must not make the
/// reader allocate without bound). Values are limited far below this by the HTTP API.
const MAX_SNAPSHOT_RECORD: u64 = 64 * 1024 * 1024;

/// What a replica remembers of a keyed request: enough to recognise a retry and answer it,
/// never another request's value (a failed CAS used to keep the whole current value).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct IdemRecord {
    /// xxh3-64 of the MessagePack encoding of the request's command.
    fingerprint: u64,
    outcome: CompactOutcome,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum CompactOutcome {
    Put,
    Delete { existed: bool },
    Cas { ok: bool },
}

fn prefixed(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + rest.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(rest);
    k
}

fn data_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(DATA);
    k.extend_from_slice(key);
    k
}

/// The fingerprint of a command: the same on every replica (it depends only on the bytes).
fn fingerprint(op: &KvCommand) -> Result<u64, StateMachineError> {
    let bytes = rmp_serde::to_vec(op).map_err(|source| StateMachineError::Encode {
        what: "a command",
        source,
    })?;
    Ok(xxhash_rust::xxh3::xxh3_64(&bytes))
}

impl KvMachine {
    /// Opens (or creates) a sled store in directory `dir` (what nodes used before the engine
    /// was configurable; see [`KvMachine::open_engine`]).
    pub fn open(dir: &Path) -> Result<KvMachine, StateMachineError> {
        Self::with_store(Box::new(SledStore::open(dir)?))
    }

    /// Opens (or creates) the `engine` store inside a node's data directory (`sm/` for sled,
    /// `sm.redb` for redb). A data directory that holds the other engine's store is refused.
    pub fn open_engine(
        engine: StorageEngine,
        data_dir: &Path,
    ) -> Result<KvMachine, StateMachineError> {
        Self::with_store(open_store(engine, data_dir)?)
    }

    /// A machine over any store (tests inject failing or blocking stores this way).
    pub fn with_store(store: Box<dyn StateStore>) -> Result<KvMachine, StateMachineError> {
        let applied = store.applied_index()?;
        Ok(KvMachine { store, applied })
    }

    /// A machine in a temporary sled database (tests, examples).
    pub fn temporary() -> Result<KvMachine, StateMachineError> {
        Self::with_store(Box::new(SledStore::temporary()?))
    }

    /// Makes everything applied so far durable (before log compaction relies on it); ends the
    /// current run of commits like [`StateMachine::end_batch`].
    pub fn flush(&mut self) -> Result<(), StateMachineError> {
        Ok(self.store.sync()?)
    }

    /// The store's engine name.
    pub fn engine(&self) -> &'static str {
        self.store.engine()
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateMachineError> {
        Ok(self.store.get(&data_key(key))?)
    }

    fn commit(&mut self, index: LogIndex, batch: WriteBatch) -> Result<(), StateMachineError> {
        self.store.commit(batch, index)?;
        self.applied = index;
        Ok(())
    }

    /// The answer to a retry of a keyed request whose first outcome is `first`.
    fn replay(&self, op: &KvCommand, first: CompactOutcome) -> Result<KvOutput, StateMachineError> {
        Ok(match (first, op) {
            (CompactOutcome::Put, _) => KvOutput::Put,
            (CompactOutcome::Delete { existed }, _) => KvOutput::Delete { existed },
            // A CAS that succeeded found exactly the expected value.
            (CompactOutcome::Cas { ok: true }, KvCommand::Cas { expected, .. }) => KvOutput::Cas {
                ok: true,
                current: expected.clone(),
            },
            // A CAS that failed answers with the key's value as of the retry (the first
            // attempt's value is not kept: it could be megabytes per record).
            (CompactOutcome::Cas { ok }, KvCommand::Cas { key, .. }) => KvOutput::Cas {
                ok,
                current: self.get(key)?.map(serde_bytes::ByteBuf::from),
            },
            (CompactOutcome::Cas { ok: true }, KvCommand::SetMetadata { expected, .. }) => {
                KvOutput::Cas {
                    ok: true,
                    current: expected.clone(),
                }
            }
            (CompactOutcome::Cas { ok }, KvCommand::SetMetadata { .. }) => KvOutput::Cas {
                ok,
                current: self.store.get(METADATA)?.map(serde_bytes::ByteBuf::from),
            },
            // The fingerprint matched, so the command is the same kind as the first one.
            (CompactOutcome::Cas { .. }, _) => {
                return Err(StateMachineError::Store(StoreError::Corrupt {
                    engine: self.store.engine(),
                    record: CorruptRecord::IdempotencyKind,
                }))
            }
        })
    }
}

/// Why a query or its answer could not be carried between nodes (a [`ShardedMachine`]'s
/// codec).
#[derive(Debug, thiserror::Error)]
pub enum RouteCodecError {
    /// The query is not one a node forwards (it names no key: a node's metadata).
    #[error("this query is served by group 0 on the node itself, never forwarded")]
    NotRoutable,
    /// Encoding failed.
    #[error("cannot encode a forwarded query or answer")]
    Encode(#[source] rmp_serde::encode::Error),
    /// The bytes do not decode.
    #[error("cannot decode a forwarded query or answer")]
    Decode(#[source] rmp_serde::decode::Error),
    /// The answer is a failure of the serving node's machine: it is not carried (the
    /// forwarding node answers an internal error).
    #[error("the query failed on the serving node")]
    Failed,
}

/// A state machine whose requests the node can route to shards (`[ring] sharded`,
/// docs/sharding.md): each command and query names the key that decides its shard, and
/// queries and their answers can travel between nodes (a node forwards a request to the node
/// that leads the key's shard). One machine instance serves each shard's group.
pub trait ShardedMachine: StateMachine {
    /// The key `command` routes by.
    fn command_key(command: &Self::Command) -> &[u8];
    /// The key `query` routes by.
    fn query_key(query: &Self::Query) -> &[u8];
    /// `query` as bytes for another node.
    fn encode_query(query: &Self::Query) -> Result<Vec<u8>, RouteCodecError>;
    /// A query from another node.
    fn decode_query(bytes: &[u8]) -> Result<Self::Query, RouteCodecError>;
    /// A query's answer as bytes for the node that forwarded it.
    fn encode_query_output(output: &Self::QueryOutput) -> Result<Vec<u8>, RouteCodecError>;
    /// An answer from the node that served the query.
    fn decode_query_output(bytes: &[u8]) -> Result<Self::QueryOutput, RouteCodecError>;

    /// The command that sets the node's metadata record — on a sharded node, group 0's copy
    /// of the shard map (`docs/sharding.md`) — to `new` if the machine holds `expected` now
    /// (`None`: no record), and leaves it as it is otherwise. Deterministic like every
    /// command. The record must be kept apart from the user's data (no user command may read
    /// or write it) and be part of the machine's snapshots.
    fn metadata_command(expected: Option<Vec<u8>>, new: Vec<u8>) -> Self::Command;
    /// Whether the output of a [`ShardedMachine::metadata_command`] says it set the record.
    fn metadata_set(output: &Self::Output) -> bool;
    /// The query that reads the metadata record (served by group 0 on the node itself).
    fn metadata_query() -> Self::Query;
    /// The record in the answer to [`ShardedMachine::metadata_query`] (`None`: no record).
    fn metadata_of(output: Self::QueryOutput) -> Result<Option<Vec<u8>>, StateMachineError>;
}

impl KvCommand {
    /// The key the command writes (empty for [`KvCommand::SetMetadata`], which writes no
    /// key).
    pub fn key(&self) -> &[u8] {
        match self {
            KvCommand::Put { key, .. } | KvCommand::Delete { key } | KvCommand::Cas { key, .. } => {
                key
            }
            KvCommand::SetMetadata { .. } => &[],
        }
    }
}

impl ShardedMachine for KvMachine {
    fn command_key(command: &KvRequest) -> &[u8] {
        command.op.key()
    }

    fn query_key(query: &KvQuery) -> &[u8] {
        match query {
            KvQuery::Get(key) => key,
            KvQuery::Metadata => &[],
        }
    }

    fn encode_query(query: &KvQuery) -> Result<Vec<u8>, RouteCodecError> {
        match query {
            KvQuery::Get(key) => {
                rmp_serde::to_vec(&serde_bytes::Bytes::new(key)).map_err(RouteCodecError::Encode)
            }
            KvQuery::Metadata => Err(RouteCodecError::NotRoutable),
        }
    }

    fn decode_query(bytes: &[u8]) -> Result<KvQuery, RouteCodecError> {
        let key: serde_bytes::ByteBuf =
            rmp_serde::from_slice(bytes).map_err(RouteCodecError::Decode)?;
        Ok(KvQuery::Get(key.into_vec()))
    }

    fn encode_query_output(
        output: &Result<Option<Vec<u8>>, StateMachineError>,
    ) -> Result<Vec<u8>, RouteCodecError> {
        match output {
            Ok(value) => rmp_serde::to_vec(&value.as_deref().map(serde_bytes::Bytes::new))
                .map_err(RouteCodecError::Encode),
            Err(_) => Err(RouteCodecError::Failed),
        }
    }

    fn decode_query_output(
        bytes: &[u8],
    ) -> Result<Result<Option<Vec<u8>>, StateMachineError>, RouteCodecError> {
        let value: Option<serde_bytes::ByteBuf> =
            rmp_serde::from_slice(bytes).map_err(RouteCodecError::Decode)?;
        Ok(Ok(value.map(serde_bytes::ByteBuf::into_vec)))
    }

    fn metadata_command(expected: Option<Vec<u8>>, new: Vec<u8>) -> KvRequest {
        KvRequest {
            id: None,
            op: KvCommand::SetMetadata {
                expected: expected.map(serde_bytes::ByteBuf::from),
                new: serde_bytes::ByteBuf::from(new),
            },
        }
    }

    fn metadata_set(output: &KvOutput) -> bool {
        matches!(output, KvOutput::Cas { ok: true, .. })
    }

    fn metadata_query() -> KvQuery {
        KvQuery::Metadata
    }

    fn metadata_of(
        output: Result<Option<Vec<u8>>, StateMachineError>,
    ) -> Result<Option<Vec<u8>>, StateMachineError> {
        output
    }
}

impl StateMachine for KvMachine {
    type Command = KvRequest;
    type Output = KvOutput;
    type Query = KvQuery;
    type QueryOutput = Result<Option<Vec<u8>>, StateMachineError>;

    fn apply(
        &mut self,
        index: LogIndex,
        request: KvRequest,
    ) -> Result<KvOutput, StateMachineError> {
        let mut batch = WriteBatch::default();
        let keyed = match &request.id {
            Some(id) => {
                let fp = fingerprint(&request.op)?;
                if let Some(bytes) = self.store.get(&prefixed(IDEM, id.as_bytes()))? {
                    let first: IdemRecord =
                        rmp_serde::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
                            engine: self.store.engine(),
                            record: CorruptRecord::Idempotency {
                                key: id.clone(),
                                source,
                            },
                        })?;
                    // Nothing changes but the applied index, on every replica alike.
                    let out = if first.fingerprint == fp {
                        self.replay(&request.op, first.outcome)?
                    } else {
                        KvOutput::IdempotencyKeyReused
                    };
                    self.commit(index, batch)?;
                    return Ok(out);
                }
                Some((id, fp))
            }
            None => None,
        };
        // Forget keys that left the window; the same on every replica, as it depends only on
        // the log index.
        if index > IDEMPOTENCY_WINDOW {
            let start = IDEM_BY_INDEX.to_vec();
            let end = prefixed(IDEM_BY_INDEX, &(index - IDEMPOTENCY_WINDOW).to_be_bytes());
            let mut evict = Vec::new();
            self.store.scan(&start, Some(&end), &mut |k, id| {
                evict.push((k.to_vec(), id.to_vec()));
                Ok(true)
            })?;
            for (k, id) in evict {
                batch.delete(k);
                batch.delete(prefixed(IDEM, &id));
                batch.delete(prefixed(IDEM_LEGACY, &id));
            }
        }
        let (out, compact) = match &request.op {
            KvCommand::Put { key, value } => {
                batch.put(data_key(key), value.clone());
                (KvOutput::Put, CompactOutcome::Put)
            }
            KvCommand::Delete { key } => {
                let existed = self.get(key)?.is_some();
                batch.delete(data_key(key));
                (
                    KvOutput::Delete { existed },
                    CompactOutcome::Delete { existed },
                )
            }
            KvCommand::Cas { key, expected, new } => {
                let current = self.get(key)?;
                let ok = current.as_deref() == expected.as_deref().map(|v| v.as_slice());
                if ok {
                    match new {
                        Some(v) => batch.put(data_key(key), v.to_vec()),
                        None => batch.delete(data_key(key)),
                    }
                }
                (
                    KvOutput::Cas {
                        ok,
                        current: current.map(serde_bytes::ByteBuf::from),
                    },
                    CompactOutcome::Cas { ok },
                )
            }
            KvCommand::SetMetadata { expected, new } => {
                let current = self.store.get(METADATA)?;
                let ok = current.as_deref() == expected.as_deref().map(|v| v.as_slice());
                if ok {
                    batch.put(METADATA.to_vec(), new.to_vec());
                }
                (
                    KvOutput::Cas {
                        ok,
                        current: current.map(serde_bytes::ByteBuf::from),
                    },
                    CompactOutcome::Cas { ok },
                )
            }
        };
        if let Some((id, fingerprint)) = keyed {
            let record = IdemRecord {
                fingerprint,
                outcome: compact,
            };
            let encoded =
                rmp_serde::to_vec(&record).map_err(|source| StateMachineError::Encode {
                    what: "an idempotency record",
                    source,
                })?;
            batch.put(prefixed(IDEM, id.as_bytes()), encoded);
            batch.put(prefixed(IDEM_BY_INDEX, &index.to_be_bytes()), id.as_bytes());
        }
        self.commit(index, batch)?;
        Ok(out)
    }

    fn skip(&mut self, index: LogIndex) -> Result<(), StateMachineError> {
        self.commit(index, WriteBatch::default())
    }

    fn end_batch(&mut self) -> Result<(), StateMachineError> {
        Ok(self.store.finish()?)
    }

    /// redb commits runs with eventual durability (the Raft log is the durable record); this
    /// commits with immediate durability, which makes every earlier commit durable too.
    fn sync(&mut self) -> Result<(), StateMachineError> {
        self.flush()
    }

    fn query(&self, query: &KvQuery) -> Self::QueryOutput {
        match query {
            KvQuery::Get(key) => self.get(key),
            KvQuery::Metadata => Ok(self.store.get(METADATA)?),
        }
    }

    fn applied_index(&self) -> LogIndex {
        self.applied
    }

    /// Everything replicated: the data *and* the idempotency table (a replica restored from a
    /// snapshot must answer retries as the others do) and the applied index, from one
    /// consistent view (see [`write_kv_snapshot`] for the format).
    fn snapshot_to(&self, out: &mut dyn Write) -> Result<LogIndex, StateMachineError> {
        match self.store.view()? {
            Some(view) if view.applied_index() == self.applied => write_kv_snapshot(&*view, out),
            // No isolated view (sled), or one without the runs the store still stages (redb
            // writes them with its next durable commit): `&self` keeps the applier from
            // committing during the scan, and the store's own reads see staged runs, so the
            // store is the state at `self.applied` throughout.
            _ => write_kv_snapshot(&LiveView(self), out),
        }
    }

    fn restore_from(
        &mut self,
        index: LogIndex,
        input: &mut dyn Read,
    ) -> Result<(), StateMachineError> {
        let mut reader = SnapshotReader::new(input)?;
        if reader.index != index {
            return Err(SnapshotStreamError::Index {
                expected: index,
                found: reader.index,
            }
            .into());
        }
        // The reader's own error is kept here: the store only learns that its source failed.
        let mut failure = None;
        let replaced = self.store.replace_all(index, &mut || match reader.next() {
            Ok(r) => Ok(r),
            Err(e) => {
                failure = Some(e);
                Err(())
            }
        });
        match (replaced, failure) {
            (_, Some(e)) => Err(e.into()),
            (Err(e), None) => Err(e.into()),
            (Ok(()), None) => {
                self.applied = index;
                Ok(())
            }
        }
    }

    fn snapshot_view(&self) -> Result<Option<Box<dyn SnapshotView>>, StateMachineError> {
        Ok(self
            .store
            .view()?
            .map(|view| Box::new(KvSnapshotView(view)) as Box<dyn SnapshotView>))
    }
}

/// A key-value machine's isolated store view, written out off the applier.
struct KvSnapshotView(Box<dyn StoreView>);

impl SnapshotView for KvSnapshotView {
    fn index(&self) -> LogIndex {
        self.0.applied_index()
    }

    fn write_to(self: Box<Self>, out: &mut dyn Write) -> Result<LogIndex, StateMachineError> {
        write_kv_snapshot(&*self.0, out)
    }
}

/// The machine's own store as a view, for engines without isolated readers.
struct LiveView<'a>(&'a KvMachine);

/// What [`write_kv_snapshot`] reads: the applied index and the keys of one state.
trait KvSource {
    fn applied(&self) -> LogIndex;
    fn scan_all(
        &self,
        visit: &mut crate::storage::state_store::Visit<'_>,
    ) -> Result<(), StoreError>;
}

impl KvSource for LiveView<'_> {
    fn applied(&self) -> LogIndex {
        self.0.applied
    }
    fn scan_all(
        &self,
        visit: &mut crate::storage::state_store::Visit<'_>,
    ) -> Result<(), StoreError> {
        self.0.store.scan(b"", None, visit)
    }
}

impl KvSource for dyn StoreView {
    fn applied(&self) -> LogIndex {
        self.applied_index()
    }
    fn scan_all(
        &self,
        visit: &mut crate::storage::state_store::Visit<'_>,
    ) -> Result<(), StoreError> {
        StoreView::scan_all(self, visit)
    }
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hash: xxhash_rust::xxh3::Xxh3Default,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the key-value snapshot stream: `CLVKVSNP`, version (u8), applied index (u64 BE),
/// then per store key `1, key length (u32 BE), value length (u32 BE), key, value` in key
/// order, then `0`, the record count (u64 BE) and the xxh3-64 of every byte before it
/// (u64 BE). Returns the applied index.
fn write_kv_snapshot<S: KvSource + ?Sized>(
    source: &S,
    out: &mut dyn Write,
) -> Result<LogIndex, StateMachineError> {
    let mut w = Hashing {
        inner: BufWriter::with_capacity(256 * 1024, out),
        hash: xxhash_rust::xxh3::Xxh3Default::new(),
    };
    let index = source.applied();
    let io = |e: std::io::Error| StateMachineError::from(SnapshotStreamError::Io(e));
    w.write_all(SNAPSHOT_MAGIC).map_err(io)?;
    w.write_all(&[SNAPSHOT_VERSION]).map_err(io)?;
    w.write_all(&index.to_be_bytes()).map_err(io)?;
    let mut count = 0u64;
    let mut failed = None;
    source.scan_all(&mut |k, v| {
        let write = |w: &mut Hashing<_>| -> std::io::Result<()> {
            w.write_all(&[TAG_RECORD])?;
            w.write_all(&(k.len() as u32).to_be_bytes())?;
            w.write_all(&(v.len() as u32).to_be_bytes())?;
            w.write_all(k)?;
            w.write_all(v)
        };
        match write(&mut w) {
            Ok(()) => {
                count += 1;
                Ok(true)
            }
            Err(e) => {
                failed = Some(e);
                Ok(false)
            }
        }
    })?;
    if let Some(e) = failed {
        return Err(io(e));
    }
    w.write_all(&[TAG_END]).map_err(io)?;
    w.write_all(&count.to_be_bytes()).map_err(io)?;
    let digest = w.hash.digest();
    let mut inner = w.inner;
    inner.write_all(&digest.to_be_bytes()).map_err(io)?;
    inner.flush().map_err(io)?;
    Ok(index)
}

/// A store key and its value, as a snapshot stream carries them.
type Record = (Vec<u8>, Vec<u8>);

/// Reads a key-value snapshot stream record by record, checking it as it goes; the digest
/// is only known at the end, so a consumer must not keep anything until `next` returned
/// `Ok(None)`.
struct SnapshotReader<'a> {
    input: BufReader<&'a mut dyn Read>,
    hash: xxhash_rust::xxh3::Xxh3Default,
    index: LogIndex,
    count: u64,
    done: bool,
}

impl<'a> SnapshotReader<'a> {
    fn new(input: &'a mut dyn Read) -> Result<Self, SnapshotStreamError> {
        let mut r = SnapshotReader {
            input: BufReader::with_capacity(256 * 1024, input),
            hash: xxhash_rust::xxh3::Xxh3Default::new(),
            index: 0,
            count: 0,
            done: false,
        };
        let mut magic = [0u8; 8];
        r.read(&mut magic)?;
        if &magic != SNAPSHOT_MAGIC {
            return Err(SnapshotStreamError::BadMagic);
        }
        let version = r.u8()?;
        if version != SNAPSHOT_VERSION {
            return Err(SnapshotStreamError::Version {
                found: version,
                supported: SNAPSHOT_VERSION,
            });
        }
        r.index = r.u64()?;
        Ok(r)
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), SnapshotStreamError> {
        self.input.read_exact(buf)?;
        self.hash.update(buf);
        Ok(())
    }

    fn u8(&mut self) -> Result<u8, SnapshotStreamError> {
        let mut b = [0u8; 1];
        self.read(&mut b)?;
        Ok(b[0])
    }

    fn u32(&mut self) -> Result<u32, SnapshotStreamError> {
        let mut b = [0u8; 4];
        self.read(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, SnapshotStreamError> {
        let mut b = [0u8; 8];
        self.read(&mut b)?;
        Ok(u64::from_be_bytes(b))
    }

    fn bytes(&mut self, len: u32) -> Result<Vec<u8>, SnapshotStreamError> {
        if u64::from(len) > MAX_SNAPSHOT_RECORD {
            return Err(SnapshotStreamError::RecordTooLarge(len.into()));
        }
        let mut v = vec![0u8; len as usize];
        self.read(&mut v)?;
        Ok(v)
    }

    /// The next record, or `None` once the trailer was read and verified.
    fn next(&mut self) -> Result<Option<Record>, SnapshotStreamError> {
        if self.done {
            return Ok(None);
        }
        match self.u8()? {
            TAG_RECORD => {
                let (kl, vl) = (self.u32()?, self.u32()?);
                let k = self.bytes(kl)?;
                let v = self.bytes(vl)?;
                self.count += 1;
                Ok(Some((k, v)))
            }
            TAG_END => {
                let expected = self.u64()?;
                if expected != self.count {
                    return Err(SnapshotStreamError::Count {
                        expected,
                        found: self.count,
                    });
                }
                let actual = self.hash.digest();
                let mut d = [0u8; 8];
                self.input.read_exact(&mut d)?;
                let expected = u64::from_be_bytes(d);
                if expected != actual {
                    return Err(SnapshotStreamError::Digest { expected, actual });
                }
                let mut extra = [0u8; 1];
                if self
                    .input
                    .read(&mut extra)
                    .map_err(SnapshotStreamError::Io)?
                    != 0
                {
                    return Err(SnapshotStreamError::TrailingBytes);
                }
                self.done = true;
                Ok(None)
            }
            tag => Err(SnapshotStreamError::BadTag(tag)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_bytes::ByteBuf;

    const ENGINES: [StorageEngine; 2] = [StorageEngine::Redb, StorageEngine::Sled];

    fn open(engine: StorageEngine, dir: &Path) -> KvMachine {
        KvMachine::open_engine(engine, dir).unwrap()
    }

    fn put(k: &str, v: &str) -> KvRequest {
        req(KvCommand::Put {
            key: k.into(),
            value: v.into(),
        })
    }

    fn req(op: KvCommand) -> KvRequest {
        KvRequest { id: None, op }
    }

    fn get(m: &KvMachine, k: &str) -> Option<Vec<u8>> {
        m.query(&KvQuery::Get(k.into())).unwrap()
    }

    #[test]
    fn put_delete_cas_semantics() {
        for engine in ENGINES {
            let dir = tempfile::tempdir().unwrap();
            put_delete_cas_semantics_on(open(engine, dir.path()));
        }
    }

    fn put_delete_cas_semantics_on(mut m: KvMachine) {
        assert_eq!(m.apply(1, put("a", "1")).unwrap(), KvOutput::Put);
        assert_eq!(get(&m, "a"), Some(b"1".to_vec()));
        let cas = |expected: Option<&str>, new: Option<&str>| {
            req(KvCommand::Cas {
                key: b"a".to_vec(),
                expected: expected.map(|s| ByteBuf::from(s.as_bytes())),
                new: new.map(|s| ByteBuf::from(s.as_bytes())),
            })
        };
        assert_eq!(
            m.apply(2, cas(Some("0"), Some("2"))).unwrap(),
            KvOutput::Cas {
                ok: false,
                current: Some(ByteBuf::from(b"1".to_vec()))
            }
        );
        assert_eq!(get(&m, "a"), Some(b"1".to_vec()));
        assert!(matches!(
            m.apply(3, cas(Some("1"), Some("2"))).unwrap(),
            KvOutput::Cas { ok: true, .. }
        ));
        assert_eq!(get(&m, "a"), Some(b"2".to_vec()));
        // CAS with new = None deletes on match.
        assert!(matches!(
            m.apply(4, cas(Some("2"), None)).unwrap(),
            KvOutput::Cas { ok: true, .. }
        ));
        assert_eq!(get(&m, "a"), None);
        // CAS expecting absence creates.
        assert!(matches!(
            m.apply(5, cas(None, Some("3"))).unwrap(),
            KvOutput::Cas { ok: true, .. }
        ));
        assert_eq!(
            m.apply(6, req(KvCommand::Delete { key: b"a".to_vec() }))
                .unwrap(),
            KvOutput::Delete { existed: true }
        );
        assert_eq!(
            m.apply(7, req(KvCommand::Delete { key: b"a".to_vec() }))
                .unwrap(),
            KvOutput::Delete { existed: false }
        );
        m.skip(8).unwrap();
        assert_eq!(m.applied_index(), 8);
    }

    #[test]
    fn idempotency_key_applies_once_and_is_forgotten_after_the_window() {
        for engine in ENGINES {
            idempotency_key_applies_once_and_is_forgotten_after_the_window_on(engine);
        }
    }

    fn idempotency_key_applies_once_and_is_forgotten_after_the_window_on(engine: StorageEngine) {
        let dir = tempfile::tempdir().unwrap();
        let keyed = |id: &str, op: KvCommand| KvRequest {
            id: Some(id.into()),
            op,
        };
        let del = || KvCommand::Delete { key: b"a".to_vec() };
        {
            let mut m = open(engine, dir.path());
            m.apply(1, put("a", "1")).unwrap();
            assert_eq!(
                m.apply(2, keyed("r1", del())).unwrap(),
                KvOutput::Delete { existed: true }
            );
            m.apply(3, put("a", "2")).unwrap();
            // The retry returns the first outcome and does not delete again.
            assert_eq!(
                m.apply(4, keyed("r1", del())).unwrap(),
                KvOutput::Delete { existed: true }
            );
            assert_eq!(get(&m, "a"), Some(b"2".to_vec()));
            assert_eq!(m.applied_index(), 4);
            m.end_batch().unwrap();
        }
        // Survives a restart (the table is durable with the data).
        let mut m = open(engine, dir.path());
        assert_eq!(
            m.apply(5, keyed("r1", del())).unwrap(),
            KvOutput::Delete { existed: true }
        );
        assert_eq!(get(&m, "a"), Some(b"2".to_vec()));
        // Outside the window the key is forgotten and the request applies again.
        let later = 2 + IDEMPOTENCY_WINDOW + 1;
        m.apply(later, put("other", "x")).unwrap();
        assert_eq!(
            m.apply(later + 1, keyed("r1", del())).unwrap(),
            KvOutput::Delete { existed: true }
        );
        assert_eq!(get(&m, "a"), None);
    }

    #[test]
    fn applied_index_and_data_survive_reopen() {
        for engine in ENGINES {
            let dir = tempfile::tempdir().unwrap();
            {
                let mut m = open(engine, dir.path());
                for i in 1..=50u64 {
                    m.apply(i, put(&format!("k{i}"), &format!("v{i}"))).unwrap();
                }
                m.flush().unwrap();
            }
            let m = open(engine, dir.path());
            assert_eq!(m.applied_index(), 50, "{engine:?}");
            assert_eq!(get(&m, "k17"), Some(b"v17".to_vec()));
        }
    }

    #[test]
    fn a_directory_held_by_an_open_machine_is_refused_with_the_lock_error() {
        for engine in ENGINES {
            let dir = tempfile::tempdir().unwrap();
            let _held = open(engine, dir.path());
            // sled: retried for a bounded time (its lock release is asynchronous), then
            // reported. redb: refused at once.
            match KvMachine::open_engine(engine, dir.path()) {
                Err(StateMachineError::Store(e @ StoreError::Open { .. })) => {
                    let source = std::error::Error::source(&e).map(|s| s.to_string());
                    let text = format!("{e}: {source:?}").to_lowercase();
                    assert!(
                        text.contains("lock") || text.contains("already open"),
                        "{engine:?}: {text}"
                    );
                }
                Err(other) => panic!("unexpected error {other:?}"),
                Ok(_) => panic!("{engine:?}: a second open of a held store succeeded"),
            }
        }
    }

    /// The machine's image, after ending the run of entries as the applier does (a durable
    /// machine's image is of its finished state).
    fn image(m: &mut KvMachine) -> (LogIndex, Vec<u8>) {
        m.end_batch().unwrap();
        let mut out = Vec::new();
        let index = m.snapshot_to(&mut out).unwrap();
        (index, out)
    }

    /// Every key of the store, the idempotency table included.
    fn dump(m: &KvMachine) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        m.store
            .scan(b"", None, &mut |k, v| {
                out.push((k.to_vec(), v.to_vec()));
                Ok(true)
            })
            .unwrap();
        out
    }

    #[test]
    fn snapshot_restore_replaces_state() {
        for engine in ENGINES {
            let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            snapshot_restore_replaces_state_on(open(engine, da.path()), open(engine, db.path()));
        }
    }

    fn snapshot_restore_replaces_state_on(mut a: KvMachine, mut b: KvMachine) {
        a.apply(1, put("x", "1")).unwrap();
        a.apply(2, put("y", "2")).unwrap();
        let (index, snap) = image(&mut a);
        assert_eq!(index, 2);
        b.apply(1, put("stale", "gone")).unwrap();
        b.restore_from(2, &mut &snap[..]).unwrap();
        assert_eq!(get(&b, "x"), Some(b"1".to_vec()));
        assert_eq!(get(&b, "stale"), None);
        assert_eq!(b.applied_index(), 2);
        assert_eq!(dump(&a), dump(&b));
        // The same image once more is the same bytes (replicas compare digests).
        assert_eq!(image(&mut b), (2, snap));
    }

    /// The metadata record (group 0's shard map on a sharded node): a compare-and-set no key
    /// reaches, kept across a reopen and carried by snapshots.
    #[test]
    fn the_metadata_record_is_apart_from_the_data_and_in_snapshots() {
        for engine in ENGINES {
            let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let mut a = open(engine, da.path());
            let meta = |m: &KvMachine| {
                KvMachine::metadata_of(m.query(&KvMachine::metadata_query())).unwrap()
            };
            let set = |expected: Option<&[u8]>, new: &[u8]| {
                KvMachine::metadata_command(expected.map(<[u8]>::to_vec), new.to_vec())
            };
            assert_eq!(meta(&a), None);
            let out = a.apply(1, set(None, b"v1")).unwrap();
            assert!(KvMachine::metadata_set(&out));
            // A stale expectation changes nothing and names what is there.
            let out = a.apply(2, set(None, b"v2")).unwrap();
            assert!(!KvMachine::metadata_set(&out));
            assert_eq!(
                out,
                KvOutput::Cas {
                    ok: false,
                    current: Some(ByteBuf::from(b"v1".to_vec()))
                }
            );
            assert!(KvMachine::metadata_set(
                &a.apply(3, set(Some(b"v1"), b"v2")).unwrap()
            ));
            assert_eq!(meta(&a), Some(b"v2".to_vec()));
            // No key reaches it: not the empty key, not its store name.
            a.apply(4, put("n/metadata", "user")).unwrap();
            assert_eq!(get(&a, ""), None);
            assert_eq!(meta(&a), Some(b"v2".to_vec()));
            assert_eq!(get(&a, "n/metadata"), Some(b"user".to_vec()));
            let (index, snap) = image(&mut a);
            let mut b = open(engine, db.path());
            b.restore_from(index, &mut &snap[..]).unwrap();
            assert_eq!(meta(&b), Some(b"v2".to_vec()));
            a.flush().unwrap();
            drop(a);
            assert_eq!(meta(&open(engine, da.path())), Some(b"v2".to_vec()));
        }
    }

    /// A corrupt, truncated, foreign or mis-indexed image is refused with its own error and
    /// leaves the state (and the applied index) exactly as it was.
    #[test]
    fn corrupt_or_truncated_snapshots_are_refused_and_change_nothing() {
        for engine in ENGINES {
            let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let mut a = open(engine, da.path());
            for i in 1..=20u64 {
                a.apply(i, put(&format!("k{i}"), &"v".repeat(100))).unwrap();
            }
            let (_, snap) = image(&mut a);
            let mut b = open(engine, db.path());
            b.apply(1, put("mine", "kept")).unwrap();
            let before = dump(&b);
            let refused = |b: &mut KvMachine, index, bytes: &[u8]| {
                let err = b.restore_from(index, &mut &bytes[..]).unwrap_err();
                assert_eq!(dump(b), before, "{engine:?}: state changed by {err:?}");
                assert_eq!(b.applied_index(), 1);
                match err {
                    StateMachineError::SnapshotStream(e) => e,
                    other => panic!("{engine:?}: untyped refusal {other:?}"),
                }
            };
            for cut in [0, 5, 12, 30, snap.len() / 2, snap.len() - 9, snap.len() - 1] {
                let e = refused(&mut b, 20, &snap[..cut]);
                assert!(
                    matches!(e, SnapshotStreamError::Truncated),
                    "{engine:?} cut {cut}: {e:?}"
                );
            }
            // A flipped byte in a value: only the digest sees it.
            let mut flipped = snap.clone();
            let at = snap.len() / 2;
            flipped[at] ^= 0x40;
            let e = refused(&mut b, 20, &flipped);
            assert!(
                matches!(
                    e,
                    SnapshotStreamError::Digest { .. } | SnapshotStreamError::BadTag(_)
                ) || matches!(e, SnapshotStreamError::RecordTooLarge(_))
                    || matches!(e, SnapshotStreamError::Truncated),
                "{engine:?}: {e:?}"
            );
            let mut last = snap.clone();
            *last.last_mut().unwrap() ^= 1;
            assert!(matches!(
                refused(&mut b, 20, &last),
                SnapshotStreamError::Digest { .. }
            ));
            assert!(matches!(
                refused(&mut b, 20, b"\xc1garbage-and-more"),
                SnapshotStreamError::BadMagic
            ));
            let mut longer = snap.clone();
            longer.push(0);
            assert!(matches!(
                refused(&mut b, 20, &longer),
                SnapshotStreamError::TrailingBytes
            ));
            assert!(matches!(
                refused(&mut b, 21, &snap),
                SnapshotStreamError::Index {
                    expected: 21,
                    found: 20
                }
            ));
            // A hostile length is refused before anything is allocated for it.
            let mut huge = snap[..17].to_vec();
            huge.extend_from_slice(&[TAG_RECORD, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1]);
            assert!(matches!(
                refused(&mut b, 20, &huge),
                SnapshotStreamError::RecordTooLarge(_)
            ));
            // And the intact image still restores.
            b.restore_from(20, &mut &snap[..]).unwrap();
            assert_eq!(dump(&a), dump(&b));
        }
    }

    /// redb: a view taken at index N, written out after more entries were applied, is exactly
    /// the state of a machine that applied up to N (and restores to it).
    #[test]
    fn a_view_written_while_writes_continue_is_the_state_at_its_index() {
        let (da, db, dc) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let mut live = open(StorageEngine::Redb, da.path());
        let mut reference = open(StorageEngine::Redb, db.path());
        for i in 1..=200u64 {
            let r = keyed(
                &format!("id{i}"),
                put(&format!("k{}", i % 50), &i.to_string()).op,
            );
            live.apply(i, r.clone()).unwrap();
            reference.apply(i, r).unwrap();
        }
        live.end_batch().unwrap();
        // As the applier does: synced first (the store may keep the run staged until then).
        live.sync().unwrap();
        let view = live
            .snapshot_view()
            .unwrap()
            .expect("redb has isolated views");
        assert_eq!(view.index(), 200);
        // Writes go on, from another thread, while the view is written out.
        let writer = std::thread::spawn(move || {
            for i in 201..=400u64 {
                live.apply(i, put(&format!("k{}", i % 70), "later"))
                    .unwrap();
                live.apply(
                    i + 1000,
                    req(KvCommand::Delete {
                        key: format!("k{}", i % 13).into_bytes(),
                    }),
                )
                .unwrap();
            }
            live
        });
        let mut out = Vec::new();
        assert_eq!(view.write_to(&mut out).unwrap(), 200);
        let live = writer.join().unwrap();
        assert_eq!(live.applied_index(), 1400);
        assert_ne!(dump(&live), dump(&reference));
        let (_, at_200) = image(&mut reference);
        assert_eq!(
            out, at_200,
            "the view's image is not the state at its index"
        );
        let mut restored = open(StorageEngine::Redb, dc.path());
        restored.restore_from(200, &mut &out[..]).unwrap();
        assert_eq!(dump(&restored), dump(&reference));
    }

    /// sled has no isolated view: the image is written under `&self` (the applier applies
    /// nothing meanwhile) and is the state at the applied index.
    #[test]
    fn sled_snapshots_are_written_on_the_applier() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = open(StorageEngine::Sled, dir.path());
        m.apply(1, put("a", "1")).unwrap();
        assert!(m.snapshot_view().unwrap().is_none());
        assert_eq!(image(&mut m).0, 1);
    }

    fn keyed(id: &str, op: KvCommand) -> KvRequest {
        KvRequest {
            id: Some(id.into()),
            op,
        }
    }

    fn cas_req(key: &str, expected: Option<&[u8]>, new: Option<&[u8]>) -> KvCommand {
        KvCommand::Cas {
            key: key.as_bytes().to_vec(),
            expected: expected.map(ByteBuf::from),
            new: new.map(ByteBuf::from),
        }
    }

    /// Finding 8 (issue 12): a key reused by a different request was answered with the first
    /// request's outcome (a PUT of `beta` "succeeded" without writing it; a DELETE or CAS got
    /// a `Put` outcome, which the API turned into a 500).
    #[test]
    fn idempotency_key_reused_with_another_request_is_refused() {
        for engine in ENGINES {
            let dir = tempfile::tempdir().unwrap();
            let mut m = open(engine, dir.path());
            let put_alpha = || KvCommand::Put {
                key: b"alpha".to_vec(),
                value: b"1".to_vec(),
            };
            assert_eq!(
                m.apply(1, keyed("abc", put_alpha())).unwrap(),
                KvOutput::Put
            );
            let put_beta = KvCommand::Put {
                key: b"beta".to_vec(),
                value: b"1".to_vec(),
            };
            for (i, op) in [
                put_beta,
                // Same key, different value: a different request too.
                KvCommand::Put {
                    key: b"alpha".to_vec(),
                    value: b"2".to_vec(),
                },
                KvCommand::Delete {
                    key: b"alpha".to_vec(),
                },
                cas_req("alpha", Some(b"1"), Some(b"3")),
            ]
            .into_iter()
            .enumerate()
            {
                assert_eq!(
                    m.apply(2 + i as u64, keyed("abc", op.clone())).unwrap(),
                    KvOutput::IdempotencyKeyReused,
                    "{engine:?} {op:?}"
                );
            }
            // Nothing of those was applied; the index moved on.
            assert_eq!(get(&m, "beta"), None);
            assert_eq!(get(&m, "alpha"), Some(b"1".to_vec()));
            assert_eq!(m.applied_index(), 5);
            // The real retry still gets its first outcome.
            assert_eq!(
                m.apply(6, keyed("abc", put_alpha())).unwrap(),
                KvOutput::Put
            );
        }
    }

    /// Finding 9 (issue 12): a failed CAS stored the key's whole current value (up to 2 MiB)
    /// in its idempotency record. The record is now a fingerprint and a compact outcome; a
    /// retried failed CAS answers with the value as of the retry.
    #[test]
    fn failed_cas_idempotency_record_is_compact() {
        for engine in ENGINES {
            let dir = tempfile::tempdir().unwrap();
            let mut m = open(engine, dir.path());
            let big = vec![7u8; 1 << 20];
            m.apply(
                1,
                req(KvCommand::Put {
                    key: b"k".to_vec(),
                    value: big.clone(),
                }),
            )
            .unwrap();
            let failing = || cas_req("k", Some(b"other"), Some(b"new"));
            assert_eq!(
                m.apply(2, keyed("c1", failing())).unwrap(),
                KvOutput::Cas {
                    ok: false,
                    current: Some(ByteBuf::from(big.clone()))
                }
            );
            let mut records = Vec::new();
            m.store
                .scan(IDEM, Some(b"k0"), &mut |k, v| {
                    records.push((k.to_vec(), v.len()));
                    Ok(true)
                })
                .unwrap();
            assert_eq!(records.len(), 1, "{engine:?}");
            assert!(
                records[0].1 <= 32,
                "{engine:?}: record of {} bytes",
                records[0].1
            );
            // The retry: not applied again, answered with today's value.
            m.apply(3, put("k", "small")).unwrap();
            assert_eq!(
                m.apply(4, keyed("c1", failing())).unwrap(),
                KvOutput::Cas {
                    ok: false,
                    current: Some(ByteBuf::from(b"small".to_vec()))
                }
            );
            // A successful CAS's retry answers with the value it found (the expected one).
            let swap = || cas_req("k", Some(b"small"), Some(b"swapped"));
            let first = m.apply(5, keyed("c2", swap())).unwrap();
            assert_eq!(
                first,
                KvOutput::Cas {
                    ok: true,
                    current: Some(ByteBuf::from(b"small".to_vec()))
                }
            );
            assert_eq!(m.apply(6, keyed("c2", swap())).unwrap(), first);
            assert_eq!(get(&m, "k"), Some(b"swapped".to_vec()));
        }
    }

    /// A replica restored from a snapshot answers retries like the one it came from (the
    /// snapshot used to carry the data only).
    #[test]
    fn snapshot_carries_the_idempotency_table() {
        for engine in ENGINES {
            let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let mut a = open(engine, da.path());
            let del = || KvCommand::Delete { key: b"x".to_vec() };
            a.apply(1, put("x", "1")).unwrap();
            assert_eq!(
                a.apply(2, keyed("d", del())).unwrap(),
                KvOutput::Delete { existed: true }
            );
            let mut b = open(engine, db.path());
            let (index, snap) = image(&mut a);
            b.restore_from(index, &mut &snap[..]).unwrap();
            for m in [&mut a, &mut b] {
                assert_eq!(
                    m.apply(3, keyed("d", del())).unwrap(),
                    KvOutput::Delete { existed: true }
                );
                assert_eq!(
                    m.apply(4, keyed("d", put("x", "2").op)).unwrap(),
                    KvOutput::IdempotencyKeyReused
                );
            }
        }
    }
}
