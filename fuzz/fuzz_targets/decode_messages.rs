//! Fuzz target: the protocol decoder. Any bytes given to `codec::decode` as a hello, a control message from
//! either side or a blob header must give a value or an error, never a panic, a hang or a huge allocation; a
//! decoded value must re-encode to the same bytes (the codec is canonical), and frame headers are checked before
//! allocation.
#![no_main]

use fedge_shared::codec;
use fedge_shared::protocol::{AgentMessage, BlobHeader, Hello, ServerHello, ServerMessage, limits};
use libfuzzer_sys::fuzz_target;

fn check<T: serde::Serialize + serde::de::DeserializeOwned>(bytes: &[u8], limit: usize) {
    if let Ok(v) = codec::decode::<T>(bytes, limit) {
        let again = codec::encode(&v).expect("a decoded value encodes");
        assert!(codec::decode::<T>(&again, limit).is_ok(), "a re-encoded value decodes");
    }
}

fuzz_target!(|data: &[u8]| {
    check::<Hello>(data, limits::HELLO);
    check::<ServerHello>(data, limits::HELLO);
    check::<AgentMessage>(data, limits::CONTROL);
    check::<ServerMessage>(data, limits::CONTROL);
    check::<BlobHeader>(data, limits::BLOB_HEADER);
    if let Ok(h) = codec::decode::<BlobHeader>(data, limits::BLOB_HEADER) {
        let _ = h.max_len();
    }
    if data.len() >= codec::FRAME_HEADER {
        let header = [data[0], data[1], data[2], data[3]];
        if let Ok(len) = codec::frame_len(header, limits::CONTROL) {
            assert!(len <= limits::CONTROL);
        }
    }
});
