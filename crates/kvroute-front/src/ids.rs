//! Request ids: the engine-side id of each routed attempt (exchange.ts: `kvg-<random>-<n>~<attempt>`,
//! unique per gateway, never the client's), and a fresh UUID for a client that sent no
//! `x-request-id`. Randomness comes from the standard library's per-process random SipHash keys
//! (`RandomState`): ids must not collide, they need not be secret.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

fn random_u64(salt: u64) -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(salt);
    h.finish()
}

pub struct Ids {
    prefix: String,
    next: AtomicU64,
    uuids: AtomicU64,
}

impl Default for Ids {
    fn default() -> Self {
        Ids {
            prefix: format!("kvg-{:016x}-f", random_u64(0)),
            next: AtomicU64::new(0),
            uuids: AtomicU64::new(0),
        }
    }
}

impl Ids {
    /// The engine id of a request's first attempt.
    pub fn engine_id(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{}{}~0", self.prefix, base36(n))
    }

    /// A version-4 UUID string.
    pub fn uuid(&self) -> String {
        let n = self.uuids.fetch_add(1, Ordering::Relaxed);
        let (a, b) = (random_u64(n), random_u64(!n));
        let a = (a & !0xf000) | 0x4000;
        let b = (b & !(0xc << 60)) | (0x8 << 60);
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xffff,
            b >> 48,
            b & 0xffff_ffff_ffff
        )
    }
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii digits")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let ids = Ids::default();
        assert!(ids.engine_id().ends_with("-f0~0"));
        assert!(ids.engine_id().ends_with("-f1~0"));
        let u = ids.uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(ids.uuid(), u);
        assert_eq!(base36(36 * 36 + 1), "101");
    }
}
