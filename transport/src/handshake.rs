//! The connection handshake: both sides prove they speak this protocol, in this cluster, and —
//! when the cluster has a secret — that they know it.
//!
//! Wire format of a hello (fixed binary, not MessagePack, so that garbage is rejected on its
//! first four bytes):
//!
//! ```text
//! magic "CNCL" (4) | version u16 BE | node id u64 BE | flags u8 | nonce (16)
//!                  | cluster id length u16 BE | cluster id (UTF-8)
//! ```
//!
//! `flags` bit 0: the sender authenticates with a cluster secret. `nonce`: 16 fresh random
//! bytes per connection (the challenge the other side's proof must cover).
//!
//! Version 3 exchange:
//!
//! ```text
//! dialer   -> hello
//! acceptor -> hello | pre-status u8 (0 = go on, otherwise a refusal code; then it closes)
//!             | proof (32, only with a secret)
//! dialer   -> proof (32, only with a secret)           [after checking the acceptor's proof]
//! acceptor -> status u8 (0 accepted, 8 simultaneous, 9 alive, or a refusal code)
//! dialer   -> answer u8 (only after status 9: 1 = replace yours, 0 = keep yours)
//! ```
//!
//! The acceptor refuses a hello before proving anything: wrong version or cluster, our own id,
//! a secret on one side only, a node id outside the allowlist, a TLS certificate that does not
//! name the claimed id. Proofs are `HMAC-SHA256(secret, role | cluster | ids | both nonces)`
//! ([`crate::auth`]). Statuses `8` and `9` keep one connection per pair of nodes (see
//! [`Status`]); they are only ever sent to a dialer that proved itself, so an unauthenticated
//! claim can never replace an established connection.

use std::fmt;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::auth::{ClusterSecret, Role, Transcript, NONCE_LEN, PROOF_LEN};
use crate::NodeId;

/// The four bytes every connection starts with.
pub const MAGIC: [u8; 4] = *b"CNCL";
/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 3;
/// The oldest protocol version this build accepts (version 2 had no authentication).
pub const MIN_PROTOCOL_VERSION: u16 = 3;
/// Cluster ids longer than this are refused (they are names, not payloads).
pub const MAX_CLUSTER_ID_LEN: usize = 255;

const HEADER_LEN: usize = 4 + 2 + 8 + 1 + NONCE_LEN + 2;
const FLAG_SECRET: u8 = 1;

/// One side's introduction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version of the sender.
    pub version: u16,
    /// Node id of the sender.
    pub node_id: NodeId,
    /// Cluster the sender belongs to.
    pub cluster_id: String,
    /// The sender authenticates with a cluster secret.
    pub secret: bool,
    /// The sender's fresh challenge.
    pub nonce: [u8; NONCE_LEN],
}

/// Why a handshake was refused; `label()` is the `reason` label of the refusal counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The first bytes were not [`MAGIC`]: not a conclave peer at all.
    BadMagic,
    /// The peer speaks a protocol version outside what we accept.
    UnsupportedVersion(u16),
    /// The peer belongs to another cluster.
    WrongCluster(String),
    /// The peer answered with a different node id than the one we dialled.
    UnexpectedNode(NodeId),
    /// The peer claims our own node id.
    SameNodeId,
    /// The cluster id is too long or not UTF-8.
    MalformedHello,
    /// The peer said nothing (or not enough) within the handshake timeout.
    Timeout,
    /// The remote side refused us, with the code it sent.
    RefusedByPeer(u8),
    /// The claimed node id is not a member of the cluster's configuration (the allowlist).
    NotMember(NodeId),
    /// One side has a cluster secret and the other has none.
    SecretMismatch,
    /// The peer's proof of the cluster secret is wrong.
    AuthFailed,
    /// The peer's TLS certificate does not name the node id it claims.
    CertificateMismatch(NodeId),
}

impl Refusal {
    /// A short, stable label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::BadMagic => "bad_magic",
            Refusal::UnsupportedVersion(_) => "unsupported_version",
            Refusal::WrongCluster(_) => "wrong_cluster",
            Refusal::UnexpectedNode(_) => "unexpected_node",
            Refusal::SameNodeId => "same_node_id",
            Refusal::MalformedHello => "malformed_hello",
            Refusal::Timeout => "timeout",
            Refusal::RefusedByPeer(_) => "refused_by_peer",
            Refusal::NotMember(_) => "not_member",
            Refusal::SecretMismatch => "secret_mismatch",
            Refusal::AuthFailed => "auth_failed",
            Refusal::CertificateMismatch(_) => "certificate_mismatch",
        }
    }

    /// The status byte sent to the peer for this refusal.
    pub fn code(&self) -> u8 {
        match self {
            Refusal::BadMagic => 1,
            Refusal::UnsupportedVersion(_) => 2,
            Refusal::WrongCluster(_) => 3,
            Refusal::UnexpectedNode(_) => 4,
            Refusal::SameNodeId => 5,
            Refusal::MalformedHello => 6,
            Refusal::Timeout => 7,
            Refusal::NotMember(_) => 10,
            Refusal::SecretMismatch => 11,
            Refusal::AuthFailed => 12,
            Refusal::CertificateMismatch(_) => 13,
            Refusal::RefusedByPeer(c) => *c,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::BadMagic => write!(f, "bad magic bytes (not a conclave peer)"),
            Refusal::UnsupportedVersion(v) => write!(
                f,
                "unsupported protocol version {v} (accepted {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION})"
            ),
            Refusal::WrongCluster(c) => write!(f, "wrong cluster id {c:?}"),
            Refusal::UnexpectedNode(n) => write!(f, "peer is node {n}, not the node dialled"),
            Refusal::SameNodeId => write!(f, "peer claims our own node id"),
            Refusal::MalformedHello => write!(f, "malformed hello"),
            Refusal::Timeout => write!(f, "no complete hello within the handshake timeout"),
            Refusal::RefusedByPeer(c) => write!(f, "refused by the peer (code {c})"),
            Refusal::NotMember(n) => write!(f, "node {n} is not a member of the cluster"),
            Refusal::SecretMismatch => {
                write!(f, "one side has a cluster secret and the other has none")
            }
            Refusal::AuthFailed => write!(f, "wrong proof of the cluster secret"),
            Refusal::CertificateMismatch(n) => {
                write!(f, "TLS certificate does not name node {n} (node-{n}.conclave)")
            }
        }
    }
}

/// Errors of the handshake boundary.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The hello was read but is not acceptable.
    #[error("handshake refused: {0}")]
    Refused(Refusal),
    /// The socket failed or closed mid-handshake.
    #[error("handshake i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl HandshakeError {
    /// A short, stable label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            HandshakeError::Refused(r) => r.label(),
            HandshakeError::Io(_) => "io",
        }
    }
}

/// A fresh random nonce (the OS generator through `ring`).
pub fn fresh_nonce() -> [u8; NONCE_LEN] {
    use ring::rand::SecureRandom;
    let mut nonce = [0u8; NONCE_LEN];
    // The system generator only fails when the OS has no randomness source at all; fall back to
    // the thread generator (a CSPRNG seeded from the OS) rather than a fixed value.
    if ring::rand::SystemRandom::new().fill(&mut nonce).is_err() {
        use rand::RngCore;
        rand::rng().fill_bytes(&mut nonce);
    }
    nonce
}

impl Hello {
    /// Our own hello at the current protocol version, without a secret and with a zero nonce
    /// (see [`Hello::fresh`] for the one a connection uses).
    pub fn new(node_id: NodeId, cluster_id: &str) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            node_id,
            cluster_id: cluster_id.to_owned(),
            secret: false,
            nonce: [0; NONCE_LEN],
        }
    }

    /// This hello with a fresh nonce and the secret flag set as given: one per connection.
    pub fn fresh(&self, secret: bool) -> Self {
        Self {
            secret,
            nonce: fresh_nonce(),
            ..self.clone()
        }
    }

    /// The wire encoding (see the module doc).
    pub fn encode(&self) -> BytesMut {
        let id = self.cluster_id.as_bytes();
        // Config validation keeps cluster ids within MAX_CLUSTER_ID_LEN. An id too long even for
        // the u16 length is cut at 65535 bytes, which every peer refuses as malformed (> 255), so
        // the cut can never make two different ids match.
        let len = u16::try_from(id.len()).unwrap_or(u16::MAX);
        let mut buf = BytesMut::with_capacity(HEADER_LEN + id.len() + 1 + PROOF_LEN);
        buf.put_slice(&MAGIC);
        buf.put_u16(self.version);
        buf.put_u64(self.node_id.get());
        buf.put_u8(if self.secret { FLAG_SECRET } else { 0 });
        buf.put_slice(&self.nonce);
        buf.put_u16(len);
        buf.put_slice(&id[..usize::from(len)]);
        buf
    }

    /// Reads one hello off `io`. Rejects bad magic before reading anything else.
    pub async fn read_from<R: AsyncRead + Unpin>(io: &mut R) -> Result<Hello, HandshakeError> {
        let mut header = [0u8; HEADER_LEN];
        io.read_exact(&mut header[..4]).await?;
        if header[..4] != MAGIC {
            return Err(HandshakeError::Refused(Refusal::BadMagic));
        }
        io.read_exact(&mut header[4..6]).await?;
        let version = u16::from_be_bytes([header[4], header[5]]);
        if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
            // Another version's hello may be laid out differently: stop here.
            return Err(HandshakeError::Refused(Refusal::UnsupportedVersion(
                version,
            )));
        }
        io.read_exact(&mut header[6..]).await?;
        let mut node = [0u8; 8];
        node.copy_from_slice(&header[6..14]);
        let node_id = NodeId::new(u64::from_be_bytes(node));
        let flags = header[14];
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&header[15..15 + NONCE_LEN]);
        let at = 15 + NONCE_LEN;
        let len = usize::from(u16::from_be_bytes([header[at], header[at + 1]]));
        if len > MAX_CLUSTER_ID_LEN || flags & !FLAG_SECRET != 0 {
            return Err(HandshakeError::Refused(Refusal::MalformedHello));
        }
        let mut id = vec![0u8; len];
        io.read_exact(&mut id).await?;
        let cluster_id =
            String::from_utf8(id).map_err(|_| HandshakeError::Refused(Refusal::MalformedHello))?;
        Ok(Hello {
            version,
            node_id,
            cluster_id,
            secret: flags & FLAG_SECRET != 0,
            nonce,
        })
    }

    /// Checks a peer's hello against our own identity.
    pub fn check(&self, ours: &Hello, expected_node: Option<NodeId>) -> Result<(), Refusal> {
        if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&self.version) {
            return Err(Refusal::UnsupportedVersion(self.version));
        }
        if self.cluster_id != ours.cluster_id {
            return Err(Refusal::WrongCluster(self.cluster_id.clone()));
        }
        if self.node_id == ours.node_id {
            return Err(Refusal::SameNodeId);
        }
        if let Some(expected) = expected_node {
            if self.node_id != expected {
                return Err(Refusal::UnexpectedNode(self.node_id));
            }
        }
        if self.secret != ours.secret {
            return Err(Refusal::SecretMismatch);
        }
        Ok(())
    }
}

/// The acceptor's answer to a valid, authenticated hello (the status byte).
///
/// Besides accepting, the acceptor can tell the dialer that it should not use this connection
/// because another one exists or is being made: that is how two nodes end up with exactly one
/// connection between them (see `docs/transport.md`, "Connections and delivery").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Use this connection (status byte 0).
    Accepted,
    /// Both nodes are dialling each other and the acceptor has the lower node id, so its own
    /// connection wins: the dialer closes this one and waits for the acceptor's (byte
    /// [`STATUS_SIMULTANEOUS`]).
    Simultaneous,
    /// The acceptor already holds an established connection to the dialer (byte
    /// [`STATUS_ALIVE`]). The dialer answers with one byte: `1` if it holds no connection to the
    /// acceptor (the acceptor's is stale: replace it with this one), `0` if it does (close this
    /// one, keep the existing one).
    Alive,
}

/// Status byte of [`Status::Simultaneous`].
pub const STATUS_SIMULTANEOUS: u8 = 8;
/// Status byte of [`Status::Alive`].
pub const STATUS_ALIVE: u8 = 9;

impl Status {
    fn code(self) -> u8 {
        match self {
            Status::Accepted => 0,
            Status::Simultaneous => STATUS_SIMULTANEOUS,
            Status::Alive => STATUS_ALIVE,
        }
    }
}

/// Dialer side, first part: send our hello (with a fresh nonce, see [`Hello::fresh`]), read the
/// acceptor's hello and pre-status, check them, exchange proofs of `secret` if there is one,
/// read the status. A refusal code is an error; [`Status::Alive`] obliges the caller to answer
/// with [`answer_alive`].
pub async fn dial_status<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    ours: &Hello,
    expected_node: NodeId,
    secret: Option<&ClusterSecret>,
) -> Result<(Hello, Status), HandshakeError> {
    io.write_all(&ours.encode()).await?;
    io.flush().await?;
    let theirs = Hello::read_from(io).await?;
    match io.read_u8().await? {
        0 => {}
        code => return Err(HandshakeError::Refused(Refusal::RefusedByPeer(code))),
    }
    theirs
        .check(ours, Some(expected_node))
        .map_err(HandshakeError::Refused)?;
    if let Some(secret) = secret {
        let mut proof = [0u8; PROOF_LEN];
        io.read_exact(&mut proof).await?;
        let t = Transcript {
            cluster_id: &ours.cluster_id,
            acceptor: theirs.node_id,
            dialer: ours.node_id,
            acceptor_nonce: &theirs.nonce,
            dialer_nonce: &ours.nonce,
        };
        if !secret.verify(&proof, Role::Acceptor, &t) {
            return Err(HandshakeError::Refused(Refusal::AuthFailed));
        }
        let mine = secret.prove(Role::Dialer, &t);
        io.write_all(&mine).await?;
        io.flush().await?;
    }
    let status = match io.read_u8().await? {
        0 => Status::Accepted,
        STATUS_SIMULTANEOUS => Status::Simultaneous,
        STATUS_ALIVE => Status::Alive,
        code => return Err(HandshakeError::Refused(Refusal::RefusedByPeer(code))),
    };
    Ok((theirs, status))
}

/// Dialer side, answer to [`Status::Alive`]: `replace` = we hold no connection to the acceptor.
pub async fn answer_alive<S: AsyncWrite + Unpin>(io: &mut S, replace: bool) -> std::io::Result<()> {
    io.write_all(&[u8::from(replace)]).await?;
    io.flush().await
}

/// Dialer side for a peer that wants this connection or nothing: like [`dial_status`], but
/// anything other than [`Status::Accepted`] is an error (`RefusedByPeer` with the status byte;
/// an `Alive` is answered "keep yours" first).
pub async fn dial<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    ours: &Hello,
    expected_node: NodeId,
    secret: Option<&ClusterSecret>,
) -> Result<Hello, HandshakeError> {
    match dial_status(io, ours, expected_node, secret).await? {
        (theirs, Status::Accepted) => Ok(theirs),
        (_, Status::Simultaneous) => Err(HandshakeError::Refused(Refusal::RefusedByPeer(
            STATUS_SIMULTANEOUS,
        ))),
        (_, Status::Alive) => {
            let _ = answer_alive(io, false).await;
            Err(HandshakeError::Refused(Refusal::RefusedByPeer(
                STATUS_ALIVE,
            )))
        }
    }
}

/// Acceptor side, first part: read the dialer's hello and check it (the generic checks, then
/// `admit`: the allowlist and the certificate binding), send our hello and pre-status, and with
/// a `secret` exchange proofs. On refusal the dialer is told why (best effort) and the error is
/// returned; on success the dialer is authenticated and the caller decides the [`Status`] and
/// sends it with [`accept_reply`]. `ours` must carry a fresh nonce ([`Hello::fresh`]).
pub async fn accept_hello<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    ours: &Hello,
    secret: Option<&ClusterSecret>,
    admit: impl FnOnce(&Hello) -> Result<(), Refusal>,
) -> Result<Hello, HandshakeError> {
    let theirs = match Hello::read_from(io).await {
        Ok(h) => h,
        Err(HandshakeError::Refused(r)) => {
            // Answer garbage with nothing: it is not a peer and would not understand.
            if r != Refusal::BadMagic {
                let _ = refuse(io, ours, r.code()).await;
            }
            return Err(HandshakeError::Refused(r));
        }
        Err(e) => return Err(e),
    };
    if let Err(r) = theirs.check(ours, None).and_then(|()| admit(&theirs)) {
        // Best effort: the connection is closed right after either way.
        let _ = refuse(io, ours, r.code()).await;
        return Err(HandshakeError::Refused(r));
    }
    let mut buf = ours.encode();
    buf.put_u8(0);
    let t = Transcript {
        cluster_id: &ours.cluster_id,
        acceptor: ours.node_id,
        dialer: theirs.node_id,
        acceptor_nonce: &ours.nonce,
        dialer_nonce: &theirs.nonce,
    };
    if let Some(secret) = secret {
        buf.put_slice(&secret.prove(Role::Acceptor, &t));
    }
    io.write_all(&buf).await?;
    io.flush().await?;
    if let Some(secret) = secret {
        let mut proof = [0u8; PROOF_LEN];
        io.read_exact(&mut proof).await?;
        if !secret.verify(&proof, Role::Dialer, &t) {
            let _ = status_byte(io, Refusal::AuthFailed.code()).await;
            return Err(HandshakeError::Refused(Refusal::AuthFailed));
        }
    }
    Ok(theirs)
}

/// Acceptor side, second part: the status byte.
pub async fn accept_reply<S: AsyncWrite + Unpin>(
    io: &mut S,
    status: Status,
) -> std::io::Result<()> {
    status_byte(io, status.code()).await
}

/// Acceptor side after [`Status::Alive`]: the dialer's answer (`true` = replace ours with this
/// connection). Any byte other than 0 or 1 is an error.
pub async fn read_alive_answer<S: AsyncRead + Unpin>(io: &mut S) -> std::io::Result<bool> {
    match io.read_u8().await? {
        0 => Ok(false),
        1 => Ok(true),
        b => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("invalid answer byte {b} to the alive status"),
        )),
    }
}

/// Acceptor side in one step: check the dialer's hello, authenticate it and accept it.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    ours: &Hello,
    secret: Option<&ClusterSecret>,
) -> Result<Hello, HandshakeError> {
    let theirs = accept_hello(io, ours, secret, |_| Ok(())).await?;
    accept_reply(io, Status::Accepted).await?;
    Ok(theirs)
}

/// A refusal before anything is proven: our hello and the refusal code as pre-status.
async fn refuse<S: AsyncWrite + Unpin>(io: &mut S, ours: &Hello, code: u8) -> std::io::Result<()> {
    let mut buf = ours.encode();
    buf.put_u8(code);
    io.write_all(&buf).await?;
    io.flush().await
}

async fn status_byte<S: AsyncWrite + Unpin>(io: &mut S, code: u8) -> std::io::Result<()> {
    io.write_all(&[code]).await?;
    io.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hello_round_trip_and_checks() {
        let ours = Hello::new(NodeId::new(1), "prod");
        let mut wire = &Hello::new(NodeId::new(2), "prod").encode()[..];
        let theirs = Hello::read_from(&mut wire).await.unwrap();
        assert_eq!(theirs, Hello::new(NodeId::new(2), "prod"));
        assert_eq!(theirs.check(&ours, Some(NodeId::new(2))), Ok(()));
        assert_eq!(
            theirs.check(&ours, Some(NodeId::new(3))),
            Err(Refusal::UnexpectedNode(NodeId::new(2)))
        );
        assert_eq!(
            Hello::new(NodeId::new(2), "test").check(&ours, None),
            Err(Refusal::WrongCluster("test".into()))
        );
        assert_eq!(
            Hello::new(NodeId::new(1), "prod").check(&ours, None),
            Err(Refusal::SameNodeId)
        );
        let future = Hello {
            version: PROTOCOL_VERSION + 1,
            ..Hello::new(NodeId::new(2), "prod")
        };
        assert_eq!(
            future.check(&ours, None),
            Err(Refusal::UnsupportedVersion(PROTOCOL_VERSION + 1))
        );
    }

    #[tokio::test]
    async fn garbage_and_malformed_hellos_are_refused() {
        let mut wire = &b"GET / HTTP/1.1\r\n\r\n"[..];
        let err = Hello::read_from(&mut wire).await.unwrap_err();
        assert_eq!(err.label(), "bad_magic");

        let mut bad = Hello::new(NodeId::new(2), "prod").encode();
        let n = bad.len();
        bad[n - 1] = 0xFF; // not UTF-8
        let err = Hello::read_from(&mut &bad[..]).await.unwrap_err();
        assert_eq!(err.label(), "malformed_hello");

        let mut long = BytesMut::new();
        long.put_slice(&MAGIC);
        long.put_u16(PROTOCOL_VERSION);
        long.put_u64(2);
        long.put_u8(0);
        long.put_slice(&[0; NONCE_LEN]);
        long.put_u16(60_000);
        let err = Hello::read_from(&mut &long[..]).await.unwrap_err();
        assert_eq!(err.label(), "malformed_hello");

        let truncated = Hello::new(NodeId::new(2), "prod").encode();
        let err = Hello::read_from(&mut &truncated[..10]).await.unwrap_err();
        assert_eq!(err.label(), "io");
    }

    #[tokio::test]
    async fn dial_and_accept_agree_or_refuse_with_a_code() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let acceptor =
            tokio::spawn(
                async move { accept(&mut b, &Hello::new(NodeId::new(2), "c1"), None).await },
            );
        let got = dial(
            &mut a,
            &Hello::new(NodeId::new(1), "c1"),
            NodeId::new(2),
            None,
        )
        .await
        .unwrap();
        assert_eq!(got.node_id, NodeId::new(2));
        assert_eq!(acceptor.await.unwrap().unwrap().node_id, NodeId::new(1));

        let (mut a, mut b) = tokio::io::duplex(1024);
        let acceptor =
            tokio::spawn(
                async move { accept(&mut b, &Hello::new(NodeId::new(2), "c1"), None).await },
            );
        let err = dial(
            &mut a,
            &Hello::new(NodeId::new(1), "other"),
            NodeId::new(2),
            None,
        )
        .await
        .unwrap_err();
        assert!(matches!(
            err,
            HandshakeError::Refused(Refusal::RefusedByPeer(3))
        ));
        let err = acceptor.await.unwrap().unwrap_err();
        assert_eq!(err.label(), "wrong_cluster");
    }

    #[tokio::test]
    async fn finding2_secret_proofs_authenticate_both_sides() {
        let secret = ClusterSecret::new("a shared cluster secret!");
        let wrong = ClusterSecret::new("not the cluster secret!!");
        // Both know the secret: accepted.
        let (mut a, mut b) = tokio::io::duplex(1024);
        let s2 = secret.clone();
        let acceptor = tokio::spawn(async move {
            accept(
                &mut b,
                &Hello::new(NodeId::new(2), "c").fresh(true),
                Some(&s2),
            )
            .await
        });
        dial(
            &mut a,
            &Hello::new(NodeId::new(1), "c").fresh(true),
            NodeId::new(2),
            Some(&secret),
        )
        .await
        .unwrap();
        assert_eq!(acceptor.await.unwrap().unwrap().node_id, NodeId::new(1));
        // A dialer with the wrong secret: the acceptor's proof does not verify for it, and the
        // acceptor never sees a valid proof.
        let (mut a, mut b) = tokio::io::duplex(1024);
        let s2 = secret.clone();
        let acceptor = tokio::spawn(async move {
            accept(
                &mut b,
                &Hello::new(NodeId::new(2), "c").fresh(true),
                Some(&s2),
            )
            .await
        });
        let err = dial(
            &mut a,
            &Hello::new(NodeId::new(1), "c").fresh(true),
            NodeId::new(2),
            Some(&wrong),
        )
        .await
        .unwrap_err();
        assert_eq!(err.label(), "auth_failed");
        drop(a);
        assert!(acceptor.await.unwrap().is_err());
        // A dialer without a secret claiming the same id: refused before any proof.
        let (mut a, mut b) = tokio::io::duplex(1024);
        let s2 = secret.clone();
        let acceptor = tokio::spawn(async move {
            accept(
                &mut b,
                &Hello::new(NodeId::new(2), "c").fresh(true),
                Some(&s2),
            )
            .await
        });
        let err = dial(
            &mut a,
            &Hello::new(NodeId::new(1), "c").fresh(false),
            NodeId::new(2),
            None,
        )
        .await
        .unwrap_err();
        assert!(matches!(
            err,
            HandshakeError::Refused(Refusal::RefusedByPeer(11))
        ));
        assert_eq!(
            acceptor.await.unwrap().unwrap_err().label(),
            "secret_mismatch"
        );
    }
}
