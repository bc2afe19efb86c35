//! The connection handshake: both sides prove they speak this protocol, in this cluster.
//!
//! Wire format of a hello (fixed binary, not MessagePack, so that garbage is rejected on its
//! first four bytes):
//!
//! ```text
//! magic "CNCL" (4) | version u16 BE | node id u64 BE | cluster id length u16 BE | cluster id (UTF-8)
//! ```
//!
//! The dialer sends its hello; the acceptor checks it and answers with its own hello followed by
//! one status byte (`0` accepted, otherwise a [`Refusal`] code) and closes on refusal. The dialer
//! then checks the acceptor's hello the same way, plus that it is the node it meant to reach.
//!
//! Version 2 adds two statuses that keep one connection per pair of nodes (see [`Status`]):
//! `8` (simultaneous dial, the acceptor's own connection wins) and `9` (the acceptor already
//! holds a connection; the dialer answers one byte, `1` = replace it, `0` = keep it).

use std::fmt;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::NodeId;

/// The four bytes every connection starts with.
pub const MAGIC: [u8; 4] = *b"CNCL";
/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 2;
/// The oldest protocol version this build accepts.
pub const MIN_PROTOCOL_VERSION: u16 = 2;
/// Cluster ids longer than this are refused (they are names, not payloads).
pub const MAX_CLUSTER_ID_LEN: usize = 255;

const HEADER_LEN: usize = 4 + 2 + 8 + 2;

/// One side's introduction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version of the sender.
    pub version: u16,
    /// Node id of the sender.
    pub node_id: NodeId,
    /// Cluster the sender belongs to.
    pub cluster_id: String,
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
        }
    }

    /// The status byte sent to the peer for this refusal.
    fn code(&self) -> u8 {
        match self {
            Refusal::BadMagic => 1,
            Refusal::UnsupportedVersion(_) => 2,
            Refusal::WrongCluster(_) => 3,
            Refusal::UnexpectedNode(_) => 4,
            Refusal::SameNodeId => 5,
            Refusal::MalformedHello => 6,
            Refusal::Timeout => 7,
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

impl Hello {
    /// Our own hello at the current protocol version.
    pub fn new(node_id: NodeId, cluster_id: &str) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            node_id,
            cluster_id: cluster_id.to_owned(),
        }
    }

    /// The wire encoding (see the module doc).
    pub fn encode(&self) -> BytesMut {
        let id = self.cluster_id.as_bytes();
        // Config validation keeps cluster ids within MAX_CLUSTER_ID_LEN. An id too long even for
        // the u16 length is cut at 65535 bytes, which every peer refuses as malformed (> 255), so
        // the cut can never make two different ids match.
        let len = u16::try_from(id.len()).unwrap_or(u16::MAX);
        let mut buf = BytesMut::with_capacity(HEADER_LEN + id.len());
        buf.put_slice(&MAGIC);
        buf.put_u16(self.version);
        buf.put_u64(self.node_id);
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
        io.read_exact(&mut header[4..]).await?;
        let version = u16::from_be_bytes([header[4], header[5]]);
        let mut node = [0u8; 8];
        node.copy_from_slice(&header[6..14]);
        let node_id = u64::from_be_bytes(node);
        let len = usize::from(u16::from_be_bytes([header[14], header[15]]));
        if len > MAX_CLUSTER_ID_LEN {
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
        Ok(())
    }
}

/// The acceptor's answer to a valid hello (the status byte after its own hello).
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

/// Dialer side, first part: send our hello, read the acceptor's hello and status, check them.
/// A refusal code is an error; [`Status::Alive`] obliges the caller to answer with
/// [`answer_alive`].
pub async fn dial_status<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    ours: &Hello,
    expected_node: NodeId,
) -> Result<(Hello, Status), HandshakeError> {
    io.write_all(&ours.encode()).await?;
    io.flush().await?;
    let theirs = Hello::read_from(io).await?;
    let status = match io.read_u8().await? {
        0 => Status::Accepted,
        STATUS_SIMULTANEOUS => Status::Simultaneous,
        STATUS_ALIVE => Status::Alive,
        code => return Err(HandshakeError::Refused(Refusal::RefusedByPeer(code))),
    };
    theirs
        .check(ours, Some(expected_node))
        .map_err(HandshakeError::Refused)?;
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
) -> Result<Hello, HandshakeError> {
    match dial_status(io, ours, expected_node).await? {
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

/// Acceptor side, first part: read the dialer's hello and check it. On refusal the status byte
/// tells the dialer why (best effort) and the error is returned; on success the caller decides
/// the [`Status`] and sends it with [`accept_reply`].
pub async fn accept_hello<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    ours: &Hello,
) -> Result<Hello, HandshakeError> {
    let theirs = match Hello::read_from(io).await {
        Ok(h) => h,
        Err(HandshakeError::Refused(r)) => {
            // Answer garbage with nothing: it is not a peer and would not understand.
            if r != Refusal::BadMagic {
                let _ = reply(io, ours, r.code()).await;
            }
            return Err(HandshakeError::Refused(r));
        }
        Err(e) => return Err(e),
    };
    if let Err(r) = theirs.check(ours, None) {
        // Best effort: the connection is closed right after either way.
        let _ = reply(io, ours, r.code()).await;
        return Err(HandshakeError::Refused(r));
    }
    Ok(theirs)
}

/// Acceptor side, second part: our hello and the status byte.
pub async fn accept_reply<S: AsyncWrite + Unpin>(
    io: &mut S,
    ours: &Hello,
    status: Status,
) -> std::io::Result<()> {
    reply(io, ours, status.code()).await
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

/// Acceptor side in one step: check the dialer's hello and accept it.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    ours: &Hello,
) -> Result<Hello, HandshakeError> {
    let theirs = accept_hello(io, ours).await?;
    accept_reply(io, ours, Status::Accepted).await?;
    Ok(theirs)
}

async fn reply<S: AsyncWrite + Unpin>(io: &mut S, ours: &Hello, status: u8) -> std::io::Result<()> {
    let mut buf = ours.encode();
    buf.put_u8(status);
    io.write_all(&buf).await?;
    io.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hello_round_trip_and_checks() {
        let ours = Hello::new(1, "prod");
        let mut wire = &Hello::new(2, "prod").encode()[..];
        let theirs = Hello::read_from(&mut wire).await.unwrap();
        assert_eq!(theirs, Hello::new(2, "prod"));
        assert_eq!(theirs.check(&ours, Some(2)), Ok(()));
        assert_eq!(
            theirs.check(&ours, Some(3)),
            Err(Refusal::UnexpectedNode(2))
        );
        assert_eq!(
            Hello::new(2, "test").check(&ours, None),
            Err(Refusal::WrongCluster("test".into()))
        );
        assert_eq!(
            Hello::new(1, "prod").check(&ours, None),
            Err(Refusal::SameNodeId)
        );
        let future = Hello {
            version: PROTOCOL_VERSION + 1,
            ..Hello::new(2, "prod")
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

        let mut bad = Hello::new(2, "prod").encode();
        let n = bad.len();
        bad[n - 1] = 0xFF; // not UTF-8
        let err = Hello::read_from(&mut &bad[..]).await.unwrap_err();
        assert_eq!(err.label(), "malformed_hello");

        let mut long = BytesMut::new();
        long.put_slice(&MAGIC);
        long.put_u16(PROTOCOL_VERSION);
        long.put_u64(2);
        long.put_u16(60_000);
        let err = Hello::read_from(&mut &long[..]).await.unwrap_err();
        assert_eq!(err.label(), "malformed_hello");

        let truncated = Hello::new(2, "prod").encode();
        let err = Hello::read_from(&mut &truncated[..10]).await.unwrap_err();
        assert_eq!(err.label(), "io");
    }

    #[tokio::test]
    async fn dial_and_accept_agree_or_refuse_with_a_code() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let acceptor = tokio::spawn(async move { accept(&mut b, &Hello::new(2, "c1")).await });
        let got = dial(&mut a, &Hello::new(1, "c1"), 2).await.unwrap();
        assert_eq!(got.node_id, 2);
        assert_eq!(acceptor.await.unwrap().unwrap().node_id, 1);

        let (mut a, mut b) = tokio::io::duplex(1024);
        let acceptor = tokio::spawn(async move { accept(&mut b, &Hello::new(2, "c1")).await });
        let err = dial(&mut a, &Hello::new(1, "other"), 2).await.unwrap_err();
        assert!(matches!(
            err,
            HandshakeError::Refused(Refusal::RefusedByPeer(3))
        ));
        let err = acceptor.await.unwrap().unwrap_err();
        assert_eq!(err.label(), "wrong_cluster");
    }
}
