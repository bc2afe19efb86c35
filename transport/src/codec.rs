//! The frame codec: a `u32` big-endian length prefix followed by a MessagePack body.
//!
//! A zero-length frame is a keep-alive: no MessagePack value encodes to zero bytes, so it can
//! never be confused with a message. The decoder is a pure function over a byte buffer (no I/O),
//! which is what the fuzz target in `transport/fuzz/` drives.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::de::{Deserialize, DeserializeOwned};
use serde::Serialize;

/// Size of the length prefix that precedes every frame body.
pub const LENGTH_PREFIX: usize = 4;

/// Default upper bound on a frame body, in bytes (64 KiB). Nodes carrying snapshots raise it.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 64 * 1024;

/// Errors of the codec boundary: producing or consuming one frame.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// A length prefix announced (or an encoder produced) a body larger than the limit.
    #[error("frame of {len} bytes exceeds max_frame_size {max}")]
    FrameTooLarge {
        /// The announced or produced body length.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The message could not be serialised to MessagePack.
    #[error("cannot encode message: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    /// A complete frame's body is not a valid MessagePack encoding of the expected type.
    #[error("cannot decode frame body: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    /// A frame body decoded to a value but left bytes unread: the sender and receiver disagree
    /// about the message type, so the rest of the stream cannot be trusted either.
    #[error("frame body has trailing bytes after the message")]
    TrailingBytes,
}

impl CodecError {
    /// A short, stable label for metrics and logs (`reason` label of the decode-error counter).
    pub fn reason(&self) -> &'static str {
        match self {
            CodecError::FrameTooLarge { .. } => "frame_too_large",
            CodecError::Encode(_) => "encode",
            CodecError::Decode(_) => "undecodable_body",
            CodecError::TrailingBytes => "trailing_bytes",
        }
    }
}

/// One frame cut from the byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A zero-length frame: proves the peer is alive, carries nothing.
    KeepAlive,
    /// The MessagePack body of one message (without its length prefix).
    Message(Bytes),
}

/// Encodes `msg` as one complete frame (length prefix included).
///
/// Fails with [`CodecError::FrameTooLarge`] if the body exceeds `max_frame_size`, so an
/// oversized message is refused at the sender instead of killing the connection at the receiver.
pub fn encode_frame<M: Serialize>(msg: &M, max_frame_size: usize) -> Result<Bytes, CodecError> {
    let mut buf = BytesMut::with_capacity(64);
    encode_frame_into(msg, max_frame_size, &mut buf)?;
    Ok(buf.freeze())
}

/// Appends one complete frame for `msg` to `buf`; on error `buf` is left as it was.
pub fn encode_frame_into<M: Serialize>(
    msg: &M,
    max_frame_size: usize,
    buf: &mut BytesMut,
) -> Result<(), CodecError> {
    let start = buf.len();
    buf.put_u32(0);
    if let Err(e) = rmp_serde::encode::write(&mut AppendTo(buf), msg) {
        buf.truncate(start);
        return Err(e.into());
    }
    let len = buf.len() - start - LENGTH_PREFIX;
    // u32::MAX bounds the prefix itself; max_frame_size is the policy bound.
    if len > max_frame_size || u32::try_from(len).is_err() {
        buf.truncate(start);
        return Err(CodecError::FrameTooLarge {
            len,
            max: max_frame_size,
        });
    }
    let prefix = (len as u32).to_be_bytes();
    buf[start..start + LENGTH_PREFIX].copy_from_slice(&prefix);
    Ok(())
}

/// `io::Write` that appends to a `BytesMut`, with every method inlined.
///
/// Why not `BufMut::writer`: rmp writes a message as many small pieces (a marker byte, a
/// big-endian integer, a length), and `bytes::buf::Writer` goes through `write_all`'s retry
/// loop and `put_slice` for each; appending directly lets each piece compile to a capacity
/// check and a copy.
struct AppendTo<'a>(&'a mut BytesMut);

impl std::io::Write for AppendTo<'_> {
    #[inline]
    fn write(&mut self, src: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(src);
        Ok(src.len())
    }

    #[inline]
    fn write_all(&mut self, src: &[u8]) -> std::io::Result<()> {
        self.0.extend_from_slice(src);
        Ok(())
    }

    #[inline]
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Appends a keep-alive frame (a zero length prefix) to `buf`.
pub fn encode_keepalive(buf: &mut BytesMut) {
    buf.put_u32(0);
}

/// Decodes a frame body into a message. The whole body must be consumed.
pub fn decode_body<M: DeserializeOwned>(body: &[u8]) -> Result<M, CodecError> {
    // The slice deserializer borrows from `body` (no intermediate copy) and bounds every length
    // by the bytes actually present, so a hostile length inside the body cannot make it
    // allocate more than the frame holds.
    let mut de = rmp_serde::Deserializer::from_read_ref(body);
    let msg = M::deserialize(&mut de)?;
    // The body must hold exactly one value: reading another marker must hit the end. Anything
    // else (a value, or even an invalid marker) means bytes are left over. The probe asks for a
    // `u8`: with nothing left it fails on the marker read, like any type would, but through
    // rmp_serde's small number path; probing with `IgnoredAny` went through the generic
    // `any_inner` and cost ~10 ns of a ~42 ns decode of a 64-byte message (docs/transport.md,
    // 2026-12-07 second pass). A trailing value of any kind, or a marker without its data,
    // gives `Ok` or another error, never `InvalidMarkerRead`.
    match u8::deserialize(&mut de) {
        Err(rmp_serde::decode::Error::InvalidMarkerRead(e))
            if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        _ => return Err(CodecError::TrailingBytes),
    }
    Ok(msg)
}

/// Decodes a frame body held in a [`Bytes`], like [`decode_body`], except that fields
/// declared with [`crate::shared_bytes`] become views into `body` instead of copies.
pub fn decode_body_shared<M: DeserializeOwned>(body: &Bytes) -> Result<M, CodecError> {
    let _source = crate::shared_bytes::register(body);
    decode_body(body)
}

/// Cuts frames from a growing byte buffer, enforcing `max_frame_size` before buffering a body.
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    max_frame_size: usize,
}

impl FrameDecoder {
    /// A decoder that refuses bodies above `max_frame_size` bytes.
    pub fn new(max_frame_size: usize) -> Self {
        Self { max_frame_size }
    }

    /// The configured limit.
    pub fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }

    /// If `buf` starts with a complete frame, its body length (0 for a keep-alive); the body is
    /// `buf[LENGTH_PREFIX..LENGTH_PREFIX + len]`. `Ok(None)` when only part of a frame is there,
    /// [`CodecError::FrameTooLarge`] as soon as the prefix is over the limit. Lets a reader
    /// decode bodies in place, without splitting a buffer per frame.
    // Inlined: the reader calls it once per frame, and the out-of-line call (its result
    // returned through memory) showed as ~3 % of the CPU for 64-byte frames.
    #[inline]
    pub fn complete_frame(&self, buf: &[u8]) -> Result<Option<usize>, CodecError> {
        let Some(prefix) = buf.get(..LENGTH_PREFIX) else {
            return Ok(None);
        };
        let mut p = [0u8; LENGTH_PREFIX];
        p.copy_from_slice(prefix);
        let len = u32::from_be_bytes(p) as usize;
        if len > self.max_frame_size {
            return Err(CodecError::FrameTooLarge {
                len,
                max: self.max_frame_size,
            });
        }
        Ok((buf.len() >= LENGTH_PREFIX + len).then_some(len))
    }

    /// Bytes still missing for the frame at the front of `buf` to be complete (0 if it is, or
    /// if its prefix is over the limit; only the prefix's missing bytes while the prefix itself
    /// is incomplete). Never more than `max_frame_size + LENGTH_PREFIX`.
    pub fn missing(&self, buf: &[u8]) -> usize {
        let Some(prefix) = buf.get(..LENGTH_PREFIX) else {
            return LENGTH_PREFIX - buf.len();
        };
        let mut p = [0u8; LENGTH_PREFIX];
        p.copy_from_slice(prefix);
        let len = u32::from_be_bytes(p) as usize;
        if len > self.max_frame_size {
            return 0;
        }
        (LENGTH_PREFIX + len).saturating_sub(buf.len())
    }

    /// Takes the next complete frame off the front of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` holds only part of a frame (read more and call again), and
    /// [`CodecError::FrameTooLarge`] as soon as a length prefix is over the limit — before the
    /// body is buffered, so a hostile prefix cannot make the reader allocate. The body is split
    /// off without copying.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        if buf.len() < LENGTH_PREFIX {
            return Ok(None);
        }
        let mut prefix = [0u8; LENGTH_PREFIX];
        prefix.copy_from_slice(&buf[..LENGTH_PREFIX]);
        let len = u32::from_be_bytes(prefix) as usize;
        if len > self.max_frame_size {
            return Err(CodecError::FrameTooLarge {
                len,
                max: self.max_frame_size,
            });
        }
        if buf.len() < LENGTH_PREFIX + len {
            // Reserve for the rest of this frame only: bounded by max_frame_size, checked above.
            buf.reserve(LENGTH_PREFIX + len - buf.len());
            return Ok(None);
        }
        buf.advance(LENGTH_PREFIX);
        if len == 0 {
            return Ok(Some(Frame::KeepAlive));
        }
        Ok(Some(Frame::Message(buf.split_to(len).freeze())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Msg {
        group: u64,
        term: u64,
        payload: Vec<u8>,
        note: Option<String>,
    }

    fn sample(n: usize) -> Msg {
        Msg {
            group: 7,
            term: 3,
            payload: vec![0xAB; n],
            note: Some("hello".into()),
        }
    }

    #[test]
    fn round_trip_many_frames_in_one_buffer() {
        let mut buf = BytesMut::new();
        for i in 0..10 {
            encode_frame_into(&sample(i * 10), 1024, &mut buf).unwrap();
            encode_keepalive(&mut buf);
        }
        let dec = FrameDecoder::new(1024);
        for i in 0..10 {
            match dec.decode(&mut buf).unwrap() {
                Some(Frame::Message(body)) => {
                    assert_eq!(decode_body::<Msg>(&body).unwrap(), sample(i * 10))
                }
                other => panic!("expected a message, got {other:?}"),
            }
            assert_eq!(dec.decode(&mut buf).unwrap(), Some(Frame::KeepAlive));
        }
        assert!(buf.is_empty());
        assert_eq!(dec.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let frame = encode_frame(&sample(100), 1024).unwrap();
        let dec = FrameDecoder::new(1024);
        let mut buf = BytesMut::new();
        // Feed one byte at a time: nothing is produced until the last byte arrives.
        for (i, b) in frame.iter().enumerate() {
            buf.put_u8(*b);
            let out = dec.decode(&mut buf).unwrap();
            if i + 1 < frame.len() {
                assert_eq!(out, None, "frame produced early at byte {i}");
            } else {
                assert!(matches!(out, Some(Frame::Message(_))));
            }
        }
    }

    #[test]
    fn oversized_prefix_is_refused_before_buffering() {
        let mut buf = BytesMut::new();
        buf.put_u32(1025);
        let err = FrameDecoder::new(1024).decode(&mut buf).unwrap_err();
        assert!(matches!(
            err,
            CodecError::FrameTooLarge {
                len: 1025,
                max: 1024
            }
        ));
        assert_eq!(err.reason(), "frame_too_large");
        // u32::MAX must not trigger a 4 GiB reservation either.
        let mut buf = BytesMut::new();
        buf.put_u32(u32::MAX);
        assert!(FrameDecoder::new(1024).decode(&mut buf).is_err());
        assert!(buf.capacity() < 1 << 20);
    }

    #[test]
    fn oversized_message_is_refused_at_encode_and_buffer_is_untouched() {
        let mut buf = BytesMut::new();
        encode_keepalive(&mut buf);
        let err = encode_frame_into(&sample(2000), 1024, &mut buf).unwrap_err();
        assert!(matches!(err, CodecError::FrameTooLarge { max: 1024, .. }));
        assert_eq!(&buf[..], &[0, 0, 0, 0]);
    }

    #[test]
    fn undecodable_and_trailing_bodies_are_errors() {
        // 0xc1 is the one byte MessagePack never uses.
        let err = decode_body::<Msg>(&[0xc1, 0x00]).unwrap_err();
        assert_eq!(err.reason(), "undecodable_body");
        // A valid u64 where a struct is expected.
        assert!(decode_body::<Msg>(&[0x07]).is_err());
        // A valid message followed by junk.
        let frame = encode_frame(&sample(3), 1024).unwrap();
        let mut body = frame[LENGTH_PREFIX..].to_vec();
        body.push(0x00);
        let err = decode_body::<Msg>(&body).unwrap_err();
        assert!(matches!(err, CodecError::TrailingBytes));
        // Junk that is not even a valid marker is trailing bytes too, not an undecodable body.
        let mut body = frame[LENGTH_PREFIX..].to_vec();
        body.push(0xc1);
        assert!(matches!(
            decode_body::<Msg>(&body),
            Err(CodecError::TrailingBytes)
        ));
    }

    #[test]
    fn every_kind_of_trailing_value_is_refused() {
        let frame = encode_frame(&sample(3), 1024).unwrap();
        let body = &frame[LENGTH_PREFIX..];
        assert_eq!(decode_body::<Msg>(body).unwrap(), sample(3));
        let trailers: &[&[u8]] = &[
            &[0x00],                         // a positive fixint: decodes as the probe's u8
            &[0xcc, 0x05],                   // a u8
            &[0xcd, 0x01, 0x00],             // a u16 over u8's range
            &[0xcf],                         // a u64 marker without its 8 bytes
            &[0xc0],                         // nil
            &[0xc3],                         // true
            &[0xa1, b'x'],                   // a string
            &[0x91, 0x01],                   // an array
            &[0x80],                         // an empty map
            &[0xc6, 0xff, 0xff, 0xff, 0xff], // a bin announcing 4 GiB (must not allocate)
            &[0xd4, 0x01, 0x02],             // a fixext
            &[0xc1],                         // the reserved marker
        ];
        for t in trailers {
            let mut b = body.to_vec();
            b.extend_from_slice(t);
            assert!(
                matches!(decode_body::<Msg>(&b), Err(CodecError::TrailingBytes)),
                "trailing {t:02x?} accepted"
            );
        }
        // A primitive message followed by nothing is fine, followed by anything is not.
        assert_eq!(decode_body::<u8>(&[0x05]).unwrap(), 5);
        assert!(matches!(
            decode_body::<u8>(&[0x05, 0x05]),
            Err(CodecError::TrailingBytes)
        ));
        // An empty body is an undecodable one (not a message that "ended early").
        assert_eq!(
            decode_body::<u8>(&[]).unwrap_err().reason(),
            "undecodable_body"
        );
    }

    #[test]
    fn in_place_frame_lengths_agree_with_decode() {
        let dec = FrameDecoder::new(1024);
        let frame = encode_frame(&sample(30), 1024).unwrap();
        let body_len = frame.len() - LENGTH_PREFIX;
        for cut in 0..frame.len() {
            assert_eq!(dec.complete_frame(&frame[..cut]).unwrap(), None);
            // Before the prefix is complete, only the prefix's own missing bytes are known.
            let expected = if cut < LENGTH_PREFIX {
                LENGTH_PREFIX - cut
            } else {
                frame.len() - cut
            };
            assert_eq!(dec.missing(&frame[..cut]), expected);
        }
        assert_eq!(dec.complete_frame(&frame).unwrap(), Some(body_len));
        assert_eq!(dec.missing(&frame), 0);
        assert_eq!(dec.complete_frame(&[0, 0, 0, 0, 9]).unwrap(), Some(0));
        let mut big = BytesMut::new();
        big.put_u32(1025);
        assert!(dec.complete_frame(&big).is_err());
        assert_eq!(dec.missing(&big), 0);
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Kind {
        Unit,
        Newtype(i64),
        Tuple(u8, String),
        Struct { a: Option<u32>, b: f64 },
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Wide {
        small: u8,
        big: u64,
        neg: i64,
        float: f32,
        flag: bool,
        text: String,
        #[serde(with = "serde_bytes")]
        bin: Vec<u8>,
        list: Vec<u16>,
        map: std::collections::BTreeMap<String, i32>,
        none: Option<u8>,
        some: Option<String>,
        kinds: Vec<Kind>,
        pair: (u32, char),
    }

    #[test]
    fn frames_carry_exactly_rmp_serdes_bytes() {
        // The frame body is written through `AppendTo`, not rmp_serde's own writer: it must be
        // the same bytes, for every kind of value and every integer width.
        let mut values = Vec::new();
        for (i, n) in [
            0u64,
            1,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            u32::MAX as u64 + 1,
            u64::MAX,
        ]
        .into_iter()
        .enumerate()
        {
            values.push(Wide {
                small: i as u8,
                big: n,
                neg: -(n as i64 / 2) - 1,
                float: i as f32 / 3.0,
                flag: i % 2 == 0,
                text: "x".repeat(i * 7),
                bin: vec![i as u8; (n % 300) as usize],
                list: (0..i as u16).collect(),
                map: (0..i as i32).map(|k| (k.to_string(), -k)).collect(),
                none: None,
                some: Some("s".into()),
                kinds: vec![
                    Kind::Unit,
                    Kind::Newtype(-(i as i64)),
                    Kind::Tuple(i as u8, "t".into()),
                    Kind::Struct {
                        a: Some(n as u32),
                        b: 0.5,
                    },
                ],
                pair: (n as u32, 'é'),
            });
        }
        let mut buf = BytesMut::new();
        for v in &values {
            let start = buf.len();
            encode_frame_into(v, 1 << 20, &mut buf).unwrap();
            let expected = rmp_serde::to_vec(v).unwrap();
            assert_eq!(&buf[start + LENGTH_PREFIX..], &expected[..]);
            assert_eq!(decode_body::<Wide>(&expected).unwrap(), *v);
        }
    }

    /// A value whose serialisation fails after writing part of itself.
    struct FailsHalfway;

    impl Serialize for FailsHalfway {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::{Error, SerializeTuple};
            let mut t = s.serialize_tuple(2)?;
            t.serialize_element(&7u64)?;
            Err(S::Error::custom("refused halfway"))
        }
    }

    #[test]
    fn a_message_that_fails_to_serialise_leaves_the_buffer_as_it_was() {
        let mut buf = BytesMut::new();
        encode_frame_into(&sample(3), 1024, &mut buf).unwrap();
        let before = buf.clone();
        let err = encode_frame_into(&FailsHalfway, 1024, &mut buf).unwrap_err();
        assert_eq!(err.reason(), "encode");
        assert_eq!(buf, before);
    }

    #[test]
    fn truncated_body_is_incomplete_not_garbage() {
        let frame = encode_frame(&sample(50), 1024).unwrap();
        let mut buf = BytesMut::from(&frame[..frame.len() - 1]);
        assert_eq!(FrameDecoder::new(1024).decode(&mut buf).unwrap(), None);
    }
}
