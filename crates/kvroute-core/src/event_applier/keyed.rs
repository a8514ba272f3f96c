//! Batches whose block hashes already are the router's keys: a virtual replay's simulated engines,
//! in the router's own process, can key their prefix caches with the router's keyer, so their
//! stores and evictions name router keys. They are applied as engine keying applies hashes (into
//! the index as they are, duplicates counted per key), with no engine map: with `Tokens` keying
//! that map would take each hash to itself.
//!
//! The index ends as the token path leaves it for the same blocks (its keys are the router keys of
//! the same tokens, its duplicate counts the same per key); only the engine map stays empty. A
//! worker is fed one way or the other, never both (a token-path store names its parent by the
//! engine map, which keyed batches do not fill).

use super::{rank_state, ApplyOutcome, EventApplier};
use crate::events::{DirectError, DIRECT_CLEARED, DIRECT_REMOVED, DIRECT_STORED};
use crate::tiers::{self, Placement};

/// One event of a keyed batch.
#[derive(Clone, Copy, Debug)]
pub enum KeyedEvent<'a> {
    Stored {
        keys: &'a [u64],
        medium: Option<&'a str>,
    },
    Removed {
        keys: &'a [u64],
        medium: Option<&'a str>,
    },
    Cleared,
}

/// Reads a keyed batch in its in-process form: `ops` per event `[0 (stored) | 1 (removed),
/// n_keys, medium]` or `[2]` (cleared), medium 0 absent, 1 `"GPU"`, 2 `"CPU"`; `keys` the events'
/// keys in order.
pub fn decode_keyed<'a>(ops: &[u32], keys: &'a [u64]) -> Result<Vec<KeyedEvent<'a>>, DirectError> {
    let mut out = Vec::new();
    let (mut o, mut k) = (0usize, 0usize);
    while o < ops.len() {
        let kind = ops[o];
        if kind == DIRECT_CLEARED {
            out.push(KeyedEvent::Cleared);
            o += 1;
            continue;
        }
        let w = ops.get(o..o + 3).ok_or("truncated ops")?;
        o += 3;
        let n = w[1] as usize;
        let these = keys.get(k..k + n).ok_or("keys shorter than ops say")?;
        k += n;
        let medium = match w[2] {
            0 => None,
            1 => Some("GPU"),
            2 => Some("CPU"),
            _ => return Err("unknown medium code"),
        };
        out.push(match kind {
            DIRECT_STORED => KeyedEvent::Stored {
                keys: these,
                medium,
            },
            DIRECT_REMOVED => KeyedEvent::Removed {
                keys: these,
                medium,
            },
            _ => return Err("unknown event kind"),
        });
    }
    if k != keys.len() {
        return Err("keys longer than ops say");
    }
    Ok(out)
}

impl EventApplier {
    /// Applies a keyed batch (module docs) for `(worker_id, dp_rank)`.
    pub fn apply_keyed(
        &mut self,
        worker_id: &str,
        dp_rank: u32,
        events: &[KeyedEvent<'_>],
    ) -> ApplyOutcome {
        let core = &mut self.core;
        core.c.batches += 1;
        let mut out = ApplyOutcome {
            events: events.len().try_into().unwrap_or(u32::MAX),
            dp_rank,
            ..ApplyOutcome::default()
        };
        if events.is_empty() {
            return out;
        }
        let rs = rank_state(&mut self.workers, worker_id, dp_rank);
        for ev in events {
            match *ev {
                KeyedEvent::Stored { keys, medium } => {
                    core.c.events_stored += 1;
                    match tiers::classify(medium, None) {
                        Placement::Local(t) => core.store_keys(
                            worker_id,
                            dp_rank,
                            rs,
                            Some(t.name()),
                            None,
                            keys,
                            &mut out,
                        ),
                        p => core
                            .c
                            .skip(p.skip_reason().unwrap_or("unknown_medium"), &mut out),
                    }
                }
                KeyedEvent::Removed { keys, medium } => {
                    core.c.events_removed += 1;
                    match tiers::classify(medium, None) {
                        Placement::Local(t) => {
                            core.remove_keys(worker_id, dp_rank, rs, Some(t.name()), keys, &mut out)
                        }
                        p => core
                            .c
                            .skip(p.skip_reason().unwrap_or("unknown_medium"), &mut out),
                    }
                }
                KeyedEvent::Cleared => {
                    core.c.events_cleared += 1;
                    core.index.clear_worker(worker_id, Some(dp_rank));
                    rs.clear_map();
                    out.cleared = out.cleared.saturating_add(1);
                }
            }
        }
        out
    }
}
