//! How the store lays out a [`RoundRecord`]: the codec's encoding behind a two-byte tag (`0xFF`, layout number).
//! Records without the tag are from databases written before weight decay joined the hyper-parameters; they are
//! read in that older layout and come back with `weight_decay` 0, which is what those rounds trained with, and no
//! federated evaluation (those rounds had none). Layout 1 records are from before the loss joined the
//! hyper-parameters; they come back with cross-entropy, the only loss those rounds could train with. Layout 2
//! records are from before fine-tuning (`trainable` patterns); they come back training the whole model, which is
//! what those rounds did. Layouts 0 to 3 are from before bounded contributions and distributed differential
//! privacy joined the secure-aggregation settings; their secure rounds come back with neither (`clip_norm` unset,
//! no noise, no privacy accounting), which is what they ran. Layouts 0 to 4 are from before plain updates could
//! travel in 8 bits; they come back with `upload = "f32"`, how those rounds uploaded. Layouts 0 to 5 are from before
//! secure rounds chose their masked word's width; their secure rounds come back with `word_bits = 32`, the only
//! width they had. Each older layout is read through the next one up.
//!
//! `0xFF` can never start an untagged record: the codec writes the round id first as a variable-length integer,
//!
//! Each older layout is a file of its own, with the types it was written in and how it reads into the next layout
//! up: `layout_v5`, `layout_v4`, `layout_v3`, `layout_v2`, `layout_v1`, `layout_v0` (the untagged one).

mod layout_v0;
mod layout_v1;
mod layout_v2;
mod layout_v3;
mod layout_v4;
mod layout_v5;
#[cfg(test)]
mod tests;

use crate::coordinator::RoundRecord;
use fedge_shared::codec::{self, CodecError};
use layout_v0::RoundRecordV0;
use layout_v1::RoundRecordV1;
use layout_v2::RoundRecordV2;
use layout_v3::RoundRecordV3;
use layout_v4::RoundRecordV4;
use layout_v5::RoundRecordV5;

/// The tag's first byte.
const TAG: u8 = 0xFF;
/// The layout of [`RoundRecord`] written now.
const LAYOUT: u8 = 6;
/// The layout before the masked word's width joined the secure-aggregation settings.
const LAYOUT_V5: u8 = 5;
/// The layout before the plain update's encoding joined the hyper-parameters.
const LAYOUT_V4: u8 = 4;
/// The layout with trainable patterns but no `clip_norm`, noise or privacy accounting.
const LAYOUT_V3: u8 = 3;
/// The layout with the loss but no trainable patterns.
const LAYOUT_V2: u8 = 2;
/// The layout with weight decay but no loss.
const LAYOUT_V1: u8 = 1;

/// A round record as the store writes it.
pub fn encode(record: &RoundRecord) -> Result<Vec<u8>, CodecError> {
    let body = codec::encode(record)?;
    let mut out = Vec::with_capacity(body.len() + 2);
    out.extend_from_slice(&[TAG, LAYOUT]);
    out.extend_from_slice(&body);
    Ok(out)
}

/// A stored round record, in either layout.
pub fn decode(bytes: &[u8], limit: usize) -> Result<RoundRecord, CodecError> {
    match bytes {
        [TAG, LAYOUT, body @ ..] => codec::decode(body, limit),
        [TAG, LAYOUT_V5, body @ ..] => codec::decode::<RoundRecordV5>(body, limit).map(RoundRecord::from),
        [TAG, LAYOUT_V4, body @ ..] => codec::decode::<RoundRecordV4>(body, limit).map(RoundRecord::from),
        [TAG, LAYOUT_V3, body @ ..] => codec::decode::<RoundRecordV3>(body, limit).map(RoundRecord::from),
        [TAG, LAYOUT_V2, body @ ..] => codec::decode::<RoundRecordV2>(body, limit).map(RoundRecord::from),
        [TAG, LAYOUT_V1, body @ ..] => {
            codec::decode::<RoundRecordV1>(body, limit).map(|r| RoundRecord::from(RoundRecordV2::from(r)))
        }
        [TAG, other, ..] => Err(CodecError::Malformed(format!("unknown round record layout {other}"))),
        // Layout 0 is read through layout 1, which adds only what layout 0 lacked.
        _ => codec::decode::<RoundRecordV0>(bytes, limit)
            .map(|r| RoundRecord::from(RoundRecordV2::from(RoundRecordV1::from(r)))),
    }
}
