//! Fuzzes the inbound path of the transport without sockets: the frame decoder fed in
//! arbitrary chunks, the MessagePack body decoder for a Raft-like message type, and the
//! handshake hello parser. Any panic, or a frame that breaks the size limit, is a bug.
#![no_main]

use bytes::BytesMut;
use conclave_transport::codec::{decode_body, encode_frame, Frame, FrameDecoder};
use conclave_transport::handshake::Hello;
use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Msg {
    Vote {
        group: u64,
        term: u64,
        candidate: u64,
        last_log: (u64, u64),
    },
    Append {
        group: u64,
        term: u64,
        entries: Vec<Entry>,
        commit: u64,
    },
    Reply {
        group: u64,
        ok: bool,
        note: Option<String>,
    },
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Entry {
    index: u64,
    term: u64,
    #[serde(with = "serde_bytes_compat")]
    data: Vec<u8>,
}

// A tiny local stand-in for serde_bytes so the fuzz crate stays small.
mod serde_bytes_compat {
    use serde::{Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    // First byte picks the chunk size the stream is delivered in, as reads would split it.
    let chunk = usize::from(data[0] % 32) + 1;
    let stream = &data[1..];
    let decoder = FrameDecoder::new(MAX);
    let mut buf = BytesMut::new();
    'outer: for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            // The in-place path the TCP reader uses must agree with `decode` on every prefix.
            let in_place = decoder.complete_frame(&buf);
            let missing = decoder.missing(&buf);
            assert!(missing <= MAX + 4);
            let len_before = buf.len();
            let decoded = decoder.decode(&mut buf);
            match (&in_place, &decoded) {
                (Ok(None), Ok(None)) => assert!(missing > 0),
                (Ok(Some(0)), Ok(Some(Frame::KeepAlive))) => {}
                (Ok(Some(n)), Ok(Some(Frame::Message(body)))) => {
                    assert_eq!(*n, body.len());
                    assert_eq!(len_before - buf.len(), 4 + n);
                }
                (Err(_), Err(_)) => {}
                _ => panic!("complete_frame and decode disagree"),
            }
            match decoded {
                Ok(Some(Frame::KeepAlive)) => {}
                Ok(Some(Frame::Message(body))) => {
                    assert!(!body.is_empty() && body.len() <= MAX);
                    if let Ok(msg) = decode_body::<Msg>(&body) {
                        // Whatever decodes must re-encode and decode to the same value.
                        let again = encode_frame(&msg, usize::MAX >> 1).expect("re-encode");
                        let back: Msg = decode_body(&again[4..]).expect("round trip");
                        assert_eq!(back, msg);
                    }
                }
                Ok(None) => break,
                Err(_) => break 'outer, // the connection would be closed here
            }
        }
        // The buffer never holds more than one partial frame plus one read.
        assert!(buf.len() <= MAX + 4 + chunk);
    }
    // The handshake parser sees the same bytes as a fresh connection would.
    let rt = tokio_free_block_on(Hello::read_from(&mut &stream[..]));
    let _ = rt;
});

/// Drives a future that never awaits real I/O (reading from a byte slice is always ready).
fn tokio_free_block_on<F: std::future::Future>(fut: F) -> F::Output {
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
    }
}
