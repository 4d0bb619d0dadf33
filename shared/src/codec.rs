//! The one place that turns messages and stored records into bytes and back.
//!
//! Every use of bincode in fedge goes through this module, so the encoding can be swapped without touching the
//! rest of the code. Decoding is bounded: the caller states the largest size it accepts, and bincode is told the
//! same limit, so a hostile length prefix inside a message cannot make us allocate more than that.
//!
//! This module must never panic on input: malformed bytes are a [`CodecError`].

use serde::{Serialize, de::DeserializeOwned};

/// Errors from encoding or decoding.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("message of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("{trailing} unexpected trailing bytes after the message")]
    Trailing { trailing: usize },
    #[error("cannot encode message: {0}")]
    Encode(String),
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard().with_little_endian().with_variable_int_encoding()
}

/// Hard ceiling for any decoded control message or record, whatever the caller asks for.
pub const ABSOLUTE_LIMIT: usize = 256 * 1024 * 1024;

/// Encodes `value`.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Encodes `value` and appends it to `out`.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let bytes = encode(value)?;
    out.extend_from_slice(&bytes);
    Ok(())
}

/// Decodes exactly one `T` from `bytes`, refusing inputs longer than `limit` and trailing garbage.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, CodecError> {
    let limit = limit.min(ABSOLUTE_LIMIT);
    if bytes.len() > limit {
        return Err(CodecError::TooLarge { len: bytes.len(), limit });
    }
    // bincode's limit bounds every allocation it makes while decoding (length prefixes included).
    let (value, used): (T, usize) = bincode::serde::decode_from_slice(bytes, config().with_limit::<ABSOLUTE_LIMIT>())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::Trailing { trailing: bytes.len() - used });
    }
    Ok(value)
}

/// Length prefix of a frame: a little-endian `u32`.
pub const FRAME_HEADER: usize = 4;

/// Encodes `value` as one frame: a 4-byte little-endian length, then the message.
pub fn encode_frame<T: Serialize + ?Sized>(value: &T, limit: usize) -> Result<Vec<u8>, CodecError> {
    let body = encode(value)?;
    if body.len() > limit {
        return Err(CodecError::TooLarge { len: body.len(), limit });
    }
    let mut out = Vec::with_capacity(FRAME_HEADER + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Reads a frame's length prefix and checks it against `limit` before anything is allocated.
pub fn frame_len(header: [u8; FRAME_HEADER], limit: usize) -> Result<usize, CodecError> {
    let len = u32::from_le_bytes(header) as usize;
    if len > limit.min(ABSOLUTE_LIMIT) {
        return Err(CodecError::TooLarge { len, limit });
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        id: u64,
        name: String,
        values: Vec<u32>,
    }

    #[test]
    fn a_value_survives_a_round_trip() {
        let s = Sample { id: 7, name: "agent-1".into(), values: vec![1, 2, 3] };
        let bytes = encode(&s).unwrap();
        assert_eq!(decode::<Sample>(&bytes, 1024).unwrap(), s);
    }

    #[test]
    fn an_input_over_the_limit_is_refused_before_decoding() {
        let s = Sample { id: 7, name: "x".repeat(100), values: vec![] };
        let bytes = encode(&s).unwrap();
        assert!(matches!(decode::<Sample>(&bytes, 10), Err(CodecError::TooLarge { .. })));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode(&Sample { id: 1, name: String::new(), values: vec![] }).unwrap();
        bytes.push(0);
        assert!(matches!(decode::<Sample>(&bytes, 1024), Err(CodecError::Trailing { trailing: 1 })));
    }

    #[test]
    fn a_huge_length_prefix_inside_a_message_is_an_error_not_an_allocation() {
        // id, then a string whose varint length claims 2^60 bytes.
        let bytes = [7u8, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0x10];
        assert!(decode::<Sample>(&bytes, 1024).is_err());
    }

    #[test]
    fn truncated_input_is_an_error() {
        let bytes = encode(&Sample { id: 300, name: "abc".into(), values: vec![5; 10] }).unwrap();
        for cut in 0..bytes.len() {
            assert!(decode::<Sample>(&bytes[..cut], 1024).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn a_frame_carries_its_length() {
        let frame = encode_frame(&Sample { id: 1, name: "a".into(), values: vec![9] }, 1024).unwrap();
        let len = frame_len(frame[..4].try_into().unwrap(), 1024).unwrap();
        assert_eq!(len, frame.len() - 4);
        assert!(frame_len(frame[..4].try_into().unwrap(), 2).is_err());
    }
}
