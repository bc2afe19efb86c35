//! Zero-copy byte fields: `bytes::Bytes` fields that, when a transport decodes a message,
//! point into the buffer the frame was read into instead of being copied into an allocation of
//! their own.
//!
//! Use it as a serde `with` module on a `Bytes` field of a message type:
//!
//! ```
//! use bytes::Bytes;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Append {
//!     group: u64,
//!     #[serde(with = "conclave_transport::shared_bytes")]
//!     data: Bytes,
//! }
//! ```
//!
//! On the wire the field is a MessagePack `bin`, exactly what `serde_bytes` writes for a
//! `Vec<u8>`: switching a field between the two changes nothing for the peer.
//!
//! How it works: while the reader decodes the frames of one socket read, the read chunk is a
//! frozen [`Bytes`] registered for the current thread ([`decode_body_shared`]); the field's
//! visitor receives the borrowed slice from the MessagePack decoder and, when that slice lies
//! inside the registered chunk and is at least [`SHARE_MIN`] bytes long, returns
//! `chunk.slice_ref(slice)` — a reference-count increment instead of a `malloc` and a copy (and
//! a `free` on whichever thread drops the message). Shorter fields are copied. Outside
//! a transport decode (another deserializer, or a body that is not in the registered chunk) the
//! bytes are copied, so the field is correct with any serde format.
//!
//! Memory: a field decoded this way keeps its whole read chunk (at most one 64 KiB read, or
//! one frame of up to `max_frame_size`) alive until it is dropped. A consumer that keeps small
//! payloads for a long time while dropping the rest of their messages should copy them
//! (`Bytes::copy_from_slice`).
//!
//! [`decode_body_shared`]: crate::codec::decode_body_shared

use std::cell::RefCell;
use std::fmt;

use bytes::Bytes;
use serde::de::{Deserializer, Error, Visitor};
use serde::Serializer;

thread_local! {
    /// The buffer bodies are being decoded from on this thread, if a transport decode is in
    /// progress. Set and cleared around synchronous decoding only (no `.await` in between), so a
    /// task moving between threads never sees another task's buffer.
    static SOURCE: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Makes `source` the buffer that [`deserialize`] slices from on this thread until the guard is
/// dropped (the previous one is restored then, so decodes may nest).
pub(crate) fn register(source: &Bytes) -> SourceGuard {
    let prev = SOURCE.with(|s| s.replace(Some(source.clone())));
    SourceGuard { prev }
}

/// Restores the previously registered buffer on drop.
pub(crate) struct SourceGuard {
    prev: Option<Bytes>,
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        let prev = self.prev.take();
        SOURCE.with(|s| *s.borrow_mut() = prev);
    }
}

/// Fields shorter than this are copied even from a registered buffer.
///
/// Every view into a read chunk shares that chunk's one reference count, which the reader
/// increments and the consumer (another thread) decrements: for small payloads that contended
/// counter cost more than a `malloc` and a copy. In the transport benchmark (64-byte messages,
/// 48-byte payloads, load 11-17 on 2 cores) views were slower than copies in each of three
/// runs (0.31-0.33x against 0.34-0.46x the raw baseline); at 1 KiB and 4 KiB views were
/// faster. A short payload copied also does not pin a whole read chunk.
pub const SHARE_MIN: usize = 512;

/// `slice` as a `Bytes`: a slice of the registered buffer when it lies inside it and is at
/// least [`SHARE_MIN`] long, a copy otherwise.
fn share_or_copy(slice: &[u8]) -> Bytes {
    if slice.len() < SHARE_MIN {
        return Bytes::copy_from_slice(slice);
    }
    SOURCE.with(|s| match &*s.borrow() {
        Some(src) if contains(src, slice) => src.slice_ref(slice),
        _ => Bytes::copy_from_slice(slice),
    })
}

/// Whether `slice` lies within `src`'s bytes (what `Bytes::slice_ref` requires; it panics
/// otherwise, so this is checked first).
fn contains(src: &[u8], slice: &[u8]) -> bool {
    let start = src.as_ptr() as usize;
    let end = start + src.len();
    let s = slice.as_ptr() as usize;
    !slice.is_empty() && s >= start && s + slice.len() <= end
}

/// Serialises a `Bytes` field as a MessagePack `bin` (like `serde_bytes`).
pub fn serialize<S: Serializer>(bytes: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(bytes)
}

/// Deserialises a `Bytes` field, sharing the transport's read buffer when it can (see the
/// module docs) and copying otherwise.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
    deserializer.deserialize_bytes(SharedBytesVisitor)
}

struct SharedBytesVisitor;

impl<'de> Visitor<'de> for SharedBytesVisitor {
    type Value = Bytes;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte array")
    }

    fn visit_borrowed_bytes<E: Error>(self, v: &'de [u8]) -> Result<Bytes, E> {
        Ok(share_or_copy(v))
    }

    fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(v))
    }

    fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes::from(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Msg {
        seq: u64,
        #[serde(with = "crate::shared_bytes")]
        data: Bytes,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct VecMsg {
        seq: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    }

    fn points_into(outer: &[u8], inner: &[u8]) -> bool {
        contains(outer, inner)
    }

    #[test]
    fn same_wire_bytes_as_serde_bytes_vec() {
        let a = rmp_serde::to_vec(&Msg {
            seq: 9,
            data: Bytes::from_static(b"hello"),
        })
        .unwrap_or_default();
        let b = rmp_serde::to_vec(&VecMsg {
            seq: 9,
            data: b"hello".to_vec(),
        })
        .unwrap_or_default();
        assert!(!a.is_empty());
        assert_eq!(a, b);
    }

    #[test]
    fn registered_buffer_is_shared_and_anything_else_is_copied() {
        let body = Bytes::from(
            rmp_serde::to_vec(&Msg {
                seq: 1,
                data: Bytes::from_static(&[7; SHARE_MIN]),
            })
            .unwrap_or_default(),
        );
        // No registered buffer: a copy, equal in value.
        let copied: Msg = rmp_serde::from_slice(&body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(copied.data, Bytes::from_static(&[7; SHARE_MIN]));
        assert!(!points_into(&body, &copied.data));
        // Registered: the field is a view into the body.
        let shared: Msg = {
            let _g = register(&body);
            rmp_serde::from_slice(&body).unwrap_or_else(|e| panic!("{e}"))
        };
        assert_eq!(shared.data, Bytes::from_static(&[7; SHARE_MIN]));
        assert!(points_into(&body, &shared.data));
        // A body outside the registered buffer is copied, not sliced (slice_ref would panic).
        let other = body.to_vec();
        let from_other: Msg = {
            let _g = register(&body);
            rmp_serde::from_slice(&other).unwrap_or_else(|e| panic!("{e}"))
        };
        assert!(!points_into(&body, &from_other.data));
        assert!(!points_into(&other, &from_other.data));
        // The guard cleared the registration.
        assert!(SOURCE.with(|s| s.borrow().is_none()));
    }

    #[test]
    fn short_fields_are_copied_even_from_the_registered_buffer() {
        let body = Bytes::from(
            rmp_serde::to_vec(&Msg {
                seq: 1,
                data: Bytes::from_static(&[5; SHARE_MIN - 1]),
            })
            .unwrap_or_default(),
        );
        let _g = register(&body);
        let m: Msg = rmp_serde::from_slice(&body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.data, Bytes::from_static(&[5; SHARE_MIN - 1]));
        assert!(!points_into(&body, &m.data));
    }

    #[test]
    fn empty_fields_decode_to_empty_bytes() {
        let body = Bytes::from(
            rmp_serde::to_vec(&Msg {
                seq: 1,
                data: Bytes::new(),
            })
            .unwrap_or_default(),
        );
        let _g = register(&body);
        let m: Msg = rmp_serde::from_slice(&body).unwrap_or_else(|e| panic!("{e}"));
        assert!(m.data.is_empty());
    }
}
