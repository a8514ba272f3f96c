//! `EventApplier` and KV cache tiers: every medium vLLM and its connectors send lands on its tier
//! (`GPU`, `CPU`, `DISK`) in both keyings; unknown media and non-local blocks are counted and
//! dropped, never taken for the GPU.

use kvroute_core::block_keys::RouterKeyer;
use kvroute_core::event_applier::{EventApplier, EventApplierConfig, Keying};
use kvroute_core::events::{
    encode_batch, BlockHashes, BlockRemoved, BlockStored, KvEvent, KvEventBatch, Medium, WireFormat,
};
use kvroute_core::extra_keys::ExtraKeys;
use kvroute_core::indexer::Matches;

const BS: u32 = 4;

fn applier(keying: Keying) -> EventApplier {
    let mut cfg = EventApplierConfig::new(BS);
    cfg.keying = keying;
    EventApplier::new(cfg).unwrap()
}

fn batch(events: Vec<KvEvent>) -> Vec<u8> {
    encode_batch(
        &KvEventBatch {
            ts: 1.0,
            events,
            data_parallel_rank: None,
            skipped: vec![],
        },
        WireFormat::CURRENT,
    )
}

fn stored(
    hashes: &[u64],
    parent: Option<u64>,
    tokens: &[u32],
    medium: &str,
    loc: Option<&str>,
) -> KvEvent {
    KvEvent::BlockStored(BlockStored {
        block_hashes: BlockHashes::from_keys(hashes.to_vec()),
        parent_block_hash: parent.map(kvroute_core::events::BlockHash::Int),
        token_ids: tokens.to_vec(),
        block_size: BS,
        medium: Some(Medium::parse(medium)),
        locality: loc.map(str::to_owned),
        ..Default::default()
    })
}

fn removed(hashes: &[u64], medium: &str) -> KvEvent {
    KvEvent::BlockRemoved(BlockRemoved {
        block_hashes: BlockHashes::from_keys(hashes.to_vec()),
        medium: Some(Medium::parse(medium)),
        ..Default::default()
    })
}

/// `tier name -> blocks` of the worker's match for `q`.
fn tiers_of(ap: &EventApplier, q: &[u64]) -> Vec<(String, u32)> {
    let mut m = Matches::new();
    ap.indexer().find_matches(q, &mut m);
    let Some(e) = m.entries().first() else {
        return vec![];
    };
    (0..)
        .map_while(|t| ap.indexer().tier_name(t).map(|n| (t, n.to_owned())))
        .filter(|&(t, _)| e.tier_blocks[t] > 0)
        .map(|(t, n)| (n, e.tier_blocks[t]))
        .collect()
}

#[test]
fn media_map_to_three_tiers_in_both_keyings() {
    let tokens: Vec<u32> = (0..BS * 3).collect();
    let q = {
        let mut k = vec![];
        RouterKeyer::new(BS as usize)
            .unwrap()
            .keys(&tokens, &ExtraKeys::default(), &mut k);
        k
    };
    for keying in [Keying::Tokens, Keying::Engine] {
        for (medium, tier) in [
            ("GPU", "GPU"),
            ("cpu", "CPU"),
            ("CPU_PINNED", "CPU"),
            ("CPU_TIER1", "CPU"),
            ("CPU", "CPU"),
            ("CPU_TIER2", "DISK"),
            ("STORAGE", "DISK"),
            ("Disk", "DISK"),
        ] {
            let mut ap = applier(keying);
            let hashes: Vec<u64> = match keying {
                Keying::Engine => q.clone(),
                Keying::Tokens => vec![11, 12, 13],
            };
            let p = batch(vec![stored(&hashes, None, &tokens, medium, Some("LOCAL"))]);
            ap.apply_payload("w", &p).unwrap();
            assert_eq!(
                tiers_of(&ap, &q),
                vec![(tier.to_owned(), 3)],
                "{keying:?} {medium}"
            );
            // Removal with another spelling of the same tier finds the blocks.
            let alt = if tier == "CPU" { "CPU_PINNED" } else { medium };
            ap.apply_payload("w", &batch(vec![removed(&hashes, alt)]))
                .unwrap();
            assert_eq!(tiers_of(&ap, &q), vec![], "{keying:?} {medium} removed");
            assert_eq!(ap.stats().skipped_events, 0);
        }
    }
}

#[test]
fn unknown_and_remote_media_are_counted_and_dropped() {
    let tokens: Vec<u32> = (0..BS * 2).collect();
    for keying in [Keying::Tokens, Keying::Engine] {
        let mut ap = applier(keying);
        let p = batch(vec![
            stored(&[1, 2], None, &tokens, "TPU_HBM", None),
            stored(&[1, 2], None, &tokens, "STORAGE", Some("REMOTE")),
            stored(&[1, 2], None, &tokens, "OBJ", None),
            removed(&[1], "MYSTERY"),
        ]);
        let out = ap.apply_payload("w", &p).unwrap();
        assert_eq!(out.skipped, 4);
        assert_eq!(out.stored, 0);
        let s = ap.stats();
        assert_eq!(s.skipped_reasons.get("unknown_medium"), Some(&2));
        assert_eq!(s.skipped_reasons.get("remote_medium"), Some(&2));
        assert_eq!(ap.indexer().stats().pairs, 0, "{keying:?}: nothing indexed");
        // The worker still serves its GPU events afterwards.
        ap.apply_payload(
            "w",
            &batch(vec![stored(&[1, 2], None, &tokens, "GPU", None)]),
        )
        .unwrap();
        assert_eq!(ap.indexer().stats().pairs, 2);
    }
}

#[test]
fn connector_chunks_of_another_size_are_skipped_without_flagging_the_worker() {
    // LMCache's connector: one BlockStored per 256-token chunk, on the CPU tier.
    let tokens: Vec<u32> = (0..BS * 4).collect();
    for keying in [Keying::Tokens, Keying::Engine] {
        let mut ap = applier(keying);
        let chunk = KvEvent::BlockStored(BlockStored {
            block_hashes: BlockHashes::from_keys(vec![77]),
            token_ids: tokens.clone(),
            block_size: BS * 4,
            medium: Some(Medium::parse("cpu")),
            ..Default::default()
        });
        let out = ap.apply_payload("w", &batch(vec![chunk])).unwrap();
        assert_eq!(out.skipped, 1);
        let s = ap.stats();
        assert_eq!(
            s.skipped_reasons.get("tier_block_size"),
            Some(&1),
            "{keying:?}"
        );
        assert_eq!(s.block_size_mismatches, 0);
        assert!(s.workers.iter().all(|w| !w.block_size_mismatch));
    }
}
