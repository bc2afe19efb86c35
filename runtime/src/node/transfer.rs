//! Streaming a snapshot to a lagging follower (Raft §7, InstallSnapshot), in chunks over the
//! transport: the wire messages, the receiver's staging of the image (real files, blocking
//! I/O: it runs on its own arbiter) and the sender's progress. The actors that drive them are
//! in [`super::transfer_actor`]; the protocol is described in docs/transport.md, "Snapshot
//! transfer".
//!
//! The receiver keeps one `recv-{index}-{term}.partial` per snapshot being received (with a
//! `recv-{index}-{term}.info` naming its total length and digest), appending only chunks whose
//! checksum verified, in order. The partial file's length is therefore its verified length,
//! and every acknowledgement names it as the receiver's next offset: a sender that lost its
//! connection, or restarted, asks where the receiver stands (an empty chunk, a *probe*) and
//! continues from there, not from zero. A restarted receiver finds its partial files again.
//! Once the last byte arrived the whole image is checked against the digest, fsynced, and
//! handed to the group, which installs it through the Raft core; the file moves into the
//! snapshot store only when the core's persist of the install is carried out ([`Receptions::adopt`]).

use crate::storage::background_io::{self, Writeback, WRITEBACK_STEP};
use crate::storage::snapshot_store::{SnapshotStore, SnapshotStoreError, StoredSnapshot};
use conclave_core::raft::{GroupId, LogIndex, Membership, NodeId, SnapshotMeta, Term};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The largest chunk a receiver accepts (the sender's `[snapshot] chunk_bytes` is kept below
/// it, and below the transport's `max_frame_size`).
pub const MAX_CHUNK_BYTES: usize = 16 * 1024 * 1024;
/// The largest snapshot a receiver accepts to stage (1 TiB): a larger claimed total is refused
/// before anything is created.
pub const MAX_SNAPSHOT_BYTES: u64 = 1 << 40;
/// Snapshots of one group received at once; a further one is refused until a reception
/// completes, becomes stale or stays idle for [`IDLE_RECEPTION`].
pub const MAX_RECEPTIONS: usize = 2;
/// A reception with no chunk for this long may be evicted to make room for another.
pub const IDLE_RECEPTION: Duration = Duration::from_secs(60);

/// Format version of the `.info` file.
const INFO_VERSION: u8 = 1;

/// xxh3-64 of a chunk's bytes (its checksum on the wire).
pub fn checksum(data: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(data)
}

/// A piece of a snapshot image, from the group's leader to a follower.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// The group.
    pub group: GroupId,
    /// The sender (must be the node the transport authenticated).
    pub from: NodeId,
    /// The leader's current term.
    pub term: Term,
    /// The snapshot: last index and term it covers, membership there.
    pub meta: SnapshotMeta,
    /// The whole image's length in bytes.
    pub total: u64,
    /// xxh3-64 of the whole image.
    pub digest: u64,
    /// Where `data` starts in the image.
    pub offset: u64,
    /// xxh3-64 of `data`.
    pub checksum: u64,
    /// The bytes (empty: a probe, asking for the receiver's next offset).
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// A follower's answer to a [`SnapshotChunk`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotAck {
    /// The group.
    pub group: GroupId,
    /// The receiver.
    pub from: NodeId,
    /// The leader term of the chunk answered.
    pub term: Term,
    /// The snapshot's index.
    pub index: LogIndex,
    /// The snapshot's term.
    pub snapshot_term: Term,
    /// The offset the receiver expects next (its verified length).
    pub next_offset: u64,
    /// What became of the chunk.
    pub status: AckStatus,
}

/// What became of a chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AckStatus {
    /// Written (or a probe answered): send from `next_offset`.
    Accepted,
    /// The whole image arrived, verified and is durably staged; the install's answer comes as
    /// a Raft `InstallSnapshotResponse`.
    Complete,
    /// Refused; nothing was written.
    Refused(ChunkRefusal),
}

/// Why a chunk was refused. A refused chunk changes nothing on the receiver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ChunkRefusal {
    /// The chunk's bytes do not match its checksum (send it again).
    #[error("chunk checksum mismatch")]
    BadChecksum,
    /// The chunk does not start at the receiver's next offset (send from `next_offset`).
    #[error("chunk out of order")]
    OutOfOrder,
    /// The chunk is larger than [`MAX_CHUNK_BYTES`].
    #[error("chunk of {0} bytes exceeds the limit")]
    ChunkTooLarge(u64),
    /// The chunk ends past the image's total length.
    #[error("chunk at {offset}+{len} ends past the total {total}")]
    PastTotal {
        /// The chunk's offset.
        offset: u64,
        /// Its length.
        len: u64,
        /// The claimed total.
        total: u64,
    },
    /// The claimed total exceeds [`MAX_SNAPSHOT_BYTES`].
    #[error("snapshot of {0} bytes exceeds the limit")]
    TotalTooLarge(u64),
    /// Index 0, term 0, or a snapshot term above the leader's.
    #[error("malformed snapshot identity")]
    Malformed,
    /// The sender is not a member of the group's configuration.
    #[error("sender is not a member of the group")]
    NotMember,
    /// The chunk's term is older than the receiver's.
    #[error("stale leader term (receiver is at term {0})")]
    StaleTerm(Term),
    /// Another node leads the chunk's term.
    #[error("sender is not the leader of its term")]
    NotLeader,
    /// The snapshot is at or below what the receiver already has committed (or installed).
    #[error("stale snapshot (receiver has committed up to {0})")]
    Stale(LogIndex),
    /// [`MAX_RECEPTIONS`] snapshots of this group are already being received.
    #[error("too many snapshots being received")]
    TooManyReceptions,
    /// The whole image did not match the digest: the partial file was discarded (send from 0).
    #[error("image digest mismatch; restarting the reception")]
    DigestMismatch,
    /// The receiver does not host the group.
    #[error("unknown group")]
    UnknownGroup,
    /// The receiver's disk failed; retry later.
    #[error("receiver storage error")]
    Storage,
}

impl ChunkRefusal {
    /// The metric label of the reason.
    pub fn label(&self) -> &'static str {
        match self {
            ChunkRefusal::BadChecksum => "bad_checksum",
            ChunkRefusal::OutOfOrder => "out_of_order",
            ChunkRefusal::ChunkTooLarge(_) => "chunk_too_large",
            ChunkRefusal::PastTotal { .. } => "past_total",
            ChunkRefusal::TotalTooLarge(_) => "total_too_large",
            ChunkRefusal::Malformed => "malformed",
            ChunkRefusal::NotMember => "not_member",
            ChunkRefusal::StaleTerm(_) => "stale_term",
            ChunkRefusal::NotLeader => "not_leader",
            ChunkRefusal::Stale(_) => "stale",
            ChunkRefusal::TooManyReceptions => "too_many_receptions",
            ChunkRefusal::DigestMismatch => "digest_mismatch",
            ChunkRefusal::UnknownGroup => "unknown_group",
            ChunkRefusal::Storage => "storage",
        }
    }

    /// Whether the sender should carry on from the ack's `next_offset` (a damaged or misplaced
    /// chunk) rather than give the transfer up.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ChunkRefusal::BadChecksum | ChunkRefusal::OutOfOrder | ChunkRefusal::DigestMismatch
        )
    }
}

/// What the receiver knows of its group when a chunk arrives (published by the group actor).
#[derive(Clone, Debug)]
pub struct GroupView {
    /// Current term.
    pub term: Term,
    /// Known leader of that term.
    pub leader: Option<NodeId>,
    /// Commit index (at least the installed snapshot's index).
    pub commit: LogIndex,
    /// The membership in force.
    pub membership: Membership,
}

/// Why the receiver's files could not be opened or adopted.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// A file system call failed.
    #[error("snapshot reception: {op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A reception's `.info` record could not be encoded (a bug: every record is encodable).
    #[error("snapshot reception: encode {path}")]
    Encode {
        /// The `.info` file it was for.
        path: PathBuf,
        /// The encoder's error.
        #[source]
        source: rmp_serde::encode::Error,
    },
    /// No complete reception of that snapshot is staged.
    #[error("no staged reception of snapshot {index}-{term}")]
    NotStaged {
        /// Its index.
        index: LogIndex,
        /// Its term.
        term: Term,
    },
    /// Moving the image into the snapshot store failed.
    #[error("snapshot reception")]
    Store(#[from] SnapshotStoreError),
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ReceiveError + 'a {
    move |source| ReceiveError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// What a `.info` file records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Info {
    version: u8,
    meta: SnapshotMeta,
    total: u64,
    digest: u64,
}

/// One snapshot being received.
struct Reception {
    info: Info,
    /// Verified bytes (the partial file's length).
    len: u64,
    /// Digest state over `len` bytes; `None` after a restart until the prefix is re-read.
    hasher: Option<xxhash_rust::xxh3::Xxh3Default>,
    /// Verified, fsynced and complete.
    complete: bool,
    /// Found on disk at open and not yet continued (its continuation is a resumption).
    reopened: bool,
    /// The partial file's incremental writeback: every [`WRITEBACK_STEP`] bytes received are
    /// written back while the next arrive, so that the image never sits in the page cache as
    /// up to its whole size of dirty pages which the final fsync then writes back at once, in
    /// front of every WAL `fdatasync` on the device (a 0.9 GB image stalled the voters' writes
    /// on a shared disk for seconds: docs/performance.md, "Membership changes").
    writeback: Writeback,
    last_activity: Instant,
}

/// What the receiver did with a chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// Answer the sender with this ack.
    Ack(SnapshotAck),
    /// The image is complete, verified and durably staged: answer with the ack, then install
    /// `meta` from `from` in `term` through the core.
    Staged {
        /// The `Complete` ack.
        ack: SnapshotAck,
        /// The leader.
        from: NodeId,
        /// Its term.
        term: Term,
        /// The snapshot.
        meta: SnapshotMeta,
    },
}

impl ChunkOutcome {
    /// The ack to send.
    pub fn ack(&self) -> &SnapshotAck {
        match self {
            ChunkOutcome::Ack(a) | ChunkOutcome::Staged { ack: a, .. } => a,
        }
    }
}

/// The snapshots of one group being received by this node. See the module docs.
pub struct Receptions {
    node: NodeId,
    group: GroupId,
    dir: PathBuf,
    open: BTreeMap<(LogIndex, Term), Reception>,
    /// Bytes between two writeback steps of a partial file ([`WRITEBACK_STEP`]; smaller in
    /// tests).
    writeback_step: u64,
    /// Transfers that continued from verified bytes (also counted in
    /// `conclave_snapshot_resumed_total`).
    resumed: u64,
}

fn name(index: LogIndex, term: Term, ext: &str) -> String {
    format!("recv-{index}-{term}.{ext}")
}

fn parse(name: &str, ext: &str) -> Option<(LogIndex, Term)> {
    let rest = name.strip_prefix("recv-")?.strip_suffix(ext)?;
    let (i, t) = rest.split_once('-')?;
    Some((i.parse().ok()?, t.parse().ok()?))
}

fn sync_dir(dir: &Path) -> Result<(), ReceiveError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync directory", dir))
}

impl Receptions {
    /// Opens the receptions kept in `dir` (the group's snapshot directory), dropping partial
    /// files without a readable `.info` (a crash while creating them).
    pub fn open(node: NodeId, group: GroupId, dir: &Path) -> Result<Receptions, ReceiveError> {
        Receptions::open_with_step(node, group, dir, WRITEBACK_STEP)
    }

    /// [`Receptions::open`] with partial files written back every `writeback_step` bytes.
    fn open_with_step(
        node: NodeId,
        group: GroupId,
        dir: &Path,
        writeback_step: u64,
    ) -> Result<Receptions, ReceiveError> {
        std::fs::create_dir_all(dir).map_err(io("create directory", dir))?;
        let mut r = Receptions {
            node,
            group,
            dir: dir.to_owned(),
            open: BTreeMap::new(),
            writeback_step,
            resumed: 0,
        };
        let mut orphans = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io("list", dir))? {
            let entry = entry.map_err(io("list", dir))?;
            let file = entry.file_name().to_string_lossy().into_owned();
            if let Some((index, term)) = parse(&file, ".info") {
                match r.read_info(index, term) {
                    Some(info) => {
                        let partial = r.path(index, term, "partial");
                        let len = match std::fs::metadata(&partial) {
                            Ok(m) => m.len().min(info.total),
                            Err(_) => 0,
                        };
                        r.open.insert(
                            (index, term),
                            Reception {
                                info,
                                len,
                                hasher: None,
                                complete: false,
                                reopened: len > 0,
                                writeback: Writeback::resume(writeback_step, len),
                                last_activity: Instant::now(),
                            },
                        );
                    }
                    None => orphans.push((index, term)),
                }
            } else if let Some((index, term)) = parse(&file, ".partial") {
                if !r.path(index, term, "info").exists() {
                    orphans.push((index, term));
                }
            }
        }
        for (index, term) in orphans {
            tracing::warn!(
                %group,
                index,
                term,
                "removing an unusable snapshot reception"
            );
            r.remove_files(index, term)?;
        }
        Ok(r)
    }

    fn path(&self, index: LogIndex, term: Term, ext: &str) -> PathBuf {
        self.dir.join(name(index, term, ext))
    }

    fn read_info(&self, index: LogIndex, term: Term) -> Option<Info> {
        let bytes = std::fs::read(self.path(index, term, "info")).ok()?;
        let info: Info = rmp_serde::from_slice(&bytes).ok()?;
        (info.version == INFO_VERSION
            && (info.meta.index, info.meta.term) == (index, term)
            && info.total <= MAX_SNAPSHOT_BYTES)
            .then_some(info)
    }

    fn remove_files(&mut self, index: LogIndex, term: Term) -> Result<(), ReceiveError> {
        self.open.remove(&(index, term));
        // The info last: a partial without it is an orphan the next open removes.
        for ext in ["partial", "info"] {
            let path = self.path(index, term, ext);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("remove", &path)(e)),
            }
        }
        Ok(())
    }

    /// How many transfers continued from verified bytes instead of from zero: a probe that
    /// found some (a broken connection, a restarted sender), or the first chunk after this
    /// receiver restarted with a partial file.
    pub fn resumed(&self) -> u64 {
        self.resumed
    }

    /// `(index, term, verified length)` of every reception, oldest snapshot first.
    pub fn list(&self) -> Vec<(LogIndex, Term, u64)> {
        self.open.iter().map(|(&(i, t), r)| (i, t, r.len)).collect()
    }

    fn ack(&self, chunk: &SnapshotChunk, next_offset: u64, status: AckStatus) -> SnapshotAck {
        SnapshotAck {
            group: self.group,
            from: self.node,
            term: chunk.term,
            index: chunk.meta.index,
            snapshot_term: chunk.meta.term,
            next_offset,
            status,
        }
    }

    /// Handles a chunk the transport received from the authenticated node `from`. Refusals
    /// change nothing; see [`ChunkRefusal`].
    pub fn on_chunk(
        &mut self,
        from: NodeId,
        view: &GroupView,
        chunk: &SnapshotChunk,
        now: Instant,
    ) -> ChunkOutcome {
        let key = (chunk.meta.index, chunk.meta.term);
        let current = self.open.get(&key).map(|r| r.len).unwrap_or(0);
        let refuse = |s: &Self, why: ChunkRefusal| {
            ChunkOutcome::Ack(s.ack(chunk, current, AckStatus::Refused(why)))
        };
        // Bounds first: nothing about a hostile chunk is looked at before these hold.
        let len = chunk.data.len() as u64;
        if chunk.data.len() > MAX_CHUNK_BYTES {
            return refuse(self, ChunkRefusal::ChunkTooLarge(len));
        }
        if chunk.total > MAX_SNAPSHOT_BYTES {
            return refuse(self, ChunkRefusal::TotalTooLarge(chunk.total));
        }
        if chunk.offset > chunk.total || len > chunk.total - chunk.offset {
            return refuse(
                self,
                ChunkRefusal::PastTotal {
                    offset: chunk.offset,
                    len,
                    total: chunk.total,
                },
            );
        }
        let meta = &chunk.meta;
        if meta.index == 0 || meta.term == 0 || meta.term > chunk.term || chunk.from != from {
            return refuse(self, ChunkRefusal::Malformed);
        }
        // Only the leader of the group's current (or a newer) term may stage a snapshot: a
        // member, or the leader this node follows in its current term although no membership
        // it has names it (a leader added after its log ends, which the core accepted as
        // leader; issue 14).
        let followed_leader = view.leader == Some(from) && chunk.term == view.term;
        if !view.membership.contains(from) && !followed_leader {
            return refuse(self, ChunkRefusal::NotMember);
        }
        if chunk.term < view.term {
            return refuse(self, ChunkRefusal::StaleTerm(view.term));
        }
        if chunk.term == view.term && view.leader.is_some_and(|l| l != from) {
            return refuse(self, ChunkRefusal::NotLeader);
        }
        if meta.index <= view.commit {
            return refuse(self, ChunkRefusal::Stale(view.commit));
        }
        if checksum(&chunk.data) != chunk.checksum {
            return refuse(self, ChunkRefusal::BadChecksum);
        }
        // Receptions this node no longer needs go first, so they never hold a slot.
        if let Err(e) = self.evict(view.commit, key, now) {
            tracing::error!(group = %self.group, error = %e, "cannot remove an old snapshot reception");
            return refuse(self, ChunkRefusal::Storage);
        }
        match self.open.get(&key) {
            Some(r) if r.info.total != chunk.total || r.info.digest != chunk.digest => {
                // The same snapshot identity with other bytes (another leader's image of the
                // same index): start over with this one.
                tracing::warn!(
                    group = %self.group,
                    index = key.0,
                    "snapshot reception replaced by another image of the same snapshot"
                );
                if let Err(e) = self.remove_files(key.0, key.1) {
                    tracing::error!(group = %self.group, error = %e, "cannot discard a snapshot reception");
                    return refuse(self, ChunkRefusal::Storage);
                }
            }
            _ => {}
        }
        if !self.open.contains_key(&key) {
            if self.open.len() >= MAX_RECEPTIONS {
                return refuse(self, ChunkRefusal::TooManyReceptions);
            }
            if let Err(e) = self.create(chunk, now) {
                tracing::error!(group = %self.group, error = %e, "cannot start a snapshot reception");
                return refuse(self, ChunkRefusal::Storage);
            }
        }
        match self.write(key, chunk, now) {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::error!(group = %self.group, index = key.0, error = %e, "snapshot reception failed");
                let next = self.open.get(&key).map(|r| r.len).unwrap_or(0);
                ChunkOutcome::Ack(self.ack(chunk, next, AckStatus::Refused(ChunkRefusal::Storage)))
            }
        }
    }

    /// Removes receptions at or below `commit` (stale) and, when every slot is taken, idle ones.
    fn evict(
        &mut self,
        commit: LogIndex,
        keep: (LogIndex, Term),
        now: Instant,
    ) -> Result<(), ReceiveError> {
        let stale: Vec<_> = self
            .open
            .iter()
            .filter(|(k, r)| {
                **k != keep
                    && (k.0 <= commit
                        || (self.open.len() >= MAX_RECEPTIONS
                            && now.saturating_duration_since(r.last_activity) >= IDLE_RECEPTION))
            })
            .map(|(k, _)| *k)
            .collect();
        for (index, term) in stale {
            tracing::info!(
                group = %self.group,
                index,
                term,
                "dropping a snapshot reception no longer needed"
            );
            self.remove_files(index, term)?;
        }
        Ok(())
    }

    fn create(&mut self, chunk: &SnapshotChunk, now: Instant) -> Result<(), ReceiveError> {
        let (index, term) = (chunk.meta.index, chunk.meta.term);
        let info = Info {
            version: INFO_VERSION,
            meta: chunk.meta.clone(),
            total: chunk.total,
            digest: chunk.digest,
        };
        let bytes = rmp_serde::to_vec(&info).map_err(|source| ReceiveError::Encode {
            path: self.path(index, term, "info"),
            source,
        })?;
        let partial = self.path(index, term, "partial");
        File::create(&partial).map_err(io("create", &partial))?;
        let info_path = self.path(index, term, "info");
        let tmp = self.path(index, term, "info.tmp");
        {
            let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
            f.write_all(&bytes).map_err(io("write", &tmp))?;
            f.sync_all().map_err(io("fsync", &tmp))?;
        }
        std::fs::rename(&tmp, &info_path).map_err(io("rename", &tmp))?;
        sync_dir(&self.dir)?;
        self.open.insert(
            (index, term),
            Reception {
                info,
                len: 0,
                hasher: Some(xxhash_rust::xxh3::Xxh3Default::new()),
                complete: false,
                reopened: false,
                writeback: Writeback::new(self.writeback_step),
                last_activity: now,
            },
        );
        Ok(())
    }

    fn write(
        &mut self,
        key: (LogIndex, Term),
        chunk: &SnapshotChunk,
        now: Instant,
    ) -> Result<ChunkOutcome, ReceiveError> {
        let partial = self.path(key.0, key.1, "partial");
        let (group, node, writeback_step) = (self.group, self.node, self.writeback_step);
        let resumed = &mut self.resumed;
        let Some(r) = self.open.get_mut(&key) else {
            return Err(ReceiveError::NotStaged {
                index: key.0,
                term: key.1,
            });
        };
        r.last_activity = now;
        let ack = |next, status| SnapshotAck {
            group,
            from: node,
            term: chunk.term,
            index: key.0,
            snapshot_term: key.1,
            next_offset: next,
            status,
        };
        let staged = |r: &Reception| ChunkOutcome::Staged {
            ack: ack(r.len, AckStatus::Complete),
            from: chunk.from,
            term: chunk.term,
            meta: r.info.meta.clone(),
        };
        if r.complete {
            // A repeated last chunk or a probe after a lost `Complete`: answer again, and let
            // the group install again (the core refuses a duplicate as stale).
            return Ok(staged(r));
        }
        // A transfer continuing from verified bytes: a probe that finds some, or the first
        // chunk at the verified length after this receiver restarted.
        let resumes = r.len > 0
            && ((chunk.data.is_empty() && chunk.offset == 0)
                || (r.reopened && chunk.offset == r.len && !chunk.data.is_empty()));
        if resumes {
            r.reopened = false;
            *resumed += 1;
            tracing::info!(
                %group,
                index = key.0,
                peer = %chunk.from,
                offset = r.len,
                "snapshot transfer resumes"
            );
            metrics::counter!("conclave_snapshot_resumed_total", "group" => group.to_string(), "peer" => chunk.from.to_string())
                .increment(1);
        }
        if chunk.data.is_empty() {
            // A probe (an empty image is completed below instead).
            if r.info.total > 0 {
                return Ok(ChunkOutcome::Ack(ack(r.len, AckStatus::Accepted)));
            }
        }
        if chunk.offset != r.len {
            return Ok(ChunkOutcome::Ack(ack(
                r.len,
                AckStatus::Refused(ChunkRefusal::OutOfOrder),
            )));
        }
        if r.hasher.is_none() {
            // After a restart: the digest state is rebuilt from the verified prefix, once.
            let mut h = xxhash_rust::xxh3::Xxh3Default::new();
            let mut f = File::open(&partial).map_err(io("open", &partial))?;
            let mut left = r.len;
            let mut buf = vec![0u8; 256 * 1024];
            while left > 0 {
                let want = buf.len().min(left as usize);
                f.read_exact(&mut buf[..want])
                    .map_err(io("read", &partial))?;
                h.update(&buf[..want]);
                left -= want as u64;
            }
            r.hasher = Some(h);
        }
        let mut f = OpenOptions::new()
            .write(true)
            .open(&partial)
            .map_err(io("open", &partial))?;
        f.seek(SeekFrom::Start(r.len))
            .map_err(io("seek", &partial))?;
        if let Err(e) = f.write_all(&chunk.data) {
            // Keep the file a verified prefix: cut whatever part of the chunk was written.
            let _ = f.set_len(r.len);
            return Err(io("write", &partial)(e));
        }
        if let Some(h) = r.hasher.as_mut() {
            h.update(&chunk.data);
        }
        r.len += chunk.data.len() as u64;
        if let Some(step) = r.writeback.after_write(r.len) {
            // Kept in the page cache once clean: the group restores from it right after.
            if let Err(e) = background_io::write_back(&f, step, false) {
                // The device failed to write some of the file, and Linux reports such an error
                // once: the final fsync could then succeed over lost bytes. The image starts
                // over (the sender's next chunk is answered with offset 0).
                let _ = f.set_len(0);
                r.len = 0;
                r.hasher = Some(xxhash_rust::xxh3::Xxh3Default::new());
                r.writeback = Writeback::new(writeback_step);
                return Err(io("write back", &partial)(e));
            }
        }
        if r.len < r.info.total {
            return Ok(ChunkOutcome::Ack(ack(r.len, AckStatus::Accepted)));
        }
        let digest = r.hasher.as_ref().map(|h| h.digest()).unwrap_or_default();
        if digest != r.info.digest {
            tracing::warn!(
                %group,
                index = key.0,
                peer = %chunk.from,
                "received snapshot does not match its digest; starting over"
            );
            f.set_len(0).map_err(io("truncate", &partial))?;
            r.len = 0;
            r.hasher = Some(xxhash_rust::xxh3::Xxh3Default::new());
            r.writeback = Writeback::new(writeback_step);
            return Ok(ChunkOutcome::Ack(ack(
                0,
                AckStatus::Refused(ChunkRefusal::DigestMismatch),
            )));
        }
        f.sync_all().map_err(io("fsync", &partial))?;
        r.complete = true;
        tracing::info!(
            %group,
            index = key.0,
            peer = %chunk.from,
            bytes = r.len,
            "snapshot received and staged"
        );
        Ok(staged(r))
    }

    /// Moves the staged image of `meta` into `store` (the core's persist of the install is
    /// being carried out: from now on a restart restores from it).
    pub fn adopt(
        &mut self,
        meta: &SnapshotMeta,
        store: &SnapshotStore,
    ) -> Result<StoredSnapshot, ReceiveError> {
        let key = (meta.index, meta.term);
        let (total, digest) = match self.open.get(&key) {
            Some(r) if r.complete => (r.info.total, r.info.digest),
            _ => {
                return Err(ReceiveError::NotStaged {
                    index: meta.index,
                    term: meta.term,
                })
            }
        };
        let partial = self.path(key.0, key.1, "partial");
        let stored = store.adopt(meta.clone(), &partial, total, digest)?;
        self.remove_files(key.0, key.1)?;
        Ok(stored)
    }
}

/// What the sender does after an acknowledgement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendStep {
    /// Send the chunk at [`SendState::next_offset`].
    Continue,
    /// The receiver holds the whole image.
    Done,
    /// The transfer cannot succeed; report it to the core.
    Failed(ChunkRefusal),
    /// Not an answer to this transfer (late, duplicate, another snapshot).
    Ignored,
}

/// A sender's side of one transfer: where the receiver stands. Sans-IO; the caller reads the
/// chunks ([`SendState::read_chunk`]) and moves them.
#[derive(Clone, Debug)]
pub struct SendState {
    /// The group.
    pub group: GroupId,
    /// This node (the leader).
    pub node: NodeId,
    /// The follower.
    pub to: NodeId,
    /// The leader's term.
    pub term: Term,
    /// The snapshot.
    pub meta: SnapshotMeta,
    /// The image's length.
    pub total: u64,
    /// Its digest.
    pub digest: u64,
    /// Bytes per chunk.
    pub chunk_bytes: usize,
    /// The receiver's last acknowledged next offset.
    acked: u64,
    /// The receiver answered at least once (a first probe tells where it stands).
    heard: bool,
    /// Whole-image digest mismatches reported by the receiver (the local file may be bad).
    digest_failures: u32,
}

impl SendState {
    /// A transfer of the snapshot `stored` from `node` to `to` in `term`.
    pub fn new(
        group: GroupId,
        node: NodeId,
        to: NodeId,
        term: Term,
        stored: &StoredSnapshot,
        chunk_bytes: usize,
    ) -> SendState {
        SendState {
            group,
            node,
            to,
            term,
            meta: stored.meta.clone(),
            total: stored.len,
            digest: stored.digest,
            chunk_bytes: chunk_bytes.clamp(1, MAX_CHUNK_BYTES),
            acked: 0,
            heard: false,
            digest_failures: 0,
        }
    }

    /// The offset the next chunk starts at.
    pub fn next_offset(&self) -> u64 {
        self.acked
    }

    /// Whether the receiver has answered this transfer yet.
    pub fn heard(&self) -> bool {
        self.heard
    }

    fn chunk(&self, offset: u64, data: Vec<u8>) -> SnapshotChunk {
        SnapshotChunk {
            group: self.group,
            from: self.node,
            term: self.term,
            meta: self.meta.clone(),
            total: self.total,
            digest: self.digest,
            offset,
            checksum: checksum(&data),
            data,
        }
    }

    /// An empty chunk asking the receiver where it stands (the first message of a transfer,
    /// and the one after an ack timed out).
    pub fn probe(&self) -> SnapshotChunk {
        self.chunk(0, Vec::new())
    }

    /// Reads the chunk at [`Self::next_offset`] from the image (blocking I/O).
    pub fn read_chunk(&self, image: &mut File) -> std::io::Result<SnapshotChunk> {
        let len = (self.total - self.acked).min(self.chunk_bytes as u64) as usize;
        let mut data = vec![0u8; len];
        image.seek(SeekFrom::Start(self.acked))?;
        image.read_exact(&mut data)?;
        Ok(self.chunk(self.acked, data))
    }

    /// Takes in the receiver's answer.
    pub fn on_ack(&mut self, ack: &SnapshotAck) -> SendStep {
        if ack.group != self.group
            || ack.from != self.to
            || ack.term != self.term
            || (ack.index, ack.snapshot_term) != (self.meta.index, self.meta.term)
        {
            return SendStep::Ignored;
        }
        self.heard = true;
        // A receiver never claims more than the image; one that does is not trusted.
        self.acked = ack.next_offset.min(self.total);
        match &ack.status {
            AckStatus::Accepted => SendStep::Continue,
            AckStatus::Complete => SendStep::Done,
            AckStatus::Refused(ChunkRefusal::DigestMismatch) => {
                self.digest_failures += 1;
                if self.digest_failures >= 2 {
                    SendStep::Failed(ChunkRefusal::DigestMismatch)
                } else {
                    SendStep::Continue
                }
            }
            AckStatus::Refused(r) if r.is_retryable() => SendStep::Continue,
            AckStatus::Refused(r) => SendStep::Failed(r.clone()),
        }
    }
}

#[cfg(test)]
mod tests;
