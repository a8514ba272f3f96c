//! The in-process form of a KV event batch: what a simulated engine living in the router's own
//! process (the virtual-time replay) hands over instead of msgpack bytes. Three flat arrays, read
//! in order, no decoding of a wire format:
//!
//! - `ops` (`u32` words), per event:
//!   - `BlockStored`: `[0, n_hashes, has_parent (0/1), n_tokens, block_size, medium]`;
//!   - `BlockRemoved`: `[1, n_hashes, medium]`;
//!   - `AllBlocksCleared`: `[2]`;
//!
//!   `medium`: 0 absent, 1 `"GPU"`, 2 `"CPU"`.
//! - `hashes` (`u64`): per stored event its parent hash (if any) then its block hashes; per
//!   removed event its block hashes.
//! - `tokens` (`u32`): per stored event its token ids.
//!
//! It holds the events the engine's wire batch would carry for the same step, minus the fields
//! the in-process engine never sets (LoRA, extra keys, locality...: such a batch goes by the wire
//! form), so [`decode_direct`] yields the very [`KvEventBatch`] that decoding the wire bytes
//! gives, and applying it leaves the router in the same state.

use super::{BlockHashes, BlockRemoved, BlockStored, KvEvent, KvEventBatch, Medium};

/// Event kinds of `ops`.
pub const DIRECT_STORED: u32 = 0;
pub const DIRECT_REMOVED: u32 = 1;
pub const DIRECT_CLEARED: u32 = 2;

/// Why a direct batch is not well formed (the arrays disagree with `ops`).
pub type DirectError = &'static str;

fn medium(code: u32) -> Result<Option<Medium>, DirectError> {
    match code {
        0 => Ok(None),
        1 => Ok(Some(Medium::Gpu)),
        2 => Ok(Some(Medium::Cpu)),
        _ => Err("unknown medium code"),
    }
}

/// Reads `ops`/`hashes`/`tokens` (module docs) into the batch of `data_parallel_rank`.
pub fn decode_direct(
    ops: &[u32],
    hashes: &[u64],
    tokens: &[u32],
    data_parallel_rank: u32,
) -> Result<KvEventBatch, DirectError> {
    let mut events = Vec::new();
    let (mut o, mut h, mut t) = (0usize, 0usize, 0usize);
    let mut take_hashes = |n: usize| -> Result<Vec<u64>, DirectError> {
        let s = hashes.get(h..h + n).ok_or("hashes shorter than ops say")?;
        h += n;
        Ok(s.to_vec())
    };
    while o < ops.len() {
        match ops[o] {
            DIRECT_STORED => {
                let w = ops.get(o..o + 6).ok_or("truncated ops")?;
                o += 6;
                let (n, has_parent, nt) = (w[1] as usize, w[2], w[3] as usize);
                let parent = match has_parent {
                    0 => None,
                    1 => Some(super::BlockHash::Int(take_hashes(1)?[0])),
                    _ => return Err("has_parent must be 0 or 1"),
                };
                let block_hashes = BlockHashes::from_keys(take_hashes(n)?);
                let token_ids = tokens.get(t..t + nt).ok_or("tokens shorter than ops say")?;
                t += nt;
                events.push(KvEvent::BlockStored(BlockStored {
                    block_hashes,
                    parent_block_hash: parent,
                    token_ids: token_ids.to_vec(),
                    block_size: w[4],
                    medium: medium(w[5])?,
                    ..BlockStored::default()
                }));
            }
            DIRECT_REMOVED => {
                let w = ops.get(o..o + 3).ok_or("truncated ops")?;
                o += 3;
                events.push(KvEvent::BlockRemoved(BlockRemoved {
                    block_hashes: BlockHashes::from_keys(take_hashes(w[1] as usize)?),
                    medium: medium(w[2])?,
                    ..BlockRemoved::default()
                }));
            }
            DIRECT_CLEARED => {
                o += 1;
                events.push(KvEvent::AllBlocksCleared);
            }
            _ => return Err("unknown event kind"),
        }
    }
    if h != hashes.len() || t != tokens.len() {
        return Err("arrays longer than ops say");
    }
    Ok(KvEventBatch {
        ts: 0.0,
        events,
        data_parallel_rank: Some(i64::from(data_parallel_rank)),
        skipped: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{decode_batch, encode_batch, WireFormat};

    #[test]
    fn same_batch_as_the_wire_form() {
        let ops = [
            DIRECT_STORED,
            2,
            1,
            4,
            2,
            1,
            DIRECT_REMOVED,
            1,
            1,
            DIRECT_STORED,
            1,
            0,
            2,
            2,
            0,
            DIRECT_CLEARED,
        ];
        let hashes = [7u64, 8, 9, 5, 11];
        let tokens = [1u32, 2, 3, 4, 5, 6];
        let direct = decode_direct(&ops, &hashes, &tokens, 3).unwrap();
        let wire = decode_batch(&encode_batch(&direct, WireFormat::CURRENT)).unwrap();
        assert_eq!(direct.events, wire.events);
        assert_eq!(wire.data_parallel_rank, Some(3));
    }

    #[test]
    fn inconsistent_arrays_are_refused() {
        assert!(decode_direct(&[DIRECT_STORED, 2, 0, 0, 16, 1], &[1], &[], 0).is_err());
        assert!(decode_direct(&[DIRECT_REMOVED, 1, 1], &[1, 2], &[], 0).is_err());
        assert!(decode_direct(&[DIRECT_STORED, 0, 0, 4, 16], &[], &[], 0).is_err());
        assert!(decode_direct(&[9], &[], &[], 0).is_err());
        assert!(decode_direct(&[DIRECT_REMOVED, 0, 7], &[], &[], 0).is_err());
    }
}
