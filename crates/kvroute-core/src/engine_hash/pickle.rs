//! The bytes of CPython's C pickler (`pickle.dumps(obj, protocol=5)`, Python 3.11) for the
//! block tuple, including its framing and memo.
//!
//! Framing (protocol ≥ 4): after `PROTO 5` every opcode goes into a frame announced by
//! `FRAME <u64 len>`. When the pickler starts saving any object (an int, a string, a tuple, a
//! memo reference...) and the open frame already holds ≥ 64 KiB, it closes that frame; it also
//! closes it before a `str`/`bytes` payload of ≥ 64 KiB, which is written unframed. A closed
//! frame of fewer than 4 bytes gets no header. The last frame is closed after `STOP`.
//!
//! Memo: every `bytes`, `str` and non-empty tuple is memoized (`MEMOIZE`) when first written;
//! writing the *same object* again emits `BINGET`. Within one block the only repeated objects
//! are the `"mm"` tag constant (one per multimodal key) and CPython's cached one-character
//! (Latin-1) and empty strings; other equal strings of a request are distinct objects.

use super::scratch::put_words;
use crate::extra_keys::BlockExtraKeys;

const PROTO: u8 = 0x80;
const FRAME: u8 = 0x95;
const MEMOIZE: u8 = 0x94;
const MARK: u8 = b'(';
const TUPLE: u8 = b't';
const TUPLE1: u8 = 0x85;
const TUPLE2: u8 = 0x86;
const TUPLE3: u8 = 0x87;
const NONE: u8 = b'N';
const STOP: u8 = b'.';
const BININT: u8 = b'J';
const BININT1: u8 = b'K';
const BININT2: u8 = b'M';
const LONG1: u8 = 0x8a;
const BINGET: u8 = b'h';
const LONG_BINGET: u8 = b'j';
const SHORT_BINBYTES: u8 = b'C';
const BINBYTES: u8 = b'B';
const BINBYTES8: u8 = 0x8e;
const SHORT_BINUNICODE: u8 = 0x8c;
const BINUNICODE: u8 = b'X';
const BINUNICODE8: u8 = 0x8d;

const FRAME_HEADER: usize = 9;
const FRAME_SIZE_MIN: usize = 4;
const FRAME_SIZE_TARGET: usize = 64 * 1024;

/// Largest encoding of one token (LONG1 of a u32 ≥ 2^31).
const MAX_TOKEN_BYTES: usize = 7;

/// A string object that may be written again in the same pickle.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shared {
    /// The `"mm"` constant of `_gen_mm_extra_hash_keys`.
    MmTag,
    /// CPython's empty-string singleton.
    Empty,
    /// CPython's singleton for this one Latin-1 character.
    Latin1(u8),
}

pub struct Pickler<'b> {
    buf: &'b mut Vec<u8>,
    /// Start of the open frame's header, if a frame is open.
    frame_start: Option<usize>,
    /// Memo entries written so far.
    memo_len: u32,
    /// Memo indices of the shared strings written so far: inline for the first few,
    /// then spilled (at most 258 distinct ones exist).
    shared: [(Shared, u32); 8],
    shared_len: usize,
    shared_spill: Vec<(Shared, u32)>,
}

impl<'b> Pickler<'b> {
    pub fn start(buf: &'b mut Vec<u8>) -> Self {
        buf.extend_from_slice(&[PROTO, 5]);
        Pickler {
            buf,
            frame_start: None,
            memo_len: 0,
            shared: [(Shared::Empty, 0); 8],
            shared_len: 0,
            shared_spill: Vec::new(),
        }
    }

    #[inline(always)]
    fn open(&mut self) {
        if self.frame_start.is_none() {
            self.frame_start = Some(self.buf.len());
            self.buf.extend_from_slice(&[0; FRAME_HEADER]);
        }
    }

    #[inline(always)]
    fn op(&mut self, b: &[u8]) {
        self.open();
        self.buf.extend_from_slice(b);
    }

    fn commit(&mut self) {
        if let Some(start) = self.frame_start.take() {
            let len = self.buf.len() - start - FRAME_HEADER;
            if len >= FRAME_SIZE_MIN {
                self.buf[start] = FRAME;
                self.buf[start + 1..start + FRAME_HEADER]
                    .copy_from_slice(&(len as u64).to_le_bytes());
            } else {
                self.buf.drain(start..start + FRAME_HEADER);
            }
        }
    }

    /// Called as the pickler starts saving an object: closes a frame of ≥ 64 KiB.
    #[inline(always)]
    fn boundary(&mut self) {
        if let Some(start) = self.frame_start {
            if self.buf.len() - start - FRAME_HEADER >= FRAME_SIZE_TARGET {
                self.commit();
            }
        }
    }

    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.frame_start
            .map_or(0, |s| self.buf.len() - s - FRAME_HEADER)
    }

    fn memoize(&mut self) -> u32 {
        self.op(&[MEMOIZE]);
        self.memo_len += 1;
        self.memo_len - 1
    }

    /// Opcode header + payload; payloads of ≥ 64 KiB bypass the frame.
    fn payload(&mut self, header: &[u8], data: &[u8]) {
        if data.len() >= FRAME_SIZE_TARGET {
            self.commit();
            self.buf.extend_from_slice(header);
            self.buf.extend_from_slice(data);
        } else {
            self.op(header);
            self.op(data);
        }
    }

    pub fn bytes_value(&mut self, b: &[u8]) {
        self.boundary();
        let n = b.len();
        if n <= 0xff {
            self.payload(&[SHORT_BINBYTES, n as u8], b);
        } else if n as u64 <= 0xffff_ffff {
            let l = (n as u32).to_le_bytes();
            self.payload(&[BINBYTES, l[0], l[1], l[2], l[3]], b);
        } else {
            let l = (n as u64).to_le_bytes();
            let mut h = [BINBYTES8; 9];
            h[1..].copy_from_slice(&l);
            self.payload(&h, b);
        }
        self.memoize();
    }

    fn str_raw(&mut self, s: &str) {
        let n = s.len();
        if n <= 0xff {
            self.payload(&[SHORT_BINUNICODE, n as u8], s.as_bytes());
        } else if n as u64 <= 0xffff_ffff {
            let l = (n as u32).to_le_bytes();
            self.payload(&[BINUNICODE, l[0], l[1], l[2], l[3]], s.as_bytes());
        } else {
            let l = (n as u64).to_le_bytes();
            let mut h = [BINUNICODE8; 9];
            h[1..].copy_from_slice(&l);
            self.payload(&h, s.as_bytes());
        }
    }

    /// A `str` object never written before in this pickle.
    pub fn str_value(&mut self, s: &str) {
        self.boundary();
        self.str_raw(s);
        self.memoize();
    }

    /// A `str` that may be an object already written (see [`Shared`]).
    fn str_maybe_shared(&mut self, s: &str, shared: Option<Shared>) {
        if let Some(key) = shared {
            self.boundary();
            let known = self.shared[..self.shared_len]
                .iter()
                .chain(&self.shared_spill)
                .find(|(k, _)| *k == key);
            if let Some(&(_, idx)) = known {
                if idx <= 0xff {
                    self.op(&[BINGET, idx as u8]);
                } else {
                    let l = idx.to_le_bytes();
                    self.op(&[LONG_BINGET, l[0], l[1], l[2], l[3]]);
                }
                return;
            }
            self.str_raw(s);
            let idx = self.memoize();
            if self.shared_len < self.shared.len() {
                self.shared[self.shared_len] = (key, idx);
                self.shared_len += 1;
            } else {
                self.shared_spill.push((key, idx));
            }
        } else {
            self.str_value(s);
        }
    }

    /// A user string: shared only if CPython caches it (empty or one Latin-1 character).
    fn user_str(&mut self, s: &str) {
        let shared = if s.is_empty() {
            Some(Shared::Empty)
        } else {
            let mut chars = s.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) if (c as u32) < 256 => Some(Shared::Latin1(c as u8)),
                _ => None,
            }
        };
        self.str_maybe_shared(s, shared);
    }

    /// One token's opcode as a little-endian word and its length, without branches
    /// (token sizes are random, so branches would mispredict): BININT1, BININT2, BININT,
    /// or LONG1 with 5 bytes (4 + a zero sign byte) for u32 ≥ 2^31.
    #[inline(always)]
    fn token_word(t: u32) -> (u64, usize) {
        const HEAD: [u64; 4] = [
            BININT1 as u64,
            BININT2 as u64,
            BININT as u64,
            LONG1 as u64 | 5 << 8,
        ];
        const SHIFT: [u32; 4] = [8, 8, 8, 16];
        const LEN: [usize; 4] = [2, 3, 5, 7];
        let class = (t > 0xff) as usize + (t > 0xffff) as usize + (t > 0x7fff_ffff) as usize;
        (HEAD[class] | (t as u64) << SHIFT[class], LEN[class])
    }

    pub fn int(&mut self, v: i64) {
        self.boundary();
        self.open();
        if (0..=0xff).contains(&v) {
            self.buf.extend_from_slice(&[BININT1, v as u8]);
        } else if (0..=0xffff).contains(&v) {
            let b = (v as u16).to_le_bytes();
            self.buf.extend_from_slice(&[BININT2, b[0], b[1]]);
        } else if (i32::MIN as i64..=i32::MAX as i64).contains(&v) {
            self.buf.push(BININT);
            self.buf.extend_from_slice(&(v as i32).to_le_bytes());
        } else {
            // Shortest little-endian two's complement.
            let le = v.to_le_bytes();
            let mut n = 8;
            while n > 1 {
                let top = le[n - 1];
                let sign_next = le[n - 2] & 0x80;
                if (top == 0 && sign_next == 0) || (top == 0xff && sign_next != 0) {
                    n -= 1;
                } else {
                    break;
                }
            }
            self.buf.extend_from_slice(&[LONG1, n as u8]);
            self.buf.extend_from_slice(&le[..n]);
        }
    }

    /// The tuple opcode for `n` elements after they were written (`MARK` was written
    /// before them when `n > 3`).
    fn end_tuple(&mut self, n: usize) {
        let op = match n {
            1 => TUPLE1,
            2 => TUPLE2,
            3 => TUPLE3,
            _ => TUPLE,
        };
        self.op(&[op]);
        self.memoize();
    }

    /// Starts saving a tuple of `n > 0` elements.
    fn begin_tuple(&mut self, n: usize) {
        self.boundary();
        if n > 3 {
            self.op(&[MARK]);
        }
    }

    fn tokens(&mut self, tokens: &[u32]) {
        if tokens.is_empty() {
            self.boundary();
            self.op(b")"); // EMPTY_TUPLE, not memoized
            return;
        }
        self.begin_tuple(tokens.len());
        self.open();
        if self.frame_len() + tokens.len() * MAX_TOKEN_BYTES < FRAME_SIZE_TARGET {
            // No frame can close inside this run.
            put_words(self.buf, tokens, MAX_TOKEN_BYTES, Self::token_word);
        } else {
            for &t in tokens {
                self.boundary();
                self.open();
                let (w, n) = Self::token_word(t);
                self.buf.extend_from_slice(&w.to_le_bytes()[..n]);
            }
        }
        self.end_tuple(tokens.len());
    }

    pub fn none(&mut self) {
        self.boundary();
        self.op(&[NONE]);
    }

    pub fn finish(mut self) {
        self.op(&[STOP]);
        self.commit();
    }
}

/// `(parent, tuple(tokens), extra_keys)`.
pub fn block(buf: &mut Vec<u8>, parent: &[u8], tokens: &[u32], extra: &BlockExtraKeys<'_>) {
    buf.reserve(32 + parent.len() + tokens.len() * MAX_TOKEN_BYTES);
    let mut p = Pickler::start(buf);
    p.begin_tuple(3);
    p.bytes_value(parent);
    p.tokens(tokens);
    if extra.is_empty() {
        p.none();
    } else {
        let n = extra.len();
        p.begin_tuple(n);
        if let Some(l) = extra.lora {
            p.begin_tuple(3);
            p.str_value("lora");
            p.user_str(l.name);
            p.user_str(l.path);
            p.end_tuple(3);
        }
        for (id, off) in extra.mm_keys() {
            p.begin_tuple(3);
            p.str_maybe_shared("mm", Some(Shared::MmTag));
            p.user_str(id);
            p.int(off);
            p.end_tuple(3);
        }
        if let Some(s) = extra.cache_salt {
            p.begin_tuple(2);
            p.str_value("cache_salt");
            p.user_str(s);
            p.end_tuple(2);
        }
        if let Some(d) = extra.prompt_embeds {
            p.begin_tuple(2);
            p.str_value("prompt_embeds");
            p.bytes_value(d);
            p.end_tuple(2);
        }
        p.end_tuple(n);
    }
    p.end_tuple(3);
    p.finish();
}

#[cfg(test)]
mod tests {
    use super::super::test_bytes::{hex, P, P_HEX};
    use super::*;
    use crate::extra_keys::{LoraKey, MmBlockKey};

    fn pickle_block(parent: &[u8], tokens: &[u32], extra: &BlockExtraKeys<'_>) -> String {
        let mut buf = Vec::new();
        block(&mut buf, parent, tokens, extra);
        hex(&buf)
    }

    // Expected bytes below are Python 3.11's `pickle.dumps(obj, protocol=5).hex()`, checked
    // with pickletools.dis.

    #[test]
    fn pickle_sixteen_small_tokens() {
        let tokens: Vec<u32> = (0..16).collect();
        let want = format!(
            "8005954a000000000000004320{P_HEX}94284b004b014b024b034b044b054b064b074b084b094b0a\
             4b0b4b0c4b0d4b0e4b0f74944e87942e"
        );
        assert_eq!(pickle_block(&P, &tokens, &BlockExtraKeys::NONE), want);
    }

    #[test]
    fn pickle_int_opcodes_at_their_edges() {
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
        let keys = [MmBlockKey {
            identifier: "xyz".into(),
            offset: -3,
        }];
        let extra = BlockExtraKeys {
            lora: Some(LoraKey {
                name: "ab",
                path: "cd",
            }),
            mm: crate::extra_keys::BlockMm::Keys(&keys),
            cache_salt: None,
            prompt_embeds: None,
        };
        let want = format!(
            "80059572000000000000004320{P_HEX}94284b004bff4d00014dffff4a000001004affffff7f8a05\
             00000080008a05ffffffff0074948c046c6f7261948c026162948c0263649487948c026d6d948c03\
             78797a944afdffffff8794869487942e"
        );
        assert_eq!(pickle_block(&P, &tokens, &extra), want);
    }

    #[test]
    fn pickle_short_tuples_and_16_byte_parent() {
        let p16 = [0x22u8; 16];
        let h16 = "22".repeat(16);
        assert_eq!(
            pickle_block(&p16, &[1], &BlockExtraKeys::NONE),
            format!("8005951b000000000000004310{h16}944b0185944e87942e")
        );
        assert_eq!(
            pickle_block(&P, &[1, 2], &BlockExtraKeys::NONE),
            format!("8005952d000000000000004320{P_HEX}944b014b0286944e87942e")
        );
        assert_eq!(
            pickle_block(&P, &[1, 2, 3], &BlockExtraKeys::NONE),
            format!("8005952f000000000000004320{P_HEX}944b014b024b0387944e87942e")
        );
        assert_eq!(
            pickle_block(&P, &[1, 2, 3, 4], &BlockExtraKeys::NONE),
            format!("80059532000000000000004320{P_HEX}94284b014b024b034b0474944e87942e")
        );
    }

    #[test]
    fn pickle_repeated_mm_tag_and_one_char_strings_use_binget() {
        // (P, (1,), (("mm","xyz",-3), ("mm","q",5), ("cache_salt","q")))
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
            lora: None,
            mm: crate::extra_keys::BlockMm::Keys(&keys),
            cache_salt: Some("q"),
            prompt_embeds: None,
        };
        let want = format!(
            "80059559000000000000004320{P_HEX}944b0185948c026d6d948c0378797a944afdffffff8794\
             68028c0171944b0587948c0a63616368655f73616c749468058694879487942e"
        );
        assert_eq!(pickle_block(&P, &[1], &extra), want);
    }

    #[test]
    fn pickle_long1_shortest_twos_complement() {
        let enc = |v: i64| {
            let mut buf = Vec::new();
            let mut p = Pickler::start(&mut buf);
            p.int(v);
            p.finish();
            hex(&buf[11..buf.len() - 1])
        };
        assert_eq!(enc(-1), "4affffffff");
        assert_eq!(enc(i32::MIN as i64), "4a00000080");
        assert_eq!(enc(i32::MIN as i64 - 1), "8a05ffffff7fff");
        assert_eq!(enc(1 << 31), "8a050000008000");
        assert_eq!(enc(1 << 40), "8a06000000000001");
        assert_eq!(enc(-(1 << 39)), "8a050000000080");
        assert_eq!(enc(i64::MIN), "8a080000000000000080");
        assert_eq!(enc(i64::MAX), "8a08ffffffffffffff7f");
    }

    #[test]
    fn pickle_seed_string() {
        let mut buf = Vec::new();
        let mut p = Pickler::start(&mut buf);
        p.str_value("42");
        p.finish();
        assert_eq!(hex(&buf), "80059506000000000000008c023432942e");
        let mut buf = Vec::new();
        let mut p = Pickler::start(&mut buf);
        p.str_value("");
        p.finish();
        assert_eq!(hex(&buf), "80059504000000000000008c00942e");
    }

    #[test]
    fn pickle_huge_payload_is_written_outside_frames() {
        let salt = "y".repeat(70_000);
        let extra = BlockExtraKeys {
            cache_salt: Some(&salt),
            prompt_embeds: None,
            ..BlockExtraKeys::NONE
        };
        let mut buf = Vec::new();
        block(&mut buf, &P, &[1, 2], &extra);
        // FRAME 54 | ... 'cache_salt' MEMOIZE | BINUNICODE 70000 (unframed) | FRAME 8 | tail
        assert_eq!(hex(&buf[..11]), "8005953600000000000000");
        assert_eq!(buf[65], b'X');
        assert_eq!(&buf[66..70], &70_000u32.to_le_bytes());
        let tail = &buf[70 + 70_000..];
        assert_eq!(hex(tail), "950800000000000000948694859487942e");
    }
}
