//! The user's replicated state machine, and the built-in key-value machine on sled.
//!
//! A state machine is deterministic: every replica applies the same committed commands in the
//! same order and must reach the same state and produce the same outputs. Commands and outputs
//! are serde types (they travel in log entries and HTTP responses); queries run against the
//! local state once the read path says it may (linearizable, lease or stale).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Position of an entry in the Raft log.
pub type LogIndex = u64;

/// Errors a state machine reports to the runtime (storage failures, bad snapshots). A failure
/// to apply a committed command is fatal for the replica: it stops rather than diverge.
#[derive(Debug, thiserror::Error)]
pub enum StateMachineError {
    /// The machine's storage failed.
    #[error("state machine storage error: {0}")]
    Storage(String),
    /// A snapshot could not be decoded or installed.
    #[error("invalid snapshot: {0}")]
    Snapshot(String),
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

    /// Answers a query from the current state.
    fn query(&self, query: &Self::Query) -> Self::QueryOutput;

    /// The index up to which this machine's state is durable on its own (0 for an in-memory
    /// machine). At restart the runtime replays the log from the entry after it.
    fn applied_index(&self) -> LogIndex {
        0
    }

    /// A serialised image of the whole state, for snapshots.
    fn snapshot(&self) -> Result<Vec<u8>, StateMachineError>;

    /// Replaces the whole state with a snapshot's image taken at `index`.
    fn restore(&mut self, index: LogIndex, snapshot: &[u8]) -> Result<(), StateMachineError>;
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
}

/// What the key-value machine's log entries carry: a command and, when the client sent an
/// `Idempotency-Key`, that key. A request whose key was already applied within the last
/// [`IDEMPOTENCY_WINDOW`] entries is not applied again: it returns the first outcome. The
/// table of keys is replicated state (written in the same batch as the effect and evicted by
/// log index), so every replica makes the same decision, across restarts too.
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
        /// The value the key held before the command.
        current: Option<serde_bytes::ByteBuf>,
    },
}

/// A read of the key-value machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvQuery {
    /// The value of a key.
    Get(Vec<u8>),
}

/// The built-in key-value machine: data in a sled tree, with the applied index written in the
/// same atomic batch as each command's effect, so that restart resumes exactly after the last
/// applied entry.
pub struct KvMachine {
    db: sled::Db,
    tree: sled::Tree,
    applied: LogIndex,
}

/// Data keys are prefixed so that metadata can live in the same tree (one atomic batch).
const DATA: u8 = b'd';
const APPLIED_KEY: &[u8] = b"m/applied";
/// `i/{id}` -> the first outcome of the request with that idempotency key.
const IDEM: &[u8] = b"i/";
/// `e/{index, big-endian}` -> the idempotency key recorded at that index (for eviction).
const IDEM_BY_INDEX: &[u8] = b"e/";

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

/// Opens the sled database in `dir`. sled releases its file lock from a background thread
/// some time after the previous `Db` of the same directory is dropped, so reopening right
/// after a close (a supervised restart of the applier, a test that reopens) can briefly see
/// "could not acquire lock" (sled reports it as an `io::ErrorKind::Other` with that text).
/// That is retried for up to two seconds; a lock still held after that (another process
/// uses the directory) is reported as it is.
fn open_sled(dir: &Path) -> Result<sled::Db, StateMachineError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match sled::open(dir) {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other.map_err(storage),
        }
    }
}

fn storage(e: sled::Error) -> StateMachineError {
    StateMachineError::Storage(e.to_string())
}

impl KvMachine {
    /// Opens (or creates) the machine's sled database in `dir`.
    pub fn open(dir: &Path) -> Result<KvMachine, StateMachineError> {
        let db = open_sled(dir)?;
        let tree = db.open_tree("kv").map_err(storage)?;
        let applied = match tree.get(APPLIED_KEY).map_err(storage)? {
            Some(v) => {
                let bytes: [u8; 8] = v.as_ref().try_into().map_err(|_| {
                    StateMachineError::Storage("applied index record is not 8 bytes".to_owned())
                })?;
                u64::from_be_bytes(bytes)
            }
            None => 0,
        };
        Ok(KvMachine { db, tree, applied })
    }

    /// A machine in a temporary sled database (tests, examples).
    pub fn temporary() -> Result<KvMachine, StateMachineError> {
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .map_err(storage)?;
        let tree = db.open_tree("kv").map_err(storage)?;
        Ok(KvMachine {
            db,
            tree,
            applied: 0,
        })
    }

    /// Asks sled to write its buffers out (used before log compaction).
    pub fn flush(&self) -> Result<(), StateMachineError> {
        self.db.flush().map(|_| ()).map_err(storage)
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateMachineError> {
        Ok(self
            .tree
            .get(data_key(key))
            .map_err(storage)?
            .map(|v| v.to_vec()))
    }

    fn commit(&mut self, index: LogIndex, mut batch: sled::Batch) -> Result<(), StateMachineError> {
        batch.insert(APPLIED_KEY, &index.to_be_bytes());
        self.tree.apply_batch(batch).map_err(storage)?;
        self.applied = index;
        Ok(())
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
        let mut batch = sled::Batch::default();
        if let Some(id) = &request.id {
            if let Some(first) = self
                .tree
                .get(prefixed(IDEM, id.as_bytes()))
                .map_err(storage)?
            {
                let out = rmp_serde::from_slice(&first)
                    .map_err(|e| StateMachineError::Storage(format!("idempotency record: {e}")))?;
                self.commit(index, batch)?;
                return Ok(out);
            }
        }
        // Forget keys that left the window; the same on every replica, as it depends only on
        // the log index.
        if index > IDEMPOTENCY_WINDOW {
            let end = prefixed(IDEM_BY_INDEX, &(index - IDEMPOTENCY_WINDOW).to_be_bytes());
            for item in self.tree.range(IDEM_BY_INDEX.to_vec()..end) {
                let (k, id) = item.map_err(storage)?;
                batch.remove(k);
                batch.remove(prefixed(IDEM, &id));
            }
        }
        let out = match request.op {
            KvCommand::Put { key, value } => {
                batch.insert(data_key(&key), value);
                KvOutput::Put
            }
            KvCommand::Delete { key } => {
                let existed = self.get(&key)?.is_some();
                batch.remove(data_key(&key));
                KvOutput::Delete { existed }
            }
            KvCommand::Cas { key, expected, new } => {
                let current = self.get(&key)?;
                let ok = current.as_deref() == expected.as_deref().map(|v| v.as_slice());
                if ok {
                    match new {
                        Some(v) => batch.insert(data_key(&key), v.into_vec()),
                        None => batch.remove(data_key(&key)),
                    }
                }
                KvOutput::Cas {
                    ok,
                    current: current.map(serde_bytes::ByteBuf::from),
                }
            }
        };
        if let Some(id) = &request.id {
            let encoded = rmp_serde::to_vec(&out)
                .map_err(|e| StateMachineError::Storage(format!("idempotency record: {e}")))?;
            batch.insert(prefixed(IDEM, id.as_bytes()), encoded);
            batch.insert(prefixed(IDEM_BY_INDEX, &index.to_be_bytes()), id.as_bytes());
        }
        self.commit(index, batch)?;
        Ok(out)
    }

    fn skip(&mut self, index: LogIndex) -> Result<(), StateMachineError> {
        self.commit(index, sled::Batch::default())
    }

    fn query(&self, query: &KvQuery) -> Self::QueryOutput {
        match query {
            KvQuery::Get(key) => self.get(key),
        }
    }

    fn applied_index(&self) -> LogIndex {
        self.applied
    }

    fn snapshot(&self) -> Result<Vec<u8>, StateMachineError> {
        let mut pairs: Vec<(serde_bytes::ByteBuf, serde_bytes::ByteBuf)> = Vec::new();
        for item in self.tree.scan_prefix([DATA]) {
            let (k, v) = item.map_err(storage)?;
            pairs.push((
                serde_bytes::ByteBuf::from(k[1..].to_vec()),
                serde_bytes::ByteBuf::from(v.to_vec()),
            ));
        }
        rmp_serde::to_vec(&pairs).map_err(|e| StateMachineError::Snapshot(e.to_string()))
    }

    fn restore(&mut self, index: LogIndex, snapshot: &[u8]) -> Result<(), StateMachineError> {
        let pairs: Vec<(serde_bytes::ByteBuf, serde_bytes::ByteBuf)> =
            rmp_serde::from_slice(snapshot)
                .map_err(|e| StateMachineError::Snapshot(e.to_string()))?;
        // Build the replacement in one batch: the old state stays intact if decoding failed.
        let mut batch = sled::Batch::default();
        for item in self.tree.scan_prefix([DATA]) {
            let (k, _) = item.map_err(storage)?;
            batch.remove(k);
        }
        for (k, v) in pairs {
            batch.insert(data_key(&k), v.into_vec());
        }
        self.commit(index, batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_bytes::ByteBuf;

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
        let mut m = KvMachine::temporary().unwrap();
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
        let dir = tempfile::tempdir().unwrap();
        let keyed = |id: &str, op: KvCommand| KvRequest {
            id: Some(id.into()),
            op,
        };
        let del = || KvCommand::Delete { key: b"a".to_vec() };
        {
            let mut m = KvMachine::open(dir.path()).unwrap();
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
        }
        // Survives a restart (the table is durable with the data).
        let mut m = KvMachine::open(dir.path()).unwrap();
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
        let dir = tempfile::tempdir().unwrap();
        {
            let mut m = KvMachine::open(dir.path()).unwrap();
            for i in 1..=50u64 {
                m.apply(i, put(&format!("k{i}"), &format!("v{i}"))).unwrap();
            }
            m.flush().unwrap();
        }
        let m = KvMachine::open(dir.path()).unwrap();
        assert_eq!(m.applied_index(), 50);
        assert_eq!(get(&m, "k17"), Some(b"v17".to_vec()));
    }

    #[test]
    fn a_directory_held_by_an_open_machine_is_refused_with_the_lock_error() {
        let dir = tempfile::tempdir().unwrap();
        let _held = KvMachine::open(dir.path()).unwrap();
        // Retried for a bounded time (sled's own lock release is asynchronous), then reported.
        match KvMachine::open(dir.path()) {
            Err(StateMachineError::Storage(m)) => assert!(m.contains("lock"), "{m}"),
            Err(other) => panic!("unexpected error {other:?}"),
            Ok(_) => panic!("a second open of a held directory succeeded"),
        }
    }

    #[test]
    fn snapshot_restore_replaces_state() {
        let mut a = KvMachine::temporary().unwrap();
        a.apply(1, put("x", "1")).unwrap();
        a.apply(2, put("y", "2")).unwrap();
        let snap = a.snapshot().unwrap();
        let mut b = KvMachine::temporary().unwrap();
        b.apply(1, put("stale", "gone")).unwrap();
        b.restore(2, &snap).unwrap();
        assert_eq!(get(&b, "x"), Some(b"1".to_vec()));
        assert_eq!(get(&b, "stale"), None);
        assert_eq!(b.applied_index(), 2);
        // A corrupt snapshot is refused and changes nothing.
        assert!(matches!(
            b.restore(9, b"\xc1garbage"),
            Err(StateMachineError::Snapshot(_))
        ));
        assert_eq!(b.applied_index(), 2);
        assert_eq!(get(&b, "y"), Some(b"2".to_vec()));
    }
}
