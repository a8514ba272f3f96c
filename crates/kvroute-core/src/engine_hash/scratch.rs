//! The reused per-thread serialization buffer, and the word-at-a-time token writer both
//! serializers append with.

use std::cell::RefCell;

/// Appends each token's encoding, given by `enc` as (little-endian word, length ≤ 8 and ≤
/// `max`): writes whole words into a zeroed tail and trims it, which beats per-token pushes.
#[inline(always)]
pub(super) fn put_words(
    buf: &mut Vec<u8>,
    tokens: &[u32],
    max: usize,
    enc: impl Fn(u32) -> (u64, usize),
) {
    let start = buf.len();
    buf.resize(start + tokens.len() * max + 8, 0);
    let mut pos = start;
    for &t in tokens {
        let (w, n) = enc(t);
        buf[pos..pos + 8].copy_from_slice(&w.to_le_bytes());
        pos += n;
    }
    buf.truncate(pos);
}

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(4096));
}

/// Runs `f` with this thread's serialization buffer (a fresh one if it is already in use).
pub(super) fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            let r = f(&mut buf);
            if buf.capacity() > 1 << 20 {
                *buf = Vec::with_capacity(4096); // don't keep a huge one-off buffer
            }
            r
        }
        Err(_) => f(&mut Vec::new()),
    })
}
