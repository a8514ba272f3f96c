//! Scoring, choice, bookkeeping and speculation of the [`Scheduler`].

use super::*;
use crate::events::{encode_batch, BlockHash, BlockHashes, BlockStored, KvEvent, KvEventBatch};

const BS: u32 = 4;

fn sched(f: impl FnOnce(&mut SchedulerConfig)) -> Scheduler {
    let mut cfg = SchedulerConfig::new(EventApplierConfig::new(BS));
    cfg.seed = 42;
    // The cost arithmetic below is written with w = 1 (the default, 16, only scales it).
    cfg.overlap_weight = 1.0;
    f(&mut cfg);
    Scheduler::new(cfg).unwrap()
}

fn workers(s: &mut Scheduler, n: usize) -> Vec<TargetId> {
    (0..n)
        .map(|i| s.upsert_worker(&format!("w{i}"), &[0], Role::Aggregated)[0])
        .collect()
}

/// `blocks` full blocks of tokens starting at `start` (distinct `start`s: distinct prompts).
fn prompt(start: u32, blocks: u32) -> Vec<u32> {
    (start..start + blocks * BS).collect()
}

fn keys(tokens: &[u32]) -> Vec<u64> {
    let mut out = Vec::new();
    RouterKeyer::new(BS as usize)
        .unwrap()
        .keys(tokens, &ExtraKeys::default(), &mut out);
    out
}

/// Stores the first `blocks` blocks of `tokens` on `worker` directly in the index.
fn hold(s: &mut Scheduler, worker: &str, tokens: &[u32], blocks: usize) {
    let k = keys(tokens);
    s.applier
        .indexer_mut()
        .apply_stored(worker, 0, None, None, &k[..blocks])
        .unwrap();
}

struct Req {
    tokens: Vec<u32>,
    id: String,
    mode: Mode,
    dry_run: bool,
    exclude: Vec<TargetId>,
    roles: u8,
    max_tokens: Option<u32>,
}

fn req(tokens: Vec<u32>, id: &str) -> Req {
    Req {
        tokens,
        id: id.into(),
        mode: Mode::Kv,
        dry_run: false,
        exclude: vec![],
        roles: 0,
        max_tokens: None,
    }
}

fn route(s: &mut Scheduler, r: &Req, now: f64) -> Option<Decision> {
    let extra = ExtraKeys::default();
    let rr = RouteRequest {
        tokens: &r.tokens,
        extra: &extra,
        request_id: &r.id,
        max_tokens: r.max_tokens,
        mode: r.mode,
        explain: true,
        dry_run: r.dry_run,
        roles: r.roles,
        exclude: &r.exclude,
    };
    let mut d = Decision::default();
    s.route(&rr, now, &mut d).then_some(d)
}

fn cand(d: &Decision, t: TargetId) -> CandidateScore {
    *d.candidates.iter().find(|c| c.target == t).unwrap()
}

#[test]
fn cost_is_weighted_prefill_plus_decode_and_explain_sorts() {
    let mut s = sched(|c| {
        c.overlap_weight = 2.0;
        c.sequence_weight = 0.0;
    });
    let t = workers(&mut s, 3);
    let p = prompt(0, 5);
    hold(&mut s, "w0", &p, 3);
    hold(&mut s, "w1", &p, 1);
    let d = route(&mut s, &req(p.clone(), "a"), 0.0).unwrap();
    assert_eq!(d.target, t[0]);
    assert_eq!(
        (d.overlap_blocks, d.prompt_blocks, d.best_overlap_blocks),
        (3, 5, 3)
    );
    // Nothing active anywhere: decode = its 5 prompt blocks + 1 of its own everywhere.
    let costs: Vec<f64> = d.candidates.iter().map(|c| c.cost).collect();
    assert_eq!(
        costs,
        vec![2.0 * 2.0 + 6.0, 2.0 * 4.0 + 6.0, 2.0 * 5.0 + 6.0]
    );
    assert_eq!(d.candidates[0].prefill_blocks, 2);
    assert_eq!(d.candidates[0].decode_blocks, 6);
    assert!(d.blind, "no events were applied for any of them");

    // The same prompt again: w0's speculative credit covers the rest of it, and its active
    // blocks are shared, so only the new request's own block is added there:
    // 2 × (0 + 2 queued) + (6 active + 1) = 11 < w1's 2 × 4 + 6 = 14.
    let d = route(&mut s, &req(p.clone(), "b"), 1.0).unwrap();
    let c0 = cand(&d, t[0]);
    assert_eq!((c0.overlap_blocks, c0.speculative_blocks), (5, 2));
    assert_eq!((c0.queued_prefill_blocks, c0.decode_blocks), (2, 7));
    assert_eq!(c0.cost, 11.0);
    assert_eq!(cand(&d, t[1]).cost, 14.0);
    assert_eq!(d.target, t[0]);
    // A partial trailing block is prefill work too.
    let mut p2 = prompt(0, 5);
    p2.push(7);
    let d = route(
        &mut s,
        &Req {
            dry_run: true,
            ..req(p2, "c")
        },
        2.0,
    )
    .unwrap();
    assert_eq!(d.prompt_blocks, 6);
    s.book.check().unwrap();
}

#[test]
fn ties_are_broken_at_random_not_to_the_first_worker() {
    let mut s = sched(|_| {});
    let t = workers(&mut s, 4);
    let mut counts = [0u32; 4];
    for i in 0..4000 {
        // Distinct prompts, nothing cached, no load (each finishes before the next).
        let d = route(&mut s, &req(prompt(i * 100, 3), &format!("r{i}")), i as f64).unwrap();
        s.finish(&format!("r{i}"), 0.0);
        counts[t.iter().position(|&x| x == d.target).unwrap()] += 1;
    }
    for c in counts {
        assert!((850..1150).contains(&c), "{counts:?}");
    }
}

#[test]
fn load_term_spreads_a_shared_prefix_and_returns_after_finish() {
    let mut s = sched(|c| c.speculative_ttl_ms = 0.0);
    let t = workers(&mut s, 4);
    // A 16-block system prompt held by w0, then a distinct 4-block user turn per request.
    let turn = |i: u32| {
        let mut p = prompt(0, 16);
        p.extend(prompt(10_000 + i * 100, 4));
        p
    };
    hold(&mut s, "w0", &turn(0), 16);
    let mut chosen = vec![];
    for i in 0..8 {
        let d = route(&mut s, &req(turn(i), &format!("r{i}")), 0.0).unwrap();
        s.start(
            &format!("r{i}"),
            d.target,
            d.prompt_blocks,
            d.overlap_blocks,
            None,
        );
        chosen.push(d.target);
    }
    assert_eq!(chosen[0], t[0]);
    let on_w0 = chosen.iter().filter(|&&x| x == t[0]).count();
    assert!((2..8).contains(&on_w0), "{chosen:?}");
    let distinct: BTreeSet<_> = chosen.iter().collect();
    assert!(distinct.len() >= 3, "{chosen:?}");
    s.book.check().unwrap();
    for i in 0..8 {
        assert!(s.finish(&format!("r{i}"), 0.0));
    }
    for tid in &t {
        assert_eq!(s.load(*tid), TargetLoad::default());
    }
    let d = route(&mut s, &req(turn(99), "again"), 1.0).unwrap();
    assert_eq!(d.target, t[0], "affinity again once the load is gone");
    s.book.check().unwrap();
}

#[test]
fn sequence_weight_prices_context_per_request() {
    let mut s = sched(|c| c.sequence_weight = 0.5);
    let t = workers(&mut s, 2);
    let p = prompt(0, 8);
    let d = route(&mut s, &req(p.clone(), "a"), 0.0).unwrap();
    s.start("a", d.target, d.prompt_blocks, d.overlap_blocks, None);
    let (on, off) = if d.target == t[0] {
        (t[0], t[1])
    } else {
        (t[1], t[0])
    };
    let d = route(
        &mut s,
        &Req {
            dry_run: true,
            ..req(p, "b")
        },
        0.0,
    )
    .unwrap();
    // On a's target: prefill 0 (speculative), queued 8, decode 9 + 1 (the shared prompt and
    // one own block each), context 9 per request: 8 + 10 + 0.5 × 18 = 27.
    // Elsewhere: prefill 8, decode 9, context 9: 8 + 9 + 0.5 × 9 = 21.5.
    let c = cand(&d, on);
    assert_eq!((c.decode_blocks, c.context_blocks, c.cost), (10, 18, 27.0));
    let c = cand(&d, off);
    assert_eq!((c.decode_blocks, c.context_blocks, c.cost), (9, 9, 21.5));
    assert_eq!(d.target, off);
}

#[test]
fn identical_prompts_share_blocks_but_still_add_load() {
    let mut s = sched(|c| {
        c.speculative_ttl_ms = 0.0;
        c.sequence_weight = 0.0;
    });
    let t = workers(&mut s, 2);
    let p = prompt(0, 8);
    hold(&mut s, "w0", &p, 8);
    let mut on_w0 = 0;
    for i in 0..40 {
        let d = route(&mut s, &req(p.clone(), &format!("r{i}")), 0.0).unwrap();
        on_w0 += (d.target == t[0]) as u32;
    }
    // Each identical request adds one block of its own on w0 (8 shared): w1 gets some once
    // w0's load passes a full prefill plus w1's share.
    assert!((10..40).contains(&on_w0), "{on_w0}");
    assert_eq!(s.load(t[0]).decode_blocks, 8 + on_w0 as u64);
    s.book.check().unwrap();
}

#[test]
fn busy_targets_are_skipped_unless_all_are() {
    let mut s = sched(|c| {
        c.busy_kv_usage = Some(0.9);
        c.busy_queue_depth = Some(3.0);
    });
    let t = workers(&mut s, 3);
    let p = prompt(0, 8);
    hold(&mut s, "w0", &p, 8);
    let m = |kv, waiting| WorkerMetrics {
        waiting,
        running: 0.0,
        kv_usage: kv,
    };
    assert!(s.update_metrics("w0", None, m(0.95, 0.0), 0.0, None));
    s.update_metrics("w1", None, m(0.5, 4.0), 0.0, None);
    let d = route(
        &mut s,
        &Req {
            dry_run: true,
            ..req(p.clone(), "a")
        },
        1.0,
    )
    .unwrap();
    assert_eq!(d.target, t[2]);
    assert!(cand(&d, t[0]).busy && cand(&d, t[1]).busy && !cand(&d, t[2]).busy);
    assert!(!d.all_busy);
    s.update_metrics("w2", None, m(0.99, 0.0), 1.0, None);
    let d = route(
        &mut s,
        &Req {
            dry_run: true,
            ..req(p.clone(), "b")
        },
        2.0,
    )
    .unwrap();
    assert!(d.all_busy);
    assert_eq!(d.target, t[0], "all busy: the cost decides");
    // Stale metrics are ignored.
    let d = route(
        &mut s,
        &Req {
            dry_run: true,
            ..req(p, "c")
        },
        20_000.0,
    )
    .unwrap();
    assert!(!d.all_busy && d.candidates.iter().all(|c| !c.busy));
    assert_eq!(s.stats().all_busy_decisions, 1);
}

#[test]
fn active_request_threshold_counts_own_bookings() {
    let mut s = sched(|c| c.busy_active_requests = Some(2));
    let t = workers(&mut s, 2);
    let p = prompt(0, 8);
    hold(&mut s, "w0", &p, 8);
    for i in 0..2 {
        let r = Req {
            ..req(p.clone(), &format!("x{i}"))
        };
        let d = route(&mut s, &r, 0.0).unwrap();
        s.start(&r.id, t[0], d.prompt_blocks, 8, None);
    }
    let d = route(&mut s, &req(p, "y"), 0.0).unwrap();
    assert!(cand(&d, t[0]).busy);
    assert_eq!(d.target, t[1]);
}

#[test]
fn metrics_penalty_prices_load_the_router_did_not_place() {
    let mut s = sched(|c| c.sequence_weight = 0.0);
    let t = workers(&mut s, 2);
    let p = prompt(0, 10);
    hold(&mut s, "w0", &p, 10);
    let m = WorkerMetrics {
        waiting: 2.0,
        running: 6.0,
        kv_usage: 0.5,
    };
    s.update_metrics("w0", Some(0), m, 0.0, None);
    let d = route(
        &mut s,
        &Req {
            dry_run: true,
            ..req(p.clone(), "a")
        },
        0.0,
    )
    .unwrap();
    // First decision: means are this request's (10 prompt, 10 context blocks).
    // external = 8, external waiting = 2: 8 × 10 + 1 × 2 × 10 = 100.
    let c0 = cand(&d, t[0]);
    assert_eq!(c0.penalty, 100.0);
    assert_eq!(
        c0.cost,
        100.0 + 11.0,
        "+ its 10 prompt blocks and 1 own block"
    );
    assert_eq!(d.target, t[1]);
    // Our own requests there are not counted twice: a scrape showing them is not external.
    for i in 0..8 {
        s.book
            .book(&format!("o{i}"), t[0], &[], 4, 0, 0, f64::INFINITY);
    }
    s.update_metrics("w0", Some(0), m, 0.0, None);
    let d = route(
        &mut s,
        &Req {
            dry_run: true,
            ..req(p, "b")
        },
        0.0,
    )
    .unwrap();
    assert_eq!(cand(&d, t[0]).penalty, 0.0);
}

/// Dry-run decision at `now`.
fn probe(s: &mut Scheduler, tokens: &[u32], now: f64) -> Decision {
    let r = Req {
        dry_run: true,
        ..req(tokens.to_vec(), "probe")
    };
    route(s, &r, now).unwrap()
}

/// Books and starts `n` requests on `target` at `now`; returns their ids.
fn start_on(
    s: &mut Scheduler,
    target: TargetId,
    tokens: &[u32],
    n: usize,
    tag: &str,
) -> Vec<String> {
    (0..n)
        .map(|i| {
            let id = format!("{tag}{i}");
            let d = route(s, &req(tokens.to_vec(), &id), 0.0).unwrap();
            assert!(s.start(&id, target, d.prompt_blocks, 0, None) || d.target != target);
            id
        })
        .collect()
}

#[test]
fn own_requests_finishing_after_a_scrape_are_not_external_load() {
    // The starvation: a scrape shows the router's own 4 requests running on w0; they finish;
    // comparing the scrape with the bookkeeping *now* read them as 4 external requests and
    // priced w0 out (4 × 11 context blocks) for the scrape's whole life, prefix or not.
    let mut s = sched(|c| c.sequence_weight = 0.0);
    let t = workers(&mut s, 2);
    let p = prompt(0, 10);
    hold(&mut s, "w0", &p, 10);
    let ids = start_on(&mut s, t[0], &p, 4, "a");
    let scrape = |running| WorkerMetrics {
        waiting: 0.0,
        running,
        kv_usage: 0.1,
    };
    s.update_metrics("w0", Some(0), scrape(4.0), 0.0, None);
    s.update_metrics("w1", Some(0), scrape(0.0), 0.0, None);
    for id in &ids {
        assert!(s.finish(id, 500.0));
    }
    let d = probe(&mut s, &p, 600.0);
    assert_eq!(cand(&d, t[0]).penalty, 0.0);
    assert_eq!(d.target, t[0], "the prefix holder, idle again");

    // A scrape taken before requests finished but arriving after: by default it was taken up to
    // `metrics_lag_ms` before it arrived, so those finished since still count as the router's.
    let ids = start_on(&mut s, t[0], &p, 4, "b");
    for id in &ids {
        s.finish(id, 1000.0);
    }
    s.update_metrics("w0", Some(0), scrape(4.0), 1010.0, None);
    assert_eq!(cand(&probe(&mut s, &p, 1020.0), t[0]).penalty, 0.0);
    // Taken after they finished (the caller says when): 4 requests the router did not place.
    s.update_metrics("w0", Some(0), scrape(4.0), 1010.0, Some(1005.0));
    let c = cand(&probe(&mut s, &p, 1010.0), t[0]);
    assert!(c.penalty > 0.0);
    // It holds whatever the router does next (no recomputation), fading over metrics_ttl_ms.
    let ttl = s.config().metrics_ttl_ms;
    let later = start_on(&mut s, t[0], &p, 2, "c");
    let half = cand(&probe(&mut s, &p, 1010.0 + ttl / 2.0), t[0]);
    assert!(
        (half.penalty - c.penalty / 2.0).abs() < 1e-6 * c.penalty,
        "{half:?} {c:?}"
    );
    for id in &later {
        s.finish(id, 1010.0 + ttl / 2.0);
    }
    assert_eq!(cand(&probe(&mut s, &p, 1011.0 + ttl), t[0]).penalty, 0.0);
}

#[test]
fn a_whole_worker_scrape_is_compared_with_all_its_ranks() {
    let mut s = sched(|c| c.sequence_weight = 0.0);
    let t = s.upsert_worker("w0", &[0, 1], Role::Aggregated);
    let p = prompt(0, 4);
    start_on(&mut s, t[0], &p, 4, "a");
    let m = WorkerMetrics {
        waiting: 0.0,
        running: 4.0,
        kv_usage: 0.1,
    };
    s.update_metrics("w0", None, m, 0.0, None);
    let d = probe(&mut s, &p, 0.0);
    assert_eq!(
        cand(&d, t[1]).penalty,
        0.0,
        "rank 0's requests are not rank 1's load"
    );
    // 6 running: 2 external, 1 per rank.
    s.update_metrics("w0", None, WorkerMetrics { running: 6.0, ..m }, 0.0, None);
    let d = probe(&mut s, &p, 0.0);
    assert_eq!(cand(&d, t[0]).penalty, cand(&d, t[1]).penalty);
    assert!(cand(&d, t[1]).penalty > 0.0);
}

#[test]
fn exclusion_roles_and_no_candidate() {
    let mut s = sched(|_| {});
    let a = s.upsert_worker("agg", &[0, 1], Role::Aggregated);
    let p = s.upsert_worker("pre", &[0], Role::Prefill)[0];
    let d = s.upsert_worker("dec", &[0], Role::Decode)[0];
    let tokens = prompt(0, 2);
    for _ in 0..50 {
        let r = Req {
            exclude: vec![a[0]],
            roles: Role::Aggregated.bit(),
            dry_run: true,
            ..req(tokens.clone(), "x")
        };
        assert_eq!(route(&mut s, &r, 0.0).unwrap().target, a[1]);
        let r = Req {
            roles: Role::Prefill.bit() | Role::Decode.bit(),
            dry_run: true,
            ..req(tokens.clone(), "x")
        };
        let got = route(&mut s, &r, 0.0).unwrap();
        assert!(got.target == p || got.target == d);
        assert_eq!(got.candidates.len(), 2);
    }
    let r = Req {
        exclude: vec![a[0], a[1]],
        roles: Role::Aggregated.bit(),
        ..req(tokens, "x")
    };
    assert!(route(&mut s, &r, 0.0).is_none());
    assert_eq!(s.stats().active_requests, 0);
}

#[test]
fn softmax_samples_normalized_costs() {
    let mut s = sched(|c| c.temperature = 0.5);
    let t = workers(&mut s, 3);
    let p = prompt(0, 10);
    hold(&mut s, "w0", &p, 10); // cost 0
    hold(&mut s, "w1", &p, 5); // cost 5
    let n = 30_000;
    let mut counts = [0f64; 3];
    for _ in 0..n {
        let d = route(
            &mut s,
            &Req {
                dry_run: true,
                ..req(p.clone(), "x")
            },
            0.0,
        )
        .unwrap();
        counts[t.iter().position(|&x| x == d.target).unwrap()] += 1.0;
    }
    // z = 0, 0.5, 1 → weights 1, e^-1, e^-2.
    let w = [1.0, (-1.0f64).exp(), (-2.0f64).exp()];
    let total: f64 = w.iter().sum();
    for i in 0..3 {
        let want = w[i] / total;
        let got = counts[i] / n as f64;
        assert!((got - want).abs() < 0.015, "{i}: {got} vs {want}");
    }
}

#[test]
fn modes_round_robin_random_least_loaded() {
    let mut s = sched(|_| {});
    let t = workers(&mut s, 3);
    let p = prompt(0, 4);
    hold(&mut s, "w2", &p, 4);
    let seq: Vec<TargetId> = (0..6)
        .map(|_| {
            let r = Req {
                mode: Mode::RoundRobin,
                dry_run: true,
                ..req(p.clone(), "x")
            };
            route(&mut s, &r, 0.0).unwrap().target
        })
        .collect();
    assert_eq!(seq, vec![t[0], t[1], t[2], t[0], t[1], t[2]]);
    let mut seen = BTreeSet::new();
    for _ in 0..100 {
        let r = Req {
            mode: Mode::Random,
            dry_run: true,
            ..req(p.clone(), "x")
        };
        seen.insert(route(&mut s, &r, 0.0).unwrap().target);
    }
    assert_eq!(seen.len(), 3);
    // least-loaded ignores overlap: with w2 loaded, it picks w0 or w1 even though w2 holds all.
    s.book.book("busy", t[2], &[], 40, 0, 0, f64::INFINITY);
    for _ in 0..20 {
        let r = Req {
            mode: Mode::LeastLoaded,
            dry_run: true,
            ..req(p.clone(), "x")
        };
        let d = route(&mut s, &r, 0.0).unwrap();
        assert_ne!(d.target, t[2]);
        assert_eq!(d.overlap_blocks, 0);
        assert_eq!(d.best_overlap_blocks, 4);
    }
}

#[test]
fn speculative_credit_keeps_a_burst_together_then_lapses() {
    let mut s = sched(|c| c.speculative_ttl_ms = 2000.0);
    let t = workers(&mut s, 4);
    let p = prompt(0, 16);
    let first = route(&mut s, &req(p.clone(), "r0"), 0.0).unwrap();
    s.finish("r0", 0.0);
    for i in 1..10 {
        let id = format!("r{i}");
        let d = route(&mut s, &req(p.clone(), &id), i as f64).unwrap();
        assert_eq!(d.target, first.target);
        assert_eq!(d.overlap_blocks, 16);
        assert_eq!(cand(&d, d.target).speculative_blocks, 16);
        s.finish(&id, 0.0);
    }
    // A longer prompt shares the credited prefix only.
    let mut longer = p.clone();
    longer.extend(1000..1008);
    let d = route(
        &mut s,
        &Req {
            dry_run: true,
            ..req(longer, "l")
        },
        10.0,
    )
    .unwrap();
    assert_eq!(d.overlap_blocks, 16);
    // No events by the TTL: the credit is gone.
    let d = route(
        &mut s,
        &Req {
            dry_run: true,
            ..req(p.clone(), "late")
        },
        2010.0,
    )
    .unwrap();
    assert!(d.candidates.iter().all(|c| c.overlap_blocks == 0));
    assert_eq!(s.stats().speculative_pairs, 0);
    // Dry runs credit nothing.
    let _ = t;
    assert_eq!(s.stats().active_requests, 0);
}

#[test]
fn without_speculation_a_burst_scatters() {
    let mut s = sched(|c| c.speculative_ttl_ms = 0.0);
    workers(&mut s, 4);
    let p = prompt(0, 16);
    let mut seen = BTreeSet::new();
    for i in 0..10 {
        let id = format!("r{i}");
        seen.insert(
            route(&mut s, &req(p.clone(), &id), i as f64)
                .unwrap()
                .target,
        );
        s.finish(&id, 0.0);
    }
    assert!(seen.len() > 1);
}

#[test]
fn unstarted_bookings_lapse_started_ones_stay() {
    let mut s = sched(|c| c.unstarted_ttl_ms = 100.0);
    let t = workers(&mut s, 1);
    let p = prompt(0, 4);
    route(&mut s, &req(p.clone(), "a"), 0.0).unwrap();
    let d = route(&mut s, &req(p.clone(), "b"), 0.0).unwrap();
    assert!(s.start("b", d.target, d.prompt_blocks, d.overlap_blocks, None));
    assert_eq!(s.stats().unstarted_requests, 1);
    route(
        &mut s,
        &Req {
            dry_run: true,
            ..req(p, "c")
        },
        150.0,
    )
    .unwrap();
    assert_eq!(s.load(t[0]).requests, 1);
    let st = s.stats();
    assert_eq!((st.active_requests, st.lapsed_bookings), (1, 1));
    assert!(s.first_token("b") && s.tokens("b", 9) && s.finish("b", 0.0));
    assert!(!s.tokens("nope", 1));
    assert_eq!(s.stats().unknown_lifecycle, 1);
}

#[test]
fn remove_worker_drops_blocks_bookings_and_credit() {
    let mut s = sched(|_| {});
    let t = workers(&mut s, 2);
    let p = prompt(0, 6);
    hold(&mut s, "w0", &p, 6);
    let d = route(&mut s, &req(p.clone(), "a"), 0.0).unwrap();
    assert_eq!(d.target, t[0]);
    assert!(s.remove_worker("w0"));
    assert!(!s.remove_worker("w0"));
    assert_eq!(s.applier().indexer().stats().blocks, 0);
    assert_eq!(s.stats().active_requests, 0);
    assert!(!s.finish("a", 0.0));
    assert_eq!(s.target_of("w0", 0), None);
    // The id is reused, with nothing of the old worker.
    let n = s.upsert_worker("w9", &[0], Role::Aggregated)[0];
    assert_eq!(n, t[0]);
    let d = route(
        &mut s,
        &Req {
            dry_run: true,
            ..req(p, "b")
        },
        1.0,
    )
    .unwrap();
    assert!(d.candidates.iter().all(|c| c.overlap_blocks == 0));
    assert_eq!(s.target_worker(n), Some(("w9", 0)));
}

#[test]
fn upsert_changes_ranks_and_role() {
    let mut s = sched(|_| {});
    let a = s.upsert_worker("w", &[0, 1, 2], Role::Aggregated);
    s.applier
        .indexer_mut()
        .apply_stored("w", 2, None, None, &[1, 2])
        .unwrap();
    let b = s.upsert_worker("w", &[1, 0], Role::Prefill);
    assert_eq!(b, vec![a[1], a[0]]);
    assert_eq!(s.stats().targets, 2);
    assert_eq!(
        s.applier().indexer().stats().pairs,
        0,
        "rank 2's blocks left"
    );
    let r = Req {
        roles: Role::Aggregated.bit(),
        ..req(prompt(0, 1), "x")
    };
    assert!(route(&mut s, &r, 0.0).is_none());
}

#[test]
fn events_give_a_view_and_clears_take_it() {
    let mut s = sched(|_| {});
    let t = workers(&mut s, 2);
    let p = prompt(0, 3);
    let batch = KvEventBatch {
        ts: 0.0,
        events: vec![KvEvent::BlockStored(BlockStored {
            block_hashes: BlockHashes::from_keys(vec![11, 12, 13]),
            parent_block_hash: None,
            token_ids: p.clone(),
            block_size: BS,
            ..Default::default()
        })],
        data_parallel_rank: Some(0),
        skipped: vec![],
    };
    let d = route(
        &mut s,
        &Req {
            dry_run: true,
            ..req(p.clone(), "x")
        },
        0.0,
    )
    .unwrap();
    assert!(d.blind);
    let payload = encode_batch(&batch, crate::events::WireFormat::CURRENT);
    let out = s.apply_payload("w1", &payload, 0).unwrap();
    assert_eq!(out.stored, 3);
    assert!(s.has_kv_view("w1", None) && !s.has_kv_view("w0", None));
    let d = route(
        &mut s,
        &Req {
            dry_run: true,
            ..req(p.clone(), "x")
        },
        0.0,
    )
    .unwrap();
    assert_eq!((d.target, d.overlap_blocks), (t[1], 3));
    assert!(d.blind, "w0 still has none");
    s.clear_worker("w1", Some(0));
    assert!(!s.has_kv_view("w1", Some(0)));
    let _ = BlockHash::Int(0);
}

#[test]
fn engine_keying_hashes_requests_like_the_workers() {
    let mut ev = EventApplierConfig::new(BS);
    ev.keying = Keying::Engine;
    ev.hash_algorithm = Some(HashAlgorithm::Sha256Cbor);
    ev.hash_seed = Some("0".into());
    let mut s = Scheduler::new(SchedulerConfig::new(ev.clone())).unwrap();
    let t = workers(&mut s, 2);
    let p = prompt(0, 5);
    let h = EngineHasher::new(EngineHasherConfig {
        block_size: BS as usize,
        algorithm: HashAlgorithm::Sha256Cbor,
        seed: Some("0".into()),
    })
    .unwrap();
    let mut k = Vec::new();
    h.hashes(&p, &ExtraKeys::default(), &mut k);
    s.applier
        .indexer_mut()
        .apply_stored("w1", 0, None, None, &k[..4])
        .unwrap();
    let d = route(&mut s, &req(p, "a"), 0.0).unwrap();
    assert_eq!((d.target, d.overlap_blocks), (t[1], 4));
    ev.hash_algorithm = Some(HashAlgorithm::Xxhash);
    ev.hash_seed = None;
    assert!(Scheduler::new(SchedulerConfig::new(ev)).is_err());
}

#[test]
fn config_is_validated() {
    for f in [
        (|c: &mut SchedulerConfig| c.overlap_weight = -1.0) as fn(&mut SchedulerConfig),
        |c| c.temperature = f64::NAN,
        |c| c.speculative_ttl_ms = f64::INFINITY,
    ] {
        let mut cfg = SchedulerConfig::new(EventApplierConfig::new(BS));
        f(&mut cfg);
        assert!(Scheduler::new(cfg).is_err());
    }
    assert_eq!("least-loaded".parse::<Mode>().unwrap(), Mode::LeastLoaded);
    assert!("fastest".parse::<Mode>().is_err());
    assert_eq!("decode".parse::<Role>().unwrap(), Role::Decode);
}

#[test]
fn max_tokens_raises_predicted_decode() {
    let mut s = sched(|_| {});
    let t = workers(&mut s, 1);
    let r = Req {
        max_tokens: Some(64),
        ..req(prompt(0, 4), "a")
    };
    route(&mut s, &r, 0.0).unwrap();
    // ceil((16 + 32) / 4) = 12.
    assert_eq!(s.load(t[0]).decode_blocks, 12);
}

#[test]
fn a_remote_start_with_the_prompt_keys_scores_as_the_replica_that_routed_it() {
    // Two replicas of one fleet: A routes, B books A's request from its keys (fleet mode).
    let mut a = sched(|_| {});
    let mut b = sched(|_| {});
    let ta = workers(&mut a, 3);
    let tb = workers(&mut b, 3);
    assert_eq!(ta, tb);
    let p = prompt(0, 6);
    for s in [&mut a, &mut b] {
        hold(s, "w1", &p, 2);
    }
    let d = route(&mut a, &req(p.clone(), "r1"), 0.0).unwrap();
    let keys = a.last_keys().to_vec();
    assert_eq!(keys.len(), 6);
    assert!(a.start("r1", d.target, d.prompt_blocks, d.overlap_blocks, None));
    assert!(b.start_remote(
        "a/r1",
        d.target,
        &keys,
        p.len() as u32,
        d.overlap_blocks,
        None,
        true,
        0.0
    ));
    // The next request with the same prompt: B sees the same load and the same speculative
    // blocks on every worker as A does.
    let probe = |s: &mut Scheduler| {
        let d = route(
            s,
            &Req {
                dry_run: true,
                ..req(p.clone(), "probe")
            },
            1.0,
        )
        .unwrap();
        let mut c: Vec<(TargetId, u32, u64, u32)> = d
            .candidates
            .iter()
            .map(|c| {
                (
                    c.target,
                    c.overlap_blocks,
                    c.decode_blocks,
                    c.speculative_blocks,
                )
            })
            .collect();
        c.sort();
        c
    };
    assert_eq!(probe(&mut a), probe(&mut b));
    assert!(probe(&mut b).iter().any(|c| c.2 > 0), "B booked A's load");
    // Finished on both: no load left on B either.
    assert!(a.finish("r1", 2.0));
    assert!(b.finish("a/r1", 2.0));
    assert_eq!(probe(&mut a), probe(&mut b));
    assert!(!b.start_remote("a/r2", 99, &keys, 4, 0, None, true, 3.0));
    a.book.check().unwrap();
    b.book.check().unwrap();
}
