//! Just enough of the zip format to read `torch.save` archives: the end of central directory
//! record (and its zip64 form), central directory entries, and *stored* (uncompressed) members,
//! which is all PyTorch writes. Every offset and length is checked against the buffer: a
//! malformed archive is an error, never a panic or an over-read.

/// One member: its name and its bytes (borrowed from the archive).
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    pub name: &'a [u8],
    pub data: &'a [u8],
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

const EOCD: u32 = 0x0605_4b50;
const EOCD64_LOCATOR: u32 = 0x0706_4b50;
const EOCD64: u32 = 0x0606_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const LOCAL: u32 = 0x0403_4b50;
/// Members at most (torch writes ~7).
const MAX_MEMBERS: usize = 1024;

/// The archive's members, in central directory order.
pub fn members(b: &[u8]) -> Result<Vec<Member<'_>>, &'static str> {
    const BAD: &str = "not a zip archive (torch.save writes one)";
    // The EOCD record is 22 bytes plus a comment of at most 64 KiB, at the end.
    let min = b.len().saturating_sub(22 + 0xffff);
    let eocd = (min..=b.len().saturating_sub(22))
        .rev()
        .find(|&i| u32_at(b, i) == Some(EOCD))
        .ok_or(BAD)?;
    let mut count = u16_at(b, eocd + 10).ok_or(BAD)? as u64;
    let mut dir = u32_at(b, eocd + 16).ok_or(BAD)? as u64;
    if (count == 0xffff || dir == 0xffff_ffff)
        && eocd >= 20
        && u32_at(b, eocd - 20) == Some(EOCD64_LOCATOR)
    {
        let at = u64_at(b, eocd - 20 + 8).ok_or(BAD)? as usize;
        if u32_at(b, at) != Some(EOCD64) {
            return Err("corrupt zip64 end of central directory");
        }
        count = u64_at(b, at + 32).ok_or(BAD)?;
        dir = u64_at(b, at + 48).ok_or(BAD)?;
    }
    if count as usize > MAX_MEMBERS {
        return Err("too many zip members");
    }
    let mut out = Vec::with_capacity(count as usize);
    let mut at = usize::try_from(dir).map_err(|_| BAD)?;
    for _ in 0..count {
        if u32_at(b, at) != Some(CENTRAL) {
            return Err("corrupt zip central directory");
        }
        let method = u16_at(b, at + 10).ok_or(BAD)?;
        let mut compressed = u32_at(b, at + 20).ok_or(BAD)? as u64;
        let mut size = u32_at(b, at + 24).ok_or(BAD)? as u64;
        let name_len = u16_at(b, at + 28).ok_or(BAD)? as usize;
        let extra_len = u16_at(b, at + 30).ok_or(BAD)? as usize;
        let comment_len = u16_at(b, at + 32).ok_or(BAD)? as usize;
        let mut local = u32_at(b, at + 42).ok_or(BAD)? as u64;
        let name = b.get(at + 46..at + 46 + name_len).ok_or(BAD)?;
        // zip64 extended information: the fields that were 0xffffffff, in this order.
        let extra = b
            .get(at + 46 + name_len..at + 46 + name_len + extra_len)
            .ok_or(BAD)?;
        let mut e = 0;
        while e + 4 <= extra.len() {
            let (id, len) = (
                u16_at(extra, e).unwrap_or(0),
                u16_at(extra, e + 2).unwrap_or(0) as usize,
            );
            if id == 1 {
                let mut f = e + 4;
                for field in [&mut size, &mut compressed, &mut local] {
                    if *field == 0xffff_ffff {
                        *field = u64_at(extra, f).ok_or(BAD)?;
                        f += 8;
                    }
                }
            }
            e += 4 + len;
        }
        if method != 0 || compressed != size {
            return Err("compressed zip member (torch.save stores members uncompressed)");
        }
        let local = usize::try_from(local).map_err(|_| BAD)?;
        if u32_at(b, local) != Some(LOCAL) {
            return Err("corrupt zip local header");
        }
        let data_at = local
            + 30
            + u16_at(b, local + 26).ok_or(BAD)? as usize
            + u16_at(b, local + 28).ok_or(BAD)? as usize;
        let size = usize::try_from(size).map_err(|_| BAD)?;
        let data = b
            .get(data_at..data_at.checked_add(size).ok_or(BAD)?)
            .ok_or("truncated zip member")?;
        out.push(Member { name, data });
        at += 46 + name_len + extra_len + comment_len;
    }
    Ok(out)
}
