//! What the pickle and cbor serializers' unit tests share: the parent digest they chain from and
//! the hex form their expected bytes are written in.

/// The parent digest every serializer test chains from.
pub(super) const P: [u8; 32] = [0x11; 32];
/// `P` in hex, as it appears inside the expected bytes.
pub(super) const P_HEX: &str = "1111111111111111111111111111111111111111111111111111111111111111";

pub(super) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
