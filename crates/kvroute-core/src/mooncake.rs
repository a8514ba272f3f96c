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
const WORD_MUL: u32 = 499;

/// murmur3's finalizer.
#[inline(always)]
fn mix32(mut x: u32) -> u32 {
    x = (x ^ (x >> 16)).wrapping_mul(0x85eb_ca6b);
    x = (x ^ (x >> 13)).wrapping_mul(0xc2b2_ae35);
    x ^ (x >> 16)
}

/// Fills `out` (the prompt: `input_length` tokens) from the record's ids (JS numbers: integers
/// below 2^53).
pub fn expand_hash_ids(hash_ids: &[f64], out: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: `expand_avx2` is this same code compiled with AVX2 enabled, and the CPU has
        // AVX2 (checked just above), so no instruction it runs is unsupported.
        unsafe { expand_avx2(hash_ids, out) };
        return;
    }
    expand(hash_ids, out);
}

/// [`expand`] compiled for AVX2: the block loop is eight tokens a step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn expand_avx2(hash_ids: &[f64], out: &mut [u32]) {
    expand(hash_ids, out);
}

#[inline(always)]
fn expand(hash_ids: &[f64], out: &mut [u32]) {
    let mut at = 0;
    for &h in hash_ids {
        if at >= out.len() {
            break;
        }
        let n = MOONCAKE_BLOCK_TOKENS.min(out.len() - at);
        fill_block(seed_of(h), &mut out[at..at + n]);
        at += n;
    }
}

/// The 32-bit seed of a hash id. JS: `(h >>> 0) ^ Math.imul(Math.floor(h / 2^32) + 0x632be5ab,
/// 0x85ebca6b)`, mixed.
#[inline(always)]
fn seed_of(h: f64) -> u32 {
    let h = h as i64;
    let lo = h as u32;
    let hi = h.div_euclid(1 << 32).wrapping_add(0x632b_e5ab) as u32;
    mix32(lo ^ hi.wrapping_mul(0x85eb_ca6b))
}

/// Token j of a block: the word of `mix32(seed + j x golden)`'s top 24 bits, `x * 499 >> 16`,
/// computed in 32-bit lanes (so that it vectorizes): with `x = a * 2^16 + b`,
/// `x * 499 >> 16 = a * 499 + (b * 499 >> 16)` exactly (`a * 499 * 2^16` has no bits below 16).
#[inline(always)]
fn fill_block(seed: u32, out: &mut [u32]) {
    for (j, t) in out.iter_mut().enumerate() {
        let x = mix32(seed.wrapping_add((j as u32).wrapping_mul(0x9e37_79b9))) >> 8;
        *t = FIRST_WORD_ID + (x >> 16) * WORD_MUL + (((x & 0xffff) * WORD_MUL) >> 16);
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

    #[test]
    fn the_32_bit_word_map_is_the_64_bit_one() {
        // Every top-24-bit value x: (x * 499) >> 16 in u64 against the split form.
        for x in 0u32..1 << 24 {
            let wide = ((u64::from(x) * 499) >> 16) as u32;
            assert_eq!(
                (x >> 16) * WORD_MUL + (((x & 0xffff) * WORD_MUL) >> 16),
                wide
            );
        }
        // The dispatching entry and the portable loop agree on a long prompt.
        let ids: Vec<f64> = (0..40).map(|i| (i * 7919) as f64 + 2f64.powi(45)).collect();
        let (mut a, mut b) = (vec![0u32; 40 * 512 - 77], vec![0u32; 40 * 512 - 77]);
        expand_hash_ids(&ids, &mut a);
        expand(&ids, &mut b);
        assert_eq!(a, b);
    }

    const GOLDEN: [u32; 6] = [50_626, 44_904, 62_331, 5_600, 65_917, 31_375];
}
