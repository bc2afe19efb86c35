//! Keys in URLs: percent-decoding and validation of the `{key}` path segment, and the matching
//! encoder the client uses.
//!
//! Keys are decoded from the raw request path rather than from actix's matched segment, so
//! that exactly one decoding happens and `%2F` (a `/` inside a key) works.

/// The longest key accepted, in bytes after decoding.
pub const MAX_KEY_BYTES: usize = 1024;

/// Why a key in a URL was refused (HTTP 400).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key is empty.
    #[error("the key is empty")]
    Empty,
    /// The key is longer than [`MAX_KEY_BYTES`].
    #[error("the key is {len} bytes long; the limit is {limit}")]
    TooLong {
        /// Decoded length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A `%` is not followed by two hex digits.
    #[error("malformed percent-escape at byte {offset} of the key")]
    BadEscape {
        /// Where in the raw segment.
        offset: usize,
    },
    /// The decoded key is not UTF-8.
    #[error("the key is not valid UTF-8 after percent-decoding")]
    NotUtf8,
    /// The decoded key contains a control character.
    #[error("the key contains the control character U+{0:04X}")]
    ControlCharacter(u32),
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes a raw path segment and validates it as a key: non-empty, at most
/// [`MAX_KEY_BYTES`], UTF-8, no control characters (they break logs and terminals, and no
/// legitimate key needs them).
pub fn decode_key(raw: &str) -> Result<Vec<u8>, KeyError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex);
            let lo = bytes.get(i + 2).copied().and_then(hex);
            match (hi, lo) {
                (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                _ => return Err(KeyError::BadEscape { offset: i }),
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    if out.is_empty() {
        return Err(KeyError::Empty);
    }
    if out.len() > MAX_KEY_BYTES {
        return Err(KeyError::TooLong {
            len: out.len(),
            limit: MAX_KEY_BYTES,
        });
    }
    let text = std::str::from_utf8(&out).map_err(|_| KeyError::NotUtf8)?;
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        return Err(KeyError::ControlCharacter(u32::from(c)));
    }
    Ok(out)
}

/// Percent-encodes a key for a URL path segment: every byte except RFC 3986's unreserved
/// characters is escaped, so any key round-trips through [`decode_key`].
pub fn encode_key(key: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(key.len());
    for &b in key {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_escapes_including_slash() {
        assert_eq!(decode_key("a%2Fb").unwrap(), b"a/b");
        assert_eq!(decode_key("caf%C3%A9").unwrap(), "café".as_bytes());
        assert_eq!(decode_key("plain-key_1.x~").unwrap(), b"plain-key_1.x~");
    }

    #[test]
    fn refuses_bad_keys() {
        assert_eq!(decode_key(""), Err(KeyError::Empty));
        assert_eq!(decode_key("%FF"), Err(KeyError::NotUtf8));
        assert_eq!(decode_key("ab%4"), Err(KeyError::BadEscape { offset: 2 }));
        assert_eq!(decode_key("%zz"), Err(KeyError::BadEscape { offset: 0 }));
        assert_eq!(decode_key("a%00b"), Err(KeyError::ControlCharacter(0)));
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        assert_eq!(
            decode_key(&long),
            Err(KeyError::TooLong {
                len: MAX_KEY_BYTES + 1,
                limit: MAX_KEY_BYTES
            })
        );
        assert!(decode_key(&"k".repeat(MAX_KEY_BYTES)).is_ok());
    }

    #[test]
    fn encode_round_trips() {
        for key in ["greeting", "a/b c?d#e%f", "ключ", "~._-", "x+y=z&w"] {
            let encoded = encode_key(key.as_bytes());
            assert!(
                !encoded.contains('/') && !encoded.contains('?'),
                "{encoded}"
            );
            assert_eq!(decode_key(&encoded).unwrap(), key.as_bytes());
        }
    }
}
