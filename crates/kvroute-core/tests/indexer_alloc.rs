//! `find_matches` does not allocate once its `Matches` buffer is warm, on every walk variant.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use kvroute_core::indexer::{Indexer, Matches};

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

/// Counts this thread's allocations and delegates everything to the system allocator.
struct Counting;

// SAFETY: every method forwards its arguments unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the counter is a const-initialized thread-local `Cell`, whose access
// neither allocates nor re-enters the allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded as is (see the impl).
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is (see the impl).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded as is (see the impl).
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn allocs() -> usize {
    ALLOCS.with(|c| c.get())
}

/// An index with `slots` holders and tiers `media`, chains sharing a 4-block prefix.
fn build(slots: usize, media: &[Option<&str>]) -> (Indexer, Vec<Vec<u64>>) {
    let mut ix = Indexer::new();
    let chains: Vec<Vec<u64>> = (0..8u64)
        .map(|c| {
            (0..64u64)
                .map(|i| if i < 4 { i + 1 } else { 1000 * (c + 1) + i })
                .collect()
        })
        .collect();
    for s in 0..slots {
        let chain = &chains[s % chains.len()];
        let medium = media[s % media.len()];
        ix.apply_stored(&format!("w{s}"), 0, medium, None, &chain[..32 + s % 32])
            .unwrap();
    }
    (ix, chains)
}

#[test]
fn warm_queries_do_not_allocate() {
    let cases: [(usize, &[Option<&str>]); 4] = [
        (64, &[None]),
        (64, &[None, Some("CPU")]),
        (60, &[None, Some("CPU"), Some("DISK"), Some("X"), Some("Y")]),
        (150, &[None, Some("CPU"), Some("DISK")]),
    ];
    for (slots, media) in cases {
        let (ix, chains) = build(slots, media);
        let mut m = Matches::new();
        let mut queries: Vec<Vec<u64>> = chains.clone();
        queries.push(vec![1, 2, 3, 4, 99]);
        queries.push(vec![12345]);
        queries.push(Vec::new());
        // Warm up on the query with the most holders, then none may allocate.
        ix.find_matches(&chains[0][..1], &mut m);
        assert_eq!(m.len(), slots, "q[0] is shared by every slot");
        let before = allocs();
        let mut total = 0;
        for q in &queries {
            ix.find_matches(q, &mut m);
            total += m.len();
        }
        assert_eq!(
            allocs(),
            before,
            "{slots} slots, {} tiers: allocated",
            media.len()
        );
        assert!(total > slots);
    }
}
