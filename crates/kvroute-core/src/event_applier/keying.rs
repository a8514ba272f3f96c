//! The keyings ([`Keying`]): how the blocks of a `BlockStored` or `BlockRemoved` become the
//! index's keys. `Engine` keying (and keyed batches) store and remove the hashes as they are,
//! counting duplicate copies; `Tokens` keying computes router keys from the tokens and resolves
//! engine hashes through the engine map.

use std::collections::hash_map::Entry;
use std::fmt;
use std::str::FromStr;

use super::{ApplyOutcome, Core, RankState};
use crate::error::{Error, Result};
use crate::events::msgpack::Value;
use crate::events::{BlockRemoved, BlockStored};
use crate::extra_keys::{BlockExtraKeys, BlockMm, LoraKey, MmBlockKey};

/// How blocks are keyed in the index; see the [module documentation](super).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Keying {
    /// The router's own chained keys over token ids (needs no worker hash settings).
    #[default]
    Tokens,
    /// vLLM's block hashes, as the events carry them.
    Engine,
}

impl Keying {
    pub fn as_str(self) -> &'static str {
        match self {
            Keying::Tokens => "tokens",
            Keying::Engine => "engine",
        }
    }
}

impl fmt::Display for Keying {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Keying {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "tokens" => Ok(Keying::Tokens),
            "engine" => Ok(Keying::Engine),
            _ => Err(Error::config(format!(
                "unknown keying {s:?} (expected \"tokens\" or \"engine\")"
            ))),
        }
    }
}

impl Core {
    /// Stores `keys` as they are (engine keying, or keys already the router's): duplicates
    /// counted in `rs.copies`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn store_keys(
        &mut self,
        w: &str,
        rank: u32,
        rs: &mut RankState,
        medium: Option<&str>,
        parent: Option<u64>,
        keys: &[u64],
        out: &mut ApplyOutcome,
    ) {
        // Keys held before are duplicates (rare: noted here, counted below). After a bypass, a
        // key not held may have a stale count (its holding was removed behind our back): dropped
        // below too.
        let heal = self.bypassed && !rs.copies.is_empty();
        let pending = &mut self.pending;
        pending.clear();
        let stored = self
            .index
            .apply_stored_with(w, rank, medium, parent, keys, |i, held| {
                if held || heal {
                    pending.push((keys[i], held));
                }
            });
        match stored {
            Ok(tier) => {
                for &(k, held) in &self.pending {
                    if held {
                        rs.copies.add(k, tier, &mut self.c);
                    } else {
                        rs.copies.forget(k, 1 << tier);
                    }
                }
                self.count_stored(keys.len(), out);
            }
            Err(_) => self.c.skip("indexer_rejected", out),
        }
    }

    /// Removes `keys` as they are (engine keying, or keys already the router's): a duplicated
    /// key loses one copy and stays.
    pub(super) fn remove_keys(
        &mut self,
        w: &str,
        rank: u32,
        rs: &mut RankState,
        medium: Option<&str>,
        keys: &[u64],
        out: &mut ApplyOutcome,
    ) {
        // A tier the index never saw holds nothing: no copies.
        let tier = self.index.tier_id(medium);
        let left: &[u64] = match tier {
            Some(t) if !rs.copies.is_empty() => {
                self.keys.clear();
                for &k in keys {
                    if !rs.copies.take(k, t, &mut self.c) {
                        self.keys.push(k);
                    }
                }
                &self.keys
            }
            _ => keys,
        };
        if !left.is_empty() {
            self.index.apply_removed(w, rank, medium, left);
        }
        self.c.blocks_removed += keys.len() as u64;
        out.removed = out
            .removed
            .saturating_add(keys.len().try_into().unwrap_or(u32::MAX));
    }

    /// `Tokens` keying, an event with tokens (block size already checked).
    pub(super) fn store_tokens(
        &mut self,
        w: &str,
        rank: u32,
        rs: &mut RankState,
        e: &BlockStored,
        medium: Option<&str>,
        out: &mut ApplyOutcome,
    ) {
        let parent = match &e.parent_block_hash {
            None => None,
            Some(p) => match rs.map.get(&p.to_u64()) {
                Some(entry) => Some(entry.key),
                None => {
                    self.c.unresolved_parents += 1;
                    return self.c.skip("unresolved_parent", out);
                }
            },
        };
        if e.lora_id.is_some() && e.lora_name.is_none() {
            return self.c.skip("lora_without_name", out);
        }
        let lora = e
            .lora_name
            .as_deref()
            .map(|name| LoraKey { name, path: "" });
        let bs = self.cfg.block_size as usize;
        let blocks = e.token_ids.chunks_exact(bs);
        self.keys.clear();
        let mut prev = parent;
        match e
            .extra_keys
            .as_deref()
            .filter(|k| k.iter().any(Option::is_some))
        {
            None => {
                let extra = BlockExtraKeys {
                    lora,
                    ..BlockExtraKeys::NONE
                };
                for block in blocks {
                    let k = self.keyer.block_key(prev, block, &extra);
                    self.keys.push(k);
                    prev = Some(k);
                }
            }
            Some(ek) => {
                let parsed = match parse_extras(e, ek) {
                    Ok(p) => p,
                    Err(reason) => return self.c.skip(reason, out),
                };
                for (block, (mm, salt, embeds)) in blocks.zip(&parsed) {
                    let extra = BlockExtraKeys {
                        lora,
                        mm: if mm.is_empty() {
                            BlockMm::None
                        } else {
                            BlockMm::Keys(mm)
                        },
                        cache_salt: *salt,
                        prompt_embeds: *embeds,
                    };
                    let k = self.keyer.block_key(prev, block, &extra);
                    self.keys.push(k);
                    prev = Some(k);
                }
            }
        }
        if self
            .index
            .apply_stored(w, rank, medium, parent, &self.keys)
            .is_err()
        {
            return self.c.skip("indexer_rejected", out);
        }
        let tier = self.index.tier_id(medium).unwrap_or(0);
        let max = self.cfg.max_engine_map_entries;
        self.drop.clear();
        for (&h, &k) in e.block_hashes.keys().iter().zip(&self.keys) {
            rs.insert(h, k, tier, max, &mut self.c, &mut self.drop);
        }
        self.count_stored(self.keys.len(), out);
        self.drop_keys(w, rank);
    }

    /// `Tokens` keying, a token-less event: each hash through the engine map.
    pub(super) fn store_by_hash(
        &mut self,
        w: &str,
        rank: u32,
        rs: &mut RankState,
        e: &BlockStored,
        medium: Option<&str>,
        out: &mut ApplyOutcome,
    ) {
        self.keys.clear();
        for h in e.block_hashes.keys() {
            match rs.map.get(h) {
                Some(entry) => self.keys.push(entry.key),
                None => self.c.unresolved_hashes += 1,
            }
        }
        if self.keys.is_empty() {
            if !e.block_hashes.is_empty() {
                self.c.skip("unknown_block_hashes", out);
            }
            return;
        }
        if self
            .index
            .apply_stored(w, rank, medium, None, &self.keys)
            .is_err()
        {
            return self.c.skip("indexer_rejected", out);
        }
        let tier = self.index.tier_id(medium).unwrap_or(0);
        for h in e.block_hashes.keys() {
            rs.touch(*h, tier, &mut self.c);
        }
        rs.maybe_compact();
        self.count_stored(self.keys.len(), out);
    }

    /// `Tokens` keying, a `BlockRemoved`: each hash through the engine map.
    pub(super) fn remove_by_hash(
        &mut self,
        w: &str,
        rank: u32,
        rs: &mut RankState,
        e: &BlockRemoved,
        medium: Option<&str>,
        out: &mut ApplyOutcome,
    ) {
        // A tier the index never saw holds
        // nothing: no copies, the bits stay as they are.
        let tier = self.index.tier_id(medium);
        let bit = tier.map_or(0, |t| 1u8 << t);
        self.keys.clear();
        let mut resolved = 0usize;
        for h in e.block_hashes.keys() {
            let Entry::Occupied(mut o) = rs.map.entry(*h) else {
                self.c.unresolved_hashes += 1;
                continue;
            };
            resolved += 1;
            if let Some(t) = tier.filter(|_| o.get().tiers & bit != 0) {
                if rs.copies.take(*h, t, &mut self.c) {
                    continue;
                }
            }
            self.keys.push(o.get().key);
            o.get_mut().tiers &= !bit;
            if o.get().tiers == 0 {
                o.remove();
            }
        }
        rs.maybe_compact();
        if resolved == 0 && !e.block_hashes.is_empty() {
            return self.c.skip("unknown_block_hashes", out);
        }
        if !self.keys.is_empty() {
            self.index.apply_removed(w, rank, medium, &self.keys);
        }
        self.c.blocks_removed += resolved as u64;
        out.removed = out
            .removed
            .saturating_add(resolved.try_into().unwrap_or(u32::MAX));
    }
}

/// Per-block extra keys of a `BlockStored` for router keys: `(mm keys, cache salt)` per block.
type ParsedExtras<'e> = Vec<(Vec<MmBlockKey>, Option<&'e str>, Option<&'e [u8; 32]>)>;

/// Reads the untagged per-block extra keys vLLM publishes (docs/vllm-kv-events.md): the LoRA
/// name (also in `lora_name`), `[identifier, offset]` multimodal pairs, the cache salt (first
/// block of a request only), a prompt-embeds digest (bytes).
fn parse_extras<'e>(
    e: &'e BlockStored,
    keys: &'e [Option<Vec<Value>>],
) -> std::result::Result<ParsedExtras<'e>, &'static str> {
    if keys.len() != e.block_hashes.len() {
        return Err("extra_keys_length");
    }
    let root = e.parent_block_hash.is_none();
    let lora = e.lora_name.as_deref();
    let mut out = Vec::with_capacity(keys.len());
    for (i, items) in keys.iter().enumerate() {
        let Some(items) = items else {
            out.push((Vec::new(), None, None));
            continue;
        };
        let mut rest = &items[..];
        // A prompt-embeds digest is the block's last key (32 bytes: sha256).
        let mut embeds = None;
        if let Some(Value::Bin(b)) = rest.last() {
            embeds =
                Some(<&[u8; 32]>::try_from(b.as_slice()).map_err(|_| "unrecognized_extra_keys")?);
            rest = &rest[..rest.len() - 1];
        }
        if let (Some(name), Some(Value::Str(s))) = (lora, rest.first()) {
            if s == name {
                rest = &rest[1..];
            }
        }
        let mut mm = Vec::new();
        let mut salt = None;
        for (j, v) in rest.iter().enumerate() {
            match v {
                Value::Array(pair) => match pair.as_slice() {
                    [Value::Str(id), off] => {
                        match off.as_i128().and_then(|o| i64::try_from(o).ok()) {
                            Some(offset) => mm.push(MmBlockKey {
                                identifier: id.clone(),
                                offset,
                            }),
                            None => return Err("unrecognized_extra_keys"),
                        }
                    }
                    _ => return Err("unrecognized_extra_keys"),
                },
                Value::Str(s) if root && i == 0 && j + 1 == rest.len() => salt = Some(s.as_str()),
                Value::Str(_) => return Err("mm_without_offset"),
                _ => return Err("unrecognized_extra_keys"),
            }
        }
        out.push((mm, salt, embeds));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::Keying;
    use crate::event_applier::{EventApplier, EventApplierConfig};

    #[test]
    fn keying_parses() {
        assert_eq!("engine".parse::<Keying>().unwrap(), Keying::Engine);
        assert!("x".parse::<Keying>().is_err());
        assert!(EventApplier::new(EventApplierConfig::new(0)).is_err());
    }
}
