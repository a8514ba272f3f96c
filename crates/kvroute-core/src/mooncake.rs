//! The prompt tokens of a Mooncake trace record, from its `hash_ids`: block `k` holds 512 tokens
//! that are a pure function of `hash_ids[k]` and the position, so records sharing their first
//! ids share their first tokens (ts/replay/trace.ts, `expandHashIds`, documents the format; this
//! is its implementation, bit for bit the TS reference's). The full Mooncake conversation trace
//! expands to 145M tokens: a replay's arrivals spend much of their time here.

/// Tokens per hash id.
pub const MOONCAKE_BLOCK_TOKENS: usize = 512;
/// The toy tokenizer's word ids: `[256, 128000)`.
const FIRST_WORD_ID: u32 = 256;
/// Words / 2^24 = 499 / 2^16 exactly (127,744 words), so `floor(x * scale)` is `x * 499 >> 16`.
const WORD_MUL: u64 = 499;

/// murmur3's finalizer.
fn mix32(mut x: u32) -> u32 {
    x = (x ^ (x >> 16)).wrapping_mul(0x85eb_ca6b);
    x = (x ^ (x >> 13)).wrapping_mul(0xc2b2_ae35);
    x ^ (x >> 16)
}

/// Fills `out` (the prompt: `input_length` tokens) from the record's ids (JS numbers: integers
/// below 2^53).
pub fn expand_hash_ids(hash_ids: &[f64], out: &mut [u32]) {
    let mut at = 0;
    for &h in hash_ids {
        if at >= out.len() {
            break;
        }
        // JS: `(h >>> 0) ^ Math.imul(Math.floor(h / 2^32) + 0x632be5ab, 0x85ebca6b)`.
        let h = h as i64;
        let lo = h as u32;
        let hi = h.div_euclid(1 << 32).wrapping_add(0x632b_e5ab) as u32;
        let seed = mix32(lo ^ hi.wrapping_mul(0x85eb_ca6b));
        let n = MOONCAKE_BLOCK_TOKENS.min(out.len() - at);
        for (j, t) in out[at..at + n].iter_mut().enumerate() {
            let m = mix32(seed.wrapping_add((j as u32).wrapping_mul(0x9e37_79b9)));
            *t = FIRST_WORD_ID + ((u64::from(m >> 8) * WORD_MUL) >> 16) as u32;
        }
        at += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_ts_reference() {
        // From ts/replay/trace.ts's JS reference (node: expandHashIdsReference([7, 2 ** 40 + 3], 515)).
        let mut out = vec![0u32; 515];
        expand_hash_ids(&[7.0, (1u64 << 40) as f64 + 3.0], &mut out);
        assert_eq!(&out[..3], &GOLDEN[..3]);
        assert_eq!(&out[512..], &GOLDEN[3..]);
    }

    const GOLDEN: [u32; 6] = [50_626, 44_904, 62_331, 5_600, 65_917, 31_375];
}
