//! Canonical CBOR as `cbor2.dumps(obj, canonical=True)` writes the block tuple: tuples are
//! arrays, `bytes` byte strings, `str` text strings, ints in their shortest head, `None` 0xf6.

use super::scratch::put_words;
use crate::extra_keys::BlockExtraKeys;

#[inline(always)]
pub fn head(buf: &mut Vec<u8>, major: u8, v: u64) {
    let m = major << 5;
    if v < 24 {
        buf.push(m | v as u8);
    } else if v <= 0xff {
        buf.extend_from_slice(&[m | 24, v as u8]);
    } else if v <= 0xffff {
        buf.push(m | 25);
        buf.extend_from_slice(&(v as u16).to_be_bytes());
    } else if v <= 0xffff_ffff {
        buf.push(m | 26);
        buf.extend_from_slice(&(v as u32).to_be_bytes());
    } else {
        buf.push(m | 27);
        buf.extend_from_slice(&v.to_be_bytes());
    }
}

pub fn int(buf: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        head(buf, 0, v as u64);
    } else {
        head(buf, 1, !(v as u64)); // -1 - v
    }
}

pub fn text(buf: &mut Vec<u8>, s: &str) {
    head(buf, 3, s.len() as u64);
    buf.extend_from_slice(s.as_bytes());
}

pub fn bytes(buf: &mut Vec<u8>, b: &[u8]) {
    head(buf, 2, b.len() as u64);
    buf.extend_from_slice(b);
}

/// One unsigned int's head as a little-endian word and its length, without branches
/// (token sizes are random, so branches would mispredict).
#[inline(always)]
fn token_word(t: u32) -> (u64, usize) {
    const HEAD: [u64; 4] = [0, 0x18, 0x19, 0x1a];
    const PAYLOAD: [u32; 4] = [0, 1, 2, 4];
    let class = (t >= 24) as usize + (t > 0xff) as usize + (t > 0xffff) as usize;
    let n = PAYLOAD[class];
    // The `n` low bytes of `t`, big-endian, in the low bytes of the word.
    let be = (t.swap_bytes() as u64) >> (32 - 8 * n);
    let head = if class == 0 { t as u64 } else { HEAD[class] };
    (head | be << 8, 1 + n as usize)
}

/// `(parent, tuple(tokens), extra_keys)`.
pub fn block(buf: &mut Vec<u8>, parent: &[u8], tokens: &[u32], extra: &BlockExtraKeys<'_>) {
    buf.reserve(16 + parent.len() + tokens.len() * 5);
    buf.push(0x83);
    bytes(buf, parent);
    head(buf, 4, tokens.len() as u64);
    put_words(buf, tokens, 5, token_word);
    if extra.is_empty() {
        buf.push(0xf6);
        return;
    }
    head(buf, 4, extra.len() as u64);
    if let Some(l) = extra.lora {
        buf.push(0x83);
        text(buf, "lora");
        text(buf, l.name);
        text(buf, l.path);
    }
    for (id, off) in extra.mm_keys() {
        buf.push(0x83);
        text(buf, "mm");
        text(buf, id);
        int(buf, off);
    }
    if let Some(s) = extra.cache_salt {
        buf.push(0x82);
        text(buf, "cache_salt");
        text(buf, s);
    }
    if let Some(d) = extra.prompt_embeds {
        buf.push(0x82);
        text(buf, "prompt_embeds");
        bytes(buf, d);
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_bytes::{hex, P, P_HEX};
    use super::*;
    use crate::extra_keys::{LoraKey, MmBlockKey};

    fn cbor_block(parent: &[u8], tokens: &[u32], extra: &BlockExtraKeys<'_>) -> String {
        let mut buf = Vec::new();
        block(&mut buf, parent, tokens, extra);
        hex(&buf)
    }

    // Expected bytes below are `cbor2.dumps(obj, canonical=True).hex()` (cbor2 6.3.0).

    #[test]
    fn cbor_block_shapes() {
        let tokens: Vec<u32> = (0..16).collect();
        assert_eq!(
            cbor_block(&P, &tokens, &BlockExtraKeys::NONE),
            format!("835820{P_HEX}90000102030405060708090a0b0c0d0e0ff6")
        );
        let tokens = [
            0,
            255,
            256,
            65535,
            65536,
            2_147_483_647,
            2_147_483_648,
            u32::MAX,
        ];
        let keys = [
            MmBlockKey {
                identifier: "xyz".into(),
                offset: -3,
            },
            MmBlockKey {
                identifier: "q".into(),
                offset: 5,
            },
        ];
        let extra = BlockExtraKeys {
            lora: Some(LoraKey {
                name: "ab",
                path: "cd",
            }),
            mm: crate::extra_keys::BlockMm::Keys(&keys),
            cache_salt: Some("q"),
            prompt_embeds: None,
        };
        assert_eq!(
            cbor_block(&P, &tokens, &extra),
            format!(
                "835820{P_HEX}880018ff19010019ffff1a000100001a7fffffff1a800000001affffffff84\
                 83646c6f726162616262636483626d6d6378797a2283626d6d617105826a63616368655f73616c\
                 746171"
            )
        );
        let mut buf = Vec::new();
        int(&mut buf, -(1 << 31) - 1);
        assert_eq!(hex(&buf), "3a80000000");
    }
}
