//! The vocabulary of the sans-IO SWIM core: member identity and state, metadata, the rumors
//! (updates) piggybacked on every frame, wire messages, timers, events and actions.
//!
//! Everything that crosses the wire is serde-serialisable so it can ride the MessagePack
//! transport unchanged.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use crate::raft::{Millis, NodeId};

/// A member's incarnation number (SWIM §4.2). Only the member itself ever increases its own
/// incarnation, to refute a suspicion or to announce a restart; everyone else copies it.
pub type Incarnation = u64;

/// Identifies one probe (a direct ping and the ping-reqs sent on its behalf) on the node that
/// started it. Unique per node for the life of a [`Swim`](super::Swim) value.
pub type ProbeId = u64;

/// Who a node is and where it listens.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identity {
    /// The node's id (never 0), the same id Raft uses.
    pub id: NodeId,
    /// The transport address peers connect to (`host:port`).
    pub addr: String,
    /// The HTTP API address (`host:port`).
    pub http: String,
}

/// What a node believes about a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum MemberState {
    /// Answers probes (or has not been caught failing to).
    Alive,
    /// Failed a probe; declared dead unless it refutes within the suspicion timeout.
    Suspect,
    /// Declared failed. Kept (and reported) until pruned, so stale "alive" rumors about the
    /// same incarnation cannot resurrect it.
    Dead,
    /// Left gracefully. Kept until pruned, like a dead member.
    Left,
}

impl MemberState {
    /// The name used by the HTTP API and metrics (`alive|suspect|dead|left`).
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Dead => "dead",
            MemberState::Left => "left",
        }
    }

    /// Precedence among states of the same incarnation: a rumor with a higher rank overrides
    /// one with a lower rank (SWIM §4.2: suspect overrides alive, confirm overrides both).
    pub(crate) fn rank(self) -> u8 {
        match self {
            MemberState::Alive => 0,
            MemberState::Suspect => 1,
            MemberState::Dead => 2,
            MemberState::Left => 3,
        }
    }

    /// Whether the member should be probed and counted as part of the live cluster.
    pub fn is_active(self) -> bool {
        matches!(self, MemberState::Alive | MemberState::Suspect)
    }
}

/// Application-defined metadata a member publishes about itself (the shard router publishes
/// load and hosted shards here). Merged last-writer-wins by `(incarnation, version)`: only the
/// owner writes it, bumping `version` on every change and re-stamping `incarnation` with its
/// current incarnation whenever it publishes, so a restarted member (higher incarnation) wins
/// over its previous life even though its version counter restarted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Metadata {
    /// The owner's incarnation when this metadata was published.
    pub incarnation: Incarnation,
    /// Bumped by the owner on every change within an incarnation.
    pub version: u64,
    /// The key-value pairs.
    pub entries: BTreeMap<String, String>,
}

impl Metadata {
    /// The last-writer-wins key.
    pub fn lww_key(&self) -> (Incarnation, u64) {
        (self.incarnation, self.version)
    }
}

/// A node's view of one member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The member's id.
    pub id: NodeId,
    /// Transport address.
    pub addr: String,
    /// HTTP address.
    pub http: String,
    /// The latest incarnation known.
    pub incarnation: Incarnation,
    /// The believed state.
    pub state: MemberState,
    /// The latest metadata known.
    pub metadata: Metadata,
}

/// A rumor: one member's state as asserted by `by`, piggybacked on protocol messages
/// (SWIM §4.1 "infection-style dissemination").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    /// The member the rumor is about.
    pub id: NodeId,
    /// Its transport address.
    pub addr: String,
    /// Its HTTP address.
    pub http: String,
    /// The incarnation the rumor is about.
    pub incarnation: Incarnation,
    /// The asserted state.
    pub state: MemberState,
    /// The member's metadata as known by whoever last forwarded the rumor.
    pub metadata: Metadata,
    /// Who asserted the state: the member itself for `Alive` and `Left`, the suspecting or
    /// declaring node for `Suspect` and `Dead`. Lifeguard counts distinct `by` of suspicions
    /// as independent confirmations.
    pub by: NodeId,
}

impl Update {
    /// The view a node takes of the member after accepting this rumor.
    pub fn to_member(&self) -> Member {
        Member {
            id: self.id,
            addr: self.addr.clone(),
            http: self.http.clone(),
            incarnation: self.incarnation,
            state: self.state,
            metadata: self.metadata.clone(),
        }
    }
}

/// A SWIM frame. The header names the sender (so the receiver can answer without knowing it)
/// and the intended receiver (so a frame that reaches the wrong process, e.g. a new node on a
/// recycled address, is dropped).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The sender's id.
    pub from: NodeId,
    /// The sender's transport address, where answers go.
    pub from_addr: String,
    /// The sender's incarnation when it sent the frame. Informational (logs, debugging): the
    /// core acts only on rumors, which the sender's own refutations travel in.
    pub from_incarnation: Incarnation,
    /// The intended receiver; `0` when the sender only knows an address (a join to a seed).
    pub to: NodeId,
    /// What the frame asks or answers.
    pub body: Body,
    /// Piggybacked rumors, at most `rumor_limit_per_frame` of them (a `JoinAck` carries its
    /// member list in its body instead).
    pub updates: Vec<Update>,
}

/// The protocol part of a [`Message`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// A direct probe (SWIM §3.1); answered with `Ack` of the same probe id.
    Ping {
        /// The prober's probe id.
        probe: ProbeId,
    },
    /// Answer to a `Ping`.
    Ack {
        /// The probe id of the `Ping` being answered.
        probe: ProbeId,
    },
    /// Ask the receiver to probe `target` on the sender's behalf (SWIM §3.1 indirect probe).
    PingReq {
        /// The requester's probe id, echoed in the `IndirectAck` or `Nack`.
        probe: ProbeId,
        /// The member to probe.
        target: NodeId,
        /// Its transport address.
        target_addr: String,
    },
    /// The intermediary heard the target answer.
    IndirectAck {
        /// The requester's probe id.
        probe: ProbeId,
        /// The member that answered.
        target: NodeId,
    },
    /// The intermediary did not hear the target in time (Lifeguard §IV-A: a requester that
    /// misses nacks learns that *it* is the slow one).
    Nack {
        /// The requester's probe id.
        probe: ProbeId,
        /// The member that did not answer.
        target: NodeId,
    },
    /// A node asks to join (or re-announces itself after losing contact with everyone).
    Join {
        /// The joiner's own state.
        member: Update,
    },
    /// A seed's answer to `Join`: (a chunk of) its active members, itself included.
    JoinAck {
        /// Active members as known by the seed.
        members: Vec<Update>,
    },
    /// Carries only rumors (a graceful leave).
    Gossip,
}

/// A timer the core asked for; the caller hands it back to
/// [`Swim::handle_timer`](super::Swim::handle_timer) when it fires. Tokens let the core ignore
/// timers that no longer matter, so the caller never needs to cancel one.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// Start the next protocol period.
    Cycle {
        /// Bumped when the node leaves, which stops the cycle.
        generation: u64,
    },
    /// A direct ping went unanswered for the probe timeout: send ping-reqs.
    ProbeTimeout {
        /// The probe.
        probe: ProbeId,
    },
    /// End of a probe's protocol period: no ack means suspect.
    ProbeEnd {
        /// The probe.
        probe: ProbeId,
    },
    /// As an intermediary, time to send a nack if the target has not answered.
    RelayNack {
        /// This node's probe id for the relayed ping.
        probe: ProbeId,
    },
    /// As an intermediary, forget a relayed probe.
    RelayExpire {
        /// This node's probe id for the relayed ping.
        probe: ProbeId,
    },
    /// A suspicion may have run out.
    Suspicion {
        /// The suspected member.
        member: NodeId,
        /// The suspected incarnation.
        incarnation: Incarnation,
    },
    /// Retry joining through the seeds, or re-announce after losing contact with everyone.
    Announce {
        /// Bumped when the node leaves.
        generation: u64,
    },
}

/// A membership change, published to subscribers (the shard router, the HTTP API, metrics).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A member appeared (or came back after being dead or having left).
    Joined(Member),
    /// A suspected member refuted the suspicion.
    Alive(Member),
    /// A member is suspected.
    Suspect(Member),
    /// A member was declared dead.
    Dead(Member),
    /// A member left gracefully.
    Left(Member),
    /// A member's metadata changed (and its state did not).
    MetadataChanged(Member),
    /// A dead or departed member was forgotten after `prune_timeout_s`.
    Removed(NodeId),
    /// This node heard a rumor that it is suspect, dead or gone (or one about an incarnation
    /// it never had) and refuted it by moving to `incarnation`.
    Refuted {
        /// The new incarnation.
        incarnation: Incarnation,
    },
    /// This node's first join succeeded: a seed answered.
    JoinedCluster,
}

/// What the core asks its caller to do, drained with [`Swim::poll_actions`](super::Swim::poll_actions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send a frame (best effort; the network may lose it).
    Send {
        /// The receiver's id, `0` if only its address is known.
        to: NodeId,
        /// The receiver's transport address.
        addr: String,
        /// The frame.
        msg: Message,
    },
    /// Call [`Swim::handle_timer`](super::Swim::handle_timer) with `timer` at or after `at`.
    SetTimer {
        /// When.
        at: Millis,
        /// What to hand back.
        timer: Timer,
    },
    /// Publish a membership event.
    Notify(Event),
    /// A direct probe of `peer` was answered after `rtt_ms` (the latency monitor's input).
    RoundTrip {
        /// The probed member.
        peer: NodeId,
        /// Round-trip time in milliseconds on the caller's clock.
        rtt_ms: Millis,
    },
}

/// Counters of what the core received and did, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwimStats {
    /// Rumors refused as malformed (bad address, garbage metadata, id 0).
    pub rejected_updates: u64,
    /// Frames dropped: addressed to another node, from ourselves, or malformed.
    pub rejected_messages: u64,
    /// Times this node refuted a rumor about itself.
    pub refutations: u64,
    /// Suspicions this node started after a failed probe.
    pub suspicions_started: u64,
    /// Members this node declared dead when a suspicion ran out.
    pub deaths_declared: u64,
}

/// Why a metadata update or an identity was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// More entries than `max_metadata_entries`.
    #[error("metadata has {count} entries, more than the limit of {limit}")]
    TooManyEntries {
        /// Entries given.
        count: usize,
        /// The configured limit.
        limit: usize,
    },
    /// Keys and values together exceed `max_metadata_bytes`.
    #[error("metadata is {bytes} bytes, more than the limit of {limit}")]
    TooLarge {
        /// Bytes given.
        bytes: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A key is empty.
    #[error("metadata keys must not be empty")]
    EmptyKey,
    /// The node has left the cluster; it publishes nothing more.
    #[error("this node has left the cluster")]
    Left,
}
