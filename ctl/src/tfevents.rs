//! The TensorBoard event-file format, for writing: TFRecord framing (a little-endian `u64` length, its masked
//! CRC-32C, the data, the data's masked CRC-32C) around `Event` protocol buffers whose summaries hold scalar
//! `simple_value`s. The messages are the subset of TensorFlow's `event.proto` and `summary.proto` a scalar needs,
//! with their field numbers; the first record of a file carries `file_version = "brain.Event:2"`.
//!
//! Pure encoding: no I/O, no clock (times are passed in).

use prost::Message;

/// `tensorflow.Event`: one record of an event file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// Seconds since the Unix epoch.
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    /// The global step (fedge: the round id).
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(oneof = "event::What", tags = "3, 5")]
    pub what: Option<event::What>,
}

pub mod event {
    /// What an event holds.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum What {
        /// The file's format version: `brain.Event:2`.
        #[prost(string, tag = "3")]
        FileVersion(String),
        #[prost(message, tag = "5")]
        Summary(super::Summary),
    }
}

/// `tensorflow.Summary`: the values logged at one step.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value` with a scalar.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
}

/// The format version TensorBoard expects in a file's first event.
pub const FILE_VERSION: &str = "brain.Event:2";

/// The first event of a file.
pub fn version_event(wall_time: f64) -> Event {
    Event { wall_time, step: 0, what: Some(event::What::FileVersion(FILE_VERSION.into())) }
}

/// An event of scalars `(tag, value)` at `step`.
pub fn scalars_event(wall_time: f64, step: i64, scalars: &[(&str, f32)]) -> Event {
    let value = scalars.iter().map(|(t, v)| SummaryValue { tag: (*t).into(), simple_value: Some(*v) }).collect();
    Event { wall_time, step, what: Some(event::What::Summary(Summary { value })) }
}

/// The CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) lookup table.
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32C of `bytes` (iSCSI, RFC 3720).
pub fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc = CRC32C_TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

/// TFRecord's masked CRC: rotate right by 15 and add a constant, so that a CRC stored next to the data it covers
/// does not look like data.
pub fn masked_crc32c(bytes: &[u8]) -> u32 {
    crc32c(bytes).rotate_right(15).wrapping_add(0xA282_EAD8)
}

/// Appends `data` as one TFRecord.
pub fn append_record(out: &mut Vec<u8>, data: &[u8]) {
    let len = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
}

/// A whole event file: the version event, then `events`.
pub fn event_file(wall_time: f64, events: &[Event]) -> Vec<u8> {
    let mut out = vec![];
    append_record(&mut out, &version_event(wall_time).encode_to_vec());
    for e in events {
        append_record(&mut out, &e.encode_to_vec());
    }
    out
}

/// Reads the records of a TFRecord stream back, checking both CRCs; an error names the record and what is wrong.
pub fn read_records(mut bytes: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut out = vec![];
    while !bytes.is_empty() {
        let n = out.len();
        let (head, rest) = bytes.split_at_checked(12).ok_or(format!("record {n}: a truncated header"))?;
        let (len, crc) = head.split_at(8);
        if masked_crc32c(len).to_le_bytes() != crc {
            return Err(format!("record {n}: the length's CRC does not match"));
        }
        let len = u64::from_le_bytes(len.try_into().map_err(|_| format!("record {n}: a bad length"))?);
        let len = usize::try_from(len).map_err(|_| format!("record {n}: a length of {len} bytes"))?;
        let (data, rest) =
            rest.split_at_checked(len).ok_or(format!("record {n}: {len} bytes announced, fewer left"))?;
        let (crc, rest) = rest.split_at_checked(4).ok_or(format!("record {n}: the data's CRC is missing"))?;
        if masked_crc32c(data).to_le_bytes() != crc {
            return Err(format!("record {n}: the data's CRC does not match"));
        }
        out.push(data);
        bytes = rest;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_published_check_values() {
        // The CRC catalogue's check value, and the iSCSI test vectors of RFC 3720, B.4.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&ascending), 0x46DD_794E);
        let descending: Vec<u8> = (0..32).rev().collect();
        assert_eq!(crc32c(&descending), 0x113F_DB5C);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn the_masked_crc_is_the_rotated_crc_plus_tensorflows_constant() {
        // TensorFlow's crc32c::Mask, ((crc >> 15) | (crc << 17)) + 0xa282ead8, of the check value 0xE3069283.
        assert_eq!(masked_crc32c(b"123456789"), 0xC78A_B0E5);
        // An empty record's length field, eight zero bytes.
        assert_eq!(crc32c(&[0u8; 8]), 0x8C28_B28A);
    }

    #[test]
    fn a_record_is_length_crc_data_crc_and_reads_back() {
        let mut out = vec![];
        append_record(&mut out, b"hello");
        assert_eq!(out.len(), 8 + 4 + 5 + 4);
        assert_eq!(&out[..8], &5u64.to_le_bytes());
        assert_eq!(&out[8..12], &masked_crc32c(&5u64.to_le_bytes()).to_le_bytes());
        assert_eq!(&out[12..17], b"hello");
        assert_eq!(&out[17..], &masked_crc32c(b"hello").to_le_bytes());
        append_record(&mut out, b"");
        assert_eq!(read_records(&out).unwrap(), vec![&b"hello"[..], &b""[..]]);
        let mut bad = out.clone();
        bad[13] ^= 1;
        assert!(read_records(&bad).unwrap_err().contains("record 0: the data's CRC"));
        assert!(read_records(&out[..out.len() - 1]).unwrap_err().contains("record 1"));
    }

    #[test]
    fn events_decode_to_what_was_written() {
        let e = scalars_event(1.5e9, 7, &[("test/accuracy", 0.875), ("train/loss", 0.25)]);
        let file = event_file(1.5e9, std::slice::from_ref(&e));
        let records = read_records(&file).unwrap();
        assert_eq!(records.len(), 2);
        let first = Event::decode(records[0]).unwrap();
        assert_eq!(first.what, Some(event::What::FileVersion("brain.Event:2".into())));
        assert_eq!(Event::decode(records[1]).unwrap(), e);
        // The wire bytes of a scalar value: tag (field 1, string) then simple_value (field 2, fixed32).
        let v = SummaryValue { tag: "a".into(), simple_value: Some(1.0) }.encode_to_vec();
        assert_eq!(v, [0x0A, 0x01, b'a', 0x15, 0x00, 0x00, 0x80, 0x3F]);
    }
}
